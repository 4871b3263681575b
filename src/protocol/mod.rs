//! The JSON protocol spoken over the socket; `docs/protocol.md` is its public description.
//!
//! Requests are parsed in one pass into a flat struct (`Envelope`) and only then sorted by
//! `type`, each by the parser of its type in the module named for it. Serde's internally
//! tagged enums buffer their input, which rules out borrowing the publish payload as a
//! `RawValue`; the flat struct keeps the payload as the client's own bytes (no
//! re-serialisation) and lets every error echo the request `id` when there is one.

pub mod cursor;
mod history;
mod presence;
mod publish;
mod push;
mod record;
mod reply;
mod subscribe;

pub use history::{Before, History};
pub use publish::{Publish, Retry};
pub use push::PushSubscription;
pub use record::{PUBLISH_ID_HEADER, RecordView, SENDER_HEADER, is_reserved_header, message_frame};
pub use reply::{
    ErrorCode, Lost, LostReason, Refused, Reply, close, presence_diff_frame, read_frame,
    signal_frame, status_frame,
};
pub use subscribe::{FilterSpec, Start, Subscribe};

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Deserializer, Serialize, de};
use serde_json::value::RawValue;

/// The client's correlation id, echoed verbatim in the reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum RequestId {
    Text(String),
    Number(i64),
}

