//! The JSON protocol spoken over the socket; `docs/protocol.md` is its public description.
//!
//! Requests are parsed in one pass into a flat struct and only then sorted by `type`. Serde's
//! internally tagged enums buffer their input, which rules out borrowing the publish payload
//! as a `RawValue`; the flat struct keeps the payload as the client's own bytes (no
//! re-serialisation) and lets every error echo the request `id` when there is one.

use std::borrow::Cow;
use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// The client's correlation id, echoed verbatim in the reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RequestId {
    Text(String),
    Number(i64),
}

#[derive(Debug)]
pub enum Request<'a> {
    Publish(Publish<'a>),
    Subscribe {
        id: Option<RequestId>,
        topic: Cow<'a, str>,
    },
    Unsubscribe {
        id: Option<RequestId>,
        topic: Cow<'a, str>,
    },
    Ping {
        id: Option<RequestId>,
    },
}

#[derive(Debug)]
pub struct Publish<'a> {
    pub id: Option<RequestId>,
    pub topic: Cow<'a, str>,
    pub key: Option<Cow<'a, str>>,
    pub headers: HashMap<String, String>,
    /// The JSON value exactly as the client wrote it; it becomes the record value.
    pub payload: &'a RawValue,
}

/// A request that could not be understood; answered with a `bad_request` error frame.
#[derive(Debug, PartialEq)]
pub struct BadRequest {
    pub id: Option<RequestId>,
    pub message: String,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    id: Option<RequestId>,
    #[serde(borrow)]
    topic: Option<Cow<'a, str>>,
    #[serde(borrow)]
    key: Option<Cow<'a, str>>,
    headers: Option<HashMap<String, String>>,
    #[serde(borrow, default, deserialize_with = "present")]
    payload: Option<&'a RawValue>,
}

/// `Option<&RawValue>` would read `"payload": null` as a missing field; a JSON `null` is a
/// payload like any other.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Parses one text frame.
pub fn parse(text: &str) -> Result<Request<'_>, BadRequest> {
    let envelope: Envelope = serde_json::from_str(text).map_err(|e| BadRequest {
        id: None,
        message: format!("malformed request: {e}"),
    })?;
    let id = envelope.id;
    let missing = |field: &str| BadRequest {
        id: id.clone(),
        message: format!("missing field `{field}`"),
    };
    let Some(kind) = envelope.kind else {
        return Err(missing("type"));
    };
    let topic = envelope.topic;
    match kind.as_ref() {
        "publish" => Ok(Request::Publish(Publish {
            topic: topic.ok_or_else(|| missing("topic"))?,
            payload: envelope.payload.ok_or_else(|| missing("payload"))?,
            key: envelope.key,
            headers: envelope.headers.unwrap_or_default(),
            id,
        })),
        "subscribe" => Ok(Request::Subscribe {
            topic: topic.ok_or_else(|| missing("topic"))?,
            id,
        }),
        "unsubscribe" => Ok(Request::Unsubscribe {
            topic: topic.ok_or_else(|| missing("topic"))?,
            id,
        }),
        "ping" => Ok(Request::Ping { id }),
        other => Err(BadRequest {
            message: format!("unknown request type {other:?}"),
            id,
        }),
    }
}

/// Reads just the `id` of a frame, to answer a request refused before parsing (too large).
pub fn peek_id(text: &str) -> Option<RequestId> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: Option<RequestId>,
    }
    serde_json::from_str::<IdOnly>(text).ok()?.id
}

/// WebSocket close codes the hub ends a connection with.
pub mod close {
    /// The hub is shutting down; reconnect to another instance.
    pub const GOING_AWAY: u16 = 1001;
    /// The token's `exp` (plus the configured leeway) has passed.
    pub const TOKEN_EXPIRED: u16 = 4401;
    /// The connection's send queue overflowed: it did not read fast enough.
    pub const TOO_SLOW: u16 = 4429;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Forbidden,
    TooLarge,
    LimitExceeded,
    RateLimited,
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
    },
    Unsubscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        topic: String,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        code: ErrorCode,
        message: String,
    },
}

