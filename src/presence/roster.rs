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
//!
//! Joins and leaves are told in batches: every `DIFF_INTERVAL`, one `presence_diff` frame
//! per room that changed, with the users who are members now and were not at the last
//! diff, and those who were and are not. A user who joined and left in between is in
//! neither, so however fast clients churn, a member gets at most one frame per room per
//! interval. `presence` lists a room as of its last diff, not as of the latest change:
//! a listing and the diffs after it then add up to the roster exactly, whenever the
//! listing was taken (a listing of the latest state, followed by a diff that cancelled a
//! join it showed, would keep that user listed forever).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::{Message as _, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::config::PresenceConfig;
use crate::kafka::{Clients, LagReporting};
use crate::protocol;
use crate::registry::{ConnId, Outbound, Queued, Registry, Wants};

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

/// How often joins and leaves are told (see the module's comment). Short enough that a
/// join shows as soon as a person would look (a quarter of a second after the roster has
/// it), long enough that a room whose members churn costs each member at most four frames a
/// second, whatever the churn.
pub const DIFF_INTERVAL: Duration = Duration::from_millis(250);

/// A user's first socket on any hub opened, or the last one closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub user: Arc<str>,
    pub online: bool,
}

/// What changed in one room since its last diff: who is a member now and was not then, and
/// who was and is not, each in order of user id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    pub room: Room,
    pub joins: Vec<Arc<str>>,
    pub leaves: Vec<Arc<str>>,
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
    /// Per room, the users whose membership changed since its last diff, and whether each
    /// was a member then.
    changed: HashMap<Room, BTreeMap<Arc<str>, bool>>,
}

