//! One socket's subscriptions, driven by the records its queue brings (live) and by what its
//! replays report, and emitting the frames to write. Nothing here does I/O: the connection
//! task feeds it, and the property test below drives it through every interleaving.
//!
//! A subscription follows a whole topic, or one key of it (a room): a socket may follow
//! many keys of one topic, each with its own positions, or the whole topic, not both (the
//! whole topic holds every key's records already).
//!
//! What it guarantees, per subscription and partition: each record is written once, in
//! offset order, from the position `subscribed` named on, with no gap where a replay meets
//! the live stream; and `lagged` names exactly where the next session resumes (one past the
//! last record written). Every subscription remembers the next offset it writes per
//! partition; that one map drops what was already written (at a replay's seam, or a record
//! queued before a resubscribe) and is what `lagged` reports.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use tokio_util::sync::DropGuard;

use crate::metrics;
use crate::protocol::cursor::Resume;
use crate::protocol::{Reply, RequestId};
use crate::registry::{Delivery, Extras, Filter, Outbound};
use crate::replay::{Event, ReplayError, Report, Seam};

/// A frame to write, with the timestamp of the record it carries.
#[derive(Debug)]
pub struct Outgoing {
    pub frame: Utf8Bytes,
    pub timestamp: Option<i64>,
}

impl From<Reply> for Outgoing {
    fn from(reply: Reply) -> Self {
        Outgoing {
            frame: reply.to_json().into(),
            timestamp: None,
        }
    }
}

pub struct Subscriptions {
    /// Boxed: a map holds room for several entries from its first, and a socket's first
    /// topic is most sockets' only one.
    by_topic: HashMap<String, Box<TopicSubscriptions>>,
    /// Tells a subscription apart from an earlier one to the same topic and key.
    generation: u64,
    /// Subscriptions held, keys counted one by one.
    count: usize,
    /// Live records held back across subscriptions (see `Replaying::stash`).
    stashed: usize,
    /// Held-back records past which the socket is lagging.
    stash_limit: usize,
    /// The bytes of the live records held back (`Delivery::cost`).
    stashed_bytes: usize,
    /// Held-back bytes past which the socket is lagging.
    stash_bytes: usize,
}

#[derive(Default)]
struct TopicSubscriptions {
    /// The subscription to every key; there are no keyed ones beside it.
    whole: Option<Subscription>,
    /// Ordered rather than hashed: a `HashMap` carries its 16-byte hasher state, and this is
    /// held per topic by every socket, most of which follow no key.
    keyed: BTreeMap<Box<[u8]>, Subscription>,
}

impl TopicSubscriptions {
    fn get_mut(&mut self, key: Option<&[u8]>) -> Option<&mut Subscription> {
        match key {
            None => self.whole.as_mut(),
            Some(key) => self.keyed.get_mut(key),
        }
    }

    /// The subscription a record of this key goes to.
    fn for_record(&mut self, key: Option<&[u8]>) -> Option<&mut Subscription> {
        match &mut self.whole {
            Some(whole) => Some(whole),
            None => self.keyed.get_mut(key?),
        }
    }

    fn iter(&self) -> impl Iterator<Item = (Option<&str>, &Subscription)> {
        let whole = self.whole.iter().map(|s| (None, s));
        let keyed = self.keyed.iter().map(|(key, s)| {
            (
                Some(std::str::from_utf8(key).expect("keys come from JSON")),
                s,
            )
        });
        whole.chain(keyed)
    }

    fn is_empty(&self) -> bool {
        self.whole.is_none() && self.keyed.is_empty()
    }
}

struct Subscription {
    generation: u64,
    filter: Arc<Filter>,
    /// Where it started, as `subscribed` said: a history page asked to end there meets it.
    /// A slice rather than a map: read once in a while, held by every subscription, and a
    /// map's node has room for eleven partitions.
    start: Option<Box<[(i32, i64)]>>,
    /// The next offset to write, per partition.
    next: Next,
    /// Boxed: few subscriptions replay, and every subscription would carry its size.
    replay: Option<Box<Replaying>>,
    /// What it asked for besides records, and where a replay was asked to start: what a
    /// resume cursor needs (see `resume`).
    extras: Extras,
    asked: Option<BTreeMap<i32, i64>>,
}

