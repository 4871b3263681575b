//! Reading a replay's records: from the hub's recent records when they hold them all, else
//! from Kafka with a client of the replay's own.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::kafka::KafkaLog;
use crate::kafka::{delivery_of, headers_of};
use crate::metrics;
use crate::protocol::Start;
use crate::recent::Recent;
use crate::registry::RecordMeta;

use super::seam::plan;
use super::{
    Event, LOOKUP_TIMEOUT, POLL_INTERVAL, ReplayError, Report, Request, STALL_TIMEOUT, Window,
};

/// Serves the replay from the hub's recent records when they hold every record it needs:
/// true once done, false (having sent nothing) when they do not. Only a start at given
/// offsets qualifies (a resume, or the stored positions), and only without header
/// conditions, which the recent records do not keep what to check against.
pub(super) async fn from_recent(
    recent: &Recent,
    request: &Request,
    max_records: i64,
    events: &mpsc::Sender<Box<Report>>,
    window: &Window,
) -> Result<bool, ReplayError> {
    let (Start::Offsets(offsets) | Start::Committed(offsets)) = &request.from else {
        return Ok(false);
    };
    if !request.filter.headers.is_empty() {
        return Ok(false);
    }
    let topic = &*request.topic;
    let plan = request.seam.try_plan(|live, dropped| {
        // A partition the client does not name starts at its oldest record for `offsets`,
        // which only Kafka knows.
        if matches!(request.from, Start::Offsets(_))
            && live.keys().any(|p| !offsets.contains_key(p))
        {
            return None;
        }
        // What the plan reads of Kafka's watermarks: nothing older than the client asks
        // for is looked at, and the live position is the end.
        let mut watermarks: BTreeMap<i32, (i64, i64)> = offsets
            .iter()
            .map(|(&p, &requested)| (p, (requested, live.get(&p).copied().unwrap_or(requested))))
            .collect();
        for (&p, &live) in live {
            watermarks.entry(p).or_insert((live, live));
        }
        let plan = plan(
            &request.from,
            &watermarks,
            &BTreeMap::new(),
            live,
            dropped,
            max_records,
        );
        let held = |(&p, &(start, end)): (&i32, &(i64, i64))| {
            recent
                .since(topic, p, start)
                .is_some_and(|found| found.next >= end)
        };
        plan.ranges.iter().all(held).then_some(plan)
    });
    let Some(plan) = plan else {
        return Ok(false);
    };
    metrics::replay("recent");
    tracing::debug!(topic, ?plan, "replay planned from recent records");
    let ranges = plan.ranges.clone();
    if events
        .send(request.report(request.started(plan)))
        .await
        .is_err()
    {
        return Ok(true);
    }
    for (&partition, &(start, _)) in &ranges {
        let mut read = start;
        // Records the connection left to the replay after the plan are recent ones too
        // (the consumer keeps each record before it fans it out), so each round reads
        // what came since, until the seam says the partition is done.
        loop {
            let found = recent
                .since(topic, partition, read)
                .ok_or(ReplayError::Overtaken)?;
            let mut finished = false;
            for record in found.records {
                let (deliver, done) = request.seam.replayed(partition, record.offset);
                let meta = RecordMeta {
                    key: record.key.as_deref(),
                    headers: &[],
                };
                if deliver && request.filter.matches(&meta) {
                    let room = window.take(record.cost()).await;
                    let mut report = request.report(Event::Record(record));
                    report.room = Some(room);
                    if events.send(report).await.is_err() {
                        return Ok(true);
                    }
                }
                if done {
                    finished = true;
                    break;
                }
            }
            read = found.next;
            if finished || request.seam.reached_end(partition, read) {
                break;
            }
            tokio::task::yield_now().await;
        }
        if events
            .send(request.report(Event::Done(partition)))
            .await
            .is_err()
        {
            return Ok(true);
        }
    }
    Ok(true)
}

