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
    pending: Mutex<Pending>,
    /// Asks for a write before the interval is up (a socket closed).
    soon: Notify,
}

type Positions = HashMap<Owner, BTreeMap<i32, i64>>;

#[derive(Default)]
struct Pending {
    /// Taken since the last write began.
    waiting: Positions,
    /// Being written: read from here until the database has them, since a subscription
    /// starting meanwhile would find them in neither place and start from the end.
    writing: Positions,
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
        let held = pending.waiting.entry(owner(sub, topic, key)).or_default();
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
        // Taken before the database is read: a write that ends in between has its positions
        // either here or there.
        let mut held = BTreeMap::new();
        {
            let pending = self.pending.lock().expect("commits lock");
            let owner = owner(sub, topic, key);
            for offsets in [&pending.writing, &pending.waiting]
                .into_iter()
                .filter_map(|positions| positions.get(&owner))
            {
                merge(&mut held, offsets);
            }
        }
        let mut positions = self.store.committed(sub, topic, key).await?;
        merge(&mut positions, &held);
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
        let taken = {
            let mut pending = self.pending.lock().expect("commits lock");
            let taken = std::mem::take(&mut pending.waiting);
            for (owner, offsets) in &taken {
                merge(pending.writing.entry(owner.clone()).or_default(), offsets);
            }
            taken
        };
        if taken.is_empty() {
            return Ok(0);
        }
        let count = taken.len();
        let written = self.store.commit_many(&taken).await;
        let mut pending = self.pending.lock().expect("commits lock");
        for (owner, offsets) in taken {
            // In the database now, or waiting again.
            if let Some(writing) = pending.writing.get_mut(&owner) {
                writing.retain(|partition, next| offsets.get(partition) < Some(next));
                if writing.is_empty() {
                    pending.writing.remove(&owner);
                }
            }
            if written.is_err() {
                merge(pending.waiting.entry(owner).or_default(), &offsets);
            }
        }
        drop(pending);
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
    use futures_util::FutureExt;

    use super::*;

    /// A subscription from `committed` that starts while a write is under way still finds
    /// the positions: no longer waiting and not yet in the database, they were in neither.
    #[tokio::test]
    async fn positions_being_written_are_read_until_the_database_has_them() {
        let path = std::env::temp_dir().join(format!("commits-{}.sqlite", uuid::Uuid::new_v4()));
        let store = Store::connect(&format!("sqlite://{}?mode=rwc", path.display()), 2)
            .await
            .unwrap();
        let commits = Commits::new(store.clone());
        let read = BTreeMap::from([(0, 3)]);
        commits.record("alice", "notes", "", &read);

        let mut write = std::pin::pin!(commits.write());
        assert!(
            (&mut write).now_or_never().is_none(),
            "the write waits for the database"
        );
        assert_eq!(
            store.committed("alice", "notes", "").await.unwrap(),
            BTreeMap::new()
        );
        assert_eq!(commits.committed("alice", "notes", "").await.unwrap(), read);

        assert_eq!(write.await.unwrap(), 1);
        assert_eq!(store.committed("alice", "notes", "").await.unwrap(), read);
        assert_eq!(commits.committed("alice", "notes", "").await.unwrap(), read);
        store.close().await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }

    #[test]
    fn positions_only_move_forward_whatever_order_commits_come_in() {
        let mut held = BTreeMap::from([(0, 10), (1, 5)]);
        merge(&mut held, &BTreeMap::from([(0, 7), (1, 9), (2, 1)]));
        assert_eq!(held, BTreeMap::from([(0, 10), (1, 9), (2, 1)]));
    }
}
