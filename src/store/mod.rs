//! Durable state: read positions, revocations, the open sessions behind presence events, and
//! Web Push subscriptions.
//!
//! One schema (`migrations/`) and one set of statements serve both databases through sqlx's
//! `Any` driver: a SQLite file for a single hub with nothing to set up, PostgreSQL for hubs
//! that share their state. Migrations are embedded at build time, so building needs no
//! database; on PostgreSQL, sqlx holds an advisory lock while migrating, so hubs starting
//! together apply them once.

pub(crate) mod commits;
mod push;

pub use push::{AddError, Claim, StoredSubscription};

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::{AnyConnection, AnyPool, Connection as _};

use crate::auth::TokenId;
use crate::clock::{now_millis, now_secs};
use crate::control::{Revocation, revokes_issued};

static MIGRATOR: Migrator = sqlx::migrate!();

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}", describe(.0))]
    Database(#[from] sqlx::Error),
    #[error("cannot migrate the database: {}", match .0 {
        MigrateError::Execute(e) => describe(e),
        other => other.to_string(),
    })]
    Migrate(#[from] MigrateError),
}

/// The database's own message, without the line of its source code PostgreSQL adds.
fn describe(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(e) => e.message().to_string(),
        other => other.to_string(),
    }
}

impl StoreError {
    /// Whether waiting can mend it: the database refuses connections, does not answer, is
    /// starting, or is busy. A wrong password, an unknown database or a schema newer than
    /// this build stay wrong however long the hub waits.
    pub fn is_transient(&self) -> bool {
        let error = match self {
            StoreError::Database(e) | StoreError::Migrate(MigrateError::Execute(e)) => e,
            StoreError::Migrate(_) => return false,
        };
        match error {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
            sqlx::Error::Database(e) => matches!(
                e.code().as_deref(),
                // PostgreSQL: the server is starting or shutting down, or full.
                Some("57P03" | "57P01" | "53300")
                // SQLite: another process holds the file (SQLITE_BUSY, SQLITE_LOCKED).
                | Some("5" | "6")
            ),
            _ => false,
        }
    }
}

/// `url` with its password masked, to name a database in messages.
pub fn display_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => url.split(':').next().unwrap_or_default().to_string() + ":(unparsable URL)",
    }
}

/// A socket whose `disconnect` presence event has not been written yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSession {
    pub id: String,
    pub instance: String,
    pub sub: String,
    pub connected_at: i64,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    url: String,
}

/// Whose read positions: the user, the topic and the key (`""` for the whole topic).
pub type Owner = (String, String, String);

pub fn owner(sub: &str, topic: &str, key: &str) -> Owner {
    (sub.to_string(), topic.to_string(), key.to_string())
}

/// One partition's next offset, kept only when it moves forward.
const COMMIT: &str = "INSERT INTO read_positions
       (sub, topic, record_key, kafka_partition, next_offset, updated_at)
     VALUES ($1, $2, $3, $4, $5, $6)
     ON CONFLICT (sub, topic, record_key, kafka_partition) DO UPDATE
     SET next_offset = excluded.next_offset, updated_at = excluded.updated_at
     WHERE read_positions.next_offset < excluded.next_offset";

