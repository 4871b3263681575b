//! What the hub sends back: replies, error codes and close codes.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;

use super::{BadRequest, RequestId};

/// WebSocket close codes the hub ends a connection with.
pub mod close {
    /// The hub is shutting down; reconnect to another instance.
    pub const GOING_AWAY: u16 = 1001;
    /// The hub could not set the socket up (its database is unreachable); try again.
    pub const INTERNAL: u16 = 1011;
    /// No valid `auth` frame came first, in time, on a socket opened without a token; or
    /// the token was revoked (reason "token revoked").
    pub const AUTH_FAILED: u16 = 4403;
    /// The token's `exp` (plus the configured leeway) has passed.
    pub const TOKEN_EXPIRED: u16 = 4401;
    /// The user already holds as many sockets as allowed (first-frame authentication only;
    /// a token in the URL or header gets HTTP 429 instead).
    pub const TOO_MANY_CONNECTIONS: u16 = 4409;
    /// The connection's send queue overflowed: it did not read fast enough. A `lagged`
    /// frame said where to resume.
    pub const LAGGED: u16 = 4429;
    /// The client did not answer the hub's ping within `WSKAFKA_PONG_TIMEOUT`: its network
    /// is taken for gone (a client seldom sees this frame, since the network is down).
    pub const UNRESPONSIVE: u16 = 4408;
    /// The client kept sending requests past its budget after being told to wait
    /// (`rate_limited`): WebSocket's own "policy violation".
    pub const POLICY_VIOLATION: u16 = 1008;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    TooLarge,
    LimitExceeded,
    RateLimited,
    /// The topic does not exist (the hub never creates one): retrying will not help until an
    /// operator creates it.
    UnknownTopic,
    /// A resend whose `publish_id` names a record with another topic, key, payload or sender.
    IdConflict,
    /// A resend whose first attempt is older than the hub looks back for it.
    RetryExpired,
    Unavailable,
    Internal,
}

