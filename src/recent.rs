//! The newest records of each partition of the topics this hub serves, kept in memory so
//! that a socket resuming a moment behind the live stream (every socket of a reconnect
//! storm, after a network blip or a load balancer's restart) is served from here instead
//! of by a Kafka client of its own.
//!
//! The live consumer puts each record here before it fans it out, so every record the live
//! stream has delivered from a partition's `covers_from` up to its newest is here, in
//! offset order: a replay that starts at or after `covers_from` finds all it needs, the
//! records a connection leaves to its replay included (see `replay::Seam`). Anything older
//! is read from Kafka as before.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::registry::Delivery;

/// How long a topic's records are still kept after its last subscriber on this hub left:
/// long enough for the sockets of a storm to come back.
const KEEP: Duration = Duration::from_secs(300);

/// Cheap to clone: the consumer thread and the replays share one.
#[derive(Clone)]
pub struct Recent(Arc<Inner>);

struct Inner {
    /// Records kept per partition; 0 keeps none.
    capacity: usize,
    topics: DashMap<Box<str>, Topic>,
}

struct Topic {
    /// When the topic last had a subscriber here.
    wanted: Instant,
    partitions: HashMap<i32, Partition>,
}

struct Partition {
    /// Every record the live stream delivered at or past this offset is in `records`.
    covers_from: i64,
    records: VecDeque<Arc<Delivery>>,
}

impl Recent {
    pub fn new(capacity: usize) -> Self {
        Recent(Arc::new(Inner {
            capacity,
            topics: DashMap::new(),
        }))
    }

    /// For the consumer, before it delivers a record of `topic`: whether to keep it. A topic
    /// is kept while it has subscribers here and for `KEEP` after; then it is forgotten.
    pub fn keeps(&self, topic: &str, subscribed: bool) -> bool {
        if self.0.capacity == 0 {
            return false;
        }
        if subscribed {
            let mut kept = self.0.topics.entry(topic.into()).or_insert_with(|| Topic {
                wanted: Instant::now(),
                partitions: HashMap::new(),
            });
            kept.wanted = Instant::now();
            return true;
        }
        let expired = match self.0.topics.get(topic) {
            None => return false,
            Some(kept) => kept.wanted.elapsed() > KEEP,
        };
        if expired {
            self.0.topics.remove(topic);
        }
        !expired
    }

    /// For the consumer: keeps the record it is about to deliver, which is newer than every
    /// record kept for its partition.
    pub fn push(&self, record: &Arc<Delivery>) {
        let Some(mut topic) = self.0.topics.get_mut(&*record.topic) else {
            return;
        };
        let partition = topic
            .partitions
            .entry(record.partition)
            .or_insert_with(|| Partition {
                covers_from: record.offset,
                records: VecDeque::new(),
            });
        partition.records.push_back(record.clone());
        if partition.records.len() > self.0.capacity
            && let Some(evicted) = partition.records.pop_front()
        {
            partition.covers_from = evicted.offset + 1;
        }
    }

    /// Every record of the partition at or past `from`, when all of them are kept; with the
    /// offset past the newest kept (or `from`, when none is that new).
    pub fn since(&self, topic: &str, partition: i32, from: i64) -> Option<Since> {
        let topic = self.0.topics.get(topic)?;
        let partition = topic.partitions.get(&partition)?;
        if from < partition.covers_from {
            return None;
        }
        let records = &partition.records;
        let first = records.partition_point(|r| r.offset < from);
        let next = records.back().map_or(from, |r| (r.offset + 1).max(from));
        Some(Since {
            records: records.range(first..).cloned().collect(),
            next,
        })
    }
}

/// What `Recent::since` found.
pub struct Since {
    pub records: Vec<Arc<Delivery>>,
    pub next: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(partition: i32, offset: i64) -> Arc<Delivery> {
        Arc::new(Delivery {
            topic: "t".into(),
            key: None,
            partition,
            offset,
            timestamp: None,
            frame: format!("{offset}").into(),
            ephemeral: false,
        })
    }

    fn offsets(since: Option<Since>) -> Option<(Vec<i64>, i64)> {
        since.map(|s| (s.records.iter().map(|r| r.offset).collect(), s.next))
    }

    #[test]
    fn a_partition_is_covered_from_its_first_kept_record_until_records_are_evicted() {
        let recent = Recent::new(3);
        assert!(recent.keeps("t", true));
        for offset in [10, 11, 13] {
            recent.push(&record(0, offset));
        }
        // Offset 12 is a gap (a transaction marker, say): nothing was delivered there.
        assert_eq!(offsets(recent.since("t", 0, 12)), Some((vec![13], 14)));
        assert_eq!(
            offsets(recent.since("t", 0, 10)),
            Some((vec![10, 11, 13], 14))
        );
        assert_eq!(offsets(recent.since("t", 0, 14)), Some((vec![], 14)));
        // Before the first record kept, the hub cannot tell what Kafka holds.
        assert_eq!(offsets(recent.since("t", 0, 9)), None);
        assert_eq!(offsets(recent.since("t", 1, 10)), None);

        recent.push(&record(0, 14));
        assert_eq!(offsets(recent.since("t", 0, 10)), None, "10 was evicted");
        assert_eq!(
            offsets(recent.since("t", 0, 11)),
            Some((vec![11, 13, 14], 15))
        );
    }

    #[test]
    fn a_topic_is_kept_while_it_has_subscribers_and_nothing_when_capacity_is_zero() {
        let recent = Recent::new(10);
        assert!(!recent.keeps("t", false), "never subscribed");
        recent.push(&record(0, 1));
        assert_eq!(offsets(recent.since("t", 0, 1)), None);
        assert!(recent.keeps("t", true));
        assert!(
            recent.keeps("t", false),
            "kept a while after the last subscriber"
        );

        let none = Recent::new(0);
        assert!(!none.keeps("t", true));
    }
}