struct Replaying {
    /// The subscribe request, answered when the replay has resolved where it starts.
    id: Option<RequestId>,
    started: bool,
    /// Partitions whose replay this socket has not seen finish yet.
    pending: BTreeSet<i32>,
    /// Decides with the replay which live records it delivers instead.
    seam: Arc<Seam>,
    /// Live records the replay left to the live stream that came before the replay's own
    /// last records of their partition (or before `started`), in arrival order.
    stash: VecDeque<Arc<Delivery>>,
    /// Stops the replay when the subscription ends.
    _stop: DropGuard,
}

/// More live records are held back than the send queue allows: the socket is lagging.
#[derive(Debug, PartialEq, Eq)]
pub struct Lagging;

/// A replay that failed, which ended its subscription: the connection unsubscribes it and
/// answers `id` with the error.
pub struct Failed {
    pub topic: Arc<str>,
    pub key: Option<Arc<str>>,
    pub id: Option<RequestId>,
    pub filter: Arc<Filter>,
    pub error: ReplayError,
}

impl Subscriptions {
    pub fn new(stash_limit: usize, stash_bytes: usize) -> Self {
        Subscriptions {
            by_topic: HashMap::new(),
            generation: 0,
            count: 0,
            stashed: 0,
            stash_limit,
            stashed_bytes: 0,
            stash_bytes,
        }
    }

