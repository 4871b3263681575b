//! The client: a WebSocket that speaks the protocol, and what resuming takes.

use futures_util::{SinkExt, StreamExt};
use rdkafka::Message as _;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::*;

/// A process's resident memory, in bytes (Linux).
pub fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .unwrap();
    }

    /// Pipelines `count` publishes to `topic` without reading: ids "0".., keys `k<i % 5>`,
    /// payloads `{"seq": i}`.
    pub async fn publish_many(&mut self, topic: &str, count: usize) {
        for seq in 0..count {
            self.send(
                serde_json::json!({"type": "publish", "id": seq.to_string(), "topic": topic,
                                         "key": format!("k{}", seq % 5), "payload": {"seq": seq}}),
            )
            .await;
        }
    }

    /// The next `count` frames, each of which must be an ack.
    pub async fn acks(&mut self, count: usize) -> Vec<Value> {
        let mut acks = Vec::with_capacity(count);
        while acks.len() < count {
            let reply = self.recv().await;
            assert_eq!(reply["type"], "ack", "{reply}");
            acks.push(reply);
        }
        acks
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws.send(Message::text(text.into())).await.unwrap();
    }

    /// The next frame, which must be JSON text.
    pub async fn recv(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("no frame from the hub in time")
                .expect("the hub closed the socket")
                .expect("socket error");
            match message {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Sends a request and returns the next frame, its reply on a quiet connection.
    pub async fn call(&mut self, frame: Value) -> Value {
        self.send(frame).await;
        self.recv().await
    }

    /// Publishes on a socket subscribed to the same topic; returns the ack and the record
    /// as it came back, which Kafka may deliver before the producer hears its ack.
    pub async fn publish_to_self(&mut self, publish: Value) -> (Value, Value) {
        self.send(publish).await;
        let (first, second) = (self.recv().await, self.recv().await);
        match (first["type"].as_str(), second["type"].as_str()) {
            (Some("ack"), Some("message")) => (first, second),
            (Some("message"), Some("ack")) => (second, first),
            _ => panic!("expected an ack and a message, got {first} and {second}"),
        }
    }

    pub async fn subscribe(&mut self, topic: &str) {
        let reply = self
            .call(serde_json::json!({"type": "subscribe", "id": "sub", "topic": topic}))
            .await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
    }

    /// Subscribes with a `from` start and returns the `subscribed` reply, skipping messages
    /// of other subscriptions that arrive first.
    pub async fn subscribe_from(&mut self, topic: &str, from: Value) -> Value {
        self.send(
            serde_json::json!({"type": "subscribe", "id": "from", "topic": topic, "from": from}),
        )
        .await;
        loop {
            let reply = self.recv().await;
            if reply["type"] != "message" {
                assert_eq!(reply["type"], "subscribed", "{reply}");
                assert_eq!(reply["id"], "from");
                return reply;
            }
        }
    }

    /// The next frame, which must be a `presence_diff`: its joins and leaves.
    pub async fn presence_diff(&mut self) -> (Vec<String>, Vec<String>) {
        let diff = self.recv().await;
        assert_eq!(diff["type"], "presence_diff", "{diff}");
        let users = |field: &str| -> Vec<String> {
            serde_json::from_value(diff[field].clone()).expect("a list of user ids")
        };
        (users("joins"), users("leaves"))
    }

    /// The next `message` frame, as (partition, offset) and the frame.
    pub async fn message(&mut self) -> ((i32, i64), Value) {
        let m = self.recv().await;
        assert_eq!(m["type"], "message", "{m}");
        (position(&m), m)
    }

    /// Reads until the hub's close frame and returns it; other frames are skipped.
    pub async fn closed(&mut self) -> Option<CloseFrame> {
        loop {
            let next = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("the hub did not close the socket in time");
            match next {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Resuming

/// The (partition, offset) a `message` or `ack` frame names.
pub fn position(frame: &Value) -> (i32, i64) {
    let partition = frame["partition"].as_i64().expect("a partition") as i32;
    (partition, frame["offset"].as_i64().expect("an offset"))
}

/// Each ack names a record Kafka holds, with the payload of the publish it answered, and
/// no publish is acked twice.
pub async fn assert_every_ack_is_in_kafka(topic: &str, acks: &[Value]) {
    let stored = read_records(topic, acks.iter().map(position)).await;
    let mut ids = HashSet::new();
    for ack in acks {
        assert!(
            ids.insert(ack["id"].as_str().unwrap().to_string()),
            "acked twice: {ack}"
        );
        let record = stored
            .get(&position(ack))
            .unwrap_or_else(|| panic!("acked record {ack} is not in Kafka"));
        let stored: Value = serde_json::from_slice(record.payload().unwrap()).unwrap();
        assert_eq!(
            stored["seq"].as_i64().unwrap().to_string(),
            ack["id"].as_str().unwrap(),
            "ack {ack} points at {stored}"
        );
    }
}

/// What one subscriber session received, checked as it arrives: each record once and in
/// offset order per partition, plus where a next session should resume.
#[derive(Default)]
pub struct Received {
    pub seqs: BTreeMap<(i32, i64), i64>,
    pub next: BTreeMap<i32, i64>,
}

impl Received {
    /// Starts from a `subscribed` reply's `partitions`.
    pub fn starting_at(subscribed: &Value) -> Self {
        let next = subscribed["partitions"]
            .as_object()
            .expect("`partitions` in the subscribed reply")
            .iter()
            .map(|(p, o)| (p.parse().unwrap(), o.as_i64().unwrap()))
            .collect();
        Received {
            seqs: BTreeMap::new(),
            next,
        }
    }

    pub fn take(&mut self, (partition, offset): (i32, i64), message: &Value) {
        if let Some(&next) = self.next.get(&partition) {
            assert!(
                offset >= next,
                "partition {partition}: offset {offset} arrived when {next} was expected next"
            );
        }
        self.next.insert(partition, offset + 1);
        let seq = message["payload"]["seq"].as_i64().expect("a seq payload");
        self.seqs.insert((partition, offset), seq);
    }

    /// Reads the resumed session on `client` until it and the first session (`before`)
    /// together hold as many records as were `produced`, none in both, and asserts that
    /// together they are exactly those.
    pub async fn resumed_after(
        mut self,
        before: Received,
        client: &mut Client,
        produced: &BTreeMap<(i32, i64), i64>,
    ) {
        while before.seqs.len() + self.seqs.len() < produced.len() {
            let (position, message) = client.message().await;
            assert!(
                !before.seqs.contains_key(&position),
                "{position:?} delivered in both sessions"
            );
            self.take(position, &message);
        }
        let mut both = before.seqs;
        both.extend(self.seqs);
        assert_eq!(&both, produced);
    }

    /// The `from` that resumes after everything received.
    pub fn resume(&self) -> Value {
        let offsets: serde_json::Map<String, Value> = self
            .next
            .iter()
            .map(|(p, o)| (p.to_string(), Value::from(*o)))
            .collect();
        serde_json::json!({ "offsets": offsets })
    }
}
