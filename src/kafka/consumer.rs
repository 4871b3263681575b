//! The one consumer per hub that feeds every record of the exposed topics into the registry,
//! and where each partition's live stream starts (`LivePositions`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message as _, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::config::{LimitsConfig, TopicsConfig};
use crate::fleet::Fleet;
use crate::kafka::KafkaLog;
use crate::kafka_settings::Side;
use crate::metrics;
use crate::recent::Recent;
use crate::registry::{RecordMeta, Registry};
use crate::topic::{TopicPattern, any_matches, is_kafka_internal};

use super::{Clients, delivery_of, headers_of};

/// How long the consumer thread may sit in `poll` before it looks at the stop flag again.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Bound on the ListOffsets round trip that pins where a fresh assignment starts.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
const METADATA_RETRY: Duration = Duration::from_secs(1);
/// How often the consumer looks for the hub's own topics while they are being created.
const OWN_TOPICS_RETRY: Duration = Duration::from_millis(100);

/// Errors of a partition whose leader is being elected or not serving yet: gone in moments.
fn leader_not_ready(error: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        error.rdkafka_error_code(),
        Some(C::NotLeaderForPartition | C::LeaderNotAvailable | C::UnknownTopicOrPartition)
    )
}

/// The hub's consumer, polled on a thread of its own: fan-out never awaits a socket, so the
/// thread only ever blocks on Kafka, and no async worker is lent to librdkafka's callbacks.
pub struct Consumer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
    positions: LivePositions,
}

/// Where the live stream stands: the next offset it delivers, per partition. A subscription
/// reads it right after joining the registry, so every record at or past it is certain to
/// reach the subscription live, and a replay only has to cover what lies before it.
#[derive(Clone, Default)]
pub struct LivePositions(Arc<Mutex<Progress>>);

/// Some partition of the topic existed at start and its position is not resolved yet, or the
/// consumer has not yet looked at which partitions exist.
#[derive(Debug, PartialEq, Eq)]
pub struct Unresolved;

impl LivePositions {
    /// Partitions missing from the answer have delivered nothing yet and start at their first
    /// record: everything in them will arrive live.
    pub fn of(&self, topic: &str) -> (BTreeMap<i32, i64>, Result<(), Unresolved>) {
        let positions = self.0.lock().expect("positions lock");
        let known = positions
            .next
            .get(topic)
            .map(|partitions| partitions.iter().map(|(p, o)| (*p, *o)).collect())
            .unwrap_or_default();
        let resolved =
            if !positions.snapshot_taken || positions.existing.iter().any(|(t, _)| t == topic) {
                Err(Unresolved)
            } else {
                Ok(())
            };
        (known, resolved)
    }
}

/// Where the consumer's records go.
pub struct Sinks<S> {
    /// Records of the exposed topics, to the sockets subscribed to them.
    pub registry: Arc<Registry>,
    /// The same records, kept for sockets that come back soon (see `Recent`).
    pub recent: Recent,
    /// Records of the control topic.
    pub control: mpsc::UnboundedSender<Vec<u8>>,
    /// Where the fleet topic's reports go, on the consumer's thread.
    pub fleet: Arc<Fleet>,
    /// Records of the signal topic, on the consumer's thread.
    pub signals: S,
}

