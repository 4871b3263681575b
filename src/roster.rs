//! Who is here: per topic and per room (a key of a topic), which users hold a subscription,
//! the same on every hub, built from Kafka alone.
//!
//! Every hub writes the state of each of its sockets (its user, and the rooms it follows)
//! to a compacted topic, keyed by the socket's session id, and a tombstone when the socket
//! closes; the hub that finds another dead (see `presence`) writes the tombstones of its
//! sockets. Compaction keeps the latest state per socket, so a hub starting reads the
//! topic from its beginning to its end and holds the roster every other hub holds, then
//! follows it. The topic has one partition: every hub applies the same changes in the same
//! order, so joins and leaves come in the same order everywhere.
//!
//! Membership is per user: a user's first socket in a room joins it, the last one leaves.
//! A room past `WSKAFKA_JOIN_LEAVE_LIMIT` members pushes no joins or leaves (each would be a
//! frame to every member), and one past `WSKAFKA_ROSTER_LIMIT` keeps a count of
//! subscriptions only, until it empties: large rooms answer with counts.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use dashmap::DashMap;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::{Message as _, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::config::ServeConfig;
use crate::kafka::reader_config;
use crate::kafka::KafkaLog;
use crate::registry::{ConnId, Delivery, Registry, Wants};

/// A room: a topic, and one key of it, or `None` for the topic as a whole (every user
/// following any of its keys, or all of it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Room {
    pub topic: Arc<str>,
    pub key: Option<Arc<str>>,
}

impl Room {
    pub fn new(topic: &str, key: Option<&str>) -> Room {
        Room {
            topic: topic.into(),
            key: key.map(Into::into),
        }
    }

    /// The topic as a whole, which every room of it is part of.
    fn whole(&self) -> Room {
        Room {
            topic: self.topic.clone(),
            key: None,
        }
    }
}

/// What the roster topic holds per socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketState {
    pub user: String,
    pub instance: String,
    /// The rooms its subscriptions follow: `[topic, key]`, the key `null` for a whole topic.
    pub rooms: Vec<(String, Option<String>)>,
}

/// A change of the roster that sockets may be told about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Join {
        room: Room,
        user: Arc<str>,
    },
    Leave {
        room: Room,
        user: Arc<str>,
    },
    /// The user's first socket on any hub opened, or the last one closed.
    Online {
        user: Arc<str>,
        online: bool,
    },
}

/// One room's members.
#[derive(Debug, Default)]
struct Members {
    /// Per user, the subscriptions (sockets, or keys of a whole topic) that make them a
    /// member. Emptied when the room grows past the limit.
    users: BTreeMap<Arc<str>, u32>,
    /// Subscriptions in a room past the limit.
    large: Option<u64>,
}

/// What a `presence` request gets.
#[derive(Debug, PartialEq, Eq)]
pub enum Listing {
    Members {
        /// A page of members, by user id.
        page: Vec<Arc<str>>,
        count: usize,
        /// The last member listed, when more follow.
        next: Option<Arc<str>>,
    },
    /// A room past the limit: how many subscriptions it holds.
    Large { subscriptions: u64 },
}

#[derive(Default)]
struct State {
    sockets: HashMap<String, (Arc<str>, Vec<Room>)>,
    rooms: HashMap<Room, Members>,
    online: HashMap<Arc<str>, u32>,
}

/// A socket's queue, for frames that belong to no subscription.
type Queue = mpsc::Sender<Arc<Delivery>>;

/// The roster of every room; clones share it.
#[derive(Clone)]
pub struct Roster {
    state: Arc<Mutex<State>>,
    /// Whether the roster topic has been read up to where it ended when the hub started.
    caught_up: Arc<AtomicBool>,
    limit: usize,
    /// Rooms larger than this push no joins or leaves: told to every member, each one would
    /// cost as many frames as the room has members.
    push_limit: usize,
    /// Per user, the sockets of this hub told when the user comes online or goes offline.
    watchers: Arc<DashMap<Arc<str>, HashMap<ConnId, Queue>>>,
}

impl Roster {
    pub fn new(limit: usize, push_limit: usize) -> Roster {
        Roster {
            state: Arc::default(),
            caught_up: Arc::default(),
            limit,
            push_limit,
            watchers: Arc::default(),
        }
    }

