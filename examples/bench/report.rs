//! Measuring and printing: CPU and memory of processes from `/proc`, the load generator's
//! own share of its core, latency histograms, and the hub's own delivery histogram.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::servers::Server;

/// Until the process used less than `share` of a core over half a second.
pub async fn wait_quiet(pid: &str, share: f64) {
    loop {
        let before = Usage::of(pid);
        tokio::time::sleep(Duration::from_millis(500)).await;
        if Usage::of(pid).cpu_since(&before) < share {
            return;
        }
    }
}

/// The hub's own view since `before`: from each record's Kafka timestamp to its write to
/// the socket, which tells what the hub did from what the reading side did.
pub async fn print_hub_side(hub: &Server, before: &[(String, f64)]) {
    let written = hub.delivery_buckets().await;
    let total = written.last().map_or(0.0, |(_, n)| *n) - before.last().map_or(0.0, |(_, n)| *n);
    let shares: Vec<String> = written
        .iter()
        .zip(before)
        .filter(|((le, _), _)| {
            ["0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1"].contains(&le.as_str())
        })
        .map(|((le, n), (_, b))| format!("{:.0}% by {le} s", (n - b) / total * 100.0))
        .collect();
    println!(
        "hub-side, record timestamp to socket write: {}",
        shares.join(", ")
    );
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap()
}

pub fn print_latency(what: &str, h: &Histogram<u64>) {
    let ms = |q| h.value_at_quantile(q) as f64 / 1e3;
    println!(
        "{what}: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms ({} samples)",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1e3,
        h.len()
    );
}

/// CPU time and resident memory of a process, read from /proc.
pub struct Usage {
    pub at: Instant,
    pub cpu: Duration,
    pub rss_kib: u64,
}

impl Usage {
    pub fn of(pid: &str) -> Usage {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Fields after the command name, which sits in parentheses and may hold spaces.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap();
        Usage {
            at: Instant::now(),
            // USER_HZ is 100 on Linux.
            cpu: Duration::from_millis(ticks * 10),
            rss_kib,
        }
    }

    pub fn of_self() -> Usage {
        Usage::of("self")
    }

    /// Share of one core used since `earlier`.
    pub fn cpu_since(&self, earlier: &Usage) -> f64 {
        (self.cpu - earlier.cpu).as_secs_f64() / (self.at - earlier.at).as_secs_f64()
    }
}

/// Returns the load generator's share of its core.
pub fn report_client(since: &Usage) -> f64 {
    let share = Usage::of_self().cpu_since(since);
    let flag = if share > 0.9 {
        "  LOAD GENERATOR SATURATED: these figures are a floor"
    } else {
        ""
    };
    println!("  load generator CPU {:.0}%{flag}", share * 100.0);
    share
}

/// "m, the median of rounds a, b, c".
pub fn median_of(mut ratios: Vec<f64>) -> String {
    let rounds: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    ratios.sort_by(f64::total_cmp);
    format!(
        "{:.2}, the median of rounds {}",
        ratios[ratios.len() / 2],
        rounds.join(", ")
    )
}
