//! What every integration test stands on: a real Apache Kafka broker (the one `scripts/test`
//! starts for the whole suite, or one per test binary when a test runs on its own), the real
//! `wskafka` binary on a random port, a WebSocket client, and an rdkafka client that checks
//! Kafka independently of the hub.

mod browser;
mod client;
mod database;
mod hub;
mod kafka;
mod network;
mod nginx;
mod sse;
mod tokens;

pub use browser::*;
pub use client::*;
pub use database::*;
pub use hub::*;
pub use kafka::*;
pub use network::*;
pub use nginx::*;
pub use sse::*;
pub use tokens::*;

use std::time::Duration;

pub const SECRET: &str = "integration-test-secret-of-32-bytes";
/// Upper bound on any single wait; a test that hits it has failed.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Polls `check` until it holds, and fails the test when it still does not after
/// `PATIENCE`: for state that another process shows only when asked (an HTTP endpoint, the
/// broker), where there is no event to await.
pub async fn eventually(what: impl std::fmt::Display, check: impl AsyncFnMut() -> bool) {
    eventually_within(PATIENCE, what, check).await
}

/// `eventually` for what waits on a bound of its own first (a consumer group's session),
/// with `limit` instead of `PATIENCE`.
pub async fn eventually_within(
    limit: Duration,
    what: impl std::fmt::Display,
    mut check: impl AsyncFnMut() -> bool,
) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never came: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Milliseconds since the epoch, as the hub's records and heartbeats count them.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Seconds since the epoch, as tokens count them.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