    /// Subscriptions held, each key of a topic counted.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Every subscription: its topic, its key (none: the whole topic) and its filter.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&str>, &Arc<Filter>)> {
        self.by_topic.iter().flat_map(|(topic, subscriptions)| {
            subscriptions
                .iter()
                .map(move |(key, s)| (topic.as_str(), key, &s.filter))
        })
    }

    /// The generation the next subscription gets, which its replay's reports carry.
    pub fn next_generation(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    /// A subscription written live from `live` on (a `latest` start).
    pub fn insert_live(
        &mut self,
        topic: &str,
        key: Option<&str>,
        filter: Arc<Filter>,
        live: BTreeMap<i32, i64>,
    ) {
        let generation = self.next_generation();
        self.insert(topic, key, generation, filter, live, None);
    }

    /// A subscription whose replay runs, with the generation `next_generation` gave it;
    /// `id` is answered once the replay has resolved where it starts.
    #[allow(clippy::too_many_arguments)]
    pub fn insert_replaying(
        &mut self,
        topic: &str,
        key: Option<&str>,
        generation: u64,
        filter: Arc<Filter>,
        id: Option<RequestId>,
        seam: Arc<Seam>,
        stop: DropGuard,
    ) {
        let replay = Replaying {
            id,
            started: false,
            pending: BTreeSet::new(),
            seam,
            stash: VecDeque::new(),
            _stop: stop,
        };
        let replay = Some(Box::new(replay));
        self.insert(topic, key, generation, filter, BTreeMap::new(), replay);
    }

    /// Files a subscription; the caller has ended those it replaces (see `replaced_by`).
    fn insert(
        &mut self,
        topic: &str,
        key: Option<&str>,
        generation: u64,
        filter: Arc<Filter>,
        next: BTreeMap<i32, i64>,
        replay: Option<Box<Replaying>>,
    ) {
        let next = Next::from(next);
        let subscription = Subscription {
            generation,
            filter,
            start: replay.is_none().then(|| next.positions()),
            next,
            replay,
            extras: Extras::default(),
            asked: None,
        };
        let subscriptions = self.by_topic.entry(topic.to_string()).or_default();
        let old = match key {
            None => subscriptions.whole.replace(subscription),
            Some(key) => subscriptions
                .keyed
                .insert(key.as_bytes().into(), subscription),
        };
        self.count += 1;
        if let Some(old) = old {
            self.forget(old);
        }
    }

    /// The subscriptions a new one to `key` of `topic` replaces: the same one, and the whole
    /// topic's for a key, or every key's for the whole topic.
    pub fn replaced_by(&self, topic: &str, key: Option<&str>) -> Vec<Option<String>> {
        let Some(subscriptions) = self.by_topic.get(topic) else {
            return Vec::new();
        };
        subscriptions
            .iter()
            .filter(|(held, _)| key.is_none() || held.is_none() || *held == key)
            .map(|(held, _)| held.map(str::to_string))
            .collect()
    }

    /// Where the subscription to `key` of `topic` started, once `subscribed` said so: per
    /// partition, the first offset it delivers; unlisted partitions it delivers from their
    /// first record.
    pub fn started_at(&self, topic: &str, key: Option<&str>) -> Option<BTreeMap<i32, i64>> {
        let subscriptions = self.by_topic.get(topic)?;
        let subscription = match key {
            None => subscriptions.whole.as_ref(),
            Some(key) => subscriptions.keyed.get(key.as_bytes()),
        }?;
        Some(subscription.start.as_deref()?.iter().copied().collect())
    }

    /// Ends a subscription; returns its filter, under whose key the registry filed it.
    pub fn remove(&mut self, topic: &str, key: Option<&str>) -> Option<Arc<Filter>> {
        let subscriptions = self.by_topic.get_mut(topic)?;
        let removed = match key {
            None => subscriptions.whole.take(),
            Some(key) => subscriptions.keyed.remove(key.as_bytes()),
        }?;
        if subscriptions.is_empty() {
            self.by_topic.remove(topic);
        }
        let filter = removed.filter.clone();
        self.forget(removed);
        Some(filter)
    }

    fn forget(&mut self, subscription: Subscription) {
        self.count -= 1;
        if let Some(replay) = subscription.replay {
            self.stashed -= replay.stash.len();
            self.stashed_bytes -= replay.stash.iter().map(|r| r.cost()).sum::<usize>();
        }
    }

    /// A frame from the socket's queue: a record of the live stream, or a frame outside it.
    pub fn on_live(&mut self, item: Outbound, out: &mut Vec<Outgoing>) -> Result<(), Lagging> {
        let record = match item {
            Outbound::Record(record) => record,
            Outbound::Room(room) => {
                // No position: written as it comes, replay or not, while the socket still
                // holds the room's subscription.
                let topic = self.by_topic.get_mut(&*room.topic).map(|t| &mut **t);
                let held = |t: &mut TopicSubscriptions| match room.key.as_deref() {
                    Some(key) => t.for_record(Some(key)).is_some(),
                    None => true,
                };
                if topic.is_some_and(held) {
                    out.push(Outgoing {
                        frame: room.frame.clone(),
                        timestamp: None,
                    });
                }
                return Ok(());
            }
            Outbound::Socket(frame) => {
                out.push(Outgoing {
                    frame: Arc::unwrap_or_clone(frame),
                    timestamp: None,
                });
                return Ok(());
            }
        };
        let Some(subscription) = self
            .by_topic
            .get_mut(&*record.topic)
            .and_then(|t| t.for_record(record.key.as_deref()))
        else {
            return Ok(()); // unsubscribed since it was queued
        };
        let Some(replay) = &mut subscription.replay else {
            write(&mut subscription.next, &record, out);
            return Ok(());
        };
        if replay.seam.leave_to_replay(record.partition, record.offset) {
            return Ok(());
        }
        if replay.started && !replay.pending.contains(&record.partition) {
            write(&mut subscription.next, &record, out);
            return Ok(());
        }
        let cost = record.cost();
        self.stashed_bytes += cost;
        replay.stash.push_back(record);
        self.stashed += 1;
        if self.stashed_bytes > self.stash_bytes {
            if self.stashed_bytes - cost <= self.stash_bytes {
                metrics::lagged_for_bytes();
            }
            return Err(Lagging);
        }
        if self.stashed > self.stash_limit {
            return Err(Lagging);
        }
        Ok(())
    }

    /// What a replay reported. A failure ends the subscription and is handed back.
    pub fn on_report(&mut self, report: Report, out: &mut Vec<Outgoing>) -> Option<Failed> {
        let Report {
            topic,
            key,
            generation,
            event,
            ..
        } = report;
        let subscription = self
            .by_topic
            .get_mut(&*topic)
            .and_then(|t| t.get_mut(key.as_deref().map(str::as_bytes)))
            .filter(|s| s.generation == generation)?; // a replaced or ended one's leftovers
        let released = match event {
            Event::Started {
                starts,
                lost,
                waiting,
                replaying,
            } => {
                let replay = subscription.replay.as_mut()?;
                replay.started = true;
                replay.pending = replaying;
                let subscribed = Reply::Subscribed {
                    id: replay.id.take(),
                    topic: topic.to_string(),
                    key: key.as_deref().map(str::to_string),
                    partitions: starts.clone(),
                    lost,
                    waiting,
                };
                subscription.next = starts.into();
                subscription.start = Some(subscription.next.positions());
                out.push(subscribed.into());
                subscription.release(None, out)
            }
            Event::Record(record) => {
                write(&mut subscription.next, &record, out);
                (0, 0)
            }
            Event::Done(partition) => {
                if let Some(replay) = &mut subscription.replay {
                    replay.pending.remove(&partition);
                }
                subscription.release(Some(partition), out)
            }
            Event::Failed(error) => {
                let id = subscription.replay.as_mut().and_then(|r| r.id.take());
                let filter = self.remove(&topic, key.as_deref())?;
                return Some(Failed {
                    topic,
                    key,
                    id,
                    filter,
                    error,
                });
            }
        };
        self.stashed -= released.0;
        self.stashed_bytes -= released.1;
        None
    }

    /// Notes what the subscription to `key` of `topic` asked for besides records, and the
    /// offsets its replay was asked to start from (a `from.offsets` start), for `resume`.
    pub fn remember(
        &mut self,
        topic: &str,
        key: Option<&str>,
        extras: Extras,
        asked: Option<BTreeMap<i32, i64>>,
    ) {
        let held = self.by_topic.get_mut(topic);
        if let Some(s) = held.and_then(|t| t.get_mut(key.map(str::as_bytes))) {
            s.extras = extras;
            s.asked = asked;
        }
    }

    /// Where a new connection takes up each subscription after the frames written so far:
    /// the next offset per partition not written, or for a replay that has not said
    /// `subscribed` yet the offsets it was asked to start from. A replay from another start
    /// that has not said `subscribed` yet is left out: it is asked again as it was made.
    pub fn resume(&self) -> Vec<Resume> {
        let mut resumes = Vec::with_capacity(self.count);
        for (topic, subscriptions) in &self.by_topic {
            for (key, s) in subscriptions.iter() {
                let next = match &s.replay {
                    Some(replay) if !replay.started => match &s.asked {
                        Some(asked) => asked.clone(),
                        None => continue,
                    },
                    _ => s.next.to_map(),
                };
                resumes.push(Resume {
                    topic: topic.clone(),
                    key: key.map(str::to_string),
                    next,
                    headers: s.filter.headers.iter().cloned().collect(),
                    presence: s.extras.presence,
                    signals: s.extras.signals,
                });
            }
        }
        resumes
    }

    /// Where to resume each subscription: the next offset per partition not written. A
    /// subscription whose replay had not resolved its start yet is left out: it resumes
    /// with the request it was made with.
    pub fn lagged(&self) -> Reply {
        let mut topics = BTreeMap::new();
        let mut keys: BTreeMap<String, BTreeMap<String, BTreeMap<i32, i64>>> = BTreeMap::new();
        for (topic, subscriptions) in &self.by_topic {
            for (key, s) in subscriptions.iter() {
                if s.replay.as_ref().is_some_and(|r| !r.started) {
                    continue;
                }
                match key {
                    None => {
                        topics.insert(topic.clone(), s.next.to_map());
                    }
                    Some(key) => {
                        let topic = keys.entry(topic.clone()).or_default();
                        topic.insert(key.to_string(), s.next.to_map());
                    }
                }
            }
        }
        Reply::Lagged { topics, keys }
    }
}