    /// `conn` is told of `user`'s status from now on (see `tell`).
    pub fn watch(&self, conn: ConnId, user: &str, queue: &Queue) {
        self.watchers
            .entry(user.into())
            .or_default()
            .insert(conn, queue.clone());
    }

    pub fn unwatch(&self, conn: ConnId, user: &str) {
        self.watchers.remove_if_mut(user, |_, watching| {
            watching.remove(&conn);
            watching.is_empty()
        });
    }

    /// Tells this hub's sockets what changed: joins and leaves to the subscriptions of the
    /// room that asked for them, status changes to the sockets watching the user.
    pub fn tell(&self, registry: &Registry, changes: Vec<Change>) {
        for change in changes {
            let (room, user, kind) = match change {
                Change::Join { room, user } => (room, user, "join"),
                Change::Leave { room, user } => (room, user, "leave"),
                Change::Online { user, online } => {
                    let Some(watching) = self.watchers.get(&user) else {
                        continue;
                    };
                    let frame =
                        serde_json::json!({"type": "status", "user": &*user, "online": online});
                    let delivery = Arc::new(Delivery::ephemeral("", None, frame.to_string()));
                    for queue in watching.values() {
                        let _ = queue.try_send(delivery.clone());
                    }
                    continue;
                }
            };
            let key = room.key.as_deref().map(str::as_bytes);
            registry.tell(&room.topic, key, Wants::Presence, || {
                let mut frame =
                    serde_json::json!({"type": kind, "topic": &*room.topic, "user": &*user});
                if let Some(key) = &room.key {
                    frame["key"] = serde_json::json!(&**key);
                }
                Delivery::ephemeral(&room.topic, key, frame.to_string())
            });
        }
    }

    pub fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    pub fn set_caught_up(&self) {
        self.caught_up.store(true, Ordering::Release);
    }

