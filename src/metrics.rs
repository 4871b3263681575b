//! What the hub counts, exposed at `/metrics` in Prometheus' format. Every name and label is
//! defined here; the rest of the code records through these functions and `Metrics`' methods.
//!
//! Series labelled with a topic are kept here rather than in the exporter, which has no way
//! to drop a series: a topic deleted from Kafka would otherwise stay in every scrape for as
//! long as the hub runs. Only topics that exist get one (the hub checks before subscribing;
//! the consumer reads nothing else), and `retain_topics` drops those that went away.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Counter, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};

/// Latency buckets, in seconds: sub-millisecond to ten seconds.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// The exporter, and handles to what is recorded per frame. Recording through `counter!` or
/// `histogram!` looks the metric up by name each time (the key hashed, a registry shard
/// locked): about 3% of the hub's core when it fans records out one at a time.
#[derive(Clone)]
pub struct Metrics {
    exporter: PrometheusHandle,
    frames_received: Counter,
    frames_sent: Counter,
    publish_ack: PublishAcks,
    delivery: Histogram,
}

/// The publish acknowledgement's histogram, counted in `TOTALS` too.
#[derive(Clone)]
pub struct PublishAcks(Histogram);

impl PublishAcks {
    pub fn record(&self, elapsed: Duration) {
        TOTALS.acks.fetch_add(1, Ordering::Relaxed);
        self.0.record(elapsed);
    }
}

impl Metrics {
    /// Installs the process-wide recorder; call once. The handles come after it: a handle
    /// taken before a recorder is installed records nothing, ever.
    pub fn install() -> Result<Self, BuildError> {
        let exporter = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)?
            .install_recorder()?;
        Ok(Metrics {
            exporter,
            frames_received: counter!("wskafka_frames_received_total"),
            frames_sent: counter!("wskafka_frames_sent_total"),
            publish_ack: PublishAcks(histogram!("wskafka_publish_ack_seconds")),
            delivery: histogram!("wskafka_delivery_seconds"),
        })
    }

    pub fn render(&self) -> String {
        let mut text = self.exporter.render();
        let series = TOPIC_SERIES.lock().expect("topic series lock");
        series.render(&mut text);
        text
    }

    /// Drains the samples histograms buffer between scrapes; without it they pile up
    /// (about 3 KB per delivered record in a soak run) for as long as nobody scrapes
    /// `/metrics`.
    pub async fn upkeep(&self, stop: &tokio_util::sync::CancellationToken) {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = every.tick() => self.exporter.run_upkeep(),
            }
        }
    }

    pub fn frame_received(&self) {
        TOTALS.frames_in.fetch_add(1, Ordering::Relaxed);
        self.frames_received.increment(1);
    }

    pub fn frames_sent(&self, count: usize) {
        TOTALS.frames_out.fetch_add(count as u64, Ordering::Relaxed);
        self.frames_sent.increment(count as u64);
    }

    /// From handing the record to the producer to Kafka's acknowledgement. A handle, for
    /// the publish's answer, which outlives the borrow of the hub's state.
    pub fn publish_ack(&self) -> PublishAcks {
        self.publish_ack.clone()
    }

    /// Per write to a socket, the age of the oldest record it carries. Once per write, not
    /// per record: the exporter keeps every sample with its own clock reading until the
    /// next upkeep, which cost a fifth of the hub's CPU when fanning out bursts.
    pub fn delivered(&self, oldest_ms: i64) {
        let ms = oldest_ms.max(0);
        let bucket = DELIVERY_BUCKETS_MS.partition_point(|&bound| bound < ms);
        TOTALS.delivery[bucket].fetch_add(1, Ordering::Relaxed);
        self.delivery.record(ms as f64 / 1000.0);
    }
}

/// Upper bounds of the delivery latency buckets the admin view's percentiles are read from,
/// in milliseconds; finer than the exporter's, and one more bucket for anything slower.
pub const DELIVERY_BUCKETS_MS: [i64; 22] = [
    1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700, 1000, 2000, 3000, 5000,
    10000,
];

/// Running totals since start, which the admin view's charts are sampled from (see
/// `fleet`): the exporter only renders text, and a count is cheaper to read than to parse.
struct Totals {
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    acks: AtomicU64,
    publish_errors: AtomicU64,
    delivery: [AtomicU64; DELIVERY_BUCKETS_MS.len() + 1],
}