/// Every frame the hub sends except `message`, which the consumer serialises itself.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Reply {
    Ack {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        topic: String,
        partition: i32,
        offset: i64,
    },
    Subscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        topic: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        /// The next offset this socket gets from each partition, where known.
        partitions: BTreeMap<i32, i64>,
        /// Per partition, the offsets asked for that will never be delivered.
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        lost: BTreeMap<i32, Lost>,
        /// With `from: "committed"` and no filter: how many records lie between the user's
        /// read positions and the live stream (unread, for a badge). With a filter the
        /// count would mean reading them all, so it is left out.
        #[serde(skip_serializing_if = "Option::is_none")]
        waiting: Option<u64>,
    },
    Committed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        topic: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    Unsubscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        topic: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    /// A room's members.
    Presence {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        topic: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        /// Members, in order of user id; absent for a room too large to list.
        #[serde(skip_serializing_if = "Option::is_none")]
        members: Option<Vec<String>>,
        /// How many members (users); for a room too large to list, how many subscriptions.
        count: u64,
        /// Where the next page starts (its `after`), when more members follow.
        #[serde(skip_serializing_if = "Option::is_none")]
        next: Option<String>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        large: bool,
    },
    /// Which users are online.
    Online {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        users: BTreeMap<String, bool>,
    },
    /// A page of past records.
    History {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        topic: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        /// `message` frames, oldest first.
        messages: Vec<Box<RawValue>>,
        /// Where the next older page ends: the `before` of the next request.
        before: BTreeMap<i32, i64>,
        /// No older record is left in Kafka: this was the last page.
        oldest: bool,
        /// The hub's bound on records read per request ran out before the page was full;
        /// the next request carries on from `before`.
        partial: bool,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
    },
    /// The push subscription is stored for the user.
    #[serde(rename = "push_subscribed")]
    PushSubscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        endpoint: String,
    },
    /// `removed` is false when the user had no subscription with this endpoint.
    #[serde(rename = "push_unsubscribed")]
    PushUnsubscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        endpoint: String,
        removed: bool,
    },
    /// The VAPID public key, base64url: `applicationServerKey` for `PushManager.subscribe`.
    #[serde(rename = "push_key")]
    PushKey {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        key: String,
    },
    Authenticated {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        sub: String,
        /// When the hub closes the socket unless a new token comes first, in ms.
        expires_at: i64,
    },
    /// The token runs out soon: send a fresh one with an `auth` frame.
    Expiring { expires_at: i64 },
    /// The socket fell behind and is being closed; resubscribe with these offsets.
    Lagged {
        /// Subscriptions to whole topics.
        topics: BTreeMap<String, BTreeMap<i32, i64>>,
        /// Subscriptions to keys, per topic and key.
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        keys: BTreeMap<String, BTreeMap<String, BTreeMap<i32, i64>>>,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        code: ErrorCode,
        message: String,
        /// Set when the error ends a subscription.
        #[serde(skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
        /// With `topic`: the key of the subscription it ends.
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        /// With `rate_limited`: how long to wait before sending the request again.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

/// A range of offsets, `[from, to)`, that a replay cannot deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Lost {
    pub from: i64,
    pub to: i64,
    pub reason: LostReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LostReason {
    /// Kafka no longer holds them.
    Retention,
    /// The replay would exceed `WSKAFKA_MAX_REPLAY` records on this partition.
    ReplayLimit,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::UnknownTopic => "unknown_topic",
            ErrorCode::IdConflict => "id_conflict",
            ErrorCode::RetryExpired => "retry_expired",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl Reply {
    pub fn error(id: Option<RequestId>, code: ErrorCode, message: impl Into<String>) -> Self {
        Reply::Error {
            id,
            code,
            message: message.into(),
            topic: None,
            key: None,
            retry_after_ms: None,
        }
    }

    /// `rate_limited`: the request was not served, and may be sent again after `wait`.
    /// `whose` says whose budget it was: the socket's (`""`) or its user's.
    pub fn rate_limited(
        id: Option<RequestId>,
        what: &str,
        rate: u32,
        whose: &str,
        wait: Duration,
    ) -> Self {
        // Whole milliseconds, rounded up: a client that waits exactly this long gets through.
        let retry_after_ms = u64::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(u64::MAX);
        Reply::Error {
            id,
            code: ErrorCode::RateLimited,
            message: format!(
                "more than {rate} {what} requests per second{whose}: this one was not served; retry after {retry_after_ms} ms"
            ),
            topic: None,
            key: None,
            retry_after_ms: Some(retry_after_ms),
        }
    }

    /// An error that ends the subscription to `key` of `topic` (or to all of it).
    pub fn ended(
        id: Option<RequestId>,
        topic: &str,
        key: Option<&str>,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> Self {
        Reply::Error {
            id,
            code,
            message: message.into(),
            topic: Some(topic.to_string()),
            key: key.map(str::to_string),
            retry_after_ms: None,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("replies always serialise")
    }
}

/// A request refused: the `error` frame that answers it, kept small until it is written.
#[derive(Debug)]
pub struct Refused {
    pub id: Option<RequestId>,
    pub code: ErrorCode,
    pub message: String,
}

impl Refused {
    pub fn new(id: Option<RequestId>, code: ErrorCode, message: impl Into<String>) -> Self {
        Refused {
            id,
            code,
            message: message.into(),
        }
    }
}

impl From<Refused> for Reply {
    fn from(Refused { id, code, message }: Refused) -> Reply {
        Reply::error(id, code, message)
    }
}

impl From<BadRequest> for Refused {
    fn from(BadRequest { id, message }: BadRequest) -> Refused {
        Refused::new(id, ErrorCode::BadRequest, message)
    }
}

impl From<BadRequest> for Reply {
    fn from(e: BadRequest) -> Self {
        Reply::error(e.id, ErrorCode::BadRequest, e.message)
    }
}

/// The frames the hub sends outside any request's answer, built here as every other frame
/// is: borrowed, since each is built once and shared by every socket it goes to.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Told<'a> {
    /// A watched user came online or went offline (`online` with `watch`).
    Status { user: &'a str, online: bool },
    /// Who joined and who left a room since its last diff.
    PresenceDiff {
        topic: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<&'a str>,
        joins: &'a [&'a str],
        leaves: &'a [&'a str],
    },
    /// A signal for the subscribers of its room that asked for signals.
    Signal {
        topic: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<&'a str>,
        sender: &'a str,
        payload: &'a RawValue,
    },
    /// The user's read positions moved on another of the user's sockets.
    Read {
        topic: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<&'a str>,
        offsets: &'a BTreeMap<i32, i64>,
    },
}

impl Told<'_> {
    fn to_json(&self) -> String {
        serde_json::to_string(self).expect("frames always serialise")
    }
}

pub fn status_frame(user: &str, online: bool) -> String {
    Told::Status { user, online }.to_json()
}

pub fn presence_diff_frame(
    topic: &str,
    key: Option<&str>,
    joins: &[&str],
    leaves: &[&str],
) -> String {
    Told::PresenceDiff {
        topic,
        key,
        joins,
        leaves,
    }
    .to_json()
}

pub fn signal_frame(topic: &str, key: Option<&str>, sender: &str, payload: &RawValue) -> String {
    Told::Signal {
        topic,
        key,
        sender,
        payload,
    }
    .to_json()
}

pub fn read_frame(topic: &str, key: Option<&str>, offsets: &BTreeMap<i32, i64>) -> String {
    Told::Read {
        topic,
        key,
        offsets,
    }
    .to_json()
}
