//! Wall-clock time as the protocol and the database count it: milliseconds (or seconds)
//! since the Unix epoch, and deadlines for tokio's timers.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the epoch; 0 for a time before it.
pub fn unix_millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub fn now_millis() -> i64 {
    unix_millis(SystemTime::now())
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The tokio instant of a wall-clock deadline: now, when it has passed.
pub fn instant_at(deadline: SystemTime) -> tokio::time::Instant {
    let left = deadline
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    tokio::time::Instant::now() + left
}
