//! The hub's memory budget: one figure the operator sets (`WSKAFKA_MEMORY_BUDGET`), divided
//! among the parts that hold records, each bounded in bytes whatever the records' size.
//!
//! Counts alone bound nothing: a thousand records of 900 KB are 900 MB. So each part that
//! holds records counts their bytes and stops at its share:
//!
//! | part | share | at the default 512 MiB |
//! |---|---|---|
//! | recent records (`recent`), all topics together | 3/8 | 192 MiB; no record over 1/64 of it (3 MiB) is kept |
//! | send queues, all sockets together | 1/4 | 128 MiB; each socket at most 1/8 of it (16 MiB) |
//! | replays and `history` pages in flight | 1/8 | 64 MiB, half to replays and half to pages, split evenly among the concurrent ones |
//! | the live consumer's prefetch (librdkafka) | 1/8 | 64 MiB |
//! | everything else: sockets, buffers, the runtime | 1/8 | 64 MiB |
//!
//! Nothing here does I/O but `check`, which reads the machine's and the container's limits
//! once at start.

use std::fmt;
use std::str::FromStr;

/// What the operator sets: bytes, with an optional unit (`512MiB`, `2GiB`, `800MB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget(u64);

/// The smallest budget taken: below it the shares are too small to hold one large record.
const MIN: u64 = 64 << 20;
/// The largest `queued.max.messages.kbytes` librdkafka takes.
const LIBRDKAFKA_KBYTES_MAX: usize = 2_097_151;
/// A bound on `fetch.max.bytes` and `max.partition.fetch.bytes` within what librdkafka
/// takes (about 2 GB and 1 GB): larger fetches gain nothing.
const LIBRDKAFKA_FETCH_MAX: usize = 512 << 20;

impl Budget {
    pub const DEFAULT: &'static str = "512MiB";

    pub fn bytes(self) -> u64 {
        self.0
    }

    fn share(self, numerator: u64, denominator: u64) -> usize {
        usize::try_from(self.0 / denominator * numerator).unwrap_or(usize::MAX)
    }

    /// The recent records of every partition together.
    pub fn recent(self) -> usize {
        self.share(3, 8)
    }

    /// The largest record the recent records keep: one larger is not kept, and a resume
    /// from before it is read from Kafka.
    pub fn recent_record(self) -> usize {
        self.recent() / 64
    }

    /// Every socket's queued frames together: past it, a socket holding more than half its
    /// own bound is `lagged` (see `registry`).
    pub fn send_queues(self) -> usize {
        self.share(1, 4)
    }

    /// One socket's queued frames (records not yet written to it).
    pub fn send_queue(self) -> usize {
        self.send_queues() / 8
    }

    /// One `history` page's records, with `concurrent` pages read at once.
    pub fn history_page(self, concurrent: usize) -> usize {
        self.share(1, 16) / concurrent.max(1)
    }

    /// One replay's records on their way to its socket, with `concurrent` replays read
    /// from Kafka at once; its Kafka client prefetches as much again.
    pub fn replay_window(self, concurrent: usize) -> usize {
        self.share(1, 32) / concurrent.max(1)
    }

    /// What one replay's Kafka client may prefetch, and fetch at once: as much as its
    /// window, but at least Kafka's largest record by default (1 MB), which a fetch must
    /// take whole.
    pub fn replay_prefetch(self, concurrent: usize) -> usize {
        self.replay_window(concurrent)
            .clamp(1 << 20, LIBRDKAFKA_FETCH_MAX)
    }

    /// The live consumer's prefetch, in librdkafka's `queued.max.messages.kbytes` (KiB).
    /// Half of its share: a fetch in flight (`fetch.max.bytes`, a quarter) may overshoot it.
    pub fn prefetch_kbytes(self) -> usize {
        (self.share(1, 16) / 1024).min(LIBRDKAFKA_KBYTES_MAX)
    }

    /// The live consumer's largest fetch response, `fetch.max.bytes`.
    pub fn fetch_bytes(self) -> usize {
        self.share(1, 32).min(LIBRDKAFKA_FETCH_MAX)
    }
}

