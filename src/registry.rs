//! Which sockets want which records.
//!
//! The Kafka consumer thread fans every record out through here, so nothing in this module
//! may wait: each socket has a bounded queue, and a full queue marks that socket as lagging
//! (its connection task then closes it) instead of holding up the consumer or the socket
//! next to it.
//!
//! Each queue is bounded twice: in frames, and in bytes (see `QueueBounds`), since a thousand
//! records of 900 KB are 900 MB. A frame stays counted until the socket has written it.
//!
//! Filtering happens here, before anything is queued. Subscriptions with a key filter (which
//! every subscription to a user-keyed topic has) are indexed by that key, so a record of a
//! per-user topic with a hundred thousand subscribers costs one lookup, not a scan.

use std::cell::LazyCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::ws::Utf8Bytes;
use dashmap::DashMap;
use flume::TrySendError;

use crate::metrics;
use crate::stop::Stop;

pub type ConnId = u64;

/// One record on its way to sockets: its position, for resuming, and its `message` frame,
/// serialised once and shared by every socket it goes to.
#[derive(Debug)]
pub struct Delivery {
    pub topic: Box<str>,
    /// Which of a socket's subscriptions to the topic the record goes to.
    pub key: Option<Box<[u8]>>,
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the epoch, when the record has a timestamp.
    pub timestamp: Option<i64>,
    pub frame: Utf8Bytes,
}

impl Delivery {
    /// What holding it costs, in bytes: its frame, its key and topic, and itself.
    pub fn cost(&self) -> usize {
        size_of::<Delivery>()
            + self.topic.len()
            + self.key.as_ref().map_or(0, |k| k.len())
            + self.frame.len()
    }
}

/// A frame for a room's subscriptions outside the record stream (a signal, a presence diff,
/// a read notice): it has no position and is never replayed.
#[derive(Debug)]
pub struct RoomFrame {
    pub topic: Box<str>,
    /// The room; none for the whole topic's subscriptions.
    pub key: Option<Box<[u8]>>,
    pub frame: Utf8Bytes,
}

/// What a socket's send queue holds.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A record, for the socket's subscriptions that its topic and key reach.
    Record(Arc<Delivery>),
    Room(Arc<RoomFrame>),
    /// For the socket itself rather than a subscription: a watched user's status. Behind a
    /// pointer like the others, so that an item is 16 bytes: a burst of records queued for
    /// ten thousand sockets costs that per socket and record, its frame being shared.
    Socket(Arc<Utf8Bytes>),
}

// What each queued item costs every socket it is queued for (see `Outbound::Socket`).
const _: () = assert!(size_of::<Outbound>() <= 16);

impl Outbound {
    pub fn room(topic: &str, key: Option<&[u8]>, frame: String) -> Outbound {
        Outbound::Room(Arc::new(RoomFrame {
            topic: topic.into(),
            key: key.map(Box::from),
            frame: frame.into(),
        }))
    }

    /// What holding it costs, in bytes, counted while it waits in a queue: see `Queued`.
    pub fn cost(&self) -> usize {
        match self {
            Outbound::Record(record) => record.cost(),
            Outbound::Room(room) => {
                size_of::<RoomFrame>()
                    + room.topic.len()
                    + room.key.as_ref().map_or(0, |k| k.len())
                    + room.frame.len()
            }
            Outbound::Socket(frame) => size_of::<Outbound>() + frame.len(),
        }
    }
}

/// What a subscription asked for besides records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extras {
    /// `presence_diff` frames of its room.
    pub presence: bool,
    /// Signals sent to its room.
    pub signals: bool,
}

/// Which extra a `tell` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wants {
    Presence,
    Signals,
}

/// The parts of a record that filters look at.
pub struct RecordMeta<'a> {
    pub key: Option<&'a [u8]>,
    pub headers: &'a [(&'a str, Option<&'a [u8]>)],
}

