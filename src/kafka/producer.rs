//! The producer behind `publish`: idempotent, `acks=all`, keys placed as Kafka's Java
//! clients place them.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::types::RDKafkaRespErr;

use crate::config::KafkaConfig;
use crate::kafka::KafkaLog;
use crate::kafka_settings::Side;
use crate::protocol::ErrorCode;

use super::Clients;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("Kafka could not take the record in time: {0}")]
    Unavailable(RDKafkaErrorCode),
    #[error("the record is larger than Kafka accepts")]
    TooLarge,
    #[error("Kafka refused the write to this topic: {0}")]
    Refused(RDKafkaErrorCode),
    /// The topic went away after the hub last saw it.
    #[error("the topic does not exist: {0}")]
    UnknownTopic(RDKafkaErrorCode),
    #[error("the record could not be published: {0}")]
    Internal(String),
}

impl PublishError {
    pub fn code(&self) -> ErrorCode {
        match self {
            PublishError::Unavailable(_) => ErrorCode::Unavailable,
            PublishError::TooLarge => ErrorCode::TooLarge,
            PublishError::Refused(_) => ErrorCode::Forbidden,
            PublishError::UnknownTopic(_) => ErrorCode::UnknownTopic,
            PublishError::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<KafkaError> for PublishError {
    fn from(e: KafkaError) -> Self {
        use RDKafkaErrorCode as C;
        match e.rdkafka_error_code() {
            Some(C::MessageSizeTooLarge | C::InvalidMessageSize) => PublishError::TooLarge,
            Some(code @ (C::TopicAuthorizationFailed | C::ClusterAuthorizationFailed)) => {
                PublishError::Refused(code)
            }
            Some(code @ (C::UnknownTopic | C::UnknownTopicOrPartition)) => {
                PublishError::UnknownTopic(code)
            }
            Some(
                code @ (C::QueueFull
                | C::MessageTimedOut
                | C::RequestTimedOut
                | C::AllBrokersDown
                | C::BrokerTransportFailure
                | C::UnknownPartition
                | C::LeaderNotAvailable
                | C::NotLeaderForPartition
                | C::NotEnoughReplicas
                | C::NotEnoughReplicasAfterAppend),
            ) => PublishError::Unavailable(code),
            _ => PublishError::Internal(e.to_string()),
        }
    }
}

/// Where a publish landed.
#[derive(Debug, Clone, Copy)]
pub struct Acked {
    pub partition: i32,
    pub offset: i64,
}

/// The hub's producer; clones share it.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer<KafkaLog>,
}

impl Publisher {
    pub fn new(clients: &Clients, kafka: &KafkaConfig) -> Result<Self, KafkaError> {
        let producer = clients
            .config(
                &[
                    ("client.id", clients.group_id().to_string()),
                    // An ack means the record is replicated and written once, even across retries.
                    ("enable.idempotence", "true".into()),
                    ("acks", "all".into()),
                    ("linger.ms", "5".into()),
                    // A key's partition as Kafka's Java clients place it (murmur2): a room's
                    // records stay in one partition, whoever produced them, and `history` reads
                    // only that partition. (librdkafka's default hashes keys with CRC32.)
                    ("partitioner", "murmur2_random".into()),
                    (
                        "message.timeout.ms",
                        kafka.publish_timeout.as_millis().to_string(),
                    ),
                    // Broker states, which tell `KafkaLog` when an outage ended.
                    ("statistics.interval.ms", "5000".into()),
                ],
                Side::Producer,
            )
            .create_with_context(clients.log().clone())?;
        Ok(Publisher { producer })
    }

    /// Hands the record to librdkafka without waiting; the future resolves once Kafka has it.
    /// `own` are the hub's headers (`protocol::SENDER_HEADER` and the like), after the
    /// client's; `partition`, when set, overrides the key's.
    pub fn send<'h>(
        &self,
        topic: &str,
        key: Option<&str>,
        partition: Option<i32>,
        headers: impl ExactSizeIterator<Item = (&'h str, &'h str)>,
        own: &[(&'h str, &'h str)],
        payload: &[u8],
    ) -> Result<DeliveryFuture, PublishError> {
        let mut record = FutureRecord::<str, [u8]>::to(topic).payload(payload);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        let count = headers.len() + own.len();
        if count > 0 {
            let owned = headers.chain(own.iter().copied()).fold(
                OwnedHeaders::new_with_capacity(count),
                |acc, (key, value)| {
                    acc.insert(Header {
                        key,
                        value: Some(value),
                    })
                },
            );
            record = record.headers(owned);
        }
        self.producer
            .send_result(record)
            .map_err(|(e, _)| PublishError::from(e))
    }

    /// Sends a record without headers and waits until Kafka has it.
    pub async fn publish(
        &self,
        topic: &str,
        key: Option<&str>,
        payload: &[u8],
    ) -> Result<Acked, PublishError> {
        Self::delivered(self.send(topic, key, None, std::iter::empty(), &[], payload)?).await
    }

    pub async fn delivered(delivery: DeliveryFuture) -> Result<Acked, PublishError> {
        match delivery.await {
            Ok(Ok(d)) => Ok(Acked {
                partition: d.partition,
                offset: d.offset,
            }),
            Ok(Err((e, _))) => Err(e.into()),
            Err(_canceled) => Err(PublishError::Internal("the producer shut down".into())),
        }
    }

    /// Deletes what `key` holds in a compacted topic: a record with no value.
    pub fn tombstone(&self, topic: &str, key: &str) -> Result<DeliveryFuture, PublishError> {
        let record = FutureRecord::<str, [u8]>::to(topic).key(key);
        self.producer
            .send_result(record)
            .map_err(|(e, _)| PublishError::from(e))
    }

    /// Blocks until a broker answered a metadata request.
    pub fn check_connection(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer
            .client()
            .fetch_metadata(None, timeout)
            .map(drop)
    }

    /// Every topic in the cluster with its partition count (a metadata request for all
    /// topics, which never creates one); blocks until a broker answered.
    pub fn topics(&self, timeout: Duration) -> Result<Vec<(String, usize)>, KafkaError> {
        let metadata = self.producer.client().fetch_metadata(None, timeout)?;
        let gone = RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART;
        Ok(metadata
            .topics()
            .iter()
            .filter(|t| t.error() != Some(gone))
            .map(|t| (t.name().to_string(), t.partitions().len()))
            .collect())
    }

    /// Blocks until every queued record is acknowledged or has failed.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }
}
