//! Ephemeral signals: typing, cursors, "seen". A `signal` goes to the current subscribers of
//! its room on every hub that asked for signals, and nowhere else: it is never replayed,
//! never counted as unread, never acknowledged as durable.
//!
//! Signals travel between hubs over a Kafka topic of their own, kept briefly (a minute: see
//! `kafka::SIGNAL_RETENTION_MS`) and
//! written for latency rather than durability: no idempotence, one replica's
//! acknowledgement, no batching wait. A signal lost to a broker's failure is not written
//! again; the next keystroke sends another.

use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::ServeConfig;
use crate::kafka::KafkaLog;
use crate::kafka::{PublishError, client_config};
use crate::kafka_settings::Side;
use crate::protocol;
use crate::registry::{Delivery, Registry, Wants};

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

/// Hands a signal read from the signal topic to this hub's subscribers of its room that
/// asked for signals.
pub fn deliver(registry: &Registry, value: &[u8]) {
    let signal: Signal = match serde_json::from_slice(value) {
        Ok(signal) => signal,
        Err(e) => return tracing::debug!(error = %e, "ignored a malformed signal"),
    };
    let key = signal.key.map(str::as_bytes);
    registry.tell(signal.topic, key, Wants::Signals, || {
        Delivery::ephemeral(signal.topic, key, frame(&signal))
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
}

impl Signals {
    pub fn new(
        config: &ServeConfig,
        client_id: &str,
        log: &KafkaLog,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let producer = client_config(
            config,
            &[
                ("client.id", format!("{client_id}-signals")),
                ("enable.idempotence", "false".into()),
                ("acks", "1".into()),
                ("linger.ms", "0".into()),
                // A signal older than this is worthless: drop it rather than deliver it late.
                ("message.timeout.ms", "2000".into()),
            ],
            Side::Producer,
        )
        .create_with_context(log.clone())?;
        Ok(Signals {
            producer,
            topic: config.presence.signal_topic.clone(),
        })
    }

    /// Hands the signal to librdkafka and forgets it: nobody waits for its delivery.
    pub fn send(&self, signal: &Signal<'_>) -> Result<(), PublishError> {
        let value = serde_json::to_vec(signal).expect("signals always serialise");
        // Keyed by room: a room's signals keep their order.
        let key = format!("{}\u{0}{}", signal.topic, signal.key.unwrap_or_default());
        let record = FutureRecord::to(&self.topic).key(&key).payload(&value);
        let delivery = self
            .producer
            .send_result(record)
            .map_err(|(e, _)| PublishError::from(e))?;
        drop(delivery);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_reads_back_as_written_and_frames_with_its_type() {
        let payload = RawValue::from_string(r#"{"typing":true}"#.into()).unwrap();
        let signal = Signal {
            topic: "rooms",
            key: Some("lobby"),
            sender: "alice",
            payload: &payload,
        };
        let bytes = serde_json::to_vec(&signal).unwrap();
        let read: Signal = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            (read.topic, read.key, read.sender),
            ("rooms", Some("lobby"), "alice")
        );
        assert_eq!(
            frame(&read),
            r#"{"type":"signal","topic":"rooms","key":"lobby","sender":"alice","payload":{"typing":true}}"#
        );
    }
}
