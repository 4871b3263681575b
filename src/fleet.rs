//! What the admin view shows over time and across hubs: samples of this hub's load taken
//! every few seconds into two bounded rings (so a reload of the page keeps its charts), and
//! the reports every hub writes to the fleet topic, from which each hub knows the others.
//! No I/O: the admin module takes the samples and sends and reads the reports.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::clock::now_millis;
use crate::metrics::{self, Counts, DELIVERY_BUCKETS_MS, PushCounts};

/// How often a sample is taken and a report written.
pub const EVERY: Duration = Duration::from_secs(5);
/// Fine samples kept: an hour's.
const FINE: usize = 720;
/// Fine samples per coarse one: a minute.
const PER_COARSE: usize = 12;
/// Coarse samples kept: a day's.
const COARSE: usize = 1440;
/// A hub not heard from for this long is gone (stopped, or cut off from Kafka).
pub const FORGET_AFTER: Duration = Duration::from_secs(30);
/// Connections a report carries at most: enough to find a user, bounded so that a report
/// stays a small record whatever the hub holds.
pub const LISTED: usize = 200;

/// A hub's load over one interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// When it was taken, in milliseconds since the epoch.
    pub at: i64,
    pub sockets: u64,
    pub users: u64,
    /// Per second, over the interval.
    pub frames_in: f64,
    pub frames_out: f64,
    pub acks: f64,
    pub publish_errors: f64,
    /// Records behind the ends of the partitions read: the application's topics, and the
    /// hub's own.
    pub lag: i64,
    pub internal_lag: i64,
    /// Delivery latency percentiles over the interval, in milliseconds; none without
    /// deliveries.
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
}

/// What the hub reads itself when it samples; the rest comes from `metrics`' totals.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub sockets: u64,
    pub users: u64,
    pub lag: i64,
    pub internal_lag: i64,
}

/// One live connection, as listed across the fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Listed {
    pub id: u64,
    pub sub: String,
    /// The hub it is on.
    pub hub: String,
    pub transport: String,
    /// `topic`, or `topic:key` for a subscription to some keys.
    pub subscriptions: Vec<String>,
    /// Milliseconds since the epoch.
    pub since: i64,
}

/// What a hub tells the others every `EVERY`, on the fleet topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub instance: String,
    /// When the hub started, in milliseconds since the epoch.
    pub started: i64,
    pub latest: Sample,
    /// Up to `LISTED` of its connections, the newest left out first.
    pub connections: Vec<Listed>,
    /// All of them, listed or not.
    pub connection_count: usize,
    /// Its Web Push figures since it started (zeros without push); absent from the reports
    /// of hubs older than them.
    #[serde(default)]
    pub push: PushCounts,
}

/// A record of the fleet topic.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReportMessage {
    pub hub: Report,
}

/// Samples at one resolution: each from the totals at the previous one.
struct Ring {
    capacity: usize,
    samples: VecDeque<Sample>,
    last: Option<(Instant, Counts)>,
}

impl Ring {
    fn new(capacity: usize) -> Ring {
        Ring {
            capacity,
            samples: VecDeque::with_capacity(capacity),
            last: None,
        }
    }

    /// Takes a sample from `counts` since the last one; the first only sets where the next
    /// one counts from.
    fn take(&mut self, now: Instant, at: i64, counts: &Counts, gauges: Gauges) -> Option<Sample> {
        let last = self.last.replace((now, counts.clone()));
        let (then, before) = last?;
        let sample = sample(at, gauges, &before, counts, now - then);
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(sample.clone());
        Some(sample)
    }
}

/// The sample of the interval from `before` to `after`, `elapsed` long.
fn sample(at: i64, gauges: Gauges, before: &Counts, after: &Counts, elapsed: Duration) -> Sample {
    let seconds = elapsed.as_secs_f64().max(0.001);
    let rate = |before: u64, after: u64| after.saturating_sub(before) as f64 / seconds;
    let delivered: Vec<u64> = after
        .delivery
        .iter()
        .zip(before.delivery.iter().chain(std::iter::repeat(&0)))
        .map(|(after, before)| after.saturating_sub(*before))
        .collect();
    Sample {
        at,
        sockets: gauges.sockets,
        users: gauges.users,
        frames_in: rate(before.frames_in, after.frames_in),
        frames_out: rate(before.frames_out, after.frames_out),
        acks: rate(before.acks, after.acks),
        publish_errors: rate(before.publish_errors, after.publish_errors),
        lag: gauges.lag,
        internal_lag: gauges.internal_lag,
        p50: percentile(&delivered, 0.5),
        p90: percentile(&delivered, 0.9),
        p99: percentile(&delivered, 0.99),
    }
}