impl Subscription {
    /// Writes the held live records of `partition`, or of every partition no longer
    /// pending when `None`; returns how many left the stash, and their bytes.
    fn release(&mut self, partition: Option<i32>, out: &mut Vec<Outgoing>) -> (usize, usize) {
        let Some(replay) = &mut self.replay else {
            return (0, 0);
        };
        let mut bytes = 0;
        let before = replay.stash.len();
        let next = &mut self.next;
        let pending = &replay.pending;
        replay.stash.retain(|record| {
            let release = match partition {
                Some(p) => record.partition == p,
                None => !pending.contains(&record.partition),
            };
            if release {
                bytes += record.cost();
                write(next, record, out);
            }
            !release
        });
        let released = before - replay.stash.len();
        if replay.started && replay.pending.is_empty() {
            self.replay = None;
        }
        (released, bytes)
    }
}

/// The next offset per partition, in partition order: a vector the size of a topic's few
/// partitions, where a map's first node (144 bytes) would be held by every subscription.
#[derive(Debug, Clone, Default)]
struct Next(Vec<(i32, i64)>);

impl Next {
    fn get(&self, partition: i32) -> Option<i64> {
        let at = self.0.binary_search_by_key(&partition, |&(p, _)| p).ok()?;
        Some(self.0[at].1)
    }