static TOTALS: Totals = Totals {
    frames_in: AtomicU64::new(0),
    frames_out: AtomicU64::new(0),
    acks: AtomicU64::new(0),
    publish_errors: AtomicU64::new(0),
    delivery: [const { AtomicU64::new(0) }; DELIVERY_BUCKETS_MS.len() + 1],
};

/// The running totals at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    pub frames_in: u64,
    pub frames_out: u64,
    pub acks: u64,
    pub publish_errors: u64,
    /// Writes per delivery latency bucket (`DELIVERY_BUCKETS_MS`, then the slower ones).
    pub delivery: Vec<u64>,
}

pub fn counts() -> Counts {
    let read = |total: &AtomicU64| total.load(Ordering::Relaxed);
    Counts {
        frames_in: read(&TOTALS.frames_in),
        frames_out: read(&TOTALS.frames_out),
        acks: read(&TOTALS.acks),
        publish_errors: read(&TOTALS.publish_errors),
        delivery: TOTALS.delivery.iter().map(read).collect(),
    }
}

/// What a connection talks over, as its metrics are labelled: operators watch how many
/// clients fell back to SSE (a network that breaks upgrades shows there first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    Sse,
}

impl Transport {
    /// From the transport a connection is listed as (`"sse"`, or a WebSocket's).
    pub fn of(listed: &str) -> Transport {
        if listed == "sse" {
            Transport::Sse
        } else {
            Transport::WebSocket
        }
    }

    fn label(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
        }
    }
}

pub fn connection_opened(transport: Transport) {
    gauge!("wskafka_connections").increment(1);
    gauge!("wskafka_connections_by_transport", "transport" => transport.label()).increment(1);
}

pub fn connection_closed(transport: Transport) {
    gauge!("wskafka_connections").decrement(1);
    gauge!("wskafka_connections_by_transport", "transport" => transport.label()).decrement(1);
}

/// A ticket for an SSE stream handed out, or refused because too many wait.
pub fn sse_ticket(issued: bool) {
    let outcome = if issued { "issued" } else { "refused" };
    counter!("wskafka_sse_tickets_total", "outcome" => outcome).increment(1);
}

/// A `POST` of requests for an SSE stream refused, by HTTP status: 404 for a stream this hub
/// does not hold (a client sent to the wrong hub: sticky sessions missing), 429 for a
/// stream whose client sends faster than its requests are taken.
pub fn sse_request_refused(status: u16) {
    counter!("wskafka_sse_requests_refused_total", "status" => status.to_string()).increment(1);
}

/// Per topic: the subscriptions to it on this hub, and the consumer's lag per partition.
/// Topic names are Kafka's (`[A-Za-z0-9._-]`): nothing in them needs escaping.
static TOPIC_SERIES: Mutex<TopicSeries> = Mutex::new(TopicSeries(BTreeMap::new()));

struct TopicSeries(BTreeMap<String, TopicCounts>);

#[derive(Default)]
struct TopicCounts {
    subscriptions: u64,
    lag: BTreeMap<i32, i64>,
    /// Partitions the consumer does not fetch: no interest here.
    paused: usize,
}

impl TopicSeries {
    fn subscribed(&mut self, topic: &str) {
        self.0.entry(topic.to_string()).or_default().subscriptions += 1;
    }

    fn unsubscribed(&mut self, topic: &str) {
        if let Some(counts) = self.0.get_mut(topic) {
            counts.subscriptions = counts.subscriptions.saturating_sub(1);
        }
    }

    fn lag(&mut self, topic: &str, partition: i32, lag: i64) {
        if let Some(counts) = self.0.get_mut(topic) {
            counts.lag.insert(partition, lag);
            return;
        }
        let counts = self.0.entry(topic.to_string()).or_default();
        counts.lag.insert(partition, lag);
    }

