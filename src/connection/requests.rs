//! Each request in turn: its size, its budget, its parse, and the handler of its type, whose
//! answer or refusal is written here and nowhere else. A new request type is a variant of
//! `protocol::Request`, a file beside this one, and an arm below.

use crate::auth::policy::{self, Action};
use crate::budget::{Kind, Verdict};
use crate::kafka::Lookup;
use crate::metrics;
use crate::protocol::{self, ErrorCode, Reply, Request, RequestId};

use super::{Answered, Connection, Held, Pending, Refused};

/// What the hub knows of a request's topic.
pub(super) enum Known {
    Exists,
    /// Kafka is being asked: the request is held, and handled again once it answered.
    Held,
}

impl Connection {
    /// `may_wait` is false for a request that was held until the hub's list of topics was
    /// refreshed: it gets the answer that refresh gave.
    pub(super) fn handle(&mut self, text: &str, may_wait: bool) -> Option<Pending> {
        let max = self.hub.config.limits.max_frame_bytes;
        let request = (text.len() <= max).then(|| protocol::parse(text));
        let kind = match &request {
            Some(Ok(request)) => request_kind(request),
            _ => Kind::Invalid,
        };
        // A held request spent its budget when it first came.
        let verdict = if may_wait {
            let user = self.hub.user_budgets(&self.session.sub);
            self.budgets.spend(kind, user.as_deref())
        } else {
            Verdict::Go
        };
        match verdict {
            Verdict::Go => {}
            Verdict::Wait { wait, user } => {
                let (rates, whose) = match user {
                    false => (&self.hub.sockets.request_rates, ""),
                    true => (&self.hub.sockets.user_rates, " across this user's sockets"),
                };
                let rate = rates.get(kind).get();
                metrics::request_refused(kind.name());
                let id = protocol::peek_id(text);
                self.reply(Reply::rate_limited(id, kind.name(), rate, whose, wait));
                return None;
            }
            Verdict::Close => {
                metrics::request_refused(kind.name());
                self.abusive = true;
                return None;
            }
        }
        let Some(request) = request else {
            self.reply(Reply::error(
                protocol::peek_id(text),
                ErrorCode::TooLarge,
                format!(
                    "frame of {} bytes exceeds the limit of {max} bytes",
                    text.len()
                ),
            ));
            return None;
        };
        let handled = match request {
            Err(bad) => Err(bad.into()),
            Ok(Request::Ping { id }) => Ok(Answered::Now(Reply::Pong { id })),
            Ok(Request::Subscribe(subscribe)) => self.subscribe(subscribe, text, may_wait),
            Ok(Request::Unsubscribe { id, topic, key }) => Ok(self.unsubscribe(id, topic, key)),
            Ok(Request::Auth { id, token }) => Ok(self.refresh(id, &token)),
            Ok(Request::Publish(publish)) => self.publish(publish, text, may_wait),
            Ok(Request::History(history)) => self.history(history, text, may_wait),
            Ok(Request::Presence {
                id,
                topic,
                key,
                after,
            }) => self.presence(id, &topic, key.as_deref(), after.as_deref()),
            Ok(Request::Online { id, users, watch }) => self.online(id, users, watch),
            Ok(Request::Signal {
                id,
                topic,
                key,
                payload,
            }) => self.signal(id, &topic, key.as_deref(), payload),
            Ok(Request::Commit {
                id,
                topic,
                key,
                offsets,
            }) => self.commit(id, &topic, key.as_deref(), offsets),
            Ok(Request::PushSubscribe { id, subscription }) => {
                self.push_subscribe(id, subscription)
            }
            Ok(Request::PushUnsubscribe { id, endpoint }) => self.push_unsubscribe(id, endpoint),
            Ok(Request::PushKey { id }) => self.push_key(id),
        };
        // The one place a request's answer or refusal is written.
        match handled {
            Ok(Answered::Now(reply)) => self.reply(reply),
            Err(refused) => self.reply(refused.into()),
            Ok(Answered::Later(pending)) => return Some(pending),
            Ok(Answered::Nothing) => {}
        }
        None
    }

    /// `policy::authorize`: the key the request is confined to, or the refusal.
    pub(super) fn authorize(
        &self,
        id: &Option<RequestId>,
        topic: &str,
        key: Option<&str>,
        action: Action,
    ) -> Result<Option<String>, Refused> {
        policy::authorize(&self.hub.config, &self.session, topic, key, action)
            .map_err(|denied| Refused::new(id.clone(), denied.code(), denied.to_string()))
    }

    /// Whether `topic` exists: `Held` when the hub has to ask Kafka first, and the request
    /// (its `text`) waits until it has; the refusal when it does not exist, or the hub cannot
    /// tell.
    pub(super) fn exists(
        &mut self,
        id: &Option<RequestId>,
        topic: &str,
        text: &str,
        may_wait: bool,
    ) -> Result<Known, Refused> {
        let (code, message) = match self.hub.topics.lookup(topic, may_wait) {
            Lookup::Exists => return Ok(Known::Exists),
            Lookup::Missing => (
                ErrorCode::UnknownTopic,
                format!("topic {topic:?} does not exist (the hub creates no topics)"),
            ),
            Lookup::Unreachable => (
                ErrorCode::Unavailable,
                format!("cannot tell whether topic {topic:?} exists: Kafka does not answer"),
            ),
            Lookup::Refreshing(refreshed) => {
                let text = text.into();
                self.held = Some(Box::new(Held {
                    text,
                    ready: refreshed,
                    positions: false,
                }));
                return Ok(Known::Held);
            }
        };
        Err(Refused::new(id.clone(), code, message))
    }
}

/// Which budget a request spends (see `budget`).
fn request_kind(request: &Request<'_>) -> Kind {
    match request {
        Request::Ping { .. } => Kind::Ping,
        Request::Subscribe(_) | Request::Unsubscribe { .. } => Kind::Subscribe,
        Request::Auth { .. } => Kind::Auth,
        Request::Publish(_) => Kind::Publish,
        Request::History(_) => Kind::History,
        Request::Presence { .. } => Kind::Presence,
        Request::Online { .. } => Kind::Online,
        Request::Signal { .. } => Kind::Signal,
        Request::Commit { .. } => Kind::Commit,
        Request::PushSubscribe { .. }
        | Request::PushUnsubscribe { .. }
        | Request::PushKey { .. } => Kind::Push,
    }
}
