//! `publish` and `signal`: a record for Kafka, and an ephemeral payload for a room.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use serde_json::value::RawValue;

use super::{BadRequest, Envelope, Request, RequestId};

#[derive(Debug)]
pub struct Publish<'a> {
    pub id: Option<RequestId>,
    pub topic: Cow<'a, str>,
    pub key: Option<Cow<'a, str>>,
    pub headers: HashMap<String, String>,
    /// The JSON value exactly as the client wrote it; it becomes the record value.
    pub payload: &'a RawValue,
    /// The client's id for this record, the same on every attempt (see `retries`).
    pub publish_id: Option<Cow<'a, str>>,
    /// Set when this is not the first attempt.
    pub retry: Option<Retry>,
}

/// What a client says of an earlier attempt of the same publish (see `retries`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// How long ago the client sent its first attempt, on its own clock.
    pub age: Duration,
    /// 1 for the first resend, 2 for the next, ...
    pub attempt: u32,
}

/// The longest `publish_id` taken: a UUID is 36 characters.
pub const MAX_PUBLISH_ID: usize = 64;

/// Deepest nesting of arrays and objects a payload may have. The hub never recurses into a
/// payload (it travels as the client's bytes), but the consumers behind Kafka may: this is
/// what serde_json reads with its default recursion limit, which a record must not make
/// them hit.
const MAX_NESTING: usize = 127;

pub(super) fn publish(mut e: Envelope<'_>) -> Result<Publish<'_>, BadRequest> {
    let retry = publish_retry(e.publish_id.is_some(), e.age_ms, e.attempt)
        .map_err(|message| e.bad(message))?;
    let publish_id = match e.publish_id.take() {
        Some(publish_id) if !valid_publish_id(&publish_id) => {
            return Err(e.bad(format!(
                "`publish_id` must be 1 to {MAX_PUBLISH_ID} ASCII letters, digits or `-_.:`"
            )));
        }
        publish_id => publish_id,
    };
    let topic = e.required("topic", |e| e.topic.take())?;
    let payload = e.required("payload", |e| e.payload.take())?;
    let depth = nesting(payload.get());
    if depth > MAX_NESTING {
        return Err(e.bad(format!(
            "`payload` nests {depth} levels deep; at most {MAX_NESTING} are accepted"
        )));
    }
    Ok(Publish {
        retry,
        publish_id,
        topic,
        payload,
        key: e.key,
        headers: e.headers.unwrap_or_default(),
        id: e.id,
    })
}

pub(super) fn signal(mut e: Envelope<'_>) -> Result<Request<'_>, BadRequest> {
    Ok(Request::Signal {
        topic: e.required("topic", |e| e.topic.take())?,
        payload: e.required("payload", |e| e.payload.take())?,
        key: e.key,
        id: e.id,
    })
}

/// A publish's `age_ms` and `attempt`, which only a publish with an id may carry.
fn publish_retry(
    has_id: bool,
    age_ms: Option<u64>,
    attempt: Option<u32>,
) -> Result<Option<Retry>, String> {
    match (has_id, age_ms, attempt) {
        (_, None, None) => Ok(None),
        (false, _, _) => Err(
            "`age_ms` and `attempt` mark a resend: give the `publish_id` of the first attempt"
                .into(),
        ),
        (true, None, Some(_)) => Err("missing field `age_ms`".into()),
        (true, Some(_), Some(0)) => Err("`attempt` counts resends from 1".into()),
        (true, Some(age), attempt) => Ok(Some(Retry {
            age: Duration::from_millis(age),
            attempt: attempt.unwrap_or(1),
        })),
    }
}

/// A publish id is 1 to `MAX_PUBLISH_ID` ASCII letters, digits or `-_.:`, so that it is the
/// same bytes in JSON, in a Kafka header and in a log line.
fn valid_publish_id(id: &str) -> bool {
    (1..=MAX_PUBLISH_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// How deeply arrays and objects nest in `json`, which must be valid JSON.
pub(super) fn nesting(json: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut bytes = json.bytes();
    while let Some(byte) = bytes.next() {
        match byte {
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth -= 1,
            b'"' => {
                while let Some(byte) = bytes.next() {
                    match byte {
                        b'\\' => {
                            bytes.next();
                        }
                        b'"' => break,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    deepest
}
