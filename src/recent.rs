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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::memory::Budget;
use crate::registry::Delivery;

/// How long a topic's records are still kept after its last subscriber on this hub left:
/// long enough for the sockets of a storm to come back. The consumer keeps fetching a topic
/// as long by default (see `kafka::consumer`'s interest), for the same storm.
const KEEP: Duration = Duration::from_secs(300);

/// Cheap to clone: the consumer thread and the replays share one. One lock for all topics:
/// the bound on bytes is for all of them together, and the oldest record kept anywhere is
/// the first dropped. Only the consumer thread writes, and a reader holds it to clone
/// pointers.
#[derive(Clone)]
pub struct Recent(Arc<Mutex<Cache>>);

/// How much the recent records may hold.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Records kept per partition; 0 keeps none.
    pub records: usize,
    /// Bytes kept across every partition (see `Delivery::cost`).
    pub bytes: usize,
    /// A record costing more is not kept: the partition is then covered only past it.
    pub largest: usize,
}

impl Bounds {
    /// `records` per partition, and the recent records' share of the memory budget.
    pub fn new(records: usize, budget: Budget) -> Self {
        Bounds {
            records,
            bytes: budget.recent(),
            largest: budget.recent_record(),
        }
    }
}

struct Cache {
    bounds: Bounds,
    topics: HashMap<Arc<str>, Topic>,
    /// What every kept record costs together.
    bytes: usize,
    /// Counts records as they are kept, so that `oldest` can order them.
    kept: u64,
    /// The oldest kept record of each partition that has one, by when it was kept: the
    /// first is the oldest kept anywhere, the next to drop when the bytes run out.
    oldest: BTreeMap<u64, (Arc<str>, i32)>,
}

struct Topic {
    /// When the topic last had a subscriber here.
    wanted: Instant,
    partitions: HashMap<i32, Partition>,
}

struct Partition {
    /// Every record the live stream delivered at or past this offset is in `records`.
    covers_from: i64,
    /// With when each was kept (see `Cache::oldest`).
    records: VecDeque<(u64, Arc<Delivery>)>,
}

impl Recent {
    pub fn new(bounds: Bounds) -> Self {
        Recent(Arc::new(Mutex::new(Cache {
            bounds,
            topics: HashMap::new(),
            bytes: 0,
            kept: 0,
            oldest: BTreeMap::new(),
        })))
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.0.lock().expect("recent records lock")
    }

    /// What the kept records cost together (see `Delivery::cost`).
    pub fn bytes(&self) -> usize {
        self.cache().bytes
    }

    /// For the consumer, before it delivers a record of `topic`: whether to keep it. A topic
    /// is kept while it has subscribers here and for `KEEP` after; then it is forgotten.
    pub fn keeps(&self, topic: &str, subscribed: bool) -> bool {
        let mut cache = self.cache();
        if cache.bounds.records == 0 || cache.bounds.bytes == 0 {
            return false;
        }
        if subscribed {
            match cache.topics.get_mut(topic) {
                Some(kept) => kept.wanted = Instant::now(),
                None => {
                    let kept = Topic {
                        wanted: Instant::now(),
                        partitions: HashMap::new(),
                    };
                    cache.topics.insert(topic.into(), kept);
                }
            }
            return true;
        }
        let expired = match cache.topics.get(topic) {
            None => return false,
            Some(kept) => kept.wanted.elapsed() > KEEP,
        };
        if expired {
            cache.forget(topic);
        }
        !expired
    }

    /// For the consumer, when it stops fetching `topic`: what it kept would otherwise cover
    /// a stretch of the partition the live stream then skips.
    pub fn forget(&self, topic: &str) {
        self.cache().forget(topic);
    }

    /// For the consumer: keeps the record it is about to deliver, which is newer than every
    /// record kept for its partition, dropping the oldest kept anywhere while the bytes are
    /// over their bound.
    pub fn push(&self, record: &Arc<Delivery>) {
        let mut cache = self.cache();
        let cache = &mut *cache;
        let Some(name) = cache
            .topics
            .get_key_value(&*record.topic)
            .map(|(n, _)| n.clone())
        else {
            return;
        };
        let topic = cache.topics.get_mut(&name).expect("just found");
        let partition = topic
            .partitions
            .entry(record.partition)
            .or_insert_with(|| Partition {
                covers_from: record.offset,
                records: VecDeque::new(),
            });
        let cost = record.cost();
        if cost > cache.bounds.largest {
            // Not kept, so nothing before it can be served from here either.
            while let Some((kept, dropped)) = partition.records.pop_front() {
                cache.bytes -= dropped.cost();
                cache.oldest.remove(&kept);
            }
            partition.covers_from = record.offset + 1;
            return;
        }
        cache.kept += 1;
        if partition.records.is_empty() {
            cache
                .oldest
                .insert(cache.kept, (name.clone(), record.partition));
        }
        partition.records.push_back((cache.kept, record.clone()));
        cache.bytes += cost;
        if partition.records.len() > cache.bounds.records {
            cache.drop_oldest(&name, record.partition);
        }
        while cache.bytes > cache.bounds.bytes {
            let Some((_, (topic, partition))) = cache.oldest.first_key_value() else {
                break;
            };
            let (topic, partition) = (topic.clone(), *partition);
            cache.drop_oldest(&topic, partition);
        }
    }

