//! `subscribe`, `unsubscribe` and `commit`: a socket's place in the registry, the replay
//! that catches a subscription up, and the user's read positions.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::policy::Action;
use crate::hub::Hub;
use crate::metrics;
use crate::presence;
use crate::presence::signal::Read;
use crate::protocol::{ErrorCode, Reply, RequestId, Start, Subscribe, cursor};
use crate::registry::{ConnId, Extras, Filter, Subscriber};
use crate::replay::{self, Seam};

use super::requests::Known;
use super::{Answered, Connection, Handled, Held, Refused};

/// How long a subscribe waits for its topic's live positions (the consumer resolving a paused
/// topic's end, or the ends of the partitions that existed at start) before it is answered
/// `unavailable`: the consumer gives a ListOffsets request 10 s.
const POSITIONS_PATIENCE: Duration = Duration::from_secs(15);

impl Connection {
    pub(super) fn subscribe(
        &mut self,
        request: Subscribe<'_>,
        text: &str,
        may_wait: bool,
    ) -> Handled {
        let Subscribe {
            id,
            topic,
            key,
            from,
            headers,
            presence,
            signals,
        } = request;
        // The subscription is the one asked for (a whole per-user topic, say); its filter
        // holds the key it is confined to (that user's).
        let confined = self.authorize(&id, &topic, key.as_deref(), Action::Subscribe)?;
        if let Known::Held = self.exists(&id, &topic, text, may_wait)? {
            return Ok(Answered::Nothing);
        }
        let key = key.map(Cow::into_owned);
        let replaced = self.subscriptions.replaced_by(&topic, key.as_deref());
        let max = self.hub.config.limits.max_subscriptions;
        if self.subscriptions.count() - replaced.len() >= max {
            return Err(Refused::new(
                id,
                ErrorCode::LimitExceeded,
                format!("a connection may hold at most {max} subscriptions"),
            ));
        }
        // A stream's event ids carry all its subscriptions (see `protocol::cursor`).
        if self.resumable
            && (self.subscriptions.count() - replaced.len() >= cursor::MAX_SUBSCRIPTIONS
                || self.resume_len >= cursor::MAX_ID)
        {
            return Err(Refused::new(
                id,
                ErrorCode::LimitExceeded,
                format!(
                    "an SSE stream holds at most {} subscriptions, within an event id of {} bytes",
                    cursor::MAX_SUBSCRIPTIONS,
                    cursor::MAX_ID
                ),
            ));
        }
        // A new subscription replaces the same one (a new start or filter), and a key
        // replaces the whole topic, or the whole topic every key.
        for held in replaced {
            self.end_subscription(&topic, held.as_deref());
        }
        let extras = Extras { presence, signals };
        let asked = match &from {
            Start::Offsets(offsets) => Some(offsets.clone()),
            _ => None,
        };
        let filter = Arc::new(Filter {
            key: confined.map(|k| k.into_bytes().into_boxed_slice()),
            headers: headers.into_iter().collect(),
        });
        let subscriber = Subscriber {
            queue: self.queue.clone(),
            queued: self.queued.clone(),
            stop: self.stop.clone(),
            filter: filter.clone(),
            extras,
            user: self.user.clone(),
        };
        // Join first, then read the live position: every record at or past it reaches us.
        self.hub.registry.subscribe(&topic, self.id, subscriber);
        let (live, resolved) = self.hub.live_positions.of(&topic);
        if resolved.is_err() {
            self.hub
                .registry
                .unsubscribe(&topic, self.id, filter.key.as_deref());
            // Both starts wait: a `latest` subscription answered now would miss the records
            // appended before the consumer knows where its live stream starts.
            if !self.positions_waited {
                let positions = &self.hub.live_positions;
                positions.want(&topic);
                self.held = Some(Box::new(Held {
                    text: text.into(),
                    ready: Box::pin(positions.resolved(&topic, POSITIONS_PATIENCE)),
                    positions: true,
                }));
                return Ok(Answered::Nothing);
            }
            return Err(Refused::new(
                id,
                ErrorCode::Unavailable,
                "the hub is still finding where this topic's live stream starts: retry shortly",
            ));
        }
        if from == Start::Latest {
            self.subscriptions
                .insert_live(&topic, key.as_deref(), filter, live.clone());
            self.subscriptions
                .remember(&topic, key.as_deref(), extras, None);
            self.joined(&topic, key.as_deref());
            return Ok(Answered::Now(Reply::Subscribed {
                id,
                topic: topic.into_owned(),
                key,
                partitions: live,
                lost: BTreeMap::new(),
                waiting: None,
            }));
        }
        let generation = self.subscriptions.next_generation();
        let seam = Arc::new(Seam::new(live));
        let reports = self.replay_sender();
        let stop = self.hub.replayer.spawn(
            replay::Request {
                topic: topic.as_ref().into(),
                key: key.as_deref().map(Arc::from),
                generation,
                from,
                user: self.session.sub.clone(),
                positions_key: positions_key(&self.hub, &topic, key.as_deref()).to_string(),
                seam: seam.clone(),
                filter: filter.clone(),
                share: self.share.clone(),
            },
            reports,
        );
        self.subscriptions.insert_replaying(
            &topic,
            key.as_deref(),
            generation,
            filter,
            id,
            seam,
            stop,
        );
        self.subscriptions
            .remember(&topic, key.as_deref(), extras, asked);
        self.joined(&topic, key.as_deref());
        // The replay answers `subscribed` once it knows where it starts.
        Ok(Answered::Nothing)
    }

