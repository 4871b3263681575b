//! The databases: a SQLite file per hub, PostgreSQL for the tests that share one.

use super::*;

/// A SQLite file of its own, created on first use.
pub fn sqlite_url() -> String {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("db") + ".sqlite");
    format!("sqlite://{}?mode=rwc", path.display())
}

/// PostgreSQL here: 127.0.0.1:5432 as `postgres` (trust), or `WSKAFKA_TEST_POSTGRES`.
pub fn postgres_server() -> String {
    std::env::var("WSKAFKA_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A fresh, empty PostgreSQL database; returns its URL.
pub async fn fresh_postgres() -> String {
    use sqlx::Connection as _;
    let server = postgres_server();
    let name = unique("wskafka_test").replace(['-', '.'], "_");
    let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres"))
        .await
        .expect("PostgreSQL is not reachable (set WSKAFKA_TEST_POSTGRES)");
    // The name is ours: a prefix and a UUID.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    format!("{server}/{name}")
}
