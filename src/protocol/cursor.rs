//! The resume cursor: what an SSE stream's event `id` carries, so that a stream reopened
//! with `Last-Event-ID`, on any hub (hubs keep no state of a stream once it ends), takes up
//! every subscription of the old one where it left off: per subscription its topic, its
//! key, its filter's headers, its extras and the next offset per partition.
//!
//! It is the subscriptions as compact JSON (`[{"t":"chat.rooms","k":"lobby","o":{"0":43}}]`):
//! JSON escapes line breaks, which an SSE field cannot hold, and a client may read it. Its
//! size is about 25 bytes per subscription plus its topic, key and headers, and 10 to 20
//! bytes per partition; the hub refuses a new subscription on a stream whose id reached
//! `MAX_ID` bytes, and at most `MAX_SUBSCRIPTIONS`, so an id stays within a few KiB, well
//! inside what proxies pass in a header or a URL (nginx: 8 KiB).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;

/// Past this many bytes of id, a stream takes no new subscription.
pub const MAX_ID: usize = 4096;
/// Subscriptions one stream may hold: a resume makes them all again at once, within a
/// connection's burst of subscribe requests (20 by default).
pub const MAX_SUBSCRIPTIONS: usize = 16;
/// The longest id a reopened stream is taken with: one at `MAX_ID` plus the largest
/// subscription a frame could add.
const MAX_READ: usize = 64 * 1024;

/// One subscription's place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resume {
    #[serde(rename = "t")]
    pub topic: String,
    #[serde(rename = "k", default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The next offset per partition; partitions left out start at their oldest record, as
    /// in a `subscribe` with `from.offsets`.
    #[serde(rename = "o")]
    pub next: BTreeMap<i32, i64>,
    #[serde(rename = "h", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(rename = "p", default, skip_serializing_if = "is_false")]
    pub presence: bool,
    #[serde(rename = "s", default, skip_serializing_if = "is_false")]
    pub signals: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

pub fn encode(resumes: &[Resume]) -> String {
    serde_json::to_string(resumes).expect("a cursor always serialises")
}

/// Why a `Last-Event-ID` was not taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CursorError {
    #[error("Last-Event-ID is longer than {MAX_READ} bytes")]
    TooLong,
    #[error("Last-Event-ID names more than {MAX_SUBSCRIPTIONS} subscriptions")]
    TooMany,
    #[error("Last-Event-ID is not an id this hub gave: {0}")]
    Malformed(String),
}

pub fn decode(id: &str) -> Result<Vec<Resume>, CursorError> {
    if id.len() > MAX_READ {
        return Err(CursorError::TooLong);
    }
    let resumes: Vec<Resume> =
        serde_json::from_str(id).map_err(|e| CursorError::Malformed(e.to_string()))?;
    if resumes.len() > MAX_SUBSCRIPTIONS {
        return Err(CursorError::TooMany);
    }
    Ok(resumes)
}

impl Resume {
    /// The `subscribe` request that takes this subscription up again.
    pub fn request(&self) -> String {
        let mut frame = json!({
            "type": "subscribe",
            "topic": self.topic,
            "from": {"offsets": self.next},
        });
        if let Some(key) = &self.key {
            frame["key"] = json!(key);
        }
        if !self.headers.is_empty() {
            frame["filter"] = json!({"headers": self.headers});
        }
        if self.presence {
            frame["presence"] = json!(true);
        }
        if self.signals {
            frame["signals"] = json!(true);
        }
        frame.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Request, Start, parse};

    fn room() -> Resume {
        Resume {
            topic: "chat.rooms".into(),
            key: Some("lobby".into()),
            next: BTreeMap::from([(0, 43), (2, 7)]),
            headers: BTreeMap::from([("kind".into(), "text".into())]),
            presence: true,
            signals: false,
        }
    }

    #[test]
    fn an_id_reads_back_as_it_was_written_and_leaves_defaults_out() {
        let whole = Resume {
            topic: "news".into(),
            key: None,
            next: BTreeMap::new(),
            headers: BTreeMap::new(),
            presence: false,
            signals: false,
        };
        let id = encode(&[room(), whole.clone()]);
        assert_eq!(
            id,
            r#"[{"t":"chat.rooms","k":"lobby","o":{"0":43,"2":7},"h":{"kind":"text"},"p":true},{"t":"news","o":{}}]"#
        );
        assert_eq!(decode(&id), Ok(vec![room(), whole]));
    }

    #[test]
    fn a_resume_is_the_subscribe_that_starts_where_it_left_off() {
        let text = room().request();
        let Ok(Request::Subscribe(subscribe)) = parse(&text) else {
            panic!("{text} does not parse as a subscribe");
        };
        assert_eq!(subscribe.topic, "chat.rooms");
        assert_eq!(subscribe.key.as_deref(), Some("lobby"));
        assert_eq!(
            subscribe.from,
            Start::Offsets(BTreeMap::from([(0, 43), (2, 7)]))
        );
        assert_eq!(
            subscribe.headers.get("kind").map(String::as_str),
            Some("text")
        );
        assert!(subscribe.presence && !subscribe.signals);
    }

    #[test]
    fn ids_the_hub_did_not_give_are_refused() {
        assert!(matches!(decode("42"), Err(CursorError::Malformed(_))));
        assert!(matches!(
            decode(r#"[{"t":"a","o":{},"x":1}]"#),
            Err(CursorError::Malformed(_))
        ));
        let many = encode(&vec![room(); MAX_SUBSCRIPTIONS + 1]);
        assert_eq!(decode(&many), Err(CursorError::TooMany));
        assert_eq!(decode(&"x".repeat(MAX_READ + 1)), Err(CursorError::TooLong));
    }
}