    /// Applies one record of the roster topic: the socket's state, or `None` (a tombstone)
    /// once it closed. Returns what changed for rooms and users.
    pub fn apply(&self, socket: &str, state: Option<SocketState>) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut roster = self.state.lock().expect("roster lock");
        let State {
            sockets,
            rooms,
            online,
        } = &mut *roster;
        let new = state.map(|state| {
            let user: Arc<str> = state.user.into();
            let mut held: Vec<Room> = Vec::new();
            for (topic, key) in &state.rooms {
                let room = Room::new(topic, key.as_deref());
                if room.key.is_some() {
                    held.push(room.whole());
                }
                held.push(room);
            }
            (user, held)
        });
        let old = match &new {
            Some(new) => sockets.insert(socket.to_string(), new.clone()),
            None => sockets.remove(socket),
        };
        // Leaves first: a socket that moves rooms leaves one before it joins the other.
        if let Some((user, held)) = &old {
            for room in held {
                self.leave(rooms, room, user, &mut changes);
            }
        }
        if let Some((user, held)) = &new {
            for room in held {
                self.join(rooms, room, user, &mut changes);
            }
        }
        // Joins and leaves of the same user in the same room within one change cancel out.
        cancel_out(&mut changes);
        match (old.as_ref().map(|(u, _)| u), new.as_ref().map(|(u, _)| u)) {
            (None, Some(user)) => {
                let sockets = online.entry(user.clone()).or_default();
                *sockets += 1;
                if *sockets == 1 {
                    changes.push(Change::Online {
                        user: user.clone(),
                        online: true,
                    });
                }
            }
            (Some(user), None) => {
                if let Some(sockets) = online.get_mut(user) {
                    *sockets -= 1;
                    if *sockets == 0 {
                        online.remove(user);
                        changes.push(Change::Online {
                            user: user.clone(),
                            online: false,
                        });
                    }
                }
            }
            _ => {}
        }
        changes
    }

    fn join(
        &self,
        rooms: &mut HashMap<Room, Members>,
        room: &Room,
        user: &Arc<str>,
        changes: &mut Vec<Change>,
    ) {
        let members = rooms.entry(room.clone()).or_default();
        if let Some(subscriptions) = &mut members.large {
            *subscriptions += 1;
            return;
        }
        let held = members.users.entry(user.clone()).or_default();
        *held += 1;
        if *held == 1 {
            if members.users.len() > self.limit {
                let subscriptions = members.users.values().map(|&n| u64::from(n)).sum();
                members.users = BTreeMap::new();
                members.large = Some(subscriptions);
                tracing::info!(topic = %room.topic, key = ?room.key, limit = self.limit, "a room grew past the roster limit: counting only");
                return;
            }
            if members.users.len() <= self.push_limit {
                changes.push(Change::Join {
                    room: room.clone(),
                    user: user.clone(),
                });
            }
        }
    }

    fn leave(
        &self,
        rooms: &mut HashMap<Room, Members>,
        room: &Room,
        user: &Arc<str>,
        changes: &mut Vec<Change>,
    ) {
        let Some(members) = rooms.get_mut(room) else {
            return;
        };
        if let Some(subscriptions) = &mut members.large {
            *subscriptions = subscriptions.saturating_sub(1);
            if *subscriptions == 0 {
                rooms.remove(room);
            }
            return;
        }
        if let Some(held) = members.users.get_mut(user) {
            *held -= 1;
            if *held == 0 {
                if members.users.len() <= self.push_limit {
                    changes.push(Change::Leave {
                        room: room.clone(),
                        user: user.clone(),
                    });
                }
                members.users.remove(user);
            }
        }
        if members.users.is_empty() {
            rooms.remove(room);
        }
    }

    /// Up to `limit` members of `room` listed after `after`.
    pub fn members(&self, room: &Room, after: Option<&str>, limit: usize) -> Listing {
        let roster = self.state.lock().expect("roster lock");
        let Some(members) = roster.rooms.get(room) else {
            return Listing::Members {
                page: Vec::new(),
                count: 0,
                next: None,
            };
        };
        if let Some(subscriptions) = members.large {
            return Listing::Large { subscriptions };
        }
        let from = match after {
            Some(after) => std::ops::Bound::Excluded(after),
            None => std::ops::Bound::Unbounded,
        };
        let mut page: Vec<Arc<str>> = members
            .users
            .range::<str, _>((from, std::ops::Bound::Unbounded))
            .map(|(user, _)| user.clone())
            .take(limit + 1)
            .collect();
        let next = (page.len() > limit).then(|| {
            page.truncate(limit);
            page.last().cloned().expect("a full page")
        });
        Listing::Members {
            page,
            count: members.users.len(),
            next,
        }
    }

    /// Whether each of `users` has a socket open on any hub.
    pub fn online<'u>(&self, users: impl IntoIterator<Item = &'u str>) -> BTreeMap<String, bool> {
        let roster = self.state.lock().expect("roster lock");
        users
            .into_iter()
            .map(|user| (user.to_string(), roster.online.contains_key(user)))
            .collect()
    }
}

/// Bound on the round trips that find where the roster topic ends.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The thread that reads the roster topic into the roster: from its beginning (compaction
/// keeps the latest state of every socket), caught up once it reached where the topic ended
/// when the hub started, then following it. Changes are told to sockets from then on.
pub struct Follower {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Follower {
    pub fn start(
        config: &ServeConfig,
        client_id: &str,
        log: &KafkaLog,
        roster: Roster,
        registry: Arc<Registry>,
    ) -> Result<Follower, KafkaError> {
        let consumer: BaseConsumer<KafkaLog> =
            reader_config(config, &format!("{client_id}-roster"))
                .create_with_context(log.clone())?;
        let topic = config.roster_topic.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("roster".into())
            .spawn({
                let stop = stop.clone();
                move || follow(&consumer, &topic, &roster, &registry, &stop)
            })
            .expect("spawning the roster thread");
        Ok(Follower { stop, thread })
    }

    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        if self.thread.join().is_err() {
            tracing::error!("the roster thread panicked");
        }
    }
}

