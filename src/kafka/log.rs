//! librdkafka's log lines and error callbacks, through `tracing`.
//!
//! librdkafka reports each failed attempt to reach a broker from every client (the producer,
//! the consumer, each replay and admin request), several times a second: left as they come,
//! a few minutes of outage write thousands of ERROR lines, which bury what the hub says and
//! trip log-based alerting. Every Kafka client of a hub therefore shares one [`KafkaLog`],
//! which keeps one outage per broker address: a warning when the address stops answering,
//! one line when a client sees it up again (in librdkafka's statistics), with how long it
//! was gone and how many failures were reported meanwhile. Each failure stays visible at
//! debug level.
//!
//! Other lines keep their text, at a level mapped from librdkafka's syslog levels: its
//! errors are conditions it retries by itself, so they are warnings here. A line repeated
//! within [`REPEAT_WINDOW`] is counted instead of written again, and the count comes with
//! its next appearance.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;

/// How long a repeated line stays quiet.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(60);
/// Distinct lines remembered for `REPEAT_WINDOW`; past it the oldest are forgotten.
const REMEMBERED_LINES: usize = 256;

/// The context of every Kafka client of one hub; clones share their state.
#[derive(Clone, Default)]
pub struct KafkaLog(Arc<Mutex<State>>);

#[derive(Default)]
struct State {
    /// Per broker address (`host:port`), the outage under way.
    outages: HashMap<String, Outage>,
    /// Lines written lately: when, and how many repeats were held back since.
    recent: HashMap<String, (Instant, u64)>,
}

struct Outage {
    since: Instant,
    failures: u64,
}

/// How loud a line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Warn,
    Info,
    Debug,
}

impl KafkaLog {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().expect("kafka log lock")
    }

    /// A client could not reach `broker` (librdkafka's name for it, `host:port/id`).
    fn failed(&self, broker: &str, cause: &str) {
        let address = address_of(broker);
        let mut state = self.state();
        match state.outages.get_mut(address) {
            Some(outage) => {
                outage.failures += 1;
                tracing::debug!(broker, cause, "Kafka broker still unreachable");
            }
            None => {
                let outage = Outage {
                    since: Instant::now(),
                    failures: 1,
                };
                state.outages.insert(address.to_string(), outage);
                tracing::warn!(broker = address, cause, "Kafka broker unreachable");
            }
        }
    }

    /// A client holds a working connection to `broker`.
    fn up(&self, broker: &str) {
        let address = address_of(broker);
        let Some(outage) = self.state().outages.remove(address) else {
            return;
        };
        let gone = Duration::from_millis(outage.since.elapsed().as_millis() as u64);
        tracing::info!(
            broker = address,
            after = %humantime::format_duration(gone),
            failures = outage.failures,
            "Kafka broker reachable again"
        );
    }

    /// Whether no outage is under way.
    pub fn all_reachable(&self) -> bool {
        self.state().outages.is_empty()
    }

    /// Writes `line`, unless it was written within `REPEAT_WINDOW`.
    fn line(&self, level: Level, line: String) {
        let now = Instant::now();
        let repeated = {
            let mut state = self.state();
            if let Some((at, held)) = state.recent.get_mut(&line)
                && now.duration_since(*at) < REPEAT_WINDOW
            {
                *held += 1;
                return;
            }
            if state.recent.len() >= REMEMBERED_LINES {
                state
                    .recent
                    .retain(|_, (at, _)| now.duration_since(*at) < REPEAT_WINDOW);
            }
            if state.recent.len() >= REMEMBERED_LINES {
                state.recent.clear();
            }
            state
                .recent
                .insert(line.clone(), (now, 0))
                .map_or(0, |(_, held)| held)
        };
        match (level, repeated) {
            (Level::Debug, _) => tracing::debug!(target: "librdkafka", "{line}"),
            (Level::Warn, 0) => tracing::warn!(target: "librdkafka", "{line}"),
            (Level::Warn, _) => tracing::warn!(target: "librdkafka", repeated, "{line}"),
            (Level::Info, 0) => tracing::info!(target: "librdkafka", "{line}"),
            (Level::Info, _) => tracing::info!(target: "librdkafka", repeated, "{line}"),
        }
    }

    /// An error a client reported: through its error callback, or from a consumer's poll.
    pub fn client_error(&self, error: &KafkaError, reason: &str) {
        use RDKafkaErrorCode as C;
        match error.rdkafka_error_code() {
            // A refused login (a wrong password, say) is an outage of that broker for this
            // hub: told once, with its cause, however many clients meet it.
            Some(C::BrokerTransportFailure | C::Resolve | C::Authentication) => {
                match broker_of(reason) {
                    Some((broker, cause)) => self.failed(broker, cause),
                    None => self.line(Level::Debug, format!("{error}: {reason}")),
                }
            }
            // Each broker's own outage says it already; an exposed pattern that no topic
            // matches yet is normal; readers that asked for it (`enable.partition.eof`)
            // hear of a partition's end.
            Some(C::AllBrokersDown | C::UnknownTopicOrPartition | C::PartitionEOF) => {
                self.line(Level::Debug, format!("{error}: {reason}"))
            }
            _ => self.line(
                Level::Warn,
                format!("Kafka client error: {error}: {reason}"),
            ),
        }
    }

    /// Statistics carry each broker's connection state: how an outage is seen to end.
    pub fn stats(&self, statistics: &Statistics) {
        if self.all_reachable() {
            return;
        }
        for broker in statistics.brokers.values() {
            if broker.state == "UP" {
                self.up(&broker.name);
            }
        }
    }
}

