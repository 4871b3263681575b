//! `subscribe`, `unsubscribe` and `commit`: following a topic or a room of it, from a start
//! position, and storing how far the user has read.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;

use super::{BadRequest, Envelope, Request, RequestId, parse_offsets};

#[derive(Debug)]
pub struct Subscribe<'a> {
    pub id: Option<RequestId>,
    pub topic: Cow<'a, str>,
    /// The key (room) followed, from `key` or `filter.key`; none: every key.
    pub key: Option<Cow<'a, str>>,
    pub from: Start,
    /// The header values records must carry.
    pub headers: BTreeMap<String, String>,
    /// `presence_diff` frames of the room.
    pub presence: bool,
    /// Signals sent to the room.
    pub signals: bool,
}

/// Where a subscription starts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Start {
    /// With the next record the hub's live stream carries.
    #[default]
    Latest,
    /// With the oldest record Kafka still holds.
    Earliest,
    /// With the first record whose timestamp is at or after this many ms since the epoch.
    Timestamp(i64),
    /// With these offsets, per partition: the next offset the client wants.
    Offsets(BTreeMap<i32, i64>),
    /// Where the user's last `commit` left each partition, from any device; partitions it
    /// never committed start at the live stream. Parsed empty: the replay reads the stored
    /// positions into it before it plans.
    Committed(BTreeMap<i32, i64>),
}

/// The client's filter as sent: the key and header values a record must carry.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    pub key: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

pub(super) fn subscribe(mut e: Envelope<'_>) -> Result<Request<'_>, BadRequest> {
    let from = match &e.from {
        None => Start::Latest,
        Some(from) => parse_start(from).map_err(|message| e.bad(message))?,
    };
    let FilterSpec { key, headers } = e.filter.take().unwrap_or_default();
    let key = match (e.key.take(), key) {
        (Some(a), Some(b)) if a != b => {
            return Err(e.bad("`key` and `filter.key` differ: give one"));
        }
        (key, filter_key) => key.or(filter_key.map(Cow::Owned)),
    };
    Ok(Request::Subscribe(Subscribe {
        topic: e.required("topic", |e| e.topic.take())?,
        key,
        from,
        headers,
        presence: e.presence.unwrap_or(false),
        signals: e.signals.unwrap_or(false),
        id: e.id,
    }))
}

pub(super) fn unsubscribe(mut e: Envelope<'_>) -> Result<Request<'_>, BadRequest> {
    Ok(Request::Unsubscribe {
        topic: e.required("topic", |e| e.topic.take())?,
        key: e.key,
        id: e.id,
    })
}

pub(super) fn commit(mut e: Envelope<'_>) -> Result<Request<'_>, BadRequest> {
    let topic = e.required("topic", |e| e.topic.take())?;
    let offsets = e.required("offsets", |e| e.offsets.take())?;
    let offsets = parse_offsets("offsets", &offsets).map_err(|message| e.bad(message))?;
    if offsets.is_empty() {
        return Err(e.bad("`offsets` names no partition"));
    }
    Ok(Request::Commit {
        id: e.id,
        topic,
        key: e.key,
        offsets,
    })
}

/// Reads `from`, whose shapes are easier to explain in an error than serde's untagged enums
/// would.
fn parse_start(from: &serde_json::Value) -> Result<Start, String> {
    use serde_json::Value;
    const SHAPES: &str = r#"`from` must be "latest", "earliest", "committed", {"timestamp": ms} or {"offsets": {"<partition>": <offset>}}"#;
    let object = match from {
        Value::String(s) if s == "latest" => return Ok(Start::Latest),
        Value::String(s) if s == "earliest" => return Ok(Start::Earliest),
        Value::String(s) if s == "committed" => return Ok(Start::Committed(BTreeMap::new())),
        Value::Object(object) if object.len() == 1 => object,
        _ => return Err(SHAPES.into()),
    };
    if let Some(timestamp) = object.get("timestamp") {
        return match timestamp.as_i64() {
            Some(ms) if ms >= 0 => Ok(Start::Timestamp(ms)),
            _ => Err("`from.timestamp` must be milliseconds since the epoch".into()),
        };
    }
    match object.get("offsets") {
        Some(offsets) => parse_offsets("from.offsets", offsets).map(Start::Offsets),
        None => Err(SHAPES.into()),
    }
}