impl Consumer {
    /// `signal_topic` is read beside the exposed topics and the control topic.
    pub fn start<S: Fn(&[u8]) + Send + 'static>(
        clients: &Clients,
        limits: &LimitsConfig,
        topics: &TopicsConfig,
        signal_topic: &str,
        sinks: Sinks<S>,
        ready: Arc<AtomicBool>,
    ) -> Result<Self, KafkaError> {
        let group_id = clients.group_id();
        let positions = LivePositions(Arc::default());
        let context = StartPositions {
            ready,
            positions: positions.0.clone(),
            log: clients.log().clone(),
        };
        let consumer: BaseConsumer<StartPositions> = clients
            .config(
                &[
                    ("client.id", group_id.to_string()),
                    ("group.id", group_id.to_string()),
                    // Start positions are set explicitly on assignment (see `StartPositions`);
                    // this only applies when one falls out of range, where the oldest record
                    // still held loses the least.
                    ("auto.offset.reset", "earliest".into()),
                    // A group per hub, read by nobody else: committing would only cost requests.
                    ("enable.auto.commit", "false".into()),
                    // Records of aborted transactions never reach a socket, and those of open
                    // ones only once committed (librdkafka's default, stated: replays read the
                    // same way, so live and replayed streams agree).
                    ("isolation.level", "read_committed".into()),
                    // Topics created later that match a pattern are noticed on metadata refresh.
                    ("topic.metadata.refresh.interval.ms", "5000".into()),
                    // A new topic then only adds partitions: the ones being read keep their fetch
                    // position instead of being revoked, re-seeked and paused, as eager
                    // rebalancing does.
                    ("partition.assignment.strategy", "cooperative-sticky".into()),
                    // For the consumer lag in /metrics, and the broker states `KafkaLog` reads.
                    ("statistics.interval.ms", "5000".into()),
                    // Prefetch within its share of the memory budget (see `memory`): by default
                    // librdkafka queues up to 64 MB and fetches up to 50 MB at once.
                    (
                        "queued.max.messages.kbytes",
                        limits.memory_budget.prefetch_kbytes().to_string(),
                    ),
                    (
                        "fetch.max.bytes",
                        limits.memory_budget.fetch_bytes().to_string(),
                    ),
                ],
                Side::Consumer,
            )
            .create_with_context(context)?;
        let topics = Topics {
            exposed: topics.topics.clone(),
            closed: topics.closed_topics.clone(),
            control: topics.control_topic.clone(),
            fleet: topics.fleet_topic.clone(),
            signals: signal_topic.to_string(),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("kafka-consumer".into())
            .spawn({
                let stop = stop.clone();
                move || consume(consumer, &topics, &sinks, &stop)
            })
            .expect("spawning the consumer thread");
        Ok(Consumer {
            stop,
            thread,
            positions,
        })
    }

    pub fn positions(&self) -> LivePositions {
        self.positions.clone()
    }

    /// Stops polling and leaves the group; blocks until done.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        if self.thread.join().is_err() {
            tracing::error!("the Kafka consumer thread panicked");
        }
    }
}

/// What the consumer reads: the exposed topics but Kafka's own and the closed ones (which
/// `client_config` hides from it), the control topic, the fleet topic and the signal topic.
struct Topics {
    exposed: Vec<TopicPattern>,
    closed: Vec<TopicPattern>,
    control: String,
    fleet: String,
    signals: String,
}

impl Topics {
    fn matches(&self, topic: &str) -> bool {
        topic == self.control
            || topic == self.fleet
            || topic == self.signals
            || (any_matches(&self.exposed, topic)
                && !is_kafka_internal(topic)
                && !any_matches(&self.closed, topic))
    }

    fn own_exist(&self, metadata: &rdkafka::metadata::Metadata) -> bool {
        [&self.control, &self.fleet, &self.signals]
            .into_iter()
            .all(|own| {
                metadata.topics().iter().any(|t| {
                    t.name() == own.as_str()
                        && !t.partitions().is_empty()
                        && t.partitions().iter().all(|p| p.leader() >= 0)
                })
            })
    }
}