/// The `q` quantile of counts per latency bucket, in milliseconds, interpolated within its
/// bucket; the bucket past the last bound counts as its bound.
fn percentile(buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, &count) in buckets.iter().enumerate() {
        if count > 0 && (below + count) as f64 >= rank {
            let upper = DELIVERY_BUCKETS_MS[i.min(DELIVERY_BUCKETS_MS.len() - 1)] as f64;
            let lower = match i {
                0 => 0.0,
                i if i >= DELIVERY_BUCKETS_MS.len() => upper,
                i => DELIVERY_BUCKETS_MS[i - 1] as f64,
            };
            let within = ((rank - below as f64) / count as f64).clamp(0.0, 1.0);
            return Some(lower + (upper - lower) * within);
        }
        below += count;
    }
    None
}

/// The charts' samples: the last hour's every `EVERY`, the last day's every minute.
#[derive(Debug, Serialize)]
pub struct Charts {
    pub fine: Vec<Sample>,
    pub coarse: Vec<Sample>,
}

struct History {
    fine: Ring,
    coarse: Ring,
    taken: usize,
}

/// This hub's samples, and the reports heard from every hub (this one's too).
pub struct Fleet {
    pub instance: String,
    pub started: i64,
    history: Mutex<History>,
    heard: Mutex<HashMap<String, (Instant, Report)>>,
}

