//! A publish on its way into Kafka, from whichever transport took it (a socket's `publish`,
//! or `POST /publish`): the checks every transport shares once grants and the topic's
//! existence are settled, the hub's own headers (`wskafka-sender`, the publish id), the
//! key's partition, resends answered from Kafka (see `retries`), and the `ack` once Kafka
//! has the record.

use std::borrow::Cow;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use rdkafka::producer::DeliveryFuture;
use tokio_util::sync::CancellationToken;

use crate::history;
use crate::hub::Hub;
use crate::kafka::Publisher;
use crate::metrics::{self, Metrics};
use crate::protocol::{self, ErrorCode, Publish, Refused, Reply, RequestId, Retry};
use crate::retries::{self, Outcome};

/// A publish handed on: its answer comes once Kafka has the record (or has refused it).
pub type Acked = BoxFuture<'static, Reply>;

/// Hands `publish`, by `sender`, to Kafka, or refuses it. The caller
/// has checked the grants and that the topic exists. A resend waiting for its earlier
/// attempts gives up, answered `unavailable`, when the token `abandoned` gives is cancelled.
pub fn send(
    hub: &Arc<Hub>,
    sender: &str,
    publish: Publish<'_>,
    abandoned: impl FnOnce() -> CancellationToken,
) -> Result<Acked, Refused> {
    let Publish {
        id,
        topic,
        key,
        headers,
        payload,
        publish_id,
        retry,
    } = publish;
    if let Some(name) = headers
        .keys()
        .find(|name| protocol::is_reserved_header(name))
    {
        return Err(Refused::new(
            id,
            ErrorCode::BadRequest,
            format!(
                "the header {name:?} is reserved: header names beginning with \"wskafka-\", in any case, are the hub's"
            ),
        ));
    }
    // A record with an id and a key goes to its key's partition, placed here as Kafka's
    // partitioner places it (an operator's `partitioner` setting cannot move it), where
    // its resends look for it. One without a key goes wherever the producer batches it
    // (fixing its partition from the id cost a fifth of ingest in the benchmark), and a
    // resend of it looks in every partition of its topic.
    let partitions = || {
        hub.topics.partitions(&topic).ok_or_else(|| {
            Refused::new(
                id.clone(),
                ErrorCode::Unavailable,
                format!("the partitions of topic {topic:?} are not known yet: send again"),
            )
        })
    };
    let partition = match (&publish_id, key.as_deref()) {
        (Some(_), Some(key)) => Some(history::partition_for(key.as_bytes(), partitions()?)),
        _ => None,
    };
    if let (Some(retry), Some(publish_id)) = (retry, &publish_id) {
        let look_in = match partition {
            Some(partition) => vec![partition],
            None => (0..partitions()? as i32).collect(),
        };
        let record = Resend {
            topic: topic.into_owned(),
            key: key.map(Cow::into_owned),
            partition,
            look_in,
            headers: headers.into_iter().collect(),
            sender: sender.to_string(),
            publish_id: publish_id.to_string(),
            payload: payload.get().as_bytes().into(),
        };
        return resend(hub, id, record, retry, abandoned());
    }
    let mut own = vec![(protocol::SENDER_HEADER, sender)];
    if let Some(publish_id) = &publish_id {
        own.push((protocol::PUBLISH_ID_HEADER, publish_id));
    }
    let sent = hub.publisher.send(
        &topic,
        key.as_deref(),
        partition,
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        &own,
        payload.get().as_bytes(),
    );
    let delivery = sent.map_err(|e| Refused::new(id.clone(), e.code(), e.to_string()))?;
    Ok(Box::pin(acked(
        hub.metrics.clone(),
        id,
        topic.into_owned(),
        delivery,
    )))
}

/// A resent publish, owned: it may wait for its earlier attempts before it is written.
struct Resend {
    topic: String,
    key: Option<String>,
    /// Where to write it: its key's partition, or wherever the producer batches it.
    partition: Option<i32>,
    /// Where its earlier attempts may be: its key's partition, or every one.
    look_in: Vec<i32>,
    headers: Vec<(String, String)>,
    sender: String,
    publish_id: String,
    payload: Box<[u8]>,
}