impl Reply {
    pub fn error(id: Option<RequestId>, code: ErrorCode, message: impl Into<String>) -> Self {
        Reply::Error {
            id,
            code,
            message: message.into(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("replies always serialise")
    }
}

impl From<BadRequest> for Reply {
    fn from(e: BadRequest) -> Self {
        Reply::error(e.id, ErrorCode::BadRequest, e.message)
    }
}

/// A Kafka record as the consumer hands it over, borrowed from librdkafka's buffer.
pub struct Record<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
    pub value: Option<&'a [u8]>,
}

/// Serialises a record as a `message` frame. It runs once per record, whatever the number
/// of subscribers: the resulting string is shared by every socket it goes to.
///
/// Nothing is dropped for not being JSON or UTF-8: such keys, header values and payloads
/// travel base64-encoded in `*_base64` fields instead.
pub fn message_frame(record: &Record<'_>) -> String {
    let (key, key_base64) = split_text(record.key);
    let mut headers = Vec::new();
    let mut headers_base64 = Vec::new();
    for &(name, value) in &record.headers {
        match value.map(std::str::from_utf8) {
            None => headers.push((name, None)),
            Some(Ok(text)) => headers.push((name, Some(text))),
            Some(Err(_)) => headers_base64.push((name, value.map(|v| BASE64.encode(v)))),
        }
    }
    let json = record
        .value
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|s| serde_json::from_str::<&RawValue>(s).ok());
    let payload_base64 = match (record.value, json) {
        (Some(v), None) => Some(BASE64.encode(v)),
        _ => None,
    };
    let frame = MessageFrame {
        kind: "message",
        topic: record.topic,
        partition: record.partition,
        offset: record.offset,
        timestamp: record.timestamp,
        key,
        key_base64,
        headers: Pairs(&headers),
        headers_base64: Pairs(&headers_base64),
        payload: json,
        payload_base64,
    };
    serde_json::to_string(&frame).expect("message frames always serialise")
}

fn split_text(bytes: Option<&[u8]>) -> (Option<&str>, Option<String>) {
    match bytes.map(std::str::from_utf8) {
        None => (None, None),
        Some(Ok(text)) => (Some(text), None),
        Some(Err(_)) => (None, bytes.map(|b| BASE64.encode(b))),
    }
}

#[derive(Serialize)]
struct MessageFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    topic: &'a str,
    partition: i32,
    offset: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_base64: Option<String>,
    #[serde(skip_serializing_if = "Pairs::is_empty")]
    headers: Pairs<'a, &'a str>,
    #[serde(skip_serializing_if = "Pairs::is_empty")]
    headers_base64: Pairs<'a, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
}