    fn render(&self, text: &mut String) {
        let series = &self.0;
        if !series.is_empty() {
            text.push_str("# TYPE wskafka_subscriptions gauge\n");
        }
        for (topic, counts) in series {
            let count = counts.subscriptions;
            let _ = writeln!(text, "wskafka_subscriptions{{topic=\"{topic}\"}} {count}");
        }
        // Per topic the consumer was assigned (which its lag or a pause shows).
        let assigned = |counts: &TopicCounts| !counts.lag.is_empty() || counts.paused > 0;
        if series.values().any(assigned) {
            text.push_str("# TYPE wskafka_consumer_paused_partitions gauge\n");
        }
        for (topic, counts) in series.iter().filter(|(_, c)| assigned(c)) {
            let paused = counts.paused;
            let _ = writeln!(
                text,
                "wskafka_consumer_paused_partitions{{topic=\"{topic}\"}} {paused}"
            );
        }
        if series.values().any(|counts| !counts.lag.is_empty()) {
            text.push_str("# TYPE wskafka_consumer_lag gauge\n");
        }
        for (topic, counts) in series {
            for (partition, lag) in &counts.lag {
                let _ = writeln!(
                    text,
                    "wskafka_consumer_lag{{topic=\"{topic}\",partition=\"{partition}\"}} {lag}"
                );
            }
        }
    }
}

/// A subscription to `topic`, which exists.
pub fn subscribed(topic: &str) {
    TOPIC_SERIES
        .lock()
        .expect("topic series lock")
        .subscribed(topic);
}

/// The end of a subscription; a topic whose series was dropped meanwhile (it went away)
/// does not get one again.
pub fn unsubscribed(topic: &str) {
    TOPIC_SERIES
        .lock()
        .expect("topic series lock")
        .unsubscribed(topic);
}

/// Drops the series of every topic `exists` denies.
pub fn retain_topics(exists: impl Fn(&str) -> bool) {
    let mut series = TOPIC_SERIES.lock().expect("topic series lock");
    series.0.retain(|topic, _| exists(topic));
}

/// Metadata requests made to learn which topics exist: `miss` when a request named a topic
/// the hub did not know, `periodic` otherwise.
pub fn topics_refreshed(cause: &'static str) {
    counter!("wskafka_topic_refreshes_total", "cause" => cause).increment(1);
}

pub fn publish_failed(code: &'static str) {
    TOTALS.publish_errors.fetch_add(1, Ordering::Relaxed);
    counter!("wskafka_publish_errors_total", "code" => code).increment(1);
}

/// What became of a resent publish: `found` (answered with the record its earlier attempt
/// wrote), `written`, `conflict`, `expired` or `unavailable`.
pub fn publish_retry(outcome: &'static str) {
    counter!("wskafka_publish_retries_total", "outcome" => outcome).increment(1);
}

/// Partitions being read for resent publishes.
pub fn retry_readers(count: usize) {
    gauge!("wskafka_retry_readers").set(count as f64);
}

/// How long a resent publish waited for its earlier attempts to be found or to be past
/// landing.
pub fn publish_retry_wait(waited: std::time::Duration) {
    histogram!("wskafka_publish_retry_wait_seconds").record(waited.as_secs_f64());
}

pub fn lagged() {
    counter!("wskafka_lagged_closes_total").increment(1);
}

/// A socket's roster write left out: its rooms were as the roster last heard (a join and a
/// leave within the coalescing interval).
pub fn roster_write_saved() {
    counter!("wskafka_roster_writes_saved_total").increment(1);
}

/// A `commit` taken (see `commits`).
pub fn commit_taken() {
    counter!("wskafka_commits_total").increment(1);
}

/// One database transaction writing the positions of `owners` user, topic and key sets.
pub fn commits_written(owners: usize) {
    counter!("wskafka_commit_writes_total").increment(1);
    counter!("wskafka_commit_positions_written_total").increment(owners as u64);
}

/// A request refused for going past its socket's budget, by request type.
pub fn request_refused(kind: &'static str) {
    counter!("wskafka_requests_refused_total", "type" => kind).increment(1);
}

/// A socket closed (1008) for going on past its budget.
pub fn abusive() {
    counter!("wskafka_abusive_closes_total").increment(1);
}

/// A socket closed for not answering the hub's ping (`WSKAFKA_PONG_TIMEOUT`).
pub fn unresponsive() {
    counter!("wskafka_unresponsive_closes_total").increment(1);
}

