//! Ephemeral signals: typing, cursors, "seen". A `signal` goes to the current subscribers of
//! its room on every hub that asked for signals, and nowhere else: it is never replayed,
//! never counted as unread, never acknowledged as durable.
//!
//! Signals travel between hubs over a Kafka topic of their own, kept briefly (a minute: see
//! `kafka::SIGNAL_RETENTION_MS`) and
//! written for latency rather than durability: no idempotence, one replica's
//! acknowledgement, no batching wait. A signal lost to a broker's failure is not written
//! again; the next keystroke sends another.
//!
//! The same topic tells a user's other sockets that the user has read a topic this far
//! (`commit`), so that an unread count on another device follows at once. It too is worth
//! little late: a device that misses it reads the positions when it next subscribes.

use std::collections::BTreeMap;

use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::PresenceConfig;
use crate::kafka::KafkaLog;
use crate::kafka::{Clients, PublishError};
use crate::kafka_settings::Side;
use crate::protocol;
use crate::registry::{ConnId, Registry, Wants};

/// A signal on the signal topic.
#[derive(Debug, Serialize, Deserialize)]
pub struct Signal<'a> {
    #[serde(borrow)]
    pub topic: &'a str,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub key: Option<&'a str>,
    #[serde(borrow)]
    pub sender: &'a str,
    #[serde(borrow)]
    pub payload: &'a RawValue,
}

/// A user's `commit`, for the user's other sockets. A record of the signal topic is this or
/// a `Signal`, told apart by their required fields.
#[derive(Debug, Serialize)]
pub struct Read<'a> {
    pub topic: &'a str,
    /// The room whose positions moved; none for the whole topic's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<&'a str>,
    pub user: &'a str,
    pub offsets: &'a BTreeMap<i32, i64>,
    /// The committing socket, which is not told: its id on its hub (`Signals`'s `origin`).
    pub conn: ConnId,
}

/// A `Read` as it comes off the signal topic.
#[derive(Deserialize)]
struct ReadRecord<'a> {
    #[serde(borrow)]
    topic: &'a str,
    #[serde(borrow, default)]
    key: Option<&'a str>,
    #[serde(borrow)]
    user: &'a str,
    offsets: BTreeMap<i32, i64>,
    #[serde(borrow)]
    origin: &'a str,
    conn: ConnId,
}

/// Hands a record of the signal topic to this hub's sockets it is for: a signal to its room's
/// subscribers that asked for signals, a read notice to the user's other sockets. `origin`
/// is this hub's, as in `Signals`.
pub fn deliver(registry: &Registry, origin: &str, value: &[u8]) {
    if let Ok(signal) = serde_json::from_slice::<Signal>(value) {
        let key = signal.key.map(str::as_bytes);
        return registry.tell(signal.topic, key, Wants::Signals, || frame(&signal));
    }
    let read: ReadRecord = match serde_json::from_slice(value) {
        Ok(read) => read,
        Err(e) => return tracing::debug!(error = %e, "ignored a malformed signal"),
    };
    let except = (read.origin == origin).then_some(read.conn);
    let key = read.key.map(str::as_bytes);
    registry.tell_user(read.topic, key, read.user, except, || {
        protocol::read_frame(read.topic, read.key, &read.offsets)
    });
}

/// The `signal` frame a subscriber gets.
pub fn frame(signal: &Signal<'_>) -> String {
    protocol::signal_frame(signal.topic, signal.key, signal.sender, signal.payload)
}

/// The producer of signals; clones share it.
#[derive(Clone)]
pub struct Signals {
    producer: FutureProducer<KafkaLog>,
    topic: String,
    /// This hub, in its read notices: unique to the process, unlike its instance id.
    origin: String,
}

impl Signals {
    pub fn new(
        clients: &Clients,
        presence: &PresenceConfig,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let producer = clients
            .config(
                &[
                    ("client.id", format!("{}-signals", clients.group_id())),
                    ("enable.idempotence", "false".into()),
                    ("acks", "1".into()),
                    ("linger.ms", "0".into()),
                    // A signal older than this is worthless: drop it rather than deliver it late.
                    ("message.timeout.ms", "2000".into()),
                ],
                Side::Producer,
            )
            .create_with_context(clients.log().clone())?;
        Ok(Signals {
            producer,
            topic: presence.signal_topic.clone(),
            origin: clients.group_id().to_string(),
        })
    }

    /// Hands the signal to librdkafka and forgets it: nobody waits for its delivery.
    pub fn send(&self, signal: &Signal<'_>) -> Result<(), PublishError> {
        // Keyed by room: a room's signals keep their order.
        self.send_keyed(signal.topic, signal.key, signal)
    }

    /// Tells the user's other sockets of a commit, as `send` does a signal.
    pub fn send_read(&self, read: &Read<'_>) -> Result<(), PublishError> {
        #[derive(Serialize)]
        struct Record<'a> {
            #[serde(flatten)]
            read: &'a Read<'a>,
            origin: &'a str,
        }
        let record = Record {
            read,
            origin: &self.origin,
        };
        self.send_keyed(read.topic, read.key, &record)
    }

    fn send_keyed(
        &self,
        topic: &str,
        key: Option<&str>,
        value: &impl Serialize,
    ) -> Result<(), PublishError> {
        let value = serde_json::to_vec(value).expect("signals always serialise");
        let key = format!("{topic}\u{0}{}", key.unwrap_or_default());
        let record = FutureRecord::to(&self.topic).key(&key).payload(&value);
        let delivery = self
            .producer
            .send_result(record)
            .map_err(|(e, _)| PublishError::from(e))?;
        drop(delivery);
        Ok(())
    }
}