    fn set(&mut self, partition: i32, offset: i64) {
        match self.0.binary_search_by_key(&partition, |&(p, _)| p) {
            Ok(at) => self.0[at].1 = offset,
            Err(at) => self.0.insert(at, (partition, offset)),
        }
    }

    /// Where it stands, as `Subscription::start` keeps it.
    fn positions(&self) -> Box<[(i32, i64)]> {
        self.0.as_slice().into()
    }

    fn to_map(&self) -> BTreeMap<i32, i64> {
        self.0.iter().copied().collect()
    }
}

impl From<BTreeMap<i32, i64>> for Next {
    fn from(map: BTreeMap<i32, i64>) -> Self {
        Next(map.into_iter().collect())
    }
}

/// Queues `record` unless this subscription already wrote it.
fn write(next: &mut Next, record: &Delivery, out: &mut Vec<Outgoing>) {
    if next
        .get(record.partition)
        .is_some_and(|n| record.offset < n)
    {
        return;
    }
    next.set(record.partition, record.offset + 1);
    out.push(Outgoing {
        frame: record.frame.clone(),
        timestamp: record.timestamp,
    });
}

#[cfg(test)]
mod tests {
    //! The socket side of a resume and the replay side (`replay::Seam` and `replay::plan`,
    //! stepped the way `replay::replay` steps them) run against a model of a Kafka topic:
    //! partitions whose offsets have gaps (transaction markers, compaction), records appended
    //! while the replay runs, and a live stream that started somewhere in each partition.

    use std::collections::{BTreeMap, VecDeque};

    use proptest::prelude::*;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::protocol::Start;
    use crate::replay::seam::plan;

    const TOPIC: &str = "t";

    /// One partition of the model: the offsets that hold records, and the end (the high
    /// watermark), which can lie past the last record.
    #[derive(Debug, Default, Clone)]
    struct Log {
        records: Vec<i64>,
        end: i64,
    }

    impl Log {
        fn append(&mut self, markers_before: i64) {
            let offset = self.end + markers_before;
            self.records.push(offset);
            self.end = offset + 1;
        }
    }

    fn delivery(partition: i32, offset: i64) -> Arc<Delivery> {
        Arc::new(Delivery {
            topic: TOPIC.into(),
            key: None,
            partition,
            offset,
            timestamp: None,
            frame: format!("{partition}:{offset}").into(),
        })
    }

