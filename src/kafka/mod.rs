//! Kafka on both sides of the hub: how every client of the hub is configured, the hub's own
//! topics, and the record views both sides share. The producer behind `publish` is in
//! `producer`, the one consumer per hub that feeds every record of the exposed topics into
//! the registry in `consumer`, librdkafka's log in `log`, and which topics exist in
//! `catalogue`.

mod catalogue;
mod consumer;
mod log;
mod producer;

pub use catalogue::{Catalogue, Lookup};
pub use consumer::{Consumer, LagReporting, LivePositions, Sinks};
pub use log::KafkaLog;
pub use producer::{PublishError, Publisher};

use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers as _};
use rdkafka::{ClientConfig, Message as _};

use crate::config::{PresenceConfig, ServeConfig, TopicsConfig};
use crate::kafka_settings::{KafkaSettings, Side};
use crate::protocol::{self, RecordView};
use crate::registry::Delivery;

const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// What every Kafka client of the hub is made from: the brokers, the operator's properties,
/// the closed topics, the run's group id (which names each client) and librdkafka's log.
/// Each subsystem with a client gets this and its own section of the configuration.
#[derive(Clone)]
pub struct Clients {
    brokers: String,
    settings: KafkaSettings,
    /// `TopicsConfig::is_closed` as anchored regexes, for librdkafka's `topic.blacklist`.
    closed: String,
    group_id: String,
    log: KafkaLog,
}

impl Clients {
    pub fn new(config: &ServeConfig, group_id: &str, log: &KafkaLog) -> Clients {
        Clients {
            brokers: config.kafka.brokers.clone(),
            settings: config.kafka.kafka_settings.clone(),
            closed: config.topics.closed_regexes().join(","),
            group_id: group_id.to_string(),
            log: log.clone(),
        }
    }

    /// The hub's own properties, then the operator's for `side` (see `KafkaSettings`): the
    /// one place every Kafka client of the hub is configured. Two come after the
    /// operator's, because the hub promises them whatever librdkafka is told: no client asks
    /// the broker to create a topic (librdkafka's producer does by default, wherever the
    /// broker allows it), and none sees Kafka's own or the closed topics in metadata, so no
    /// pattern subscription or assignment can reach them.
    pub fn config(&self, own: &[(&str, String)], side: Side) -> ClientConfig {
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", &self.brokers);
        // librdkafka waits up to 10 s between reconnects; a broker back from an outage would
        // find publishes refused for that long after the hub is ready again.
        client.set("reconnect.backoff.max.ms", "1000");
        for (key, value) in own {
            client.set(*key, value);
        }
        self.operators(&mut client, side);
        client.set("allow.auto.create.topics", "false");
        client.set("topic.blacklist", &self.closed);
        client
    }

    /// Sets the operator's properties for `side` on `client`, over what it set before.
    pub fn operators(&self, client: &mut ClientConfig, side: Side) {
        for (key, value) in self.settings.for_side(side) {
            client.set(key, value);
        }
    }

    /// A consumer that reads partitions it assigns itself, from offsets it names (replays,
    /// `history` pages, resends, the roster), named for its `purpose`.
    pub fn reader(&self, purpose: &str) -> ClientConfig {
        let client_id = format!("{}-{purpose}", self.group_id);
        self.config(
            &[
                ("client.id", client_id.clone()),
                // Never used to join a group (partitions are assigned by hand), but required.
                ("group.id", client_id),
                ("enable.auto.commit", "false".into()),
                ("enable.partition.eof", "true".into()),
                // As the live stream reads (see `Consumer`).
                ("isolation.level", "read_committed".into()),
                // A start that retention deleted meanwhile is an error, never a silent jump.
                ("auto.offset.reset", "error".into()),
            ],
            Side::Consumer,
        )
    }

    /// This run's consumer group, unique to the process: see `serve`.
    pub fn group_id(&self) -> &str {
        &self.group_id
    }

    pub fn log(&self) -> &KafkaLog {
        &self.log
    }
}

/// How long the signal topic keeps records: long enough for every hub to read them, not for
/// anyone to replay them.
pub const SIGNAL_RETENTION_MS: &str = "60000";

/// How long the fleet topic keeps hubs' reports: hubs read it from its end, and a report is
/// stale after seconds.
const FLEET_RETENTION_MS: &str = "60000";

/// Creates the topics the hub writes to itself, when missing, with the broker's default
/// replication.
pub async fn ensure_topics(
    clients: &Clients,
    topics: &TopicsConfig,
    presence: &PresenceConfig,
    names: &[&str],
) -> Result<(), KafkaError> {
    let admin: AdminClient<KafkaLog> = clients
        .config(&[], Side::Admin)
        .create_with_context(clients.log().clone())?;
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|name| {
            let topic = NewTopic::new(name, 1, TopicReplication::Fixed(-1));
            // The roster keeps the latest state per socket; signals live a minute.
            if *name == presence.roster_topic {
                topic
                    .set("cleanup.policy", "compact")
                    .set("segment.ms", "60000")
                    .set("min.cleanable.dirty.ratio", "0.1")
            } else if *name == presence.signal_topic {
                topic
                    .set("retention.ms", SIGNAL_RETENTION_MS)
                    .set("segment.ms", SIGNAL_RETENTION_MS)
            } else if *name == topics.fleet_topic {
                topic
                    .set("retention.ms", FLEET_RETENTION_MS)
                    .set("segment.ms", FLEET_RETENTION_MS)
            } else {
                topic
            }
        })
        .collect();
    // librdkafka's default request timeout is a minute: bounded here, so that a broker that
    // does not answer (a TLS port spoken to in plaintext, say) is told of in seconds.
    let options = AdminOptions::new()
        .operation_timeout(Some(METADATA_TIMEOUT))
        .request_timeout(Some(METADATA_TIMEOUT));
    for result in admin.create_topics(&topics, &options).await? {
        match result {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                tracing::debug!(topic, ?code, "cannot create the topic");
                return Err(KafkaError::AdminOp(code));
            }
        }
    }
    Ok(())
}
pub(crate) fn headers_of<'a>(message: &'a BorrowedMessage<'_>) -> Vec<(&'a str, Option<&'a [u8]>)> {
    message
        .headers()
        .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
        .unwrap_or_default()
}

/// The `message` frame of a record, `headers` being its headers (`headers_of`).
pub(crate) fn frame_of(message: &BorrowedMessage<'_>, headers: &[(&str, Option<&[u8]>)]) -> String {
    protocol::message_frame(&RecordView {
        topic: message.topic(),
        partition: message.partition(),
        offset: message.offset(),
        timestamp: message.timestamp().to_millis(),
        key: message.key(),
        headers,
        value: message.payload(),
    })
}

pub(crate) fn delivery_of(
    message: &BorrowedMessage<'_>,
    headers: &[(&str, Option<&[u8]>)],
) -> Delivery {
    let frame = frame_of(message, headers);
    Delivery {
        topic: message.topic().into(),
        key: message.key().map(Box::from),
        partition: message.partition(),
        offset: message.offset(),
        timestamp: message.timestamp().to_millis(),
        frame: Utf8Bytes::from(frame),
    }
}