impl Default for Budget {
    fn default() -> Self {
        Self::DEFAULT.parse().expect("the default parses")
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} MiB", self.0 >> 20)
    }
}

impl FromStr for Budget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let refused = || format!("expected bytes such as 512MiB, 2GiB or 800MB, got {s:?}");
        let number: u64 = number.parse().map_err(|_| refused())?;
        let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            _ => return Err(refused()),
        };
        let bytes = number.checked_mul(scale).ok_or_else(refused)?;
        if bytes < MIN {
            return Err(format!("{s:?} is below the smallest budget, 64MiB"));
        }
        Ok(Budget(bytes))
    }
}

/// The memory this process may use: the container's limit (cgroup v2, then v1) when it has
/// one, else the machine's.
pub fn available() -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let cgroup = read("/sys/fs/cgroup/memory.max")
        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
        .and_then(|limit| limit.trim().parse::<u64>().ok());
    let machine = read("/proc/meminfo").and_then(|info| mem_total(&info));
    match (cgroup, machine) {
        (Some(c), Some(m)) => Some(c.min(m)),
        (c, m) => c.or(m),
    }
}

fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Warns, at start, when the budget does not fit the memory there is: the hub would be
/// killed for memory before its bounds trip.
pub fn check(budget: Budget) {
    match available() {
        Some(limit) if budget.bytes() > limit => tracing::warn!(
            budget = %budget,
            available = %Budget(limit),
            "WSKAFKA_MEMORY_BUDGET is more than this machine or container has: the hub may be \
             killed for memory before its bounds trip; set it below the limit"
        ),
        Some(limit) => {
            tracing::info!(budget = %budget, available = %Budget(limit), "memory budget")
        }
        None => tracing::info!(budget = %budget, "memory budget (the limit could not be read)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_are_written_with_units_and_refused_when_too_small() {
        assert_eq!("512MiB".parse::<Budget>().unwrap().bytes(), 512 << 20);
        assert_eq!("2 GiB".parse::<Budget>().unwrap().bytes(), 2 << 30);
        assert_eq!("800MB".parse::<Budget>().unwrap().bytes(), 800_000_000);
        assert_eq!(
            "1073741824".parse::<Budget>().unwrap().bytes(),
            1_073_741_824
        );
        for wrong in ["", "MiB", "12 parsecs", "-1GiB", "1MiB"] {
            assert!(wrong.parse::<Budget>().is_err(), "{wrong}");
        }
    }

    #[test]
    fn the_shares_add_up_to_the_budget_or_less() {
        let budget = Budget::default();
        let replays = budget.replay_window(16) * 16 * 2;
        let history = budget.history_page(8) * 8;
        let prefetch = budget.prefetch_kbytes() * 1024 + budget.fetch_bytes();
        let parts = budget.recent() + budget.send_queues() + replays + history + prefetch;
        assert!(parts as u64 <= budget.bytes() * 7 / 8, "{parts}");
        assert_eq!(budget.send_queue(), 16 << 20);
        assert_eq!(budget.recent_record(), 3 << 20);
    }

    #[test]
    fn kafka_properties_stay_within_what_librdkafka_takes_however_large_the_budget() {
        let huge: Budget = "100000GiB".parse().unwrap();
        assert_eq!(huge.prefetch_kbytes(), LIBRDKAFKA_KBYTES_MAX);
        assert_eq!(huge.fetch_bytes(), LIBRDKAFKA_FETCH_MAX);
        assert_eq!(huge.replay_prefetch(16), LIBRDKAFKA_FETCH_MAX);
        let least: Budget = "64MiB".parse().unwrap();
        assert_eq!(least.replay_prefetch(16), 1 << 20);
        assert!(
            least.fetch_bytes() >= 1_000_000,
            "a fetch takes Kafka's largest record"
        );
    }

    #[test]
    fn the_machines_memory_is_read_from_meminfo() {
        let info = "MemTotal:       24684000 kB\nMemFree:          233000 kB\n";
        assert_eq!(mem_total(info), Some(24_684_000 * 1024));
        assert_eq!(mem_total("nothing"), None);
    }
}