fn consume<S: Fn(&[u8])>(
    consumer: BaseConsumer<StartPositions>,
    topics: &Topics,
    sinks: &Sinks<S>,
    stop: &AtomicBool,
) {
    // Which partitions already exist decides where each one starts (see `StartPositions`),
    // so it is settled before subscribing.
    loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        match consumer.fetch_metadata(None, METADATA_TIMEOUT) {
            // The hub's own topics are created once Kafka answers (see `ensure_topics`):
            // subscribed before they exist, they would be read only from the consumer's
            // next metadata refresh, and signals and revocations be late until then.
            Ok(metadata) if !topics.own_exist(&metadata) => {
                std::thread::sleep(OWN_TOPICS_RETRY);
            }
            Ok(metadata) => {
                let existing = metadata
                    .topics()
                    .iter()
                    .filter(|t| topics.matches(t.name()))
                    .flat_map(|t| {
                        t.partitions()
                            .iter()
                            .map(|p| (t.name().to_string(), p.id()))
                    })
                    .collect();
                consumer.context().started_with(existing);
                break;
            }
            Err(e) => {
                // `KafkaLog` says which broker does not answer, once.
                tracing::debug!(error = %e, "Kafka not reachable yet");
                std::thread::sleep(METADATA_RETRY);
            }
        }
    }
    let subscriptions: Vec<String> = topics
        .exposed
        .iter()
        .map(|p| p.kafka_subscription())
        .chain([
            topics.control.clone(),
            topics.fleet.clone(),
            topics.signals.clone(),
        ])
        .collect();
    let subscriptions: Vec<&str> = subscriptions.iter().map(String::as_str).collect();
    if let Err(e) = consumer.subscribe(&subscriptions) {
        tracing::error!(error = %e, "subscribing to the exposed topics failed");
        return;
    }
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll(POLL_INTERVAL) {
            None => {}
            Some(Ok(message)) if message.topic() == topics.fleet => {
                if let Some(value) = message.payload() {
                    sinks.fleet.read(value);
                }
            }
            Some(Ok(message)) if message.topic() == topics.control => {
                if let Some(value) = message.payload() {
                    let _ = sinks.control.send(value.to_vec());
                }
            }
            Some(Ok(message)) if message.topic() == topics.signals => {
                if let Some(value) = message.payload() {
                    (sinks.signals)(value);
                }
            }
            Some(Ok(message)) => {
                deliver(consumer.context(), &sinks.registry, &sinks.recent, &message)
            }
            // Exposed patterns that no topic matches yet are normal, and reported each refresh.
            Some(Err(e))
                if e.rdkafka_error_code() == Some(RDKafkaErrorCode::UnknownTopicOrPartition) =>
            {
                tracing::debug!(error = %e, "no topic matches an exposed pattern yet");
            }
            Some(Err(e)) => consumer.context().log.client_error(&e, "consumer"),
        }
    }
    // Dropping a BaseConsumer closes it, which sends LeaveGroup.
}

fn deliver(
    context: &StartPositions,
    registry: &Registry,
    recent: &Recent,
    message: &BorrowedMessage<'_>,
) {
    let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
    let subscribed = registry.has_subscribers(topic);
    let keeps = recent.keeps(topic, subscribed);
    // Most records of a topic nobody here follows need nothing but their position moved.
    let headers = if subscribed || keeps {
        headers_of(message)
    } else {
        Vec::new()
    };
    let kept = keeps.then(|| Arc::new(delivery_of(message, &headers)));
    // Kept as the live position moves past it, under the same lock: every record behind a
    // live position a subscription reads is then among the recent ones, as is every record
    // a connection leaves to its replay.
    let new = context.advance(topic, partition, offset, || {
        if let Some(delivery) = &kept {
            recent.push(delivery);
        }
    });
    if !new {
        tracing::debug!(
            topic,
            partition,
            offset,
            "skipping a record already delivered"
        );
        return;
    }
    if subscribed {
        let meta = RecordMeta {
            key: message.key(),
            headers: &headers,
        };
        match kept {
            Some(delivery) => registry.fan_out(topic, &meta, || delivery),
            None => registry.fan_out(topic, &meta, || delivery_of(message, &headers)),
        };
    }
}

/// Decides where each assigned partition starts, which is what makes "every record appended
/// after `subscribed`" hold:
/// - a partition seen before starts right after its last delivered record, so a rebalance
///   neither skips nor repeats anything;
/// - a partition that existed when the hub started starts at its end, resolved with
///   ListOffsets *before* the hub reports ready, so no record slips in between readiness
///   and the position being known (as it can with a lazily resolved `auto.offset.reset`);
/// - any other partition was created while the hub ran, so every record in it is new: it
///   starts at its beginning.
///
/// It also keeps delivery monotonic: a record at or below a partition's last delivered
/// offset is never delivered again.
struct StartPositions {
    ready: Arc<AtomicBool>,
    positions: Arc<Mutex<Progress>>,
    log: KafkaLog,
}

#[derive(Default)]
struct Progress {
    /// Whether `existing` has been filled: until then, no partition's start is known, not
    /// even that it has none.
    snapshot_taken: bool,
    /// Partitions that existed at start and have no resolved position yet.
    existing: HashSet<(String, i32)>,
    /// The next offset to deliver, per topic and partition.
    next: HashMap<String, HashMap<i32, i64>>,
}

