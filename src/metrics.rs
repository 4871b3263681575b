//! What the hub counts, exposed at `/metrics` in Prometheus' format. Every name and label is
//! defined here; the rest of the code records through these functions.

use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets, in seconds: sub-millisecond to ten seconds.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Installs the process-wide recorder; call once.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)?
        .install_recorder()
}

/// Drains the samples histograms buffer between scrapes; without it they pile up (about
/// 3 KB per delivered record in a soak run) for as long as nobody scrapes `/metrics`.
pub async fn upkeep(handle: PrometheusHandle, stop: tokio_util::sync::CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => handle.run_upkeep(),
        }
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

pub fn frame_received() {
    counter!("wskafka_frames_received_total").increment(1);
}

pub fn frames_sent(count: usize) {
    counter!("wskafka_frames_sent_total").increment(count as u64);
}

/// From handing the record to the producer to Kafka's acknowledgement.
pub fn publish_acked(took: Duration) {
    histogram!("wskafka_publish_ack_seconds").record(took.as_secs_f64());
}

pub fn publish_failed(code: &'static str) {
    counter!("wskafka_publish_errors_total", "code" => code).increment(1);
}

/// Per write to a socket, the age of the oldest record it carries. Once per write, not per
/// record: the exporter keeps every sample with its own clock reading until the next
/// upkeep, which cost a fifth of the hub's CPU when fanning out bursts.
pub fn delivered(oldest_ms: i64) {
    histogram!("wskafka_delivery_seconds").record(oldest_ms.max(0) as f64 / 1000.0);
}

pub fn lagged() {
    counter!("wskafka_lagged_closes_total").increment(1);
}

pub fn auth_failed(reason: &'static str) {
    counter!("wskafka_auth_failures_total", "reason" => reason).increment(1);
}

/// Records behind the partition's end, from librdkafka's statistics.
pub fn consumer_lag(topic: &str, partition: i32, lag: i64) {
    gauge!("wskafka_consumer_lag", "topic" => topic.to_string(), "partition" => partition.to_string())
        .set(lag as f64);
}
