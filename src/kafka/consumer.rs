//! The one consumer per hub that feeds every record of the exposed topics into the registry,
//! and where each partition's live stream starts (`LivePositions`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message as _, Offset, TopicPartitionList};
use tokio::sync::{Notify, mpsc};

use crate::config::ServeConfig;
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
/// How often the consumer looks at which topics it has interest in: a topic is paused at most
/// this long after its linger, and one with a subscriber (which always asks at once, see
/// `LivePositions::want`) resumed at most this long late.
const INTEREST_SWEEP: Duration = Duration::from_secs(1);

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
pub struct LivePositions(Arc<Shared>);

/// What the consumer thread shares with the subscribes.
#[derive(Default)]
struct Shared {
    progress: Mutex<Progress>,
    /// Woken whenever positions were resolved: at start, and when paused partitions resume.
    resolved: Notify,
    /// A subscribe asked for a paused topic (see `LivePositions::want`).
    wanted: AtomicBool,
}

impl Shared {
    fn progress(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().expect("positions lock")
    }
}

/// Some partition of the topic existed at start and its position is not resolved yet, the
/// consumer has not yet looked at which partitions exist, or it does not fetch the topic
/// (no interest in it here, see `Interest`) and its position is stale.
#[derive(Debug, PartialEq, Eq)]
pub struct Unresolved;

impl LivePositions {
    /// Partitions missing from the answer have delivered nothing yet and start at their first
    /// record: everything in them will arrive live.
    pub fn of(&self, topic: &str) -> (BTreeMap<i32, i64>, Result<(), Unresolved>) {
        let positions = self.0.progress();
        let known = positions
            .next
            .get(topic)
            .map(|partitions| partitions.iter().map(|(p, o)| (*p, *o)).collect())
            .unwrap_or_default();
        let resolved = if !positions.snapshot_taken
            || positions.paused.contains_key(topic)
            || positions.existing.iter().any(|(t, _)| t == topic)
        {
            Err(Unresolved)
        } else {
            Ok(())
        };
        (known, resolved)
    }

    /// Positions of a hub whose consumer found no partition at start: every topic is
    /// resolved, and starts at its first record.
    #[cfg(test)]
    pub fn all_new() -> Self {
        let live = LivePositions::default();
        live.0.progress().snapshot_taken = true;
        live
    }

    /// For a subscribe that found `topic` unresolved: the consumer then fetches it (if it
    /// did not), from its end resolved now, and keeps fetching it for the linger.
    pub fn want(&self, topic: &str) {
        self.0
            .progress()
            .wanted
            .insert(topic.to_string(), Instant::now());
        self.0.wanted.store(true, Ordering::Release);
    }

    /// Done once `topic`'s positions are resolved, or after `patience`.
    pub fn resolved(
        &self,
        topic: &str,
        patience: Duration,
    ) -> impl Future<Output = ()> + Send + 'static {
        let (live, topic) = (self.clone(), topic.to_string());
        async move {
            let resolution = async {
                loop {
                    let notified = live.0.resolved.notified();
                    tokio::pin!(notified);
                    // Registered before looking, so a resolution in between still wakes it.
                    notified.as_mut().enable();
                    if live.of(&topic).1.is_ok() {
                        return;
                    }
                    notified.await;
                }
            };
            let _ = tokio::time::timeout(patience, resolution).await;
        }
    }
}

/// Which topics the consumer fetches (issue 37): those a socket here follows, for `linger`
/// after the last one left (the recent records' keep time by default, see `recent::KEEP`),
/// and the hub's own. A paused partition costs the broker nothing to send and the hub
/// nothing to decode; its records are served by replay, as after a hub restart.
struct Interest {
    /// Fetch everything (`WSKAFKA_CONSUME_ALL`).
    all: bool,
    linger: Duration,
    /// The hub's own topics, always read.
    always: HashSet<String>,
    registry: Arc<Registry>,
}