/// What a subscription lets through: records with this key (when set) and carrying each of
/// these header values. When a record repeats a header name, the last value counts, as in
/// the `message` frame.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Filter {
    pub key: Option<Box<[u8]>>,
    pub headers: Vec<(String, String)>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.key.is_none() && self.headers.is_empty()
    }

    pub fn matches(&self, record: &RecordMeta<'_>) -> bool {
        if let Some(key) = &self.key
            && record.key != Some(&**key)
        {
            return false;
        }
        self.headers.iter().all(|(name, value)| {
            record
                .headers
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .is_some_and(|(_, v)| *v == Some(value.as_bytes()))
        })
    }
}

/// The bytes (`Outbound::cost`) of the frames queued for one socket and not yet written
/// to it: taken from its queue, they count until the write is done.
#[derive(Debug, Default)]
pub struct Queued(AtomicUsize);

impl Queued {
    pub fn bytes(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// How many bytes of records the send queues may hold.
#[derive(Debug, Clone, Copy)]
pub struct QueueBounds {
    /// One socket's.
    pub socket: usize,
    /// Every socket's together: past it, a socket holding more than half its own bound is
    /// lagging, while one that keeps up (a frame or two queued) is not. Records shared by
    /// several sockets count for each, so this overstates what they hold.
    pub total: usize,
}

/// The delivery side of one subscription.
#[derive(Clone)]
pub struct Subscriber {
    /// The connection's queue, shared by all its subscriptions.
    pub queue: flume::Sender<Outbound>,
    /// The bytes in it, shared by all its subscriptions.
    pub queued: Arc<Queued>,
    /// Told when the queue overflows.
    pub stop: Stop,
    /// Its key condition is also the index the subscriber is filed under.
    pub filter: Arc<Filter>,
    pub extras: Extras,
    /// Whose socket it is: a user's other sockets hear where the user has read to.
    pub user: Arc<str>,
}

#[derive(Default)]
struct TopicSubscribers {
    any_key: HashMap<ConnId, Subscriber>,
    by_key: HashMap<Box<[u8]>, HashMap<ConnId, Subscriber>>,
}

impl TopicSubscribers {
    fn is_empty(&self) -> bool {
        self.any_key.is_empty() && self.by_key.is_empty()
    }
}

pub struct Registry {
    topics: DashMap<Box<str>, TopicSubscribers>,
    bounds: QueueBounds,
    /// Every socket's `Queued` together.
    queued: AtomicUsize,
}

impl Default for Registry {
    /// Bounded in frames only.
    fn default() -> Self {
        Registry::new(QueueBounds {
            socket: usize::MAX,
            total: usize::MAX,
        })
    }
}

impl Registry {
    pub fn new(bounds: QueueBounds) -> Self {
        Registry {
            topics: DashMap::new(),
            bounds,
            queued: AtomicUsize::new(0),
        }
    }

    /// Every socket's queued bytes together.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Counts `cost` more bytes queued for the socket, unless that takes it past its bounds.
    /// A socket with nothing queued takes one record, however large: otherwise a record
    /// over the bound could never be delivered.
    fn admit(&self, queued: &Queued, cost: usize) -> bool {
        let held = queued.0.fetch_add(cost, Ordering::AcqRel);
        let total = self.queued.fetch_add(cost, Ordering::AcqRel) + cost;
        let mine = held + cost;
        let fits = mine <= self.bounds.socket
            && (total <= self.bounds.total || mine <= self.bounds.socket / 2);
        if held == 0 || fits {
            return true;
        }
        self.written(queued, cost);
        false
    }

    /// For the connection: `bytes` of its records are written, or dropped with it.
    pub fn written(&self, queued: &Queued, bytes: usize) {
        queued.0.fetch_sub(bytes, Ordering::AcqRel);
        self.queued.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Files the connection under `topic`, replacing an earlier subscription of the same
    /// connection to the same topic with the same key filter.
    pub fn subscribe(&self, topic: &str, conn: ConnId, subscriber: Subscriber) {
        let mut entry = self.topics.entry(topic.into()).or_default();
        match subscriber.filter.key.clone() {
            None => entry.any_key.insert(conn, subscriber),
            Some(key) => entry
                .by_key
                .entry(key)
                .or_default()
                .insert(conn, subscriber),
        };
    }

    /// `key` is the key filter the subscription was made with.
    pub fn unsubscribe(&self, topic: &str, conn: ConnId, key: Option<&[u8]>) {
        if let Some(mut subscribers) = self.topics.get_mut(topic) {
            match key {
                None => {
                    subscribers.any_key.remove(&conn);
                }
                Some(key) => {
                    if let Some(keyed) = subscribers.by_key.get_mut(key) {
                        keyed.remove(&conn);
                        if keyed.is_empty() {
                            subscribers.by_key.remove(key);
                        }
                    }
                }
            }
        }
        self.topics
            .remove_if(topic, |_, subscribers| subscribers.is_empty());
    }

    /// Each connection's subscriptions, as `topic` or `topic:key`, for the admin view.
    pub fn subscriptions(&self, of: impl Fn(ConnId) -> bool) -> HashMap<ConnId, Vec<String>> {
        let mut listed: HashMap<ConnId, Vec<String>> = HashMap::new();
        for entry in self.topics.iter() {
            let (topic, subscribers) = (entry.key(), entry.value());
            for conn in subscribers.any_key.keys().filter(|conn| of(**conn)) {
                listed.entry(*conn).or_default().push(topic.to_string());
            }
            for (key, keyed) in &subscribers.by_key {
                let named = format!("{topic}:{}", String::from_utf8_lossy(key));
                for conn in keyed.keys().filter(|conn| of(**conn)) {
                    listed.entry(*conn).or_default().push(named.clone());
                }
            }
        }
        listed
    }

    pub fn has_subscribers(&self, topic: &str) -> bool {
        self.topics.contains_key(topic)
    }

    #[cfg(test)]
    fn subscriber_count(&self, topic: &str) -> usize {
        self.topics.get(topic).map_or(0, |s| {
            s.any_key.len() + s.by_key.values().map(HashMap::len).sum::<usize>()
        })
    }

    /// Queues the record for every subscriber of `topic` whose filter it passes; returns how
    /// many got it. `delivery` is built at most once, and only when someone wants the record.
    pub fn fan_out<D: Into<Arc<Delivery>>>(
        &self,
        topic: &str,
        record: &RecordMeta<'_>,
        delivery: impl FnOnce() -> D,
    ) -> usize {
        let Some(subscribers) = self.topics.get(topic) else {
            return 0;
        };
        let keyed = record
            .key
            .and_then(|key| subscribers.by_key.get(key))
            .into_iter()
            .flat_map(HashMap::values);
        let built = LazyCell::new(|| delivery().into());
        let mut queued = 0;
        for subscriber in subscribers.any_key.values().chain(keyed) {
            if !subscriber.filter.headers.is_empty() && !subscriber.filter.matches(record) {
                continue;
            }
            // Closing already: whatever is queued now would be dropped unwritten.
            if subscriber.stop.has_lagged() {
                continue;
            }
            let cost = built.cost();
            if !self.admit(&subscriber.queued, cost) {
                metrics::lagged_for_bytes();
                subscriber.stop.lagged();
                continue;
            }
            match subscriber
                .queue
                .try_send(Outbound::Record(Arc::clone(&built)))
            {
                Ok(()) => queued += 1,
                Err(TrySendError::Full(_)) => {
                    self.written(&subscriber.queued, cost);
                    subscriber.stop.lagged();
                }
                // The connection is gone; its own cleanup removes it from here.
                Err(TrySendError::Disconnected(_)) => self.written(&subscriber.queued, cost),
            }
        }
        queued
    }

    /// Queues an ephemeral frame for the subscribers of `topic` that asked for `wants`: a
    /// room's (`key`) subscribers, and for signals its topic's too; for presence a topic's
    /// own joins and leaves (`key` none) go to its whole-topic subscribers only. A full queue
    /// drops the frame: nothing ephemeral is worth closing a socket over.
    pub fn tell(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        wants: Wants,
        frame: impl FnOnce() -> String,
    ) {
        let Some(subscribers) = self.topics.get(topic) else {
            return;
        };
        let keyed = key
            .and_then(|key| subscribers.by_key.get(key))
            .into_iter()
            .flat_map(HashMap::values);
        let whole = subscribers.any_key.values();
        let told: Box<dyn Iterator<Item = &Subscriber>> = match (wants, key) {
            (Wants::Signals, _) => Box::new(keyed.chain(whole)),
            (Wants::Presence, Some(_)) => Box::new(keyed),
            (Wants::Presence, None) => Box::new(whole),
        };
        let built = LazyCell::new(|| Outbound::room(topic, key, frame()));
        for subscriber in told {
            let asked = match wants {
                Wants::Presence => subscriber.extras.presence,
                Wants::Signals => subscriber.extras.signals,
            };
            // Counted like a record, since the connection gives back what it takes; over
            // the socket's bytes it is dropped, as on a full queue.
            if !asked {
                continue;
            }
            self.offer(&subscriber.queue, &subscriber.queued, &built);
        }
    }

    /// Queues an ephemeral frame for `user`'s subscriptions to `topic` that records of `key`
    /// reach (the whole topic's, and `key`'s; every key's when `key` is none), except those
    /// of connection `except`. A full queue drops it, as in `tell`.
    pub fn tell_user(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        user: &str,
        except: Option<ConnId>,
        frame: impl FnOnce() -> String,
    ) {
        let Some(subscribers) = self.topics.get(topic) else {
            return;
        };
        let keyed: Box<dyn Iterator<Item = &HashMap<ConnId, Subscriber>>> = match key {
            Some(key) => Box::new(subscribers.by_key.get(key).into_iter()),
            None => Box::new(subscribers.by_key.values()),
        };
        let built = LazyCell::new(|| Outbound::room(topic, key, frame()));
        // Once per socket, though it may hold several of the topic's keys: a user has few.
        let mut told = vec![];
        for (conn, subscriber) in subscribers.any_key.iter().chain(keyed.flatten()) {
            if Some(*conn) != except && *subscriber.user == *user && !told.contains(conn) {
                told.push(*conn);
                self.offer(&subscriber.queue, &subscriber.queued, &built);
            }
        }
    }

    /// Offers a frame outside the record stream to one socket, counted in its bytes like a
    /// record, since the connection gives back the bytes of whatever it takes from its queue;
    /// over the socket's bytes, or on a full queue, it is dropped. Whatever sends into a
    /// socket's queue goes through here or `fan_out`: a frame sent uncounted would be given
    /// back all the same, and the hub's count of queued bytes would wrap below zero.
    pub fn offer(
        &self,
        queue: &flume::Sender<Outbound>,
        queued: &Queued,
        frame: &Outbound,
    ) -> bool {
        let cost = frame.cost();
        if !self.admit(queued, cost) {
            return false;
        }
        if queue.try_send(frame.clone()).is_err() {
            self.written(queued, cost);
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscriber(capacity: usize) -> (Subscriber, flume::Receiver<Outbound>) {
        filtered(capacity, Filter::default())
    }

    fn filtered(capacity: usize, filter: Filter) -> (Subscriber, flume::Receiver<Outbound>) {
        let (queue, rx) = flume::bounded(capacity);
        let subscriber = Subscriber {
            queue,
            queued: Arc::default(),
            stop: Stop::default(),
            filter: Arc::new(filter),
            extras: Extras::default(),
            user: "alice".into(),
        };
        (subscriber, rx)
    }

    fn key(k: &[u8]) -> Filter {
        Filter {
            key: Some(k.into()),
            ..Filter::default()
        }
    }

    fn delivery(offset: i64) -> Delivery {
        Delivery {
            key: None,
            topic: "t".into(),
            partition: 0,
            offset,
            timestamp: None,
            frame: Utf8Bytes::from_static("frame"),
        }
    }

    const NO_META: RecordMeta<'static> = RecordMeta {
        key: None,
        headers: &[],
    };

    fn offsets(rx: &flume::Receiver<Outbound>) -> Vec<i64> {
        std::iter::from_fn(|| match rx.try_recv().ok()? {
            Outbound::Record(record) => Some(record.offset),
            other => panic!("not a record: {other:?}"),
        })
        .collect()
    }

    /// Read notices: the user's sockets whose subscriptions the key's records reach, once
    /// each, never the committing socket, never another user's.
    #[test]
    fn tell_user_reaches_the_users_other_sockets_once_each() {
        let registry = Registry::default();
        let (whole, rx_whole) = subscriber(4);
        let (room, rx_room) = filtered(4, key(b"x"));
        let (two_rooms, rx_two_rooms) = filtered(4, key(b"x"));
        let (other_room, rx_other_room) = filtered(4, key(b"y"));
        let (bob, rx_bob) = subscriber(4);
        let bob = Subscriber {
            user: "bob".into(),
            ..bob
        };
        registry.subscribe("t", 1, whole);
        registry.subscribe("t", 2, room);
        registry.subscribe(
            "t",
            3,
            Subscriber {
                filter: Arc::new(key(b"y")),
                ..two_rooms.clone()
            },
        );
        registry.subscribe("t", 3, two_rooms);
        registry.subscribe("t", 4, bob);
        registry.subscribe("t", 5, other_room);
        let notice = |n: &'static str| move || n.to_string();
        let told = |rx: &flume::Receiver<Outbound>| {
            std::iter::from_fn(|| match rx.try_recv().ok()? {
                Outbound::Room(room) => Some(room.frame.to_string()),
                other => panic!("not a room's frame: {other:?}"),
            })
            .collect::<Vec<_>>()
        };

        registry.tell_user("t", Some(b"x"), "alice", Some(1), notice("x"));
        registry.tell_user("t", None, "alice", Some(2), notice("all"));
        assert_eq!(told(&rx_whole), ["all"]);
        assert_eq!(told(&rx_room), ["x"]);
        assert_eq!(told(&rx_two_rooms), ["x", "all"]);
        assert_eq!(told(&rx_other_room), ["all"]);
        assert!(told(&rx_bob).is_empty());
    }

    #[test]
    fn fan_out_reaches_every_subscriber_of_the_topic_only() {
        let registry = Registry::default();
        let (a, rx_a) = subscriber(4);
        let (b, rx_b) = subscriber(4);
        let (c, rx_c) = subscriber(4);
        registry.subscribe("chat.lobby", 1, a);
        registry.subscribe("chat.lobby", 2, b);
        registry.subscribe("chat.other", 3, c);

        assert_eq!(registry.fan_out("chat.lobby", &NO_META, || delivery(1)), 2);
        assert_eq!(offsets(&rx_a), [1]);
        assert_eq!(offsets(&rx_b), [1]);
        assert!(offsets(&rx_c).is_empty());
        let built = std::cell::Cell::new(false);
        let count = registry.fan_out("nobody.here", &NO_META, || {
            built.set(true);
            delivery(2)
        });
        assert_eq!(count, 0);
        assert!(!built.get(), "a frame nobody wants is never built");
    }

    #[test]
    fn frames_told_are_counted_as_records_are_so_what_a_socket_gives_back_adds_up() {
        let registry = Registry::default();
        let (mut member, rx) = filtered(4, key(b"lobby"));
        member.extras.presence = true;
        let queued = member.queued.clone();
        registry.subscribe("chat.rooms", 1, member);
        registry.fan_out("chat.rooms", &NO_META, || delivery(1));
        registry.tell("chat.rooms", Some(b"lobby"), Wants::Presence, || {
            "{}".into()
        });
        // What the connection does: give back the cost of each frame it took.
        let mut taken = 0;
        while let Ok(frame) = rx.try_recv() {
            taken += frame.cost();
        }
        assert_eq!(registry.queued_bytes(), taken);
        registry.written(&queued, taken);
        assert_eq!(registry.queued_bytes(), 0);
    }

    #[test]
    fn subscribing_twice_delivers_once() {
        let registry = Registry::default();
        let (a, rx) = subscriber(4);
        registry.subscribe("t", 1, a.clone());
        registry.subscribe("t", 1, a);
        registry.fan_out("t", &NO_META, || delivery(7));
        assert_eq!(offsets(&rx), [7]);
    }

    #[test]
    fn unsubscribe_stops_delivery_and_forgets_empty_topics() {
        let registry = Registry::default();
        let (a, rx_a) = subscriber(4);
        let (b, rx_b) = filtered(4, key(b"alice"));
        registry.subscribe("t", 1, a);
        registry.subscribe("t", 2, b);
        registry.unsubscribe("t", 1, None);
        let meta = RecordMeta {
            key: Some(b"alice"),
            headers: &[],
        };
        assert_eq!(registry.fan_out("t", &meta, || delivery(1)), 1);
        assert!(offsets(&rx_a).is_empty());
        assert_eq!(offsets(&rx_b), [1]);

        registry.unsubscribe("t", 2, Some(b"alice"));
        assert!(!registry.has_subscribers("t"));
        assert_eq!(registry.subscriber_count("t"), 0);
        registry.unsubscribe("never", 9, None);
    }

    #[test]
    fn key_filters_deliver_only_matching_records() {
        let registry = Registry::default();
        let (alice, rx_alice) = filtered(8, key(b"alice"));
        let (bob, rx_bob) = filtered(8, key(b"bob"));
        let (all, rx_all) = subscriber(8);
        registry.subscribe("n", 1, alice);
        registry.subscribe("n", 2, bob);
        registry.subscribe("n", 3, all);
        for (offset, k) in [(0, Some(&b"alice"[..])), (1, Some(b"bob")), (2, None)] {
            let meta = RecordMeta {
                key: k,
                headers: &[],
            };
            registry.fan_out("n", &meta, || delivery(offset));
        }
        assert_eq!(offsets(&rx_alice), [0]);
        assert_eq!(offsets(&rx_bob), [1]);
        assert_eq!(offsets(&rx_all), [0, 1, 2]);
        assert_eq!(registry.subscriber_count("n"), 3);
    }

    #[test]
    fn header_filters_need_every_pair_and_read_the_last_value() {
        let filter = Filter {
            key: None,
            headers: vec![("lang".into(), "en".into()), ("kind".into(), "dm".into())],
        };
        let meta = |headers: &'static [(&'static str, Option<&'static [u8]>)]| RecordMeta {
            key: None,
            headers,
        };
        assert!(filter.matches(&meta(&[("kind", Some(b"dm")), ("lang", Some(b"en"))])));
        assert!(!filter.matches(&meta(&[("lang", Some(b"en"))])));
        assert!(!filter.matches(&meta(&[("lang", Some(b"en")), ("kind", None)])));
        assert!(!filter.matches(&meta(&[
            ("kind", Some(b"dm")),
            ("lang", Some(b"en")),
            ("lang", Some(b"fr"))
        ])));

        let registry = Registry::default();
        let (s, rx) = filtered(4, filter);
        registry.subscribe("t", 1, s);
        registry.fan_out("t", &meta(&[("lang", Some(b"en"))]), || delivery(0));
        registry.fan_out(
            "t",
            &meta(&[("lang", Some(b"en")), ("kind", Some(b"dm"))]),
            || delivery(1),
        );
        assert_eq!(offsets(&rx), [1]);
    }

    #[test]
    fn a_full_queue_flags_its_connection_and_spares_the_others() {
        let registry = Registry::default();
        let (slow, _rx_slow) = subscriber(1);
        let (fast, rx_fast) = subscriber(8);
        let slow_flag = slow.stop.clone();
        registry.subscribe("t", 1, slow);
        registry.subscribe("t", 2, fast);

        assert_eq!(registry.fan_out("t", &NO_META, || delivery(1)), 2);
        assert!(!slow_flag.has_lagged());
        assert_eq!(registry.fan_out("t", &NO_META, || delivery(2)), 1);
        assert!(slow_flag.has_lagged());
        assert_eq!(offsets(&rx_fast), [1, 2]);
    }

    #[test]
    fn queued_bytes_lag_a_socket_past_its_bound_until_they_are_written() {
        // Each test record costs the same; a socket may hold two and a half.
        let cost = delivery(0).cost();
        let registry = Registry::new(QueueBounds {
            socket: cost * 5 / 2,
            total: usize::MAX,
        });
        let (slow, _rx_slow) = subscriber(100);
        let (fast, rx_fast) = subscriber(100);
        let (slow_flag, fast_flag) = (slow.stop.clone(), fast.stop.clone());
        let fast_queued = fast.queued.clone();
        registry.subscribe("t", 1, slow);
        registry.subscribe("t", 2, fast);

        for offset in 0..10 {
            registry.fan_out("t", &NO_META, || delivery(offset));
            // The fast socket writes what it takes.
            let written = offsets(&rx_fast).len() * cost;
            registry.written(&fast_queued, written);
        }
        assert!(slow_flag.has_lagged(), "a third record is past its bytes");
        assert!(!fast_flag.has_lagged());
        assert_eq!(fast_queued.bytes(), 0);
        // The slow socket's two records stay counted until it is gone.
        assert_eq!(registry.queued_bytes(), 2 * cost);
    }

    #[test]
    fn a_record_larger_than_the_bound_still_reaches_an_empty_queue() {
        let registry = Registry::new(QueueBounds {
            socket: 10,
            total: 10,
        });
        let (reader, rx) = subscriber(4);
        let flag = reader.stop.clone();
        registry.subscribe("t", 1, reader);
        assert_eq!(registry.fan_out("t", &NO_META, || delivery(1)), 1);
        assert!(!flag.has_lagged());
        assert_eq!(offsets(&rx), [1]);
        assert_eq!(registry.fan_out("t", &NO_META, || delivery(2)), 0);
        assert!(flag.has_lagged(), "a second one is past the bound");
    }

    #[test]
    fn past_the_total_only_sockets_holding_half_their_bound_lag() {
        let cost = delivery(0).cost();
        let registry = Registry::new(QueueBounds {
            socket: cost * 10,
            total: cost * 8,
        });
        let (hoarder, _rx_hoarder) = subscriber(100);
        let hoarder_flag = hoarder.stop.clone();
        registry.subscribe("t", 1, hoarder);
        for offset in 0..8 {
            registry.fan_out("t", &NO_META, || delivery(offset));
        }
        assert!(!hoarder_flag.has_lagged(), "within both bounds");
        let (reader, _rx) = subscriber(100);
        let reader_flag = reader.stop.clone();
        registry.subscribe("t", 2, reader);
        for offset in 8..10 {
            registry.fan_out("t", &NO_META, || delivery(offset));
        }
        assert!(hoarder_flag.has_lagged(), "past the total, holding 9 of 10");
        assert!(!reader_flag.has_lagged(), "holding 2 of 10");
    }

    #[test]
    fn closed_queues_are_skipped() {
        let registry = Registry::default();
        let (gone, rx) = subscriber(1);
        drop(rx);
        let flag = gone.stop.clone();
        registry.subscribe("t", 1, gone);
        assert_eq!(registry.fan_out("t", &NO_META, || delivery(1)), 0);
        assert!(!flag.has_lagged());
    }

    mod properties {
        use std::collections::{BTreeSet, HashMap};

        use proptest::prelude::*;

        use super::*;

        const TOPICS: [&str; 3] = ["a", "b", "c"];
        const KEYS: [&[u8]; 3] = [b"k0", b"k1", b"k2"];

        #[derive(Debug, Clone)]
        enum Op {
            /// As a connection does it: a subscription replaces its earlier one.
            Subscribe {
                topic: usize,
                conn: ConnId,
                key: Option<usize>,
                lang: Option<bool>,
            },
            Unsubscribe {
                topic: usize,
                conn: ConnId,
            },
            Publish {
                topic: usize,
                key: Option<usize>,
                lang: Option<bool>,
            },
        }

        fn op() -> impl Strategy<Value = Op> {
            let key = proptest::option::of(0..KEYS.len());
            let lang = proptest::option::of(any::<bool>());
            prop_oneof![
                (0..TOPICS.len(), 0..4u64, key.clone(), lang.clone()).prop_map(
                    |(topic, conn, key, lang)| Op::Subscribe {
                        topic,
                        conn,
                        key,
                        lang
                    }
                ),
                (0..TOPICS.len(), 0..4u64)
                    .prop_map(|(topic, conn)| Op::Unsubscribe { topic, conn }),
                (0..TOPICS.len(), key, lang).prop_map(|(topic, key, lang)| Op::Publish {
                    topic,
                    key,
                    lang
                }),
            ]
        }

        fn lang(en: bool) -> &'static str {
            if en { "en" } else { "fr" }
        }

        proptest! {
            /// Whatever the sequence of subscribes and unsubscribes, a record reaches exactly
            /// the connections whose current subscription to its topic it passes, once each,
            /// and a registry emptied of subscriptions holds no topic.
            #[test]
            fn fan_out_matches_a_model_of_current_subscriptions(ops in proptest::collection::vec(op(), 1..80)) {
                let registry = Registry::default();
                type Queue = (flume::Sender<Outbound>, flume::Receiver<Outbound>);
                let mut queues: HashMap<ConnId, Queue> =
                    (0..4).map(|conn| (conn, flume::bounded(1024))).collect();
                let mut model: HashMap<(usize, ConnId), Filter> = HashMap::new();
                let mut offset = 0;
                for op in ops {
                    match op {
                        Op::Subscribe { topic, conn, key, lang: language } => {
                            if let Some(old) = model.remove(&(topic, conn)) {
                                registry.unsubscribe(TOPICS[topic], conn, old.key.as_deref());
                            }
                            let filter = Filter {
                                key: key.map(|k| KEYS[k].into()),
                                headers: language.map(|en| ("lang".to_string(), lang(en).to_string())).into_iter().collect(),
                            };
                            let subscriber = Subscriber {
                                queue: queues[&conn].0.clone(),
                                queued: Arc::default(),
                                stop: Stop::default(),
                                filter: Arc::new(filter.clone()),
                                extras: Extras::default(),
                                user: "alice".into(),
                            };
                            registry.subscribe(TOPICS[topic], conn, subscriber);
                            model.insert((topic, conn), filter);
                        }
                        Op::Unsubscribe { topic, conn } => {
                            if let Some(old) = model.remove(&(topic, conn)) {
                                registry.unsubscribe(TOPICS[topic], conn, old.key.as_deref());
                            }
                        }
                        Op::Publish { topic, key, lang: language } => {
                            offset += 1;
                            let headers: Vec<(&str, Option<&[u8]>)> = language
                                .map(|en| ("lang", Some(lang(en).as_bytes())))
                                .into_iter()
                                .collect();
                            let meta = RecordMeta { key: key.map(|k| KEYS[k]), headers: &headers };
                            let expected: BTreeSet<ConnId> = model
                                .iter()
                                .filter(|((t, _), filter)| *t == topic && filter.matches(&meta))
                                .map(|((_, conn), _)| *conn)
                                .collect();
                            let queued = registry.fan_out(TOPICS[topic], &meta, || delivery(offset));
                            let mut reached = BTreeSet::new();
                            for (conn, (_, rx)) in queues.iter_mut() {
                                let got = offsets(rx);
                                prop_assert!(got.len() <= 1, "conn {} got {:?}", conn, got);
                                if got == [offset] {
                                    reached.insert(*conn);
                                }
                            }
                            prop_assert_eq!(queued, expected.len());
                            prop_assert_eq!(reached, expected);
                        }
                    }
                }
                for ((topic, conn), filter) in model.drain() {
                    registry.unsubscribe(TOPICS[topic], conn, filter.key.as_deref());
                }
                for topic in TOPICS {
                    prop_assert!(!registry.has_subscribers(topic), "{} still filed", topic);
                }
            }
        }
    }
}