    /// Every record of the partition at or past `from`, when all of them are kept; with the
    /// offset past the newest kept (or `from`, when none is that new).
    pub fn since(&self, topic: &str, partition: i32, from: i64) -> Option<Since> {
        let cache = self.cache();
        let partition = cache.topics.get(topic)?.partitions.get(&partition)?;
        if from < partition.covers_from {
            return None;
        }
        let records = &partition.records;
        let first = records.partition_point(|(_, r)| r.offset < from);
        let next = records
            .back()
            .map_or(from, |(_, r)| (r.offset + 1).max(from));
        Some(Since {
            records: records.range(first..).map(|(_, r)| r.clone()).collect(),
            next,
        })
    }
}

impl Cache {
    /// Drops the oldest record kept of one partition, which is then covered past it.
    fn drop_oldest(&mut self, topic: &Arc<str>, partition: i32) {
        let Some(kept) = self
            .topics
            .get_mut(topic)
            .and_then(|t| t.partitions.get_mut(&partition))
        else {
            return;
        };
        let Some((seq, dropped)) = kept.records.pop_front() else {
            return;
        };
        kept.covers_from = dropped.offset + 1;
        self.bytes -= dropped.cost();
        self.oldest.remove(&seq);
        if let Some((next, _)) = kept.records.front() {
            self.oldest.insert(*next, (topic.clone(), partition));
        }
    }

    fn forget(&mut self, topic: &str) {
        let Some(forgotten) = self.topics.remove(topic) else {
            return;
        };
        for partition in forgotten.partitions.into_values() {
            if let Some((seq, _)) = partition.records.front() {
                self.oldest.remove(seq);
            }
            self.bytes -= partition
                .records
                .iter()
                .map(|(_, r)| r.cost())
                .sum::<usize>();
        }
    }
}

#[cfg(test)]
impl Recent {
    fn covers_from(&self, topic: &str, partition: i32) -> Option<i64> {
        let cache = self.cache();
        Some(
            cache
                .topics
                .get(topic)?
                .partitions
                .get(&partition)?
                .covers_from,
        )
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
        })
    }

    fn records(records: usize) -> Bounds {
        Bounds {
            records,
            bytes: usize::MAX,
            largest: usize::MAX,
        }
    }

    fn offsets(since: Option<Since>) -> Option<(Vec<i64>, i64)> {
        since.map(|s| (s.records.iter().map(|r| r.offset).collect(), s.next))
    }

    #[test]
    fn a_partition_is_covered_from_its_first_kept_record_until_records_are_evicted() {
        let recent = Recent::new(records(3));
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
        let recent = Recent::new(records(10));
        assert!(!recent.keeps("t", false), "never subscribed");
        recent.push(&record(0, 1));
        assert_eq!(offsets(recent.since("t", 0, 1)), None);
        assert!(recent.keeps("t", true));
        assert!(
            recent.keeps("t", false),
            "kept a while after the last subscriber"
        );

        let none = Recent::new(records(0));
        assert!(!none.keeps("t", true));
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        const TOPICS: [&str; 2] = ["a", "b"];

        fn sized(topic: &str, partition: i32, offset: i64, payload: usize) -> Arc<Delivery> {
            Arc::new(Delivery {
                topic: topic.into(),
                key: None,
                partition,
                offset,
                timestamp: None,
                frame: "x".repeat(payload).into(),
            })
        }

        proptest! {
            /// Whatever the sizes and the order of the records kept: every record delivered
            /// at or past a partition's `covers_from` is kept, in order, none before it is;
            /// the bytes counted are the bytes of the records kept, within the bound, and
            /// the newest record is kept unless it is over the largest size.
            #[test]
            fn covers_from_and_the_bytes_agree_with_the_records_kept(
                records in 1usize..6,
                budget in 200usize..3_000,
                largest in 100usize..1_500,
                pushes in proptest::collection::vec((0..2usize, 0..3i32, 1..3i64, 0..1_200usize), 1..120),
            ) {
                let recent = Recent::new(Bounds { records, bytes: budget, largest });
                // Every record delivered, per partition, as (offset, record).
                let mut delivered: HashMap<(usize, i32), Vec<Arc<Delivery>>> = HashMap::new();
                let mut next: HashMap<(usize, i32), i64> = HashMap::new();
                for (topic, partition, gap, payload) in pushes {
                    prop_assert!(recent.keeps(TOPICS[topic], true));
                    let offset = next.entry((topic, partition)).or_insert(0);
                    *offset += gap;
                    let record = sized(TOPICS[topic], partition, *offset, payload);
                    recent.push(&record);
                    delivered.entry((topic, partition)).or_default().push(record.clone());

                    let mut held = 0;
                    for ((t, p), all) in &delivered {
                        let covers_from = recent.covers_from(TOPICS[*t], *p).expect("a partition delivered to is known");
                        let kept = recent.since(TOPICS[*t], *p, covers_from).expect("covered from covers_from");
                        let expected: Vec<i64> = all.iter().map(|r| r.offset).filter(|&o| o >= covers_from).collect();
                        let got: Vec<i64> = kept.records.iter().map(|r| r.offset).collect();
                        prop_assert_eq!(&got, &expected, "partition {}/{} from {}", t, p, covers_from);
                        prop_assert!(got.len() <= records);
                        if covers_from > all[0].offset {
                            prop_assert!(recent.since(TOPICS[*t], *p, covers_from - 1).is_none());
                        }
                        held += kept.records.iter().map(|r| r.cost()).sum::<usize>();
                    }
                    prop_assert_eq!(recent.bytes(), held);
                    prop_assert!(held <= budget);
                    let newest = recent.since(TOPICS[topic], partition, record.offset);
                    let kept_newest = newest.is_some_and(|s| s.records.len() == 1);
                    prop_assert_eq!(kept_newest, record.cost() <= largest.min(budget));
                }
            }
        }
    }
}
