//! Records as `message` frames, and the headers the hub reserves.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

/// A Kafka record as the consumer hands it over, borrowed from librdkafka's buffer.
pub struct RecordView<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub headers: &'a [(&'a str, Option<&'a [u8]>)],
    pub value: Option<&'a [u8]>,
}

/// The header in which the hub names the user who published a record through it. Clients
/// cannot set it; producers behind Kafka may, and are trusted.
pub const SENDER_HEADER: &str = "wskafka-sender";

/// The header carrying a publish's `publish_id`, so that any consumer can tell retries apart.
pub const PUBLISH_ID_HEADER: &str = "wskafka-publish-id";

/// Header names the hub writes or reads as its own begin with this, in any case. Kafka
/// compares header names exactly, but consumers and bridges often do not (HTTP headers are
/// case-insensitive), so a client may set none of them, whatever the spelling.
const RESERVED_HEADER_PREFIX: &str = "wskafka-";

pub fn is_reserved_header(name: &str) -> bool {
    name.get(..RESERVED_HEADER_PREFIX.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(RESERVED_HEADER_PREFIX))
}

/// Serialises a record as a `message` frame. It runs once per record, whatever the number
/// of subscribers: the resulting string is shared by every socket it goes to.
///
/// Nothing is dropped for not being JSON or UTF-8: such keys, header values and payloads
/// travel base64-encoded in `*_base64` fields instead. The sender header becomes the
/// `sender` field (its last value, as with any repeated header).
pub fn message_frame(record: &RecordView<'_>) -> String {
    let (key, key_base64) = split_text(record.key);
    let sender = record
        .headers
        .iter()
        .rev()
        .find(|(name, _)| *name == SENDER_HEADER)
        .and_then(|(_, value)| std::str::from_utf8((*value)?).ok());
    let mut headers = Vec::new();
    let mut headers_base64 = Vec::new();
    for &(name, value) in record.headers {
        if name == SENDER_HEADER && sender.is_some() {
            continue;
        }
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
        sender,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    sender: Option<&'a str>,
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
