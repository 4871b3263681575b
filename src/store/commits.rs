//! Read positions written behind: a `commit` is taken in memory, merged with the ones before
//! it, and written to the database every `WSKAFKA_COMMIT_INTERVAL`, when a socket closes and at
//! shutdown. A client that commits after every message it shows (or a hostile one that
//! commits as fast as it can) then costs the database one transaction per interval per hub,
//! not one per request.
//!
//! What a crash may lose: the positions of the last interval. That is safe: positions only
//! move forward (the database keeps the larger), so a lost one means a few messages shown as
//! unread again on the user's next start, never one skipped.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::store::{Owner, Store, StoreError, owner};

pub struct Commits {
    store: Store,
    pending: Mutex<HashMap<Owner, BTreeMap<i32, i64>>>,
    /// Asks for a write before the interval is up (a socket closed).
    soon: Notify,
}

impl Commits {
    pub fn new(store: Store) -> Self {
        Commits {
            store,
            pending: Mutex::default(),
            soon: Notify::new(),
        }
    }

    /// Takes positions to write: each partition's larger next offset wins.
    pub fn record(&self, sub: &str, topic: &str, key: &str, offsets: &BTreeMap<i32, i64>) {
        metrics::commit_taken();
        let mut pending = self.pending.lock().expect("commits lock");
        let held = pending.entry(owner(sub, topic, key)).or_default();
        merge(held, offsets);
    }

    /// The stored positions with those not written yet laid over them, for a subscription
    /// that starts from them on this hub.
    pub async fn committed(
        &self,
        sub: &str,
        topic: &str,
        key: &str,
    ) -> Result<BTreeMap<i32, i64>, StoreError> {
        let mut positions = self.store.committed(sub, topic, key).await?;
        if let Some(held) = self
            .pending
            .lock()
            .expect("commits lock")
            .get(&owner(sub, topic, key))
        {
            merge(&mut positions, held);
        }
        Ok(positions)
    }

    /// A socket closed: what it committed goes to the database now rather than at the end of
    /// the interval.
    pub fn write_soon(&self) {
        self.soon.notify_one();
    }

    /// Writes what is pending in one transaction; on failure it stays pending, merged with
    /// what came meanwhile.
    pub async fn write(&self) -> Result<usize, StoreError> {
        let taken = std::mem::take(&mut *self.pending.lock().expect("commits lock"));
        if taken.is_empty() {
            return Ok(0);
        }
        let count = taken.len();
        let written = self.store.commit_many(&taken).await;
        if written.is_err() {
            let mut pending = self.pending.lock().expect("commits lock");
            for (owner, offsets) in taken {
                merge(pending.entry(owner).or_default(), &offsets);
            }
        }
        written.map(|()| {
            metrics::commits_written(count);
            count
        })
    }

    /// Writes every `interval`, and soon after a socket closes, until `stop`. The last
    /// write is the server's, once every socket has closed.
    pub async fn run(&self, interval: Duration, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
                _ = self.soon.notified() => {}
            }
            if let Err(e) = self.write().await {
                tracing::warn!(error = %e, "cannot write read positions; kept to try again");
            }
        }
    }
}

fn merge(into: &mut BTreeMap<i32, i64>, from: &BTreeMap<i32, i64>) {
    for (&partition, &offset) in from {
        let next = into.entry(partition).or_insert(offset);
        *next = (*next).max(offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_only_move_forward_whatever_order_commits_come_in() {
        let mut held = BTreeMap::from([(0, 10), (1, 5)]);
        merge(&mut held, &BTreeMap::from([(0, 7), (1, 9), (2, 1)]));
        assert_eq!(held, BTreeMap::from([(0, 10), (1, 9), (2, 1)]));
    }
}