/// The answer to a publish handed to Kafka: its `ack` once Kafka has it, or the error.
async fn acked(
    metrics: Metrics,
    id: Option<RequestId>,
    topic: String,
    delivery: DeliveryFuture,
) -> Reply {
    let sent_at = std::time::Instant::now();
    let ack_seconds = metrics.publish_ack();
    match Publisher::delivered(delivery).await {
        Ok(acked) => {
            ack_seconds.record(sent_at.elapsed());
            Reply::Ack {
                id,
                topic,
                partition: acked.partition,
                offset: acked.offset,
            }
        }
        Err(e) => {
            metrics::publish_failed(e.code().as_str());
            Reply::error(id, e.code(), e.to_string())
        }
    }
}

/// A publish sent again: answered with the record its earlier attempts wrote, or written
/// once none of them can land any more (see `retries`). It is dropped unwritten if
/// `abandoned` is cancelled first (its socket ended): the client then sends it again
/// elsewhere.
fn resend(
    hub: &Arc<Hub>,
    id: Option<RequestId>,
    record: Resend,
    retry: Retry,
    abandoned: CancellationToken,
) -> Result<Acked, Refused> {
    let retries = &hub.retries;
    if retry.age > retries.window() {
        metrics::publish_retry("expired");
        return Err(Refused::new(
            id,
            ErrorCode::RetryExpired,
            format!(
                "the first attempt is {} s old; resends are looked up for {} s: publish it anew with a new publish_id if it is not there",
                retry.age.as_secs(),
                retries.window().as_secs()
            ),
        ));
    }
    let wait = retries.wait(retry.age, retry.attempt);
    let hub = hub.clone();
    Ok(Box::pin(async move {
        let started = std::time::Instant::now();
        let print = retries::fingerprint(
            record.key.as_deref().map(str::as_bytes),
            &record.payload,
            Some(record.sender.as_bytes()),
        );
        let found = tokio::select! {
            found = hub.retries.find_in(&record.topic, &record.look_in, &record.publish_id, print, retry.age, wait) => found,
            () = abandoned.cancelled() => {
                metrics::publish_retry("abandoned");
                return Reply::error(
                    id,
                    ErrorCode::Unavailable,
                    "the hub is shutting down: send again",
                );
            }
        };
        metrics::publish_retry_wait(started.elapsed());
        let Resend {
            topic,
            key,
            partition,
            headers,
            sender,
            publish_id,
            payload,
            ..
        } = record;
        let delivery = match found {
            Err(e) => {
                metrics::publish_retry("unavailable");
                return Reply::error(id, e.code(), e.to_string());
            }
            Ok((found_in, Outcome::Found { offset })) => {
                metrics::publish_retry("found");
                return Reply::Ack {
                    id,
                    topic,
                    partition: found_in,
                    offset,
                };
            }
            Ok((found_in, Outcome::Conflict { offset })) => {
                metrics::publish_retry("conflict");
                return Reply::error(
                    id,
                    ErrorCode::IdConflict,
                    format!(
                        "publish_id {publish_id:?} names another record (partition {found_in}, offset {offset}): a new record needs a new id"
                    ),
                );
            }
            Ok((_, Outcome::Absent)) => {
                metrics::publish_retry("written");
                let own = [
                    (protocol::SENDER_HEADER, sender.as_str()),
                    (protocol::PUBLISH_ID_HEADER, publish_id.as_str()),
                ];
                hub.publisher.send(
                    &topic,
                    key.as_deref(),
                    partition,
                    headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                    &own,
                    &payload,
                )
            }
        };
        match delivery {
            Ok(delivery) => acked(hub.metrics.clone(), id, topic, delivery).await,
            Err(e) => Reply::error(id, e.code(), e.to_string()),
        }
    }))
}