fn follow(
    consumer: &BaseConsumer<KafkaLog>,
    topic: &str,
    roster: &Roster,
    registry: &Registry,
    stop: &AtomicBool,
) {
    // Where the topic ends now: the roster is whole once read up to there.
    let end = loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        match consumer.fetch_watermarks(topic, 0, LOOKUP_TIMEOUT) {
            Ok((_, high)) => break high,
            Err(e) => {
                tracing::debug!(error = %e, "the roster topic is not readable yet");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    };
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .expect("a fresh list takes any offset");
    if let Err(e) = consumer.assign(&assignment) {
        return tracing::error!(error = %e, "cannot read the roster topic");
    }
    if end == 0 {
        roster.set_caught_up();
    }
    while !stop.load(Ordering::Relaxed) {
        let message = match consumer.poll(POLL_INTERVAL) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(_))) => {
                // Compaction may have removed the records up to the end.
                if !roster.is_caught_up() {
                    roster.set_caught_up();
                }
                continue;
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "reading the roster topic");
                continue;
            }
            Some(Ok(message)) => message,
        };
        let Some(socket) = message.key().and_then(|k| std::str::from_utf8(k).ok()) else {
            continue;
        };
        let state = match message.payload() {
            None => None,
            Some(value) => match serde_json::from_slice(value) {
                Ok(state) => Some(state),
                Err(e) => {
                    tracing::warn!(error = %e, "ignored a malformed roster record");
                    continue;
                }
            },
        };
        let changes = roster.apply(socket, state);
        if roster.is_caught_up() {
            roster.tell(registry, changes);
        } else if message.offset() + 1 >= end {
            roster.set_caught_up();
            tracing::info!(records = end, "roster read");
        }
    }
}