/// How long a client took to answer the hub's ping: the network's round trip, seen from
/// the hub.
pub fn ping_round_trip(round_trip: std::time::Duration) {
    histogram!("wskafka_ping_round_trip_seconds").record(round_trip.as_secs_f64());
}

pub fn auth_failed(reason: &'static str) {
    counter!("wskafka_auth_failures_total", "reason" => reason).increment(1);
}

/// An admin request refused for its password: `wrong_password`, or `locked_out` when its
/// source sent too many wrong ones lately (see `logins`).
pub fn admin_login_failed(reason: &'static str) {
    counter!("wskafka_admin_login_failures_total", "reason" => reason).increment(1);
}

/// A replay started: served from the hub's recent records (`recent`) or read from Kafka.
pub fn replay(from: &'static str) {
    counter!("wskafka_replays_total", "from" => from).increment(1);
}

/// A `history` page served: how long it took, and how many offsets it read from Kafka.
pub fn history_page(elapsed: Duration, offsets_read: u64, partial: bool) {
    histogram!("wskafka_history_seconds").record(elapsed);
    counter!("wskafka_history_offsets_read_total").increment(offsets_read);
    let partial = if partial { "true" } else { "false" };
    counter!("wskafka_history_pages_total", "partial" => partial).increment(1);
}

/// A fetch of an identity provider's key set, and whether it gave a usable one.
pub fn jwks_fetched(url: &str, usable: bool) {
    let outcome = if usable { "ok" } else { "failed" };
    counter!("wskafka_jwks_fetches_total", "url" => url.to_string(), "outcome" => outcome)
        .increment(1);
}

/// Records behind the partition's end, from librdkafka's statistics of the partitions the
/// consumer reads.
pub fn consumer_lag(topic: &str, partition: i32, lag: i64) {
    let mut series = TOPIC_SERIES.lock().expect("topic series lock");
    series.lag(topic, partition, lag);
}

/// The live consumer's assigned partitions it fetches, and those it paused per topic (see
/// `kafka::consumer`'s interest): what this hub costs the brokers to feed.
pub fn consumer_partitions(fetched: usize, paused: &BTreeMap<String, usize>) {
    let all_paused: usize = paused.values().sum();
    gauge!("wskafka_consumer_partitions", "state" => "fetched").set(fetched as f64);
    gauge!("wskafka_consumer_partitions", "state" => "paused").set(all_paused as f64);
    let mut series = TOPIC_SERIES.lock().expect("topic series lock");
    for (topic, counts) in series.0.iter_mut() {
        counts.paused = paused.get(topic).copied().unwrap_or(0);
    }
    for (topic, &count) in paused {
        if count > 0 && !series.0.contains_key(topic) {
            series.0.entry(topic.clone()).or_default().paused = count;
        }
    }
}

/// Per topic with a series: its subscriptions on this hub, its consumer lag per partition
/// and how many of its partitions the consumer paused, for the admin view.
pub fn topics() -> Vec<TopicFigures> {
    let series = TOPIC_SERIES.lock().expect("topic series lock");
    series
        .0
        .iter()
        .map(|(topic, counts)| TopicFigures {
            topic: topic.clone(),
            subscriptions: counts.subscriptions,
            lag: counts.lag.clone(),
            paused: counts.paused,
        })
        .collect()
}

/// One topic's figures (see `topics`).
pub struct TopicFigures {
    pub topic: String,
    pub subscriptions: u64,
    pub lag: BTreeMap<i32, i64>,
    pub paused: usize,
}

// What holds memory (see `memory`): bytes per part, and sockets ended for bytes.

/// A socket's queued records passed its bytes (or the hub's), so it was told `lagged`.
pub fn lagged_for_bytes() {
    counter!("wskafka_lagged_for_bytes_total").increment(1);
}

/// The bytes each part holds now, refreshed every few seconds.
pub struct Held {
    pub recent: usize,
    pub send_queues: usize,
    pub largest_send_queue: usize,
    pub replays: usize,
    pub history: usize,
}

pub fn held(held: &Held) {
    gauge!("wskafka_recent_bytes").set(held.recent as f64);
    gauge!("wskafka_send_queue_bytes").set(held.send_queues as f64);
    gauge!("wskafka_send_queue_largest_bytes").set(held.largest_send_queue as f64);
    gauge!("wskafka_replay_bytes").set(held.replays as f64);
    gauge!("wskafka_history_bytes").set(held.history as f64);
}