    /// A replay as `replay::replay` runs one: plan under the seam, then read each planned
    /// partition from its start, asking the seam what to deliver and when it is finished.
    /// Like a Kafka consumer, it sees each partition as of its last fetch, which can be
    /// older than what the live stream has already delivered.
    struct ModelReplay {
        /// Per partition still read, the next offset to read.
        reading: Option<BTreeMap<i32, i64>>,
        /// Per partition, the end as of the last fetch.
        fetched: BTreeMap<i32, i64>,
        reports: VecDeque<Report>,
    }

    impl ModelReplay {
        fn report(&mut self, event: Event) {
            self.reports.push_back(Report {
                topic: TOPIC.into(),
                key: None,
                room: None,
                generation: 1,
                event,
            });
        }

        /// One poll of the replay's consumer; false when it had nothing to do.
        fn step(
            &mut self,
            seam: &Seam,
            logs: &[Log],
            starts: &BTreeMap<i32, i64>,
            pick: usize,
        ) -> bool {
            let Some(reading) = &mut self.reading else {
                let watermarks: BTreeMap<i32, (i64, i64)> = logs
                    .iter()
                    .zip(0..)
                    .map(|(log, p)| (p, (0, log.end)))
                    .collect();
                let from = Start::Offsets(starts.clone());
                let plan = seam.plan(|live, dropped| {
                    plan(
                        &from,
                        &watermarks,
                        &BTreeMap::new(),
                        live,
                        dropped,
                        1_000_000,
                    )
                });
                let reading: BTreeMap<i32, i64> = plan
                    .ranges
                    .iter()
                    .map(|(&p, &(start, _))| (p, start))
                    .collect();
                let replaying = reading.keys().copied().collect();
                self.reading = Some(reading);
                self.fetched = watermarks.iter().map(|(&p, &(_, end))| (p, end)).collect();
                self.report(Event::Started {
                    starts: plan.starts,
                    lost: plan.lost,
                    waiting: None,
                    replaying,
                });
                return true;
            };
            let Some((&partition, &read)) = reading.iter().nth(pick % reading.len().max(1)) else {
                return false;
            };
            let log = &logs[partition as usize];
            let fetched = self.fetched.get_mut(&partition).unwrap();
            if pick.is_multiple_of(3) && *fetched < log.end {
                *fetched = log.end;
                return true;
            }
            let fetched = *fetched;
            let record = log
                .records
                .iter()
                .find(|&&o| o >= read && o < fetched)
                .copied();
            let finished = match record {
                Some(offset) => {
                    reading.insert(partition, offset + 1);
                    let (deliver, finished) = seam.replayed(partition, offset);
                    if deliver {
                        self.report(Event::Record(delivery(partition, offset)));
                    }
                    finished
                }
                // The end of the partition, as Kafka reports it.
                None => seam.reached_end(partition, read),
            };
            if finished {
                self.reading.as_mut().unwrap().remove(&partition);
                self.report(Event::Done(partition));
            }
            record.is_some() || finished
        }
    }

    /// The socket's frames so far: what `subscribed` said and the records, in order.
    #[derive(Default, Debug)]
    struct Written {
        subscribed: Option<BTreeMap<i32, i64>>,
        records: BTreeMap<i32, Vec<i64>>,
    }

    impl Written {
        fn take(&mut self, out: &mut Vec<Outgoing>) {
            for frame in out.drain(..) {
                if let Ok(reply) = serde_json::from_str::<serde_json::Value>(&frame.frame) {
                    assert_eq!(reply["type"], "subscribed", "{reply}");
                    assert!(self.subscribed.is_none(), "subscribed twice");
                    self.subscribed =
                        Some(serde_json::from_value(reply["partitions"].clone()).unwrap());
                    continue;
                }
                assert!(
                    self.subscribed.is_some(),
                    "a record before `subscribed`: {}",
                    frame.frame
                );
                let (p, o) = frame.frame.split_once(':').unwrap();
                let (p, o): (i32, i64) = (p.parse().unwrap(), o.parse().unwrap());
                let offsets = self.records.entry(p).or_default();
                assert!(
                    offsets.last().is_none_or(|&last| o > last),
                    "partition {p}: {o} written after {offsets:?}"
                );
                offsets.push(o);
            }
        }