/// A socket's queue, for frames that belong to no subscription.
type Queue = flume::Sender<Outbound>;
/// A socket watching a user: its queue, and the bytes queued in it.
type Watcher = (Queue, Arc<Queued>);

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
    watchers: Arc<DashMap<Arc<str>, HashMap<ConnId, Watcher>>>,
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

    /// `conn` is told of `user`'s status from now on (see `tell_statuses`).
    pub fn watch(&self, conn: ConnId, user: &str, queue: &Queue, queued: &Arc<Queued>) {
        self.watchers
            .entry(user.into())
            .or_default()
            .insert(conn, (queue.clone(), queued.clone()));
    }

    pub fn unwatch(&self, conn: ConnId, user: &str) {
        self.watchers.remove_if_mut(user, |_, watching| {
            watching.remove(&conn);
            watching.is_empty()
        });
    }

    /// Tells the sockets watching a user that it came online or went offline.
    pub fn tell_statuses(&self, registry: &Registry, statuses: Vec<Status>) {
        for Status { user, online } in statuses {
            let Some(watching) = self.watchers.get(&user) else {
                continue;
            };
            let frame = protocol::status_frame(&user, online);
            let frame = Outbound::Socket(Arc::new(frame.into()));
            for (queue, queued) in watching.values() {
                registry.offer(queue, queued, &frame);
            }
        }
    }

    /// Tells each room's subscriptions that asked for presence what changed in it.
    pub fn tell_diffs(&self, registry: &Registry, diffs: Vec<Diff>) {
        for Diff {
            room,
            joins,
            leaves,
        } in diffs
        {
            let key = room.key.as_deref().map(str::as_bytes);
            registry.tell(&room.topic, key, Wants::Presence, || {
                fn names(users: &[Arc<str>]) -> Vec<&str> {
                    users.iter().map(|u| &**u).collect()
                }
                protocol::presence_diff_frame(
                    &room.topic,
                    room.key.as_deref(),
                    &names(&joins),
                    &names(&leaves),
                )
            });
        }
    }

    /// What changed in each room since its last diff, which it is from now on. Rooms past
    /// the push limit tell nothing.
    pub fn diffs(&self) -> Vec<Diff> {
        let mut roster = self.state.lock().expect("roster lock");
        let State { rooms, changed, .. } = &mut *roster;
        let mut diffs = Vec::new();
        for (room, users) in changed.drain() {
            let members = rooms.get(&room);
            if members.is_some_and(|m| m.large.is_some() || m.users.len() > self.push_limit) {
                continue;
            }
            let (mut joins, mut leaves) = (Vec::new(), Vec::new());
            for (user, was) in users {
                let is = members.is_some_and(|m| m.users.contains_key(&user));
                match (was, is) {
                    (false, true) => joins.push(user),
                    (true, false) => leaves.push(user),
                    _ => {}
                }
            }
            if !joins.is_empty() || !leaves.is_empty() {
                diffs.push(Diff {
                    room,
                    joins,
                    leaves,
                });
            }
        }
        diffs.sort_by(|a, b| a.room.cmp(&b.room));
        diffs
    }

    pub fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// The roster read so far is the one every hub holds: nobody was told of it, so the
    /// first diff starts from here.
    pub fn set_caught_up(&self) {
        self.state.lock().expect("roster lock").changed.clear();
        self.caught_up.store(true, Ordering::Release);
    }

    /// Applies one record of the roster topic: the socket's state, or `None` (a tombstone)
    /// once it closed. Returns the users who came online or went offline; joins and leaves
    /// wait for the next diff.
    pub fn apply(&self, socket: &str, state: Option<SocketState>) -> Vec<Status> {
        let mut changes = Vec::new();
        let mut roster = self.state.lock().expect("roster lock");
        let State {
            sockets,
            rooms,
            online,
            changed,
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
        if let Some((user, held)) = &old {
            for room in held {
                self.leave(rooms, room, user, changed);
            }
        }
        if let Some((user, held)) = &new {
            for room in held {
                self.join(rooms, room, user, changed);
            }
        }
        match (old.as_ref().map(|(u, _)| u), new.as_ref().map(|(u, _)| u)) {
            (None, Some(user)) => {
                let sockets = online.entry(user.clone()).or_default();
                *sockets += 1;
                if *sockets == 1 {
                    changes.push(Status {
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
                        changes.push(Status {
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
        changed: &mut HashMap<Room, BTreeMap<Arc<str>, bool>>,
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
            // Not a member at the last diff, unless they changed since.
            changed
                .entry(room.clone())
                .or_default()
                .entry(user.clone())
                .or_insert(false);
        }
    }

    fn leave(
        &self,
        rooms: &mut HashMap<Room, Members>,
        room: &Room,
        user: &Arc<str>,
        changed: &mut HashMap<Room, BTreeMap<Arc<str>, bool>>,
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
                changed
                    .entry(room.clone())
                    .or_default()
                    .entry(user.clone())
                    .or_insert(true);
                members.users.remove(user);
            }
        }
        if members.users.is_empty() {
            rooms.remove(room);
        }
    }

    /// Up to `limit` members of `room` listed after `after`, as of the room's last diff (see
    /// the module's comment).
    pub fn members(&self, room: &Room, after: Option<&str>, limit: usize) -> Listing {
        let roster = self.state.lock().expect("roster lock");
        let members = roster.rooms.get(room);
        if let Some(subscriptions) = members.and_then(|m| m.large) {
            return Listing::Large { subscriptions };
        }
        let empty = BTreeMap::new();
        let live = members.map_or(&empty, |m| &m.users);
        let changed = roster.changed.get(room);
        let was = |user: &Arc<str>| changed.and_then(|c| c.get(user)).copied();
        let from = || match after {
            Some(after) => (std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded),
            None => (std::ops::Bound::Unbounded, std::ops::Bound::Unbounded),
        };
        // Members now who were then, and those who left since the diff.
        let mut page: Vec<Arc<str>> = live
            .range::<str, _>(from())
            .map(|(user, _)| user)
            .filter(|user| was(user) != Some(false))
            .take(limit + 1)
            .cloned()
            .collect();
        let mut count = live.len();
        if let Some(changed) = changed {
            let gone = |user: &Arc<str>, was: bool| was && !live.contains_key(user);
            let new = |user: &Arc<str>, was: bool| !was && live.contains_key(user);
            count -= changed.iter().filter(|(u, w)| new(u, **w)).count();
            count += changed.iter().filter(|(u, w)| gone(u, **w)).count();
            page.extend(
                changed
                    .range::<str, _>(from())
                    .filter(|(u, w)| gone(u, **w))
                    .map(|(u, _)| u.clone()),
            );
            page.sort_unstable();
            page.truncate(limit + 1);
        }
        let next = (page.len() > limit).then(|| {
            page.truncate(limit);
            page.last().cloned().expect("a full page")
        });
        Listing::Members { page, count, next }
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
        clients: &Clients,
        presence: &PresenceConfig,
        roster: Roster,
        registry: Arc<Registry>,
    ) -> Result<Follower, KafkaError> {
        // Statistics for its consumer lag in the admin view.
        let consumer: BaseConsumer<LagReporting> = clients
            .reader("roster")
            .set("statistics.interval.ms", "5000")
            .create_with_context(LagReporting(clients.log().clone()))?;
        let topic = presence.roster_topic.clone();
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
    consumer: &BaseConsumer<LagReporting>,
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
    let mut next_diff = Instant::now() + DIFF_INTERVAL;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= next_diff {
            if roster.is_caught_up() {
                roster.tell_diffs(registry, roster.diffs());
            }
            next_diff = now + DIFF_INTERVAL;
        }
        let wait = POLL_INTERVAL.min(next_diff.saturating_duration_since(now));
        let message = match consumer.poll(wait) {
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
        let statuses = roster.apply(socket, state);
        if roster.is_caught_up() {
            roster.tell_statuses(registry, statuses);
        } else if message.offset() + 1 >= end {
            roster.set_caught_up();
            tracing::info!(records = end, "roster read");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::registry::QueueBounds;

    #[test]
    fn a_status_frame_is_counted_in_the_sockets_bytes_like_any_it_gives_back() {
        let registry = Registry::new(QueueBounds {
            socket: 1 << 20,
            total: 1 << 30,
        });
        let roster = Roster::new(100, 100);
        let (queue, frames) = flume::bounded(8);
        let queued = Arc::new(Queued::default());
        roster.watch(1, "alice", &queue, &queued);
        let statuses = vec![Status {
            user: "alice".into(),
            online: true,
        }];
        roster.tell_statuses(&registry, statuses);
        let frame = frames.try_recv().expect("a status frame");
        assert_eq!(registry.queued_bytes(), frame.cost());
        // What the connection does once it wrote the frame: the count is back to none, not
        // wrapped below zero.
        registry.written(&queued, frame.cost());
        assert_eq!(registry.queued_bytes(), 0);
        assert_eq!(queued.bytes(), 0);
    }

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

    fn diff(room: &Room, joins: &[&str], leaves: &[&str]) -> Diff {
        let users = |users: &[&str]| users.iter().map(|u| Arc::from(*u)).collect();
        Diff {
            room: room.clone(),
            joins: users(joins),
            leaves: users(leaves),
        }
    }

    fn status(user: &str, online: bool) -> Status {
        Status {
            user: user.into(),
            online,
        }
    }

    #[test]
    fn a_user_with_two_sockets_is_one_member_and_leaves_with_the_last() {
        let roster = Roster::new(100, 100);
        let lobby = Room::new("rooms", Some("lobby"));
        let whole = Room::new("rooms", None);
        let statuses = roster.apply("s1", state("alice", &[("rooms", Some("lobby"))]));
        assert_eq!(statuses, [status("alice", true)]);
        assert_eq!(
            roster.diffs(),
            [diff(&whole, &["alice"], &[]), diff(&lobby, &["alice"], &[])]
        );
        // Her phone: nothing changes for anyone.
        assert_eq!(
            roster.apply("s2", state("alice", &[("rooms", Some("lobby"))])),
            []
        );
        assert_eq!(roster.diffs(), []);
        assert_eq!(names(&roster, &lobby), ["alice"]);
        assert_eq!(names(&roster, &whole), ["alice"]);
        assert_eq!(roster.apply("s1", None), []);
        assert_eq!(roster.diffs(), []);
        assert_eq!(roster.apply("s2", None), [status("alice", false)]);
        assert_eq!(
            roster.diffs(),
            [diff(&whole, &[], &["alice"]), diff(&lobby, &[], &["alice"])]
        );
        assert!(names(&roster, &lobby).is_empty());
    }

    #[test]
    fn moving_between_rooms_of_a_topic_leaves_one_joins_the_other_and_stays_in_the_topic() {
        let roster = Roster::new(100, 100);
        roster.apply("s", state("bob", &[("rooms", Some("a"))]));
        roster.diffs();
        roster.apply("s", state("bob", &[("rooms", Some("b"))]));
        assert_eq!(
            roster.diffs(),
            [
                diff(&Room::new("rooms", Some("a")), &[], &["bob"]),
                diff(&Room::new("rooms", Some("b")), &["bob"], &[]),
            ]
        );
    }

    #[test]
    fn churn_between_diffs_cancels_out_and_a_listing_is_as_of_the_last_diff() {
        let roster = Roster::new(100, 100);
        let lobby = Room::new("t", Some("lobby"));
        let enter =
            |socket: &str, user: &str| roster.apply(socket, state(user, &[("t", Some("lobby"))]));
        let out = |socket: &str, user: &str| roster.apply(socket, state(user, &[]));
        enter("a", "alice");
        roster.diffs();
        // Bob comes and goes, alice goes and comes back, a hundred times: nothing to tell.
        for _ in 0..100 {
            enter("b", "bob");
            out("a", "alice");
            out("b", "bob");
            enter("a", "alice");
        }
        assert_eq!(names(&roster, &lobby), ["alice"]);
        assert_eq!(roster.diffs(), []);
        // Bob stays and alice leaves: listed as they were until the diff that tells it.
        enter("b", "bob");
        out("a", "alice");
        let Listing::Members { page, count, next } = roster.members(&lobby, None, 1) else {
            unreachable!()
        };
        assert_eq!((page, count, next), (vec![Arc::from("alice")], 1, None));
        let whole = Room::new("t", None);
        assert_eq!(
            roster.diffs(),
            [
                diff(&whole, &["bob"], &["alice"]),
                diff(&lobby, &["bob"], &["alice"])
            ]
        );
        assert_eq!(names(&roster, &lobby), ["bob"]);
    }

    #[test]
    fn a_room_past_the_push_limit_lists_its_members_but_tells_no_joins() {
        let roster = Roster::new(100, 2);
        let room = Room::new("t", Some("r"));
        let told = |socket: &str, rooms: &[(&str, Option<&str>)]| {
            roster.apply(
                socket,
                (!rooms.is_empty()).then(|| state(socket, rooms)).flatten(),
            );
            roster
                .diffs()
                .into_iter()
                .filter(|d| d.room == room)
                .count()
        };
        assert_eq!(told("a", &[("t", Some("r"))]), 1);
        assert_eq!(told("b", &[("t", Some("r"))]), 1);
        assert_eq!(told("c", &[("t", Some("r"))]), 0);
        assert_eq!(names(&roster, &room), ["a", "b", "c"]);
        assert_eq!(told("a", &[]), 1, "back within the limit");
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
        roster.diffs();
        assert!(
            names(&roster, &room).is_empty(),
            "an emptied room lists again"
        );

        let roster = Roster::new(100, 100);
        for user in ["d", "a", "c", "b"] {
            roster.apply(user, state(user, &[("t", None)]));
        }
        roster.diffs();
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
        /// Whatever sockets come and go, and whenever diffs are taken: a member's view, a
        /// listing taken at any point followed by the diffs after it, is the listing at
        /// every point (both as of the last diff), and after a last diff the roster's truth.
        #[test]
        fn a_listing_and_the_diffs_after_it_add_up_to_the_roster(
            steps in prop::collection::vec((0usize..6, prop::collection::vec(0usize..3, 0..3), any::<bool>(), any::<bool>()), 1..60),
            listed_at in 0usize..60,
        ) {
            let roster = Roster::new(1000, 1000);
            let users = ["ann", "ben", "cy"];
            let keys = ["x", "y", "z"];
            let all = || keys.iter().map(|k| Room::new("t", Some(k))).chain([Room::new("t", None)]);
            // One member who was there from the start, one who listed the rooms at `listed_at`.
            let mut views: [HashMap<Room, BTreeSet<String>>; 2] = Default::default();
            let mut sockets: HashMap<usize, (&str, Vec<usize>)> = HashMap::new();
            let mut online: HashMap<Arc<str>, bool> = HashMap::new();
            let last = steps.len();
            for (step, (socket, rooms, close, diff)) in steps.into_iter().enumerate() {
                // A socket keeps its user for as long as it lives.
                let user = users[socket % 3];
                let state = (!close).then(|| SocketState {
                    user: user.into(),
                    instance: "h".into(),
                    rooms: rooms.iter().map(|&k| ("t".to_string(), Some(keys[k].to_string()))).collect(),
                });
                if close { sockets.remove(&socket); } else { sockets.insert(socket, (user, rooms)); }
                for Status { user, online: now } in roster.apply(&socket.to_string(), state) {
                    prop_assert_ne!(online.insert(user, now), Some(now), "told twice");
                }
                if step == listed_at.min(last - 1) {
                    views[1] = all().map(|room| (room.clone(), names(&roster, &room).into_iter().collect())).collect();
                }
                if diff || step == last - 1 {
                    for Diff { room, joins, leaves } in roster.diffs() {
                        for view in &mut views {
                            let members = view.entry(room.clone()).or_default();
                            for user in &joins { members.insert(user.to_string()); }
                            for user in &leaves { members.remove(&**user); }
                        }
                    }
                }
                for room in all() {
                    let listed: BTreeSet<String> = names(&roster, &room).into_iter().collect();
                    prop_assert_eq!(&views[0].get(&room).cloned().unwrap_or_default(), &listed, "{:?}", room);
                }
            }
            for room in all() {
                let truth: BTreeSet<String> = sockets
                    .values()
                    .filter(|(_, rooms)| rooms.iter().any(|&k| room.key.is_none() || room.key.as_deref() == Some(keys[k])))
                    .map(|(user, _)| user.to_string())
                    .collect();
                for view in &views {
                    prop_assert_eq!(&view.get(&room).cloned().unwrap_or_default(), &truth, "{:?}", room);
                }
            }
        }
    }
}