/// Drops a join and a leave of the same user and room from one change: the socket moved
/// between keys of a topic it stays in as a whole, say.
fn cancel_out(changes: &mut Vec<Change>) {
    let mut i = 0;
    while i < changes.len() {
        let opposite = match &changes[i] {
            Change::Leave { room, user } => changes.iter().skip(i + 1).position(
                |c| matches!(c, Change::Join { room: r, user: u } if r == room && u == user),
            ),
            _ => None,
        };
        match opposite {
            Some(at) => {
                changes.remove(i + 1 + at);
                changes.remove(i);
            }
            None => i += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn state(user: &str, rooms: &[(&str, Option<&str>)]) -> Option<SocketState> {
        Some(SocketState {
            user: user.into(),
            instance: "hub".into(),
            rooms: rooms
                .iter()
                .map(|(t, k)| (t.to_string(), k.map(str::to_string)))
                .collect(),
        })
    }

    fn names(roster: &Roster, room: &Room) -> Vec<String> {
        match roster.members(room, None, 1000) {
            Listing::Members { page, .. } => page.iter().map(|u| u.to_string()).collect(),
            Listing::Large { .. } => panic!("large"),
        }
    }

    #[test]
    fn a_user_with_two_sockets_is_one_member_and_leaves_with_the_last() {
        let roster = Roster::new(100, 100);
        let lobby = Room::new("rooms", Some("lobby"));
        let changes = roster.apply("s1", state("alice", &[("rooms", Some("lobby"))]));
        assert!(changes.contains(&Change::Join {
            room: lobby.clone(),
            user: "alice".into()
        }));
        assert!(changes.contains(&Change::Online {
            user: "alice".into(),
            online: true
        }));
        // Her phone: nothing changes for anyone.
        assert_eq!(
            roster.apply("s2", state("alice", &[("rooms", Some("lobby"))])),
            []
        );
        assert_eq!(names(&roster, &lobby), ["alice"]);
        assert_eq!(names(&roster, &Room::new("rooms", None)), ["alice"]);
        assert_eq!(roster.apply("s1", None), []);
        let last = roster.apply("s2", None);
        let alice: Arc<str> = "alice".into();
        for expected in [
            Change::Leave {
                room: lobby.clone(),
                user: alice.clone(),
            },
            Change::Leave {
                room: Room::new("rooms", None),
                user: alice.clone(),
            },
            Change::Online {
                user: alice.clone(),
                online: false,
            },
        ] {
            assert!(last.contains(&expected), "{last:?}");
        }
        assert_eq!(last.len(), 3);
        assert!(names(&roster, &lobby).is_empty());
    }

    #[test]
    fn moving_between_rooms_of_a_topic_leaves_one_joins_the_other_and_stays_in_the_topic() {
        let roster = Roster::new(100, 100);
        roster.apply("s", state("bob", &[("rooms", Some("a"))]));
        let changes = roster.apply("s", state("bob", &[("rooms", Some("b"))]));
        assert_eq!(
            changes,
            [
                Change::Leave {
                    room: Room::new("rooms", Some("a")),
                    user: "bob".into()
                },
                Change::Join {
                    room: Room::new("rooms", Some("b")),
                    user: "bob".into()
                },
            ]
        );
    }

    #[test]
    fn a_room_past_the_push_limit_lists_its_members_but_tells_no_joins() {
        let roster = Roster::new(100, 2);
        let room = Room::new("t", Some("r"));
        let joins = |changes: Vec<Change>| {
            changes
                .iter()
                .filter(|c| matches!(c, Change::Join { room: r, .. } if *r == room))
                .count()
        };
        assert_eq!(joins(roster.apply("a", state("a", &[("t", Some("r"))]))), 1);
        assert_eq!(joins(roster.apply("b", state("b", &[("t", Some("r"))]))), 1);
        assert_eq!(joins(roster.apply("c", state("c", &[("t", Some("r"))]))), 0);
        assert_eq!(names(&roster, &room), ["a", "b", "c"]);
        let leaves = roster.apply("c", None);
        assert!(
            !leaves
                .iter()
                .any(|c| matches!(c, Change::Leave { room: r, .. } if *r == room))
        );
    }

    #[test]
    fn a_room_past_the_limit_counts_only_and_pages_list_the_rest_in_order() {
        let roster = Roster::new(3, 3);
        let room = Room::new("t", Some("big"));
        for n in 0..5 {
            roster.apply(
                &format!("s{n}"),
                state(&format!("u{n}"), &[("t", Some("big"))]),
            );
        }
        assert_eq!(
            roster.members(&room, None, 10),
            Listing::Large { subscriptions: 5 }
        );
        for n in 0..5 {
            roster.apply(&format!("s{n}"), None);
        }
        assert!(
            names(&roster, &room).is_empty(),
            "an emptied room lists again"
        );

        let roster = Roster::new(100, 100);
        for user in ["d", "a", "c", "b"] {
            roster.apply(user, state(user, &[("t", None)]));
        }
        let room = Room::new("t", None);
        let Listing::Members { page, count, next } = roster.members(&room, None, 3) else {
            unreachable!()
        };
        assert_eq!((page.len(), count, next.as_deref()), (3, 4, Some("c")));
        let Listing::Members { page, next, .. } = roster.members(&room, Some("c"), 3) else {
            unreachable!()
        };
        assert_eq!((page, next), (vec![Arc::from("d")], None));
    }

    proptest! {
        /// Whatever sockets come and go, the joins and leaves told add up to the roster: a
        /// member is in the room exactly while its joins outnumber its leaves by one.
        #[test]
        fn joins_and_leaves_follow_the_roster_exactly(
            steps in prop::collection::vec((0usize..6, prop::collection::vec(0usize..3, 0..3), any::<bool>()), 1..60),
        ) {
            let roster = Roster::new(1000, 1000);
            let users = ["ann", "ben", "cy"];
            let keys = ["x", "y", "z"];
            let mut told: HashMap<Room, HashMap<Arc<str>, i32>> = HashMap::new();
            let mut online: HashMap<Arc<str>, bool> = HashMap::new();
            for (socket, rooms, close) in steps {
                // A socket keeps its user for as long as it lives.
                let user = users[socket % 3];
                let state = (!close).then(|| SocketState {
                    user: user.into(),
                    instance: "h".into(),
                    rooms: rooms.iter().map(|&k| ("t".to_string(), Some(keys[k].to_string()))).collect(),
                });
                for change in roster.apply(&socket.to_string(), state) {
                    match change {
                        Change::Join { room, user } => *told.entry(room).or_default().entry(user).or_default() += 1,
                        Change::Leave { room, user } => *told.entry(room).or_default().entry(user).or_default() -= 1,
                        Change::Online { user, online: now } => {
                            prop_assert_ne!(online.insert(user, now), Some(now), "told twice");
                        }
                    }
                }
                for room in keys.iter().map(|k| Room::new("t", Some(k))).chain([Room::new("t", None)]) {
                    let mut listed = names(&roster, &room);
                    listed.sort();
                    let mut from_changes: Vec<String> = told
                        .get(&room)
                        .into_iter()
                        .flatten()
                        .filter(|(_, n)| **n != 0)
                        .map(|(u, n)| { assert_eq!(*n, 1, "{u} in {room:?}"); u.to_string() })
                        .collect();
                    from_changes.sort();
                    prop_assert_eq!(listed, from_changes, "{:?}", room);
                }
            }
        }
    }
}