    /// Ends the subscription to `key` of `topic`, or without a key every subscription to it.
    pub(super) fn unsubscribe(
        &mut self,
        id: Option<RequestId>,
        topic: Cow<'_, str>,
        key: Option<Cow<'_, str>>,
    ) -> Answered {
        match key.as_deref() {
            Some(key) => self.end_subscription(&topic, Some(key)),
            None => {
                for held in self.subscriptions.replaced_by(&topic, None) {
                    self.end_subscription(&topic, held.as_deref());
                }
            }
        }
        Answered::Now(Reply::Unsubscribed {
            id,
            topic: topic.into_owned(),
            key: key.map(Cow::into_owned),
        })
    }

    /// Stores the user's read positions; they only move forward.
    pub(super) fn commit(
        &mut self,
        id: Option<RequestId>,
        topic: &str,
        key: Option<&str>,
        offsets: BTreeMap<i32, i64>,
    ) -> Handled {
        self.authorize(&id, topic, key, Action::Subscribe)?;
        let positions_key = positions_key(&self.hub, topic, key);
        // Written behind (see `commits`): what `committed` promises is in the protocol.
        self.hub
            .commits
            .record(&self.session.sub, topic, positions_key, &offsets);
        self.committed_any = true;
        // The user's other sockets, on every hub, hear of it through the signal topic. On a
        // per-user topic the positions are the whole topic's, whichever key was named.
        let key = if self.hub.config.is_user_topic(topic) {
            None
        } else {
            key
        };
        let read = Read {
            topic,
            key,
            user: &self.session.sub,
            offsets: &offsets,
            conn: self.id,
        };
        if let Err(e) = self.hub.signals.send_read(&read) {
            tracing::debug!(error = %e, "cannot tell the user's other sockets of a commit");
        }
        Ok(Answered::Now(Reply::Committed {
            id,
            topic: topic.to_string(),
            key: key.map(str::to_string),
        }))
    }

    pub(super) fn end_subscription(&mut self, topic: &str, key: Option<&str>) {
        if let Some(filter) = self.subscriptions.remove(topic, key) {
            self.left(topic, key, &filter);
        }
    }

    /// What an ended subscription leaves behind: its place in the registry, its count,
    /// presence's record of it.
    pub(super) fn left(&mut self, topic: &str, key: Option<&str>, filter: &Filter) {
        leave(&self.hub, self.id, topic, filter);
        self.tell_presence(presence::Kind::Unsubscribe, topic, key);
    }
}

/// Under which key the user's read positions of a subscription are stored: a room's own, or
/// on a whole topic and on a per-user topic (whose one key is the user's) `""`.
fn positions_key<'k>(hub: &Hub, topic: &str, key: Option<&'k str>) -> &'k str {
    if hub.config.is_user_topic(topic) {
        return "";
    }
    key.unwrap_or("")
}

/// Takes an ended subscription out of the registry and the metrics.
pub(super) fn leave(hub: &Hub, id: ConnId, topic: &str, filter: &Filter) {
    metrics::unsubscribed(topic);
    hub.registry.unsubscribe(topic, id, filter.key.as_deref());
}
