//! What the hub counts, exposed at `/metrics` in Prometheus' format. Every name and label is
//! defined here; the rest of the code records through these functions and `Metrics`' methods.

use std::time::Duration;

use metrics::{Counter, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

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
    publish_ack: Histogram,
    delivery: Histogram,
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
            publish_ack: histogram!("wskafka_publish_ack_seconds"),
            delivery: histogram!("wskafka_delivery_seconds"),
        })
    }

    pub fn render(&self) -> String {
        self.exporter.render()
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
        self.frames_received.increment(1);
    }

    pub fn frames_sent(&self, count: usize) {
        self.frames_sent.increment(count as u64);
    }

    /// From handing the record to the producer to Kafka's acknowledgement. A handle, for
    /// the publish's answer, which outlives the borrow of the hub's state.
    pub fn publish_ack(&self) -> Histogram {
        self.publish_ack.clone()
    }

    /// Per write to a socket, the age of the oldest record it carries. Once per write, not
    /// per record: the exporter keeps every sample with its own clock reading until the
    /// next upkeep, which cost a fifth of the hub's CPU when fanning out bursts.
    pub fn delivered(&self, oldest_ms: i64) {
        self.delivery.record(oldest_ms.max(0) as f64 / 1000.0);
    }
}

pub fn connection_opened() {
    gauge!("wskafka_connections").increment(1);
}

pub fn connection_closed() {
    gauge!("wskafka_connections").decrement(1);
}

pub fn subscribed(topic: &str) {
    gauge!("wskafka_subscriptions", "topic" => topic.to_string()).increment(1);
}

pub fn unsubscribed(topic: &str) {
    gauge!("wskafka_subscriptions", "topic" => topic.to_string()).decrement(1);
}

pub fn publish_failed(code: &'static str) {
    counter!("wskafka_publish_errors_total", "code" => code).increment(1);
}

pub fn lagged() {
    counter!("wskafka_lagged_closes_total").increment(1);
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

/// Records behind the partition's end, from librdkafka's statistics.
pub fn consumer_lag(topic: &str, partition: i32, lag: i64) {
    gauge!("wskafka_consumer_lag", "topic" => topic.to_string(), "partition" => partition.to_string())
        .set(lag as f64);
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