impl Store {
    /// A pool that connects when it is first used: nothing here waits for the database. A
    /// request waits at most `timeout` for a connection.
    pub fn open(url: &str, max_connections: u32, timeout: Duration) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(timeout)
            .connect_lazy(url)?;
        Ok(Store {
            pool,
            url: url.to_string(),
        })
    }

    /// Opens the pool and prepares the database at once (tests and tools).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        let store = Store::open(url, max_connections, Duration::from_secs(30))?;
        store.prepare().await?;
        Ok(store)
    }

    /// Applies the migrations this build carries that the database lacks.
    pub async fn prepare(&self) -> Result<(), StoreError> {
        let sqlite = self.url.starts_with("sqlite:");
        // PostgreSQL serialises hubs migrating together with a lock. SQLite has none: a
        // process that loses the race finds the database locked, or the migration applied
        // under it, and succeeds on a later attempt.
        let mut attempts = 0;
        loop {
            // The pool would only say that it timed out: a connection says why it failed.
            AnyConnection::connect(&self.url).await?.close().await?;
            match prepare(&self.pool, sqlite).await {
                Ok(()) => return Ok(()),
                Err(e) if sqlite && attempts < 4 => {
                    attempts += 1;
                    tracing::info!(error = %e, "preparing the database failed; trying again");
                    tokio::time::sleep(Duration::from_millis(100 * attempts)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Moves the user's read positions of `topic` forward; a position behind the stored one
    /// (a device that read less) leaves it where it is. `key` keeps a room's positions apart
    /// from the other rooms' of the same topic; `""` stands for the whole topic.
    pub async fn commit(
        &self,
        sub: &str,
        topic: &str,
        key: &str,
        offsets: &BTreeMap<i32, i64>,
    ) -> Result<(), StoreError> {
        self.commit_many(&HashMap::from([(owner(sub, topic, key), offsets.clone())]))
            .await
    }

    /// Several users' positions, in one transaction (see `commits`).
    pub async fn commit_many(
        &self,
        positions: &HashMap<Owner, BTreeMap<i32, i64>>,
    ) -> Result<(), StoreError> {
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        for ((sub, topic, key), offsets) in positions {
            for (&partition, &offset) in offsets {
                sqlx::query(COMMIT)
                    .bind(sub)
                    .bind(topic)
                    .bind(key)
                    .bind(i64::from(partition))
                    .bind(offset)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// The user's read positions in `topic` (under `key`, as `commit` stored them): the next
    /// offset to read per partition.
    pub async fn committed(
        &self,
        sub: &str,
        topic: &str,
        key: &str,
    ) -> Result<BTreeMap<i32, i64>, StoreError> {
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT kafka_partition, next_offset FROM read_positions
             WHERE sub = $1 AND topic = $2 AND record_key = $3",
        )
        .bind(sub)
        .bind(topic)
        .bind(key)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(p, o)| Some((i32::try_from(p).ok()?, o)))
            .collect())
    }

    pub async fn revoke(&self, revocation: &Revocation) -> Result<(), StoreError> {
        let (kind, value, at) = match revocation {
            Revocation::Jti { jti } => ("jti", jti.as_str(), now_secs() as i64),
            Revocation::Sub { sub, before } => ("sub", sub.as_str(), *before as i64),
        };
        sqlx::query(
            "INSERT INTO revocations (kind, value, revoked_at) VALUES ($1, $2, $3)
             ON CONFLICT (kind, value) DO UPDATE SET revoked_at = excluded.revoked_at
             WHERE revocations.revoked_at < excluded.revoked_at",
        )
        .bind(kind)
        .bind(value)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Whether this token of `sub` has been revoked.
    pub async fn is_revoked(&self, sub: &str, token: &TokenId) -> Result<bool, StoreError> {
        let (jti, issued_at) = (token.jti.as_deref(), token.issued_at);
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT kind, revoked_at FROM revocations
             WHERE (kind = 'sub' AND value = $1) OR (kind = 'jti' AND value = $2)",
        )
        .bind(sub)
        .bind(jti.unwrap_or_default())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().any(|(kind, revoked_at)| match kind.as_str() {
            "jti" => jti.is_some(),
            _ => revokes_issued(u64::try_from(*revoked_at).unwrap_or(0), issued_at),
        }))
    }

    /// Records this instance as alive now.
    pub async fn heartbeat(&self, instance: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO instances (id, last_seen) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen",
        )
        .bind(instance)
        .bind(now_millis())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The oldest heartbeat (ms since the epoch) of any instance but `instance`: the next
    /// one that may be taken for dead.
    pub async fn oldest_heartbeat(&self, instance: &str) -> Result<Option<i64>, StoreError> {
        let (oldest,): (Option<i64>,) =
            sqlx::query_as("SELECT MIN(last_seen) FROM instances WHERE id <> $1")
                .bind(instance)
                .fetch_one(&self.pool)
                .await?;
        Ok(oldest)
    }

    /// Forgets an instance, so that its sessions count as orphaned.
    pub async fn forget_instance(&self, instance: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM instances WHERE id = $1")
            .bind(instance)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forgets instances silent since `cutoff` (ms since the epoch), then lists the sessions
    /// no live instance holds.
    pub async fn orphaned_sessions(&self, cutoff: i64) -> Result<Vec<OpenSession>, StoreError> {
        sqlx::query("DELETE FROM instances WHERE last_seen < $1")
            .bind(cutoff)
            .execute(&self.pool)
            .await?;
        let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
            "SELECT id, instance, sub, connected_at FROM sessions
             WHERE instance NOT IN (SELECT id FROM instances)",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, instance, sub, connected_at)| OpenSession {
                id,
                instance,
                sub,
                connected_at,
            })
            .collect())
    }

    pub async fn open_session(&self, session: &OpenSession) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sessions (id, instance, sub, connected_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&session.id)
        .bind(&session.instance)
        .bind(&session.sub)
        .bind(session.connected_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn close_session(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM sessions WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

async fn prepare(pool: &AnyPool, sqlite: bool) -> Result<(), StoreError> {
    if sqlite {
        // Readers do not wait for the writer; the setting stays with the file.
        sqlx::query("PRAGMA journal_mode = WAL")
            .execute(pool)
            .await?;
    }
    MIGRATOR.run(pool).await?;
    Ok(())
}