pub(super) fn replay(
    client: &ClientConfig,
    log: &KafkaLog,
    request: &Request,
    max_records: i64,
    send: &dyn Fn(Event) -> bool,
    cancel: &CancellationToken,
) -> Result<(), ReplayError> {
    let topic = &*request.topic;
    let consumer: BaseConsumer<KafkaLog> = client
        .create_with_context(log.clone())
        .map_err(ReplayError::Kafka)?;
    let metadata = consumer
        .fetch_metadata(Some(topic), LOOKUP_TIMEOUT)
        .map_err(ReplayError::Kafka)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(ReplayError::NoTopic(topic.to_string()));
    }
    let mut watermarks = BTreeMap::new();
    for &partition in &partitions {
        let marks = consumer
            .fetch_watermarks(topic, partition, LOOKUP_TIMEOUT)
            .map_err(ReplayError::Kafka)?;
        watermarks.insert(partition, marks);
    }
    let mut by_time = BTreeMap::new();
    if let Start::Timestamp(ms) = request.from {
        let mut wanted = TopicPartitionList::new();
        for &partition in &partitions {
            wanted
                .add_partition_offset(topic, partition, Offset::Offset(ms))
                .expect("a fresh list takes any offset");
        }
        let found = consumer
            .offsets_for_times(wanted, LOOKUP_TIMEOUT)
            .map_err(ReplayError::Kafka)?;
        for elem in found.elements() {
            if let Offset::Offset(offset) = elem.offset() {
                by_time.insert(elem.partition(), offset);
            }
        }
    }
    let plan = request.seam.plan(|live, dropped| {
        plan(
            &request.from,
            &watermarks,
            &by_time,
            live,
            dropped,
            max_records,
        )
    });
    tracing::debug!(topic, ?watermarks, ?by_time, ?plan, "replay planned");
    // Per partition still replayed, the next offset to read.
    let mut pending: BTreeMap<i32, i64> = plan
        .ranges
        .iter()
        .map(|(p, (start, _))| (*p, *start))
        .collect();
    if !send(request.started(plan)) || pending.is_empty() {
        return Ok(());
    }

    let mut assignment = TopicPartitionList::new();
    for (&partition, &start) in &pending {
        assignment
            .add_partition_offset(topic, partition, Offset::Offset(start))
            .expect("a fresh list takes any offset");
    }
    consumer.assign(&assignment).map_err(ReplayError::Kafka)?;
    let mut heard = Instant::now();
    let done = |pending: &mut BTreeMap<i32, i64>, partition: i32| {
        pending.remove(&partition);
        let mut paused = TopicPartitionList::new();
        paused.add_partition(topic, partition);
        let _ = consumer.pause(&paused);
        send(Event::Done(partition))
    };
    while !pending.is_empty() {
        if cancel.is_cancelled() {
            return Ok(());
        }
        if heard.elapsed() > STALL_TIMEOUT {
            return Err(ReplayError::Stalled);
        }
        match consumer.poll(POLL_INTERVAL) {
            None => {}
            Some(Ok(message)) => {
                heard = Instant::now();
                let (partition, offset) = (message.partition(), message.offset());
                let Some(read) = pending.get_mut(&partition) else {
                    continue;
                };
                *read = offset + 1;
                let (deliver, finished) = request.seam.replayed(partition, offset);
                if deliver {
                    let headers = headers_of(&message);
                    let meta = RecordMeta {
                        key: message.key(),
                        headers: &headers,
                    };
                    if request.filter.matches(&meta) {
                        let record = Arc::new(delivery_of(&message, &headers));
                        if !send(Event::Record(record)) {
                            return Ok(());
                        }
                    }
                }
                if finished && !done(&mut pending, partition) {
                    return Ok(());
                }
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                heard = Instant::now();
                if let Some(&read) = pending.get(&partition)
                    && request.seam.reached_end(partition, read)
                    && !done(&mut pending, partition)
                {
                    return Ok(());
                }
            }
            Some(Err(
                e @ KafkaError::MessageConsumption(
                    RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange,
                ),
            )) => {
                return Err(ReplayError::OutOfRange(e));
            }
            Some(Err(e)) => tracing::warn!(topic, error = %e, "replay consumer error"),
        }
    }
    Ok(())
}