/// By hand: an untagged enum buffers the value and builds an error for each variant it
/// does not fit, on every numbered request, and its error when none fits names no type.
impl<'de> Deserialize<'de> for RequestId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Id;
        impl de::Visitor<'_> for Id {
            type Value = RequestId;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or an integer as `id`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RequestId, E> {
                Ok(RequestId::Text(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RequestId, E> {
                Ok(RequestId::Number(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RequestId, E> {
                i64::try_from(v)
                    .map(RequestId::Number)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
        }
        d.deserialize_any(Id)
    }
}

#[derive(Debug)]
pub enum Request<'a> {
    Publish(Publish<'a>),
    Subscribe(Subscribe<'a>),
    /// Ends the subscription to `key` of `topic`, or without a key every subscription to
    /// the topic.
    Unsubscribe {
        id: Option<RequestId>,
        topic: Cow<'a, str>,
        key: Option<Cow<'a, str>>,
    },
    History(History<'a>),
    /// The members of a room (a topic, or a key of it).
    Presence {
        id: Option<RequestId>,
        topic: Cow<'a, str>,
        key: Option<Cow<'a, str>>,
        /// The last member of the previous page.
        after: Option<String>,
    },
    /// Which of `users` are online; with `watch`, the socket is told of their changes from
    /// now on (the list replaces the one watched before).
    Online {
        id: Option<RequestId>,
        users: Vec<String>,
        watch: bool,
    },
    /// An ephemeral payload for a room's current subscribers.
    Signal {
        id: Option<RequestId>,
        topic: Cow<'a, str>,
        key: Option<Cow<'a, str>>,
        payload: &'a RawValue,
    },
    Ping {
        id: Option<RequestId>,
    },
    /// Authenticates a socket opened without a token, or refreshes the token of a live one.
    Auth {
        id: Option<RequestId>,
        token: String,
    },
    /// Stores how far the user has read `topic` (or one key of it): the next offset per
    /// partition.
    Commit {
        id: Option<RequestId>,
        topic: Cow<'a, str>,
        key: Option<Cow<'a, str>>,
        offsets: BTreeMap<i32, i64>,
    },
    /// Registers a browser's push subscription for the user: pushed to while the user has no
    /// socket open.
    PushSubscribe {
        id: Option<RequestId>,
        subscription: PushSubscription,
    },
    /// Removes the user's push subscription with this endpoint.
    PushUnsubscribe {
        id: Option<RequestId>,
        endpoint: String,
    },
    /// The key pushes are signed with, for `PushManager.subscribe`'s `applicationServerKey`.
    PushKey {
        id: Option<RequestId>,
    },
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
    from: Option<serde_json::Value>,
    filter: Option<FilterSpec>,
    token: Option<String>,
    offsets: Option<serde_json::Value>,
    before: Option<serde_json::Value>,
    limit: Option<serde_json::Value>,
    presence: Option<bool>,
    signals: Option<bool>,
    after: Option<String>,
    users: Option<Vec<String>>,
    watch: Option<bool>,
    #[serde(borrow)]
    publish_id: Option<Cow<'a, str>>,
    age_ms: Option<u64>,
    attempt: Option<u32>,
    subscription: Option<serde_json::Value>,
    endpoint: Option<String>,
}

/// `Option<&RawValue>` would read `"payload": null` as a missing field; a JSON `null` is a
/// payload like any other.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

impl<'a> Envelope<'a> {
    /// A `bad_request` for this request.
    fn bad(&self, message: impl Into<String>) -> BadRequest {
        BadRequest {
            id: self.id.clone(),
            message: message.into(),
        }
    }

    /// The field `take` takes out, or the error that it is missing.
    fn required<T>(
        &mut self,
        field: &str,
        take: impl FnOnce(&mut Self) -> Option<T>,
    ) -> Result<T, BadRequest> {
        take(self).ok_or_else(|| self.bad(format!("missing field `{field}`")))
    }
}

/// Parses one text frame.
pub fn parse(text: &str) -> Result<Request<'_>, BadRequest> {
    let mut envelope: Envelope = serde_json::from_str(text).map_err(|e| BadRequest {
        id: None,
        message: format!("malformed request: {e}"),
    })?;
    let kind = envelope.required("type", |e| e.kind.take())?;
    match kind.as_ref() {
        "publish" => publish::publish(envelope).map(Request::Publish),
        "signal" => publish::signal(envelope),
        "subscribe" => subscribe::subscribe(envelope),
        "unsubscribe" => subscribe::unsubscribe(envelope),
        "commit" => subscribe::commit(envelope),
        "history" => history::history(envelope),
        "presence" => presence::presence(envelope),
        "online" => presence::online(envelope),
        "auth" => auth(envelope),
        "push_subscribe" => push::subscribe(envelope),
        "push_unsubscribe" => push::unsubscribe(envelope),
        "push_key" => push::key(envelope),
        "ping" => Ok(Request::Ping { id: envelope.id }),
        other => Err(envelope.bad(format!("unknown request type {other:?}"))),
    }
}

/// Parses a record sent over plain HTTP (`POST /publish`): a `publish` frame whose `type`
/// may be left out.
pub fn parse_publish(text: &str) -> Result<Publish<'_>, BadRequest> {
    let mut envelope: Envelope = serde_json::from_str(text).map_err(|e| BadRequest {
        id: None,
        message: format!("malformed record: {e}"),
    })?;
    match envelope.kind.take().as_deref() {
        None | Some("publish") => publish::publish(envelope),
        Some(other) => Err(envelope.bad(format!(
            "a record's `type` is \"publish\" or left out, not {other:?}"
        ))),
    }
}

fn auth(mut e: Envelope<'_>) -> Result<Request<'_>, BadRequest> {
    Ok(Request::Auth {
        token: e.required("token", |e| e.token.take())?,
        id: e.id,
    })
}

/// Most partitions one request may name: bounds the work a single frame can cause.
const MAX_PARTITIONS: usize = 10_000;

/// Reads `{"<partition>": <offset>, ...}`.
fn parse_offsets(field: &str, offsets: &serde_json::Value) -> Result<BTreeMap<i32, i64>, String> {
    let shape = || format!("`{field}` maps partition numbers to offsets, both 0 or more");
    let serde_json::Value::Object(offsets) = offsets else {
        return Err(shape());
    };
    if offsets.len() > MAX_PARTITIONS {
        return Err(format!(
            "`{field}` names more than {MAX_PARTITIONS} partitions"
        ));
    }
    offsets
        .iter()
        .map(
            |(partition, offset)| match (partition.parse::<i32>(), offset.as_i64()) {
                (Ok(p), Some(o)) if p >= 0 && o >= 0 => Ok((p, o)),
                _ => Err(format!("{}; got {partition:?}: {offset}", shape())),
            },
        )
        .collect()
}

/// Reads just the `id` of a frame, to answer a request refused before parsing (too large).
pub fn peek_id(text: &str) -> Option<RequestId> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: Option<RequestId>,
    }
    serde_json::from_str::<IdOnly>(text).ok()?.id
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::publish::{MAX_PUBLISH_ID, nesting};
    use super::*;

    #[test]
    fn every_spelling_of_a_wskafka_header_is_reserved() {
        for name in [
            "wskafka-sender",
            "WSKAFKA-SENDER",
            "Wskafka-Sender",
            "wskafka-id",
        ] {
            assert!(is_reserved_header(name), "{name}");
        }
        for name in [
            "wskafka",
            "x-wskafka-sender",
            "wskafkasender",
            "",
            "é-wskafka-",
        ] {
            assert!(!is_reserved_header(name), "{name}");
        }
    }
    use serde_json::{Value, json};

    #[test]
    fn error_codes_print_as_they_serialise() {
        use ErrorCode::*;
        for code in [
            BadRequest,
            Unauthorized,
            Forbidden,
            TooLarge,
            LimitExceeded,
            RateLimited,
            Unavailable,
            Internal,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }

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
    fn a_publish_id_and_a_resend_are_read_and_checked() {
        let Request::Publish(p) = parse(
            r#"{"type":"publish","topic":"t","payload":1,"publish_id":"4b1d-x_y.z:1","age_ms":2500,"attempt":2}"#,
        )
        .unwrap() else {
            panic!("not a publish")
        };
        assert_eq!(p.publish_id.as_deref(), Some("4b1d-x_y.z:1"));
        assert_eq!(
            p.retry,
            Some(Retry {
                age: Duration::from_millis(2500),
                attempt: 2
            })
        );
        let Request::Publish(p) =
            parse(r#"{"type":"publish","topic":"t","payload":1,"publish_id":"a","age_ms":0}"#)
                .unwrap()
        else {
            panic!("not a publish")
        };
        assert_eq!(
            p.retry.map(|r| r.attempt),
            Some(1),
            "a resend's attempt is 1 by default"
        );
        let long = "x".repeat(MAX_PUBLISH_ID + 1);
        for (text, expected) in [
            (r#"{"type":"publish","id":1,"topic":"t","payload":1,"publish_id":""}"#.to_string(), "`publish_id` must be"),
            (format!(r#"{{"type":"publish","id":1,"topic":"t","payload":1,"publish_id":"{long}"}}"#), "`publish_id` must be"),
            (r#"{"type":"publish","id":1,"topic":"t","payload":1,"publish_id":"é"}"#.to_string(), "`publish_id` must be"),
            (r#"{"type":"publish","id":1,"topic":"t","payload":1,"age_ms":5}"#.to_string(), "give the `publish_id`"),
            (r#"{"type":"publish","id":1,"topic":"t","payload":1,"publish_id":"a","attempt":1}"#.to_string(), "missing field `age_ms`"),
            (r#"{"type":"publish","id":1,"topic":"t","payload":1,"publish_id":"a","age_ms":1,"attempt":0}"#.to_string(), "from 1"),
        ] {
            let e = bad(&text);
            assert_eq!(e.id, Some(RequestId::Number(1)), "{text}");
            assert!(e.message.contains(expected), "{text}: {}", e.message);
        }
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
            Ok(Request::Subscribe(Subscribe { id: Some(RequestId::Number(7)), topic, from: Start::Latest, .. })) if topic == "a"
        ));
        assert!(matches!(
            parse(r#"{"type":"unsubscribe","topic":"a"}"#),
            Ok(Request::Unsubscribe { id: None, topic, key: None }) if topic == "a"
        ));
        assert!(matches!(
            parse(r#"{"type":"ping","id":"p"}"#),
            Ok(Request::Ping { id: Some(RequestId::Text(p)) }) if p == "p"
        ));
    }

    #[test]
    fn ids_are_strings_or_integers_and_echo_back_as_sent() {
        for (id, expected) in [
            (r#""a\"b""#, RequestId::Text("a\"b".into())),
            ("-3", RequestId::Number(-3)),
            ("9223372036854775807", RequestId::Number(i64::MAX)),
        ] {
            let Request::Ping { id: Some(parsed) } =
                parse(&format!(r#"{{"type":"ping","id":{id}}}"#)).unwrap()
            else {
                panic!("no id in {id}")
            };
            assert_eq!(parsed, expected);
            assert_eq!(serde_json::to_string(&parsed).unwrap(), id);
        }
        for id in ["true", "1.5", "[1]", "9223372036854775808"] {
            let e = bad(&format!(r#"{{"type":"ping","id":{id}}}"#));
            assert!(
                e.message
                    .contains("expected a string or an integer as `id`"),
                "{id}: {}",
                e.message
            );
        }
    }

    #[test]
    fn escaped_topics_are_unescaped() {
        let Request::Subscribe(Subscribe { topic, .. }) =
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

    fn start(from: &str) -> Result<Start, String> {
        match parse(&format!(
            r#"{{"type":"subscribe","id":1,"topic":"t","from":{from}}}"#
        )) {
            Ok(Request::Subscribe(s)) => Ok(s.from),
            Ok(other) => panic!("not a subscribe: {other:?}"),
            Err(e) => {
                assert_eq!(e.id, Some(RequestId::Number(1)));
                Err(e.message)
            }
        }
    }

    #[test]
    fn subscribe_starts_parse_in_each_documented_shape() {
        assert_eq!(start(r#""latest""#), Ok(Start::Latest));
        assert_eq!(start(r#""earliest""#), Ok(Start::Earliest));
        assert_eq!(
            start(r#"{"timestamp": 1732500000000}"#),
            Ok(Start::Timestamp(1_732_500_000_000))
        );
        assert_eq!(
            start(r#"{"offsets": {"0": 43, "2": 0}}"#),
            Ok(Start::Offsets(BTreeMap::from([(0, 43), (2, 0)])))
        );
        assert_eq!(
            start(r#"{"offsets": {}}"#),
            Ok(Start::Offsets(BTreeMap::new()))
        );
        assert_eq!(
            start(r#""committed""#),
            Ok(Start::Committed(BTreeMap::new()))
        );
    }

    #[test]
    fn nesting_counts_arrays_and_objects_but_not_brackets_in_strings() {
        assert_eq!(nesting("1"), 0);
        assert_eq!(nesting(r#"{"a":[1,{"b":[]}]}"#), 4);
        assert_eq!(nesting(r#"["[[[{", "\"[[", {}]"#), 2);
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(matches!(
            parse(&format!(
                r#"{{"type":"publish","topic":"t","payload":{}}}"#,
                deep(127)
            )),
            Ok(Request::Publish(_))
        ));
        let refused = bad(&format!(
            r#"{{"type":"publish","id":7,"topic":"t","payload":{}}}"#,
            deep(128)
        ));
        assert_eq!(refused.id, Some(RequestId::Number(7)));
        assert!(
            refused.message.contains("128 levels"),
            "{}",
            refused.message
        );
    }

    #[test]
    fn commits_parse_and_need_a_topic_and_offsets() {
        assert!(matches!(
            parse(r#"{"type":"commit","id":1,"topic":"t","offsets":{"0":5,"3":7}}"#),
            Ok(Request::Commit { topic, offsets, .. })
                if topic == "t" && offsets == BTreeMap::from([(0, 5), (3, 7)])
        ));
        assert_eq!(
            bad(r#"{"type":"commit","id":1,"topic":"t"}"#),
            BadRequest {
                id: Some(RequestId::Number(1)),
                message: "missing field `offsets`".into()
            }
        );
        for offsets in [r#"{}"#, r#"{"0":-1}"#, r#"{"p":1}"#, "[]", "3"] {
            let message = bad(&format!(
                r#"{{"type":"commit","topic":"t","offsets":{offsets}}}"#
            ))
            .message;
            assert!(message.contains("offsets"), "{offsets}: {message}");
        }
    }

    #[test]
    fn malformed_starts_say_what_is_expected() {
        for bad in [
            r#""newest""#,
            "5",
            r#"{"timestamp": 1, "offsets": {}}"#,
            r#"{"ts": 1}"#,
        ] {
            let message = start(bad).unwrap_err();
            assert!(message.starts_with("`from` must be"), "{bad}: {message}");
        }
        assert!(
            start(r#"{"timestamp": -1}"#)
                .unwrap_err()
                .contains("milliseconds")
        );
        assert!(start(r#"{"timestamp": "today"}"#).is_err());
        for bad in [
            r#"{"x": 1}"#,
            r#"{"-1": 1}"#,
            r#"{"0": -5}"#,
            r#"{"0": "5"}"#,
            "[1]",
        ] {
            let message = start(&format!(r#"{{"offsets": {bad}}}"#)).unwrap_err();
            assert!(
                message.contains("partition numbers to offsets"),
                "{bad}: {message}"
            );
        }
    }

    #[test]
    fn subscribe_filters_and_auth_frames_parse() {
        let Request::Subscribe(s) = parse(
            r#"{"type":"subscribe","topic":"t","filter":{"key":"k","headers":{"lang":"en"}}}"#,
        )
        .unwrap() else {
            panic!("not a subscribe")
        };
        assert_eq!(s.key.as_deref(), Some("k"));
        assert_eq!(s.headers, BTreeMap::from([("lang".into(), "en".into())]));
        assert!(
            bad(r#"{"type":"subscribe","topic":"t","filter":{"kee":"k"}}"#)
                .message
                .starts_with("malformed")
        );
        assert!(matches!(
            parse(r#"{"type":"auth","id":"a","token":"x.y.z"}"#),
            Ok(Request::Auth { token, .. }) if token == "x.y.z"
        ));
        assert_eq!(bad(r#"{"type":"auth"}"#).message, "missing field `token`");
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
        let limited = Reply::rate_limited(None, "history", 5, "", Duration::from_micros(199_100));
        assert_eq!(
            serde_json::from_str::<Value>(&limited.to_json()).unwrap(),
            json!({"type":"error","code":"rate_limited","retry_after_ms":200,
                   "message":"more than 5 history requests per second: this one was not served; retry after 200 ms"})
        );
        assert_eq!(
            Reply::Pong {
                id: Some(RequestId::Number(4))
            }
            .to_json(),
            r#"{"type":"pong","id":4}"#
        );
        let subscribed = Reply::Subscribed {
            id: None,
            topic: "t".into(),
            key: None,
            partitions: BTreeMap::from([(0, 43), (1, 17)]),
            lost: BTreeMap::from([(
                0,
                Lost {
                    from: 10,
                    to: 43,
                    reason: LostReason::Retention,
                },
            )]),
            waiting: Some(33),
        };
        assert_eq!(
            serde_json::from_str::<Value>(&subscribed.to_json()).unwrap(),
            json!({"type":"subscribed","topic":"t","partitions":{"0":43,"1":17},
                   "lost":{"0":{"from":10,"to":43,"reason":"retention"}},"waiting":33})
        );
        let lagged = Reply::Lagged {
            topics: BTreeMap::from([("t".into(), BTreeMap::from([(2, 9)]))]),
            keys: BTreeMap::from([(
                "rooms".into(),
                BTreeMap::from([("lobby".into(), BTreeMap::from([(0, 5)]))]),
            )]),
        };
        assert_eq!(
            lagged.to_json(),
            r#"{"type":"lagged","topics":{"t":{"2":9}},"keys":{"rooms":{"lobby":{"0":5}}}}"#
        );
        let page = Reply::History {
            id: Some(RequestId::Text("h".into())),
            topic: "rooms".into(),
            key: Some("lobby".into()),
            messages: vec![RawValue::from_string(r#"{"type":"message"}"#.into()).unwrap()],
            before: BTreeMap::from([(3, 120)]),
            oldest: false,
            partial: true,
        };
        assert_eq!(
            page.to_json(),
            r#"{"type":"history","id":"h","topic":"rooms","key":"lobby","messages":[{"type":"message"}],"before":{"3":120},"oldest":false,"partial":true}"#
        );
        let ended = Reply::ended(None, "t", None, ErrorCode::Forbidden, "no longer allowed");
        assert_eq!(
            serde_json::from_str::<Value>(&ended.to_json()).unwrap(),
            json!({"type":"error","code":"forbidden","message":"no longer allowed","topic":"t"})
        );
    }

    fn record<'a>(key: Option<&'a [u8]>, value: Option<&'a [u8]>) -> RecordView<'a> {
        RecordView {
            topic: "chat.lobby",
            partition: 2,
            offset: 42,
            timestamp: Some(1_732_500_000_000),
            key,
            headers: &[("h", Some(b"v")), ("empty", None)],
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
        let frame = message_frame(&RecordView {
            headers: &[("bin", Some(&[0xff, 0x00]))],
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