        /// What must have been written from partition `p`: every record from the start
        /// `subscribed` named, up to `until`.
        fn expected(&self, log: &Log, p: i32, until: i64) -> Vec<i64> {
            let start = self.subscribed.as_ref().unwrap()[&p];
            log.records
                .iter()
                .copied()
                .filter(|&o| o >= start && o < until)
                .collect()
        }
    }

    fn keyed(partition: i32, offset: i64, key: &str) -> Arc<Delivery> {
        Arc::new(Delivery {
            topic: TOPIC.into(),
            key: Some(key.as_bytes().into()),
            partition,
            offset,
            timestamp: None,
            frame: format!("{partition}:{offset}").into(),
        })
    }

    #[test]
    fn rooms_of_one_topic_are_subscriptions_of_their_own() {
        let mut subscriptions = Subscriptions::new(usize::MAX, usize::MAX);
        let filter = Arc::new(Filter::default());
        let live = BTreeMap::from([(0, 10)]);
        for room in ["a", "b"] {
            subscriptions.insert_live(TOPIC, Some(room), filter.clone(), live.clone());
        }
        assert_eq!(subscriptions.count(), 2);
        let mut out = Vec::new();
        for (offset, room) in [(10, "a"), (11, "c"), (12, "b"), (13, "a")] {
            subscriptions
                .on_live(Outbound::Record(keyed(0, offset, room)), &mut out)
                .unwrap();
        }
        let written: Vec<&str> = out.iter().map(|f| f.frame.as_str()).collect();
        assert_eq!(written, ["0:10", "0:12", "0:13"]);
        let Reply::Lagged { topics, keys } = subscriptions.lagged() else {
            unreachable!()
        };
        assert!(topics.is_empty());
        assert_eq!(
            keys[TOPIC],
            BTreeMap::from([
                ("a".to_string(), BTreeMap::from([(0, 14)])),
                ("b".to_string(), BTreeMap::from([(0, 13)])),
            ])
        );
        // The whole topic replaces every room, and a room the whole topic.
        let mut every: Vec<Option<String>> = subscriptions.replaced_by(TOPIC, None);
        every.sort();
        assert_eq!(every, [Some("a".to_string()), Some("b".to_string())]);
        assert_eq!(
            subscriptions.replaced_by(TOPIC, Some("c")),
            Vec::<Option<String>>::new()
        );
        assert_eq!(
            subscriptions.replaced_by(TOPIC, Some("a")),
            [Some("a".to_string())]
        );
        for room in ["a", "b"] {
            subscriptions.remove(TOPIC, Some(room));
        }
        subscriptions.insert_live(TOPIC, None, filter, live);
        assert_eq!(subscriptions.replaced_by(TOPIC, Some("a")), [None]);
        assert_eq!(subscriptions.count(), 1);
    }