impl Interest {
    /// Whether the hub fetches `topic` now. A subscriber seen counts as the topic's latest
    /// want. Called with the positions locked: a subscriber joins the registry before it
    /// reads its positions, so either it is seen here or it sees the topic paused.
    fn wants(&self, progress: &mut Progress, topic: &str, now: Instant) -> bool {
        if self.all || self.always.contains(topic) {
            return true;
        }
        if self.registry.has_subscribers(topic) {
            match progress.wanted.get_mut(topic) {
                Some(at) => *at = now,
                None => {
                    progress.wanted.insert(topic.to_string(), now);
                }
            }
            return true;
        }
        progress
            .wanted
            .get(topic)
            .is_some_and(|at| now.saturating_duration_since(*at) < self.linger)
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
    /// The signal topic is read beside the exposed topics, the control and fleet topics.
    pub fn start<S: Fn(&[u8]) + Send + 'static>(
        clients: &Clients,
        config: &ServeConfig,
        sinks: Sinks<S>,
        ready: Arc<AtomicBool>,
    ) -> Result<Self, KafkaError> {
        let (limits, topics) = (&config.limits, &config.topics);
        let signal_topic = &config.presence.signal_topic;
        let group_id = clients.group_id();
        let positions = LivePositions::default();
        let context = StartPositions {
            ready,
            shared: positions.0.clone(),
            log: clients.log().clone(),
            interest: Interest {
                all: config.kafka.consume_all,
                linger: config.kafka.interest_linger,
                always: config.own_topics().into_iter().map(String::from).collect(),
                registry: sinks.registry.clone(),
            },
            recent: sinks.recent.clone(),
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
    let mut swept = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let context = consumer.context();
        if context.shared.wanted.swap(false, Ordering::AcqRel) {
            context.resume_wanted(&consumer);
        }
        if swept.elapsed() >= INTEREST_SWEEP {
            swept = Instant::now();
            context.resume_wanted(&consumer);
            context.pause_unwanted(&consumer);
        }
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
///
/// And it pauses and resumes partitions by interest (see `Interest`), from this thread only.
struct StartPositions {
    ready: Arc<AtomicBool>,
    shared: Arc<Shared>,
    log: KafkaLog,
    interest: Interest,
    /// Forgets a topic as it is paused.
    recent: Recent,
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
    /// Partitions assigned but not fetched, per topic (never an empty set): their `next`
    /// is stale until they resume.
    paused: HashMap<String, HashSet<i32>>,
    /// When each topic was last wanted: a subscriber seen, or a subscribe waiting on it.
    wanted: HashMap<String, Instant>,
}

impl Progress {
    fn is_paused(&self, topic: &str, partition: i32) -> bool {
        self.paused
            .get(topic)
            .is_some_and(|partitions| partitions.contains(&partition))
    }

    fn pause(&mut self, topic: &str, partition: i32) {
        self.paused
            .entry(topic.to_string())
            .or_default()
            .insert(partition);
    }

    fn unpause(&mut self, topic: &str, partition: i32) -> bool {
        let Some(partitions) = self.paused.get_mut(topic) else {
            return false;
        };
        let was = partitions.remove(&partition);
        if partitions.is_empty() {
            self.paused.remove(topic);
        }
        was
    }
}

impl ClientContext for StartPositions {
    /// librdkafka's statistics (every `statistics.interval.ms`) carry each partition's end
    /// and the position of the next record the hub is handed. (Its own `consumer_lag` counts
    /// from the committed offset, and the hub commits nothing.)
    fn stats(&self, statistics: Statistics) {
        self.log.stats(&statistics);
        let progress = self.shared.progress();
        report_lag(&statistics, |topic, partition| {
            progress.is_paused(topic, partition)
        });
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.log.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.log.client_error(&error, reason);
    }
}

/// Each partition's consumer lag, from a consumer's statistics, to `metrics`; none for a
/// paused one, which nobody here waits on.
fn report_lag(statistics: &Statistics, paused: impl Fn(&str, i32) -> bool) {
    for (name, topic) in &statistics.topics {
        for (&partition, stats) in &topic.partitions {
            if paused(name, partition) {
                metrics::consumer_lag(name, partition, 0);
                continue;
            }
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
        report_lag(&statistics, |_, _| false);
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
                let paused = self.set_start_positions(consumer, tpl, cooperative);
                let assigned = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                match assigned {
                    Ok(()) => {
                        tracing::info!(
                            partitions = tpl.count(),
                            paused = paused.count(),
                            "Kafka partitions assigned"
                        );
                        if paused.count() > 0
                            && let Err(e) = consumer.pause(&paused)
                        {
                            tracing::error!(error = %e, "pausing Kafka partitions failed");
                        }
                        self.update_readiness();
                        self.shared.resolved.notify_waiters();
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
            let mut positions = self.shared.progress();
            positions.existing = existing;
            positions.snapshot_taken = true;
        }
        self.update_readiness();
    }

    /// Ready once every partition that existed at start has a known position.
    fn update_readiness(&self) {
        let positions = self.shared.progress();
        if positions.existing.is_empty() {
            self.ready.store(true, Ordering::Release);
        }
    }

    /// Returns the partitions to pause once assigned.
    fn set_start_positions(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &mut TopicPartitionList,
        cooperative: bool,
    ) -> TopicPartitionList {
        let mut positions = self.shared.progress();
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
            for (topic, partitions) in positions.paused.iter_mut() {
                partitions.retain(|p| kept.contains(&(topic.as_str(), *p)));
            }
            positions
                .paused
                .retain(|_, partitions| !partitions.is_empty());
        }
        let now = Instant::now();
        let mut paused = TopicPartitionList::new();
        let mut at_end = TopicPartitionList::new();
        for (topic, partition) in &assigned {
            // Not fetched: its live position is settled when it resumes (see
            // `resume_wanted`). One still paused (an eager reassignment) stays so until then
            // too. It is assigned at its end resolved here, an offset, not the logical end:
            // librdkafka would look that up itself, and a lookup still under way when the
            // partition is paused and resumed is retried after the resume's seek and
            // overrides it, skipping what was appended in between.
            if positions.is_paused(topic, *partition)
                || !self.interest.wants(&mut positions, topic, now)
            {
                positions.existing.remove(&(topic.clone(), *partition));
                positions.pause(topic, *partition);
                at_end
                    .add_partition_offset(topic, *partition, Offset::End)
                    .expect("a fresh list takes any offset");
                paused.add_partition(topic, *partition);
                continue;
            }
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
            return paused;
        }
        // Not held across the round trip, which can take RESOLVE_TIMEOUT: subscribes read
        // the positions meanwhile, and see these partitions unresolved (still `existing`).
        // Nothing else changes them: only this thread writes.
        drop(positions);
        let ends = resolve_ends(consumer, &at_end);
        let mut positions = self.shared.progress();
        match ends {
            Ok(ends) => {
                for elem in ends.elements() {
                    let (topic, partition) = (elem.topic(), elem.partition());
                    if let Offset::Offset(end) = elem.offset() {
                        set_offset(tpl, topic, partition, Offset::Offset(end));
                        if positions.is_paused(topic, partition) {
                            continue;
                        }
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
        paused
    }

    /// Resumes the paused partitions of every topic wanted again, each from its end
    /// resolved now, which becomes its live position: the subscribe that asked for it
    /// waits for that (see `LivePositions::resolved`), and replays serve what was appended
    /// while it was paused. Seeks first, so fetching restarts at the end rather than at the
    /// stale position.
    fn resume_wanted(&self, consumer: &BaseConsumer<Self>) {
        let now = Instant::now();
        let mut at_end = TopicPartitionList::new();
        {
            let mut progress = self.shared.progress();
            let topics: Vec<String> = progress.paused.keys().cloned().collect();
            for topic in topics {
                if self.interest.wants(&mut progress, &topic, now) {
                    for partition in &progress.paused[&topic] {
                        at_end
                            .add_partition_offset(&topic, *partition, Offset::End)
                            .expect("a fresh list takes any offset");
                    }
                }
            }
        }
        if at_end.count() == 0 {
            return;
        }
        let ends = match resolve_ends(consumer, &at_end) {
            Ok(ends) => ends,
            Err(e) => {
                // Asked again at the next sweep; the subscribes waiting meanwhile are
                // answered `unavailable` if it takes them too long.
                tracing::warn!(error = %e, "could not resolve where paused partitions end; they stay paused");
                return;
            }
        };
        let mut resumed = TopicPartitionList::new();
        {
            let mut progress = self.shared.progress();
            for elem in ends.elements() {
                let (topic, partition) = (elem.topic(), elem.partition());
                let Offset::Offset(end) = elem.offset() else {
                    tracing::warn!(topic, partition, offset = ?elem.offset(), "no end offset for a paused partition");
                    continue;
                };
                // Only this thread revokes, so it is still assigned and paused.
                if !progress.unpause(topic, partition) {
                    continue;
                }
                progress
                    .next
                    .entry(topic.to_string())
                    .or_default()
                    .insert(partition, end);
                resumed
                    .add_partition_offset(topic, partition, Offset::Offset(end))
                    .expect("a fresh list takes any offset");
            }
        }
        if resumed.count() == 0 {
            return;
        }
        match consumer.resume(&resumed) {
            Ok(()) => tracing::info!(partitions = resumed.count(), "Kafka partitions resumed"),
            Err(e) => tracing::error!(error = %e, "resuming Kafka partitions failed"),
        }
        // Seeking after resuming, which repositions a partition to where the hub last read
        // it: the seek outdates whatever was fetched from there. Records fetched before the
        // pause and still queued are below the end: `advance` drops them.
        match consumer.seek_partitions(resumed.clone(), RESOLVE_TIMEOUT) {
            Ok(sought) => {
                for elem in sought.elements() {
                    if let Err(e) = elem.error() {
                        tracing::warn!(topic = elem.topic(), partition = elem.partition(), error = %e, "seeking a resumed partition to its end failed; it reads on from where it was paused");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "seeking resumed partitions to their end failed; they read on from where they were paused");
            }
        }
        self.shared.resolved.notify_waiters();
    }

    /// Pauses the partitions of every topic no longer wanted, and forgets its recent
    /// records: they would cover a stretch the live stream then skips. Reports how many
    /// partitions are fetched and paused.
    fn pause_unwanted(&self, consumer: &BaseConsumer<Self>) {
        let assignment = match consumer.assignment() {
            Ok(assignment) => assignment,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the consumer's assignment");
                return;
            }
        };
        let now = Instant::now();
        let mut pause = TopicPartitionList::new();
        let mut fetched = 0;
        let mut paused: BTreeMap<String, usize> = BTreeMap::new();
        {
            let mut progress = self.shared.progress();
            for elem in assignment.elements() {
                let (topic, partition) = (elem.topic(), elem.partition());
                let count = paused.entry(topic.to_string()).or_default();
                if progress.is_paused(topic, partition) {
                    *count += 1;
                    continue;
                }
                if self.interest.wants(&mut progress, topic, now) {
                    fetched += 1;
                    continue;
                }
                *count += 1;
                progress.pause(topic, partition);
                self.recent.forget(topic);
                pause.add_partition(topic, partition);
            }
            let linger = self.interest.linger;
            progress
                .wanted
                .retain(|_, at| now.saturating_duration_since(*at) < linger);
        }
        if pause.count() > 0 {
            match consumer.pause(&pause) {
                Ok(()) => tracing::info!(
                    partitions = pause.count(),
                    "Kafka partitions paused: no interest here"
                ),
                Err(e) => tracing::error!(error = %e, "pausing Kafka partitions failed"),
            }
        }
        metrics::consumer_partitions(fetched, &paused);
    }

    /// Partitions revoked from this hub: whoever gets them again starts them afresh.
    fn forget(&self, revoked: &TopicPartitionList) {
        let mut positions = self.shared.progress();
        for elem in revoked.elements() {
            if let Some(partitions) = positions.next.get_mut(elem.topic()) {
                partitions.remove(&elem.partition());
            }
            positions.unpause(elem.topic(), elem.partition());
        }
    }

    /// Records `offset` as delivered, calling `delivered` before anyone can see it was;
    /// false when it was already, or its partition is paused (a record fetched before the
    /// pause: once resumed, the partition starts past it).
    fn advance(&self, topic: &str, partition: i32, offset: i64, delivered: impl FnOnce()) -> bool {
        let mut positions = self.shared.progress();
        if positions.is_paused(topic, partition) {
            return false;
        }
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

/// Each partition's end, by a ListOffsets request with the "latest" timestamp. A partition
/// created a moment ago may have no leader serving it yet: asked again.
fn resolve_ends(
    consumer: &BaseConsumer<StartPositions>,
    at_end: &TopicPartitionList,
) -> Result<TopicPartitionList, KafkaError> {
    let deadline = Instant::now() + RESOLVE_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match consumer.offsets_for_times(at_end.clone(), left) {
            Err(e) if leader_not_ready(&e) && !left.is_zero() => {
                std::thread::sleep(OWN_TOPICS_RETRY);
            }
            ends => break ends,
        }
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
        let live = LivePositions::default();
        let shared = &live.0.progress;
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