/// `host:port` of librdkafka's broker name `host:port/id` (or `.../bootstrap`), or of
/// `sasl_ssl://host:port/id`.
fn address_of(broker: &str) -> &str {
    let broker = broker.split_once("://").map_or(broker, |(_, rest)| rest);
    broker.split('/').next().unwrap_or(broker)
}

/// A line from a broker's thread starts with the thread's name: `[thrd:host:port/id]: `.
fn without_thread(message: &str) -> &str {
    match message.strip_prefix("[thrd:") {
        Some(rest) => rest.split_once("]: ").map_or(message, |(_, line)| line),
        None => message,
    }
}

/// The broker a librdkafka message is about, and the rest of the message: the message
/// starts with the broker's name (`host:port/id: ...`), or with a logical broker's name and
/// then its address (`GroupCoordinator: host:port: ...`).
fn broker_of(message: &str) -> Option<(&str, &str)> {
    let is_broker = |name: &str| name.contains(':') && !name.contains(' ');
    let (first, rest) = message.split_once(": ")?;
    if is_broker(first) {
        return Some((first, rest));
    }
    let (second, rest) = rest.split_once(": ")?;
    (!first.contains(' ') && is_broker(second)).then_some((second, rest))
}

impl ClientContext for KafkaLog {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let message = without_thread(message);
        // FAIL: a connection to a broker failed or was lost.
        if facility == "FAIL"
            && let Some((broker, cause)) = broker_of(message)
        {
            return self.failed(broker, cause);
        }
        let level = match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => Level::Warn,
            RDKafkaLogLevel::Notice => Level::Info,
            RDKafkaLogLevel::Info | RDKafkaLogLevel::Debug => Level::Debug,
        };
        self.line(level, format!("librdkafka {facility}: {message}"));
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.client_error(&error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        KafkaLog::stats(self, &statistics);
    }
}

/// The replays' consumers assign partitions by hand: no rebalance to handle.
impl ConsumerContext for KafkaLog {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_names_give_their_address() {
        assert_eq!(address_of("127.0.0.1:9092/1"), "127.0.0.1:9092");
        assert_eq!(address_of("127.0.0.1:9092/bootstrap"), "127.0.0.1:9092");
        assert_eq!(address_of("sasl_ssl://b-1.kafka:9096/2"), "b-1.kafka:9096");
        assert_eq!(
            broker_of("127.0.0.1:9092/1: Connect to ipv4#127.0.0.1:9092 failed"),
            Some(("127.0.0.1:9092/1", "Connect to ipv4#127.0.0.1:9092 failed"))
        );
        assert_eq!(
            broker_of("GroupCoordinator: 127.0.0.1:9092: Connect failed: refused"),
            Some(("127.0.0.1:9092", "Connect failed: refused"))
        );
        assert_eq!(broker_of("3/3 brokers are down"), None);
        assert_eq!(
            broker_of(without_thread(
                "[thrd:127.0.0.1:9092/bootstrap]: 127.0.0.1:9092/bootstrap: Connect: refused"
            )),
            Some(("127.0.0.1:9092/bootstrap", "Connect: refused"))
        );
        assert_eq!(broker_of("Timed out 1 in-flight: request"), None);
    }

    #[test]
    fn an_outage_is_one_entry_per_address_until_seen_up() {
        let log = KafkaLog::default();
        log.failed("127.0.0.1:9092/bootstrap", "Connection refused");
        log.failed("127.0.0.1:9092/1", "Connection refused");
        log.failed("127.0.0.1:9093/2", "Connection refused");
        {
            let state = log.state();
            assert_eq!(state.outages.len(), 2);
            assert_eq!(state.outages["127.0.0.1:9092"].failures, 2);
        }
        log.up("127.0.0.1:9092/1");
        assert!(!log.all_reachable());
        log.up("127.0.0.1:9093/2");
        assert!(log.all_reachable());
    }

    #[test]
    fn a_repeated_line_is_held_back_and_counted() {
        let log = KafkaLog::default();
        for _ in 0..5 {
            log.line(Level::Warn, "same".into());
        }
        log.line(Level::Warn, "other".into());
        let state = log.state();
        assert_eq!(state.recent["same"].1, 4);
        assert_eq!(state.recent["other"].1, 0);
    }
}