    proptest! {
        // Cheap enough to run thousands: a few seconds on two cores.
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn every_record_is_written_once_in_order_and_lagged_names_the_next_one(
            initial in prop::collection::vec(prop::collection::vec(0i64..2, 0..8), 1..4),
            lives in prop::collection::vec(any::<u8>(), 3),
            starts in prop::collection::vec(any::<u8>(), 3),
            actions in prop::collection::vec((0u8..6, any::<u8>()), 0..80),
        ) {
            let partitions = initial.len();
            let mut logs: Vec<Log> = initial
                .iter()
                .map(|gaps| {
                    let mut log = Log::default();
                    for &gap in gaps {
                        log.append(gap);
                    }
                    log
                })
                .collect();
            // Where the live stream stands in each partition (or none yet: it then starts
            // at the partition's first record), and where the client resumes.
            let live: BTreeMap<i32, i64> = (0..partitions)
                .filter(|&p| lives[p] % 5 != 0)
                .map(|p| (p as i32, i64::from(lives[p]) % (logs[p].end + 1)))
                .collect();
            let client_starts: BTreeMap<i32, i64> = (0..partitions)
                .map(|p| (p as i32, i64::from(starts[p]) % (logs[p].end + 2)))
                .collect();
            let mut live_next: Vec<usize> = (0..partitions)
                .map(|p| {
                    let from = live.get(&(p as i32)).copied().unwrap_or(0);
                    logs[p].records.iter().take_while(|&&o| o < from).count()
                })
                .collect();

            let seam = Arc::new(Seam::new(live));
            let mut subscriptions = Subscriptions::new(usize::MAX, usize::MAX);
            let generation = subscriptions.next_generation();
            subscriptions.insert_replaying(
                TOPIC,
                None,
                generation,
                Arc::new(Filter::default()),
                None,
                seam.clone(),
                CancellationToken::new().drop_guard(),
            );
            let mut replay = ModelReplay {
                reading: None,
                fetched: BTreeMap::new(),
                reports: VecDeque::new(),
            };
            let (mut out, mut written) = (Vec::new(), Written::default());

            let check_lagged = |subscriptions: &Subscriptions, written: &Written, logs: &[Log]| {
                let Reply::Lagged { topics, .. } = subscriptions.lagged() else { unreachable!() };
                let Some(next) = topics.get(TOPIC) else {
                    // Not started: the client resumes with its own request.
                    assert!(written.subscribed.is_none());
                    return;
                };
                for (p, log) in logs.iter().enumerate() {
                    let p = p as i32;
                    let resume = next[&p];
                    let got = written.records.get(&p).cloned().unwrap_or_default();
                    assert_eq!(got, written.expected(log, p, resume), "partition {p}: resuming at {resume}");
                }
            };

            let mut step = |kind: u8, pick: u8, logs: &mut Vec<Log>, live_next: &mut Vec<usize>| -> Result<bool, TestCaseError> {
                let p = usize::from(pick) % partitions;
                match kind {
                    0 => logs[p].append(i64::from(pick.is_multiple_of(3))),
                    1 => logs[p].end += 1, // a transaction marker after the last record
                    2 => {
                        let Some(&offset) = logs[p].records.get(live_next[p]) else { return Ok(false) };
                        live_next[p] += 1;
                        prop_assert_eq!(subscriptions.on_live(Outbound::Record(delivery(p as i32, offset)), &mut out), Ok(()));
                    }
                    3 if !replay.step(&seam, logs, &client_starts, usize::from(pick)) => {
                        return Ok(false);
                    }
                    4 => {
                        let Some(report) = replay.reports.pop_front() else { return Ok(false) };
                        prop_assert!(subscriptions.on_report(report, &mut out).is_none());
                    }
                    _ => {}
                }
                written.take(&mut out);
                check_lagged(&subscriptions, &written, logs);
                Ok(true)
            };
            for (kind, pick) in actions {
                step(kind, pick, &mut logs, &mut live_next)?;
            }
            // Then everything in flight arrives: the live stream, the replay, its reports.
            let mut idle = 0;
            let mut turn = 0u8;
            while idle < 3 * partitions + 3 {
                turn = turn.wrapping_add(1);
                let progressed = [2, 3, 4]
                    .into_iter()
                    .map(|kind| step(kind, turn, &mut logs, &mut live_next))
                    .collect::<Result<Vec<bool>, _>>()?
                    .into_iter()
                    .any(|b| b);
                idle = if progressed { 0 } else { idle + 1 };
            }
            prop_assert!(replay.reading.as_ref().is_some_and(BTreeMap::is_empty), "the replay finished");
            for (p, log) in logs.iter().enumerate() {
                let p = p as i32;
                let got = written.records.get(&p).cloned().unwrap_or_default();
                prop_assert_eq!(&got, &written.expected(log, p, i64::MAX), "partition {}", p);
                let requested = client_starts[&p];
                prop_assert_eq!(written.subscribed.as_ref().unwrap()[&p], requested);
            }
        }
    }
}