/// A push a push service accepted.
pub fn push_sent() {
    PUSH.sent.fetch_add(1, Ordering::Relaxed);
    counter!("wskafka_push_sent_total").increment(1);
}

/// A push sent again because the hub that claimed it never said it was done (it died or
/// lost the partition while sending); the push service collapses the two by their `Topic`.
pub fn push_resent() {
    counter!("wskafka_push_resent_total").increment(1);
}

/// A push given up: the push service's last status (`429`, `500`, ...), `unreachable`, or
/// `bad_keys` (a subscription whose keys do not encrypt).
pub fn push_failed(reason: &str) {
    *PUSH
        .failed
        .lock()
        .expect("push failures lock")
        .entry(reason.to_string())
        .or_default() += 1;
    counter!("wskafka_push_failed_total", "reason" => reason.to_string()).increment(1);
}

/// A subscription removed because its push service answered 404 or 410.
pub fn push_subscription_removed() {
    PUSH.removed.fetch_add(1, Ordering::Relaxed);
    counter!("wskafka_push_subscriptions_removed_total").increment(1);
}

/// A record of a pushed topic not pushed: `online` (the user has a socket), `expired` (older
/// than the push TTL) or `rate_limited` (the user's pushes per minute).
pub fn push_skipped(reason: &'static str) {
    counter!("wskafka_push_skipped_total", "reason" => reason).increment(1);
}

/// Push requests sent and not answered yet (retries waiting included).
pub fn push_in_flight(change: f64) {
    gauge!("wskafka_push_in_flight").increment(change);
}

/// Records being pushed, or waiting for an earlier one of their partition.
pub fn push_queue(change: f64) {
    PUSH.queue.fetch_add(change as i64, Ordering::Relaxed);
    gauge!("wskafka_push_queue").increment(change);
}

/// Web Push's figures kept for the admin view (see `push_counts`): a few counters and a map
/// of the failure reasons, which are push services' statuses, so few.
struct PushTotals {
    sent: AtomicU64,
    removed: AtomicU64,
    queue: AtomicI64,
    failed: Mutex<BTreeMap<String, u64>>,
}

static PUSH: PushTotals = PushTotals {
    sent: AtomicU64::new(0),
    removed: AtomicU64::new(0),
    queue: AtomicI64::new(0),
    failed: Mutex::new(BTreeMap::new()),
};

/// Web Push since the hub started, as each hub reports it to the fleet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PushCounts {
    pub sent: u64,
    /// Pushes given up, by reason (as `wskafka_push_failed_total`'s label).
    pub failed: BTreeMap<String, u64>,
    /// Subscriptions removed for a 404 or 410.
    pub removed: u64,
    /// Records being pushed now, or waiting for an earlier one of their partition.
    pub queue: i64,
}

pub fn push_counts() -> PushCounts {
    PushCounts {
        sent: PUSH.sent.load(Ordering::Relaxed),
        failed: PUSH.failed.lock().expect("push failures lock").clone(),
        removed: PUSH.removed.load(Ordering::Relaxed),
        queue: PUSH.queue.load(Ordering::Relaxed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_series_of_topics_that_went_away_are_dropped_and_not_revived() {
        let mut series = TopicSeries(BTreeMap::new());
        series.subscribed("kept");
        series.subscribed("gone");
        series.lag("gone", 0, 5);
        series.lag("kept", 1, 7);
        series.0.retain(|topic, _| topic != "gone");
        series.unsubscribed("gone");
        let mut text = String::new();
        series.render(&mut text);
        assert_eq!(
            text,
            "# TYPE wskafka_subscriptions gauge\n\
             wskafka_subscriptions{topic=\"kept\"} 1\n\
             # TYPE wskafka_consumer_paused_partitions gauge\n\
             wskafka_consumer_paused_partitions{topic=\"kept\"} 0\n\
             # TYPE wskafka_consumer_lag gauge\n\
             wskafka_consumer_lag{topic=\"kept\",partition=\"1\"} 7\n"
        );
    }
}