impl ClientContext for StartPositions {
    /// librdkafka's statistics (every `statistics.interval.ms`) carry each partition's end
    /// and the position of the next record the hub is handed. (Its own `consumer_lag` counts
    /// from the committed offset, and the hub commits nothing.)
    fn stats(&self, statistics: Statistics) {
        self.log.stats(&statistics);
        report_lag(&statistics);
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.log.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.log.client_error(&error, reason);
    }
}

/// Each partition's consumer lag, from a consumer's statistics, to `metrics`.
fn report_lag(statistics: &Statistics) {
    for (name, topic) in &statistics.topics {
        for (&partition, stats) in &topic.partitions {
            // A partition that handed the hub nothing since start has no `app_offset`:
            // where its fetching stands is where the hub reads it, less what was fetched
            // and not handed yet. Partition -1 is librdkafka's internal one; negative
            // offsets mean unknown.
            let position = if stats.app_offset >= 0 {
                stats.app_offset
            } else {
                stats.next_offset - stats.fetchq_cnt
            };
            if partition >= 0 && stats.hi_offset >= 0 && position >= 0 {
                let lag = (stats.hi_offset - position).max(0);
                metrics::consumer_lag(name, partition, lag);
            }
        }
    }
}

/// librdkafka's log, and the consumer lag in its statistics, for a consumer beside the
/// hub's main one that assigns its partitions by hand (the roster's): its client settings
/// need `statistics.interval.ms`.
#[derive(Clone)]
pub struct LagReporting(pub KafkaLog);

impl ClientContext for LagReporting {
    fn stats(&self, statistics: Statistics) {
        self.0.stats(&statistics);
        report_lag(&statistics);
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.0.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.client_error(&error, reason);
    }
}

impl ConsumerContext for LagReporting {}

impl ConsumerContext for StartPositions {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.set_start_positions(consumer, tpl, cooperative);
                let assigned = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                match assigned {
                    Ok(()) => {
                        tracing::info!(partitions = tpl.count(), "Kafka partitions assigned");
                        self.update_readiness();
                    }
                    Err(e) => tracing::error!(error = %e, "assigning Kafka partitions failed"),
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(partitions = tpl.count(), "Kafka partitions revoked");
                let revoked = if cooperative {
                    self.forget(tpl);
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = revoked {
                    tracing::error!(error = %e, "revoking Kafka partitions failed");
                }
            }
            other => {
                tracing::error!(error = ?other, "Kafka rebalance failed");
                if let Err(e) = consumer.unassign() {
                    tracing::error!(error = %e, "unassigning Kafka partitions failed");
                }
            }
        }
    }
}

impl StartPositions {
    fn started_with(&self, existing: HashSet<(String, i32)>) {
        {
            let mut positions = self.positions.lock().expect("positions lock");
            positions.existing = existing;
            positions.snapshot_taken = true;
        }
        self.update_readiness();
    }

    /// Ready once every partition that existed at start has a known position.
    fn update_readiness(&self) {
        let positions = self.positions.lock().expect("positions lock");
        if positions.existing.is_empty() {
            self.ready.store(true, Ordering::Release);
        }
    }