impl Fleet {
    pub fn new(instance: String) -> Fleet {
        Fleet {
            instance,
            started: now_millis(),
            history: Mutex::new(History {
                fine: Ring::new(FINE),
                coarse: Ring::new(COARSE),
                taken: 0,
            }),
            heard: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a sample now (the first call only starts counting); returns the fine one.
    pub fn sample(&self, gauges: Gauges) -> Option<Sample> {
        let (now, at, counts) = (Instant::now(), now_millis(), metrics::counts());
        let mut history = self.history.lock().expect("fleet history lock");
        if history.taken.is_multiple_of(PER_COARSE) {
            history.coarse.take(now, at, &counts, gauges);
        }
        history.taken += 1;
        history.fine.take(now, at, &counts, gauges)
    }

    pub fn charts(&self) -> Charts {
        let history = self.history.lock().expect("fleet history lock");
        Charts {
            fine: history.fine.samples.iter().cloned().collect(),
            coarse: history.coarse.samples.iter().cloned().collect(),
        }
    }

    /// A record of the fleet topic, as the consumer reads it.
    pub fn read(&self, record: &[u8]) {
        match serde_json::from_slice::<ReportMessage>(record) {
            Ok(message) => self.heard(message.hub),
            Err(e) => tracing::warn!(error = %e, "ignored a malformed record of the fleet topic"),
        }
    }

    /// A hub's report: read from the fleet topic, or this hub's own as it is sent.
    pub fn heard(&self, report: Report) {
        self.heard_at(report, Instant::now());
    }

    fn heard_at(&self, report: Report, now: Instant) {
        let mut heard = self.heard.lock().expect("fleet lock");
        heard.insert(report.instance.clone(), (now, report));
    }

    /// The hubs heard from lately, by instance; the others are forgotten.
    pub fn hubs(&self) -> Vec<Report> {
        self.hubs_at(Instant::now())
    }

    fn hubs_at(&self, now: Instant) -> Vec<Report> {
        let mut heard = self.heard.lock().expect("fleet lock");
        heard.retain(|_, (when, _)| now.saturating_duration_since(*when) < FORGET_AFTER);
        let mut hubs: Vec<Report> = heard.values().map(|(_, report)| report.clone()).collect();
        hubs.sort_by(|a, b| a.instance.cmp(&b.instance));
        hubs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(frames_in: u64, delivery: &[(usize, u64)]) -> Counts {
        let mut buckets = vec![0; DELIVERY_BUCKETS_MS.len() + 1];
        for &(bucket, count) in delivery {
            buckets[bucket] = count;
        }
        Counts {
            frames_in,
            delivery: buckets,
            ..Counts::default()
        }
    }

    #[test]
    fn a_sample_counts_rates_and_percentiles_over_its_interval_only() {
        // 100 writes within 1 ms earlier; then 90 at 2-3 ms and 10 at 500-700 ms.
        let before = counts(1_000, &[(0, 100)]);
        let after = counts(1_500, &[(0, 100), (2, 90), (16, 10)]);
        let s = sample(
            7,
            Gauges::default(),
            &before,
            &after,
            Duration::from_secs(5),
        );
        assert_eq!(s.frames_in, 100.0);
        let p50 = s.p50.unwrap();
        assert!((2.0..=3.0).contains(&p50), "{p50}");
        assert_eq!(s.p90, Some(3.0));
        let p99 = s.p99.unwrap();
        assert!((500.0..=700.0).contains(&p99), "{p99}");
        // Nothing delivered: no percentile rather than a zero.
        let idle = sample(8, Gauges::default(), &after, &after, Duration::from_secs(5));
        assert_eq!((idle.frames_in, idle.p50), (0.0, None));
    }

    #[test]
    fn past_the_last_bucket_counts_as_its_bound() {
        let mut buckets = vec![0; DELIVERY_BUCKETS_MS.len() + 1];
        *buckets.last_mut().unwrap() = 3;
        assert_eq!(percentile(&buckets, 0.99), Some(10_000.0));
    }

    #[test]
    fn rings_are_bounded_and_keep_the_newest() {
        let mut ring = Ring::new(3);
        let start = Instant::now();
        for i in 0..10u64 {
            let at = start + Duration::from_secs(i);
            ring.take(at, i as i64, &counts(i * 10, &[]), Gauges::default());
        }
        let ats: Vec<i64> = ring.samples.iter().map(|s| s.at).collect();
        assert_eq!(ats, [7, 8, 9]);
        assert!(ring.samples.iter().all(|s| s.frames_in == 10.0));
    }

    #[test]
    fn hubs_not_heard_from_lately_are_forgotten() {
        let fleet = Fleet::new("a".into());
        let report = |instance: &str| Report {
            instance: instance.into(),
            started: 0,
            latest: Sample::default(),
            connections: Vec::new(),
            connection_count: 0,
            push: PushCounts::default(),
        };
        let start = Instant::now();
        fleet.heard_at(report("b"), start);
        fleet.heard_at(report("a"), start + Duration::from_secs(20));
        let names = |hubs: Vec<Report>| hubs.into_iter().map(|r| r.instance).collect::<Vec<_>>();
        assert_eq!(
            names(fleet.hubs_at(start + Duration::from_secs(25))),
            ["a", "b"]
        );
        assert_eq!(names(fleet.hubs_at(start + FORGET_AFTER)), ["a"]);
    }

    #[test]
    fn reports_are_read_back_as_written_and_other_records_ignored() {
        let report = Report {
            instance: "b".into(),
            started: 1,
            latest: Sample {
                p50: Some(2.5),
                ..Sample::default()
            },
            connections: vec![Listed {
                id: 3,
                sub: "alice".into(),
                hub: "b".into(),
                transport: "WebSocket over HTTP/1.1".into(),
                subscriptions: vec!["rooms:lobby".into()],
                since: 4,
            }],
            connection_count: 1,
            push: PushCounts {
                sent: 5,
                failed: [("400".to_string(), 1)].into(),
                removed: 2,
                queue: 3,
            },
        };
        let fleet = Fleet::new("a".into());
        fleet.read(br#"{"revoke": {"sub": "alice", "before": 1}}"#);
        fleet.read(b"not json");
        assert_eq!(fleet.hubs(), []);
        let record = serde_json::to_vec(&ReportMessage {
            hub: report.clone(),
        })
        .unwrap();
        fleet.read(&record);
        assert_eq!(fleet.hubs(), std::slice::from_ref(&report));
        // A hub older than the push figures reports none: zeros.
        let mut older = serde_json::to_value(ReportMessage { hub: report }).unwrap();
        older["hub"].as_object_mut().unwrap().remove("push");
        older["hub"]["instance"] = "c".into();
        fleet.read(&serde_json::to_vec(&older).unwrap());
        assert_eq!(fleet.hubs()[1].push, PushCounts::default());
    }
}