/// Header pairs serialised as a JSON object without building a map first.
struct Pairs<'a, V>(&'a [(&'a str, Option<V>)]);

impl<V> Pairs<'_, V> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<V: Serialize> Serialize for Pairs<'_, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn bad(text: &str) -> BadRequest {
        parse(text).unwrap_err()
    }

    #[test]
    fn parses_a_full_publish() {
        let text = r#"{"type":"publish","id":"1","topic":"chat.lobby","key":"alice",
            "headers":{"h":"v"},"payload":{"text":"hi", "n": [1, 2]}}"#;
        let Request::Publish(p) = parse(text).unwrap() else {
            panic!("not a publish")
        };
        assert_eq!(p.id, Some(RequestId::Text("1".into())));
        assert_eq!(p.topic, "chat.lobby");
        assert_eq!(p.key.as_deref(), Some("alice"));
        assert_eq!(p.headers, HashMap::from([("h".into(), "v".into())]));
        assert_eq!(p.payload.get(), r#"{"text":"hi", "n": [1, 2]}"#);
    }

    #[test]
    fn publish_key_and_headers_are_optional_and_null_is_a_payload() {
        let Request::Publish(p) =
            parse(r#"{"type":"publish","topic":"t","payload":null}"#).unwrap()
        else {
            panic!("not a publish")
        };
        assert_eq!(p.id, None);
        assert_eq!(p.key, None);
        assert!(p.headers.is_empty());
        assert_eq!(p.payload.get(), "null");
    }

    #[test]
    fn parses_subscribe_unsubscribe_ping_with_numeric_ids() {
        assert!(matches!(
            parse(r#"{"type":"subscribe","id":7,"topic":"a"}"#),
            Ok(Request::Subscribe { id: Some(RequestId::Number(7)), topic }) if topic == "a"
        ));
        assert!(matches!(
            parse(r#"{"type":"unsubscribe","topic":"a"}"#),
            Ok(Request::Unsubscribe { id: None, topic }) if topic == "a"
        ));
        assert!(matches!(
            parse(r#"{"type":"ping","id":"p"}"#),
            Ok(Request::Ping { id: Some(RequestId::Text(p)) }) if p == "p"
        ));
    }

    #[test]
    fn escaped_topics_are_unescaped() {
        let Request::Subscribe { topic, .. } =
            parse(r#"{"type":"subscribe","topic":"chat\u002elobby"}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(topic, "chat.lobby");
    }

    #[test]
    fn malformed_json_is_a_bad_request_without_id() {
        let e = bad(r#"{"type":"publish","#);
        assert_eq!(e.id, None);
        assert!(e.message.starts_with("malformed request"), "{}", e.message);
        assert!(bad("[1,2]").message.starts_with("malformed request"));
        assert!(bad("").message.starts_with("malformed request"));
    }

    #[test]
    fn missing_fields_and_unknown_types_echo_the_id() {
        let e = bad(r#"{"id":"9","topic":"a"}"#);
        assert_eq!(
            (e.id, e.message.as_str()),
            (Some(RequestId::Text("9".into())), "missing field `type`")
        );
        let e = bad(r#"{"type":"publish","id":"1","payload":1}"#);
        assert_eq!(e.message, "missing field `topic`");
        assert_eq!(e.id, Some(RequestId::Text("1".into())));
        assert_eq!(
            bad(r#"{"type":"publish","topic":"t"}"#).message,
            "missing field `payload`"
        );
        assert_eq!(
            bad(r#"{"type":"subscribe"}"#).message,
            "missing field `topic`"
        );
        let e = bad(r#"{"type":"jump","id":2}"#);
        assert_eq!(e.id, Some(RequestId::Number(2)));
        assert_eq!(e.message, r#"unknown request type "jump""#);
    }

    #[test]
    fn wrongly_typed_fields_are_bad_requests() {
        assert!(
            bad(r#"{"type":"subscribe","topic":5}"#)
                .message
                .starts_with("malformed")
        );
        assert!(
            bad(r#"{"type":"publish","topic":"t","payload":1,"headers":{"a":1}}"#)
                .message
                .starts_with("malformed")
        );
    }

    #[test]
    fn peek_id_reads_the_id_only() {
        assert_eq!(
            peek_id(r#"{"id":"x","payload":"big"}"#),
            Some(RequestId::Text("x".into()))
        );
        assert_eq!(peek_id("not json"), None);
    }

    #[test]
    fn replies_serialise_as_documented() {
        let ack = Reply::Ack {
            id: Some(RequestId::Text("1".into())),
            topic: "chat.lobby".into(),
            partition: 0,
            offset: 42,
        };
        assert_eq!(
            serde_json::from_str::<Value>(&ack.to_json()).unwrap(),
            json!({"type":"ack","id":"1","topic":"chat.lobby","partition":0,"offset":42})
        );
        let err = Reply::error(None, ErrorCode::TooLarge, "too big");
        assert_eq!(
            serde_json::from_str::<Value>(&err.to_json()).unwrap(),
            json!({"type":"error","code":"too_large","message":"too big"})
        );
        assert_eq!(
            Reply::Pong {
                id: Some(RequestId::Number(4))
            }
            .to_json(),
            r#"{"type":"pong","id":4}"#
        );
    }

    fn record<'a>(key: Option<&'a [u8]>, value: Option<&'a [u8]>) -> Record<'a> {
        Record {
            topic: "chat.lobby",
            partition: 2,
            offset: 42,
            timestamp: Some(1_732_500_000_000),
            key,
            headers: vec![("h", Some(b"v".as_slice())), ("empty", None)],
            value,
        }
    }

    #[test]
    fn json_records_embed_their_payload() {
        let frame = message_frame(&record(Some(b"alice"), Some(br#"{"text":"hi"}"#)));
        assert_eq!(
            serde_json::from_str::<Value>(&frame).unwrap(),
            json!({"type":"message","topic":"chat.lobby","partition":2,"offset":42,
                   "timestamp":1_732_500_000_000_i64,"key":"alice",
                   "headers":{"h":"v","empty":null},"payload":{"text":"hi"}})
        );
    }

    #[test]
    fn non_json_and_non_utf8_data_travel_as_base64() {
        let frame = message_frame(&Record {
            headers: vec![("bin", Some(&[0xff, 0x00][..]))],
            ..record(Some(&[0xfe]), Some(b"plain text"))
        });
        let v: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(v["payload_base64"], "cGxhaW4gdGV4dA==");
        assert_eq!(v["key_base64"], "/g==");
        assert_eq!(v["headers_base64"], json!({"bin":"/wA="}));
        assert!(v.get("payload").is_none() && v.get("key").is_none() && v.get("headers").is_none());
    }

    #[test]
    fn tombstones_carry_no_payload_field() {
        let v: Value = serde_json::from_str(&message_frame(&record(None, None))).unwrap();
        assert!(v.get("payload").is_none() && v.get("payload_base64").is_none());
        assert!(v.get("key").is_none());
    }
}