    fn set_start_positions(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &mut TopicPartitionList,
        cooperative: bool,
    ) {
        let mut positions = self.positions.lock().expect("positions lock");
        let assigned: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        if !cooperative {
            // An eager assignment is the whole assignment: forget what is no longer in it,
            // so a deleted and re-created topic starts afresh.
            let kept: HashSet<(&str, i32)> =
                assigned.iter().map(|(t, p)| (t.as_str(), *p)).collect();
            for (topic, partitions) in positions.next.iter_mut() {
                partitions.retain(|p, _| kept.contains(&(topic.as_str(), *p)));
            }
            positions
                .next
                .retain(|_, partitions| !partitions.is_empty());
        }
        let mut at_end = TopicPartitionList::new();
        for (topic, partition) in &assigned {
            let start = match positions.next.get(topic).and_then(|p| p.get(partition)) {
                Some(&next) => Offset::Offset(next),
                None if positions.existing.contains(&(topic.clone(), *partition)) => {
                    at_end
                        .add_partition_offset(topic, *partition, Offset::End)
                        .expect("a fresh list takes any offset");
                    continue;
                }
                None => Offset::Beginning,
            };
            set_offset(tpl, topic, *partition, start);
        }
        if at_end.count() == 0 {
            return;
        }
        // Not held across the round trip, which can take RESOLVE_TIMEOUT: subscribes read
        // the positions meanwhile, and see these partitions unresolved (still `existing`).
        // Nothing else changes them: only this thread writes.
        drop(positions);
        // A ListOffsets request with the "latest" timestamp answers each partition's end. A
        // partition created a moment ago may have no leader serving it yet: asked again.
        let deadline = std::time::Instant::now() + RESOLVE_TIMEOUT;
        let ends = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match consumer.offsets_for_times(at_end.clone(), left) {
                Err(e) if leader_not_ready(&e) && !left.is_zero() => {
                    std::thread::sleep(OWN_TOPICS_RETRY);
                }
                ends => break ends,
            }
        };
        let mut positions = self.positions.lock().expect("positions lock");
        match ends {
            Ok(ends) => {
                for elem in ends.elements() {
                    let (topic, partition) = (elem.topic(), elem.partition());
                    if let Offset::Offset(end) = elem.offset() {
                        set_offset(tpl, topic, partition, Offset::Offset(end));
                        positions.existing.remove(&(topic.to_string(), partition));
                        positions
                            .next
                            .entry(topic.to_string())
                            .or_default()
                            .insert(partition, end);
                    } else {
                        tracing::warn!(topic, partition, offset = ?elem.offset(), "no end offset for a partition");
                        set_offset(tpl, topic, partition, Offset::End);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not resolve where the assigned partitions end; the hub stays unready");
                for elem in at_end.elements() {
                    set_offset(tpl, elem.topic(), elem.partition(), Offset::End);
                }
            }
        }
    }

    /// Partitions revoked from this hub: whoever gets them again starts them afresh.
    fn forget(&self, revoked: &TopicPartitionList) {
        let mut positions = self.positions.lock().expect("positions lock");
        for elem in revoked.elements() {
            if let Some(partitions) = positions.next.get_mut(elem.topic()) {
                partitions.remove(&elem.partition());
            }
        }
    }

    /// Records `offset` as delivered, calling `delivered` before anyone can see it was;
    /// false when it was already.
    fn advance(&self, topic: &str, partition: i32, offset: i64, delivered: impl FnOnce()) -> bool {
        let mut positions = self.positions.lock().expect("positions lock");
        let partitions = match positions.next.get_mut(topic) {
            Some(partitions) => partitions,
            None => positions.next.entry(topic.to_string()).or_default(),
        };
        let next = partitions.entry(partition).or_insert(offset);
        if offset < *next {
            return false;
        }
        delivered();
        *next = offset + 1;
        true
    }
}

fn set_offset(tpl: &mut TopicPartitionList, topic: &str, partition: i32, offset: Offset) {
    if let Err(e) = tpl.set_partition_offset(topic, partition, offset) {
        tracing::error!(topic, partition, error = %e, "setting a start offset failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_positions_are_unresolved_until_the_start_snapshot_and_its_resolution() {
        let shared = Arc::new(Mutex::new(Progress::default()));
        let live = LivePositions(shared.clone());
        // Before the consumer looked at which partitions exist, an empty answer would claim
        // that everything will arrive live.
        assert_eq!(live.of("t").1, Err(Unresolved));

        let mut positions = shared.lock().unwrap();
        positions.snapshot_taken = true;
        positions.existing.insert(("t".into(), 0));
        drop(positions);
        assert_eq!(live.of("t").1, Err(Unresolved));
        assert_eq!(live.of("other").1, Ok(()));

        let mut positions = shared.lock().unwrap();
        positions.existing.clear();
        positions.next.entry("t".into()).or_default().insert(0, 42);
        drop(positions);
        assert_eq!(live.of("t"), (BTreeMap::from([(0, 42)]), Ok(())));
    }
}
