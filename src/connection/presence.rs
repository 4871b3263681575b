//! `presence` and `online`, and what the socket tells presence and the roster of its rooms.

use std::time::Duration;

use tokio::time::Instant;

use crate::auth::policy::Action;
use crate::metrics;
use crate::presence;
use crate::presence::roster::{Listing, Room, Roster};
use crate::protocol::{ErrorCode, Reply, RequestId};

use super::{Answered, Connection, Handled, Refused};

/// The least time between two roster writes of one socket (see `tell_presence`).
const ROSTER_INTERVAL: Duration = Duration::from_secs(1);

/// A socket's roster writes, coalesced (see `Connection::tell_presence`).
#[derive(Default)]
pub(super) struct RosterWrites {
    written: Option<Vec<(String, Option<String>)>>,
    written_at: Option<Instant>,
    /// When the rooms changed since the last write, when to write them.
    pub(super) due: Option<Instant>,
}

impl Connection {
    /// Counts a subscription that joined the registry, and tells presence.
    pub(super) fn joined(&mut self, topic: &str, key: Option<&str>) {
        metrics::subscribed(topic);
        self.tell_presence(presence::Kind::Subscribe, topic, key);
    }

    /// A presence event, and the socket's rooms for the roster: written at once when the
    /// last write is `ROSTER_INTERVAL` old, else at the end of that interval, with the rooms
    /// as they are then. A join and a leave within it cancel out, and a client churning its
    /// subscriptions costs every hub one roster record per interval at most.
    pub(super) fn tell_presence(&mut self, kind: presence::Kind, topic: &str, key: Option<&str>) {
        let (Some(presence), Some(open)) = (&self.hub.presence, &self.presence) else {
            return;
        };
        presence.topic_changed(open, kind, topic, key);
        let now = Instant::now();
        match self.roster.written_at {
            Some(at) if now < at + ROSTER_INTERVAL => {
                self.roster.due = Some(at + ROSTER_INTERVAL);
            }
            _ => self.write_rooms(now),
        }
    }

    /// Writes the socket's rooms to the roster, unless the roster has them already. Per-user
    /// topics are no rooms: who reads their notifications is nobody else's business.
    pub(super) fn write_rooms(&mut self, now: Instant) {
        self.roster.due = None;
        let (Some(presence), Some(open)) = (&self.hub.presence, &self.presence) else {
            return;
        };
        let config = &self.hub.config;
        let rooms: Vec<(String, Option<String>)> = self
            .subscriptions
            .iter()
            .filter(|(topic, _, _)| !config.is_user_topic(topic))
            .map(|(topic, key, _)| (topic.to_string(), key.map(str::to_string)))
            .collect();
        if self.roster.written.as_ref() == Some(&rooms) {
            metrics::roster_write_saved();
            return;
        }
        self.roster.written_at = Some(now);
        self.roster.written = Some(rooms.clone());
        presence.rooms_changed(open, rooms);
    }

    /// The hub's roster, or the refusal when presence is off.
    fn roster(&self, id: &Option<RequestId>) -> Result<Roster, Refused> {
        self.hub.roster.clone().ok_or_else(|| {
            Refused::new(
                id.clone(),
                ErrorCode::BadRequest,
                "this hub keeps no roster: presence is off (WSKAFKA_PRESENCE_TOPIC)",
            )
        })
    }

    /// Whether `roster` has read what every hub wrote before it started, or the refusal
    /// saying it has not yet.
    fn caught_up(id: &Option<RequestId>, roster: &Roster) -> Result<(), Refused> {
        if roster.is_caught_up() {
            return Ok(());
        }
        Err(Refused::new(
            id.clone(),
            ErrorCode::Unavailable,
            "this hub is still reading the roster: retry shortly",
        ))
    }

    /// The members of a room, a page at a time.
    pub(super) fn presence(
        &mut self,
        id: Option<RequestId>,
        topic: &str,
        key: Option<&str>,
        after: Option<&str>,
    ) -> Handled {
        let roster = self.roster(&id)?;
        if self.hub.config.is_user_topic(topic) {
            return Err(Refused::new(
                id,
                ErrorCode::Forbidden,
                format!("topic {topic:?} is per user: it has no members to list"),
            ));
        }
        self.authorize(&id, topic, key, Action::Subscribe)?;
        Self::caught_up(&id, &roster)?;
        let room = Room::new(topic, key);
        let (members, count, next) =
            match roster.members(&room, after, self.hub.config.presence.presence_page) {
                Listing::Members { page, count, next } => (
                    Some(page.iter().map(|u| u.to_string()).collect()),
                    count as u64,
                    next.map(|u| u.to_string()),
                ),
                Listing::Large { subscriptions } => (None, subscriptions, None),
            };
        Ok(Answered::Now(Reply::Presence {
            id,
            topic: topic.to_string(),
            key: key.map(str::to_string),
            large: members.is_none(),
            members,
            count,
            next,
        }))
    }

    /// Which users are online, and with `watch` their changes from now on.
    pub(super) fn online(
        &mut self,
        id: Option<RequestId>,
        users: Vec<String>,
        watch: bool,
    ) -> Handled {
        let roster = self.roster(&id)?;
        let sub = &self.session.sub;
        let grants = &self.session.grants.online;
        let hidden: Vec<&str> = users
            .iter()
            .map(String::as_str)
            .filter(|user| !grants.iter().any(|g| g.matches(user, sub)))
            .collect();
        if !hidden.is_empty() {
            let message = format!("not allowed to see whether {hidden:?} are online");
            return Err(Refused::new(id, ErrorCode::Forbidden, message));
        }
        Self::caught_up(&id, &roster)?;
        if watch {
            for user in self.watching.drain(..) {
                roster.unwatch(self.id, &user);
            }
            for user in &users {
                roster.watch(self.id, user, &self.queue, &self.queued);
            }
            self.watching.clone_from(&users);
        }
        let users = roster.online(users.iter().map(String::as_str));
        Ok(Answered::Now(Reply::Online { id, users }))
    }
}
