//! Failed admin logins per source, so that a password cannot be guessed at network speed:
//! after `FREE_FAILURES` wrong passwords a source is refused for a minute, and for twice as
//! long after each further one (up to a quarter of an hour), while every other source logs
//! in as before. A source is an IPv4 address or an IPv6 /64, which one host usually holds
//! whole. No I/O: the caller passes the time, and logs and counts what it is told.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Wrong passwords a source may send before it is locked out.
pub const FREE_FAILURES: u32 = 5;
const FIRST_LOCKOUT: Duration = Duration::from_secs(60);
const MAX_LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// A source with no wrong password for this long starts afresh.
const FORGET_AFTER: Duration = Duration::from_secs(60 * 60);
/// Sources remembered at most: past it, those quiet longest are forgotten first, so that a
/// flood of sources costs a bounded amount of memory.
const MAX_SOURCES: usize = 10_000;

/// Where login attempts come from, as the limit counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Source(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
            v4 => Source(v4),
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(ip) => write!(f, "{ip}"),
            IpAddr::V6(ip) => write!(f, "{ip}/64"),
        }
    }
}

#[derive(Default)]
pub struct Logins {
    /// Held only for a lookup or an update, never across an await.
    sources: Mutex<HashMap<Source, Strikes>>,
}

#[derive(Debug, Clone, Copy)]
struct Strikes {
    failures: u32,
    last_failure: Instant,
    locked_until: Option<Instant>,
}

impl Logins {
    /// `Err` with the time left while `source` is locked out: refuse without looking at
    /// the password, or a locked-out guesser would still learn whether it was right.
    pub fn check(&self, source: Source, now: Instant) -> Result<(), Duration> {
        let sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        match sources.get(&source).and_then(|s| s.locked_until) {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    /// Counts a wrong password from `source`; returns the lockout it starts, if it starts
    /// one (once per burst of wrong passwords: what is worth a log line).
    pub fn failed(&self, source: Source, now: Instant) -> Option<Duration> {
        let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        if sources.len() >= MAX_SOURCES && !sources.contains_key(&source) {
            sources.retain(|_, s| now.saturating_duration_since(s.last_failure) < FORGET_AFTER);
            if sources.len() >= MAX_SOURCES {
                let quietest = sources
                    .iter()
                    .min_by_key(|(_, s)| s.last_failure)
                    .map(|(source, _)| *source);
                if let Some(quietest) = quietest {
                    sources.remove(&quietest);
                }
            }
        }
        let fresh = Strikes {
            failures: 0,
            last_failure: now,
            locked_until: None,
        };
        let strikes = sources.entry(source).or_insert(fresh);
        if now.saturating_duration_since(strikes.last_failure) >= FORGET_AFTER {
            *strikes = fresh;
        }
        strikes.failures += 1;
        strikes.last_failure = now;
        let over = strikes.failures.checked_sub(FREE_FAILURES)?;
        let lockout = FIRST_LOCKOUT
            .saturating_mul(1 << over.min(16))
            .min(MAX_LOCKOUT);
        strikes.locked_until = Some(now + lockout);
        Some(lockout)
    }

    /// The right password: the source's wrong ones are forgotten.
    pub fn succeeded(&self, source: Source) {
        let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        sources.remove(&source);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(ip: &str) -> Source {
        ip.parse::<IpAddr>().unwrap().into()
    }

    /// Fails `count` times from `from` at `now`, and returns the lockout the last one started.
    fn fail(logins: &Logins, from: Source, now: Instant, count: u32) -> Option<Duration> {
        (0..count).fold(None, |_, _| logins.failed(from, now))
    }

    #[test]
    fn a_source_is_locked_out_after_its_free_failures_and_others_are_not() {
        let (logins, now) = (Logins::default(), Instant::now());
        let guesser = source("192.0.2.1");
        assert_eq!(fail(&logins, guesser, now, FREE_FAILURES - 1), None);
        assert_eq!(logins.check(guesser, now), Ok(()));
        assert_eq!(logins.failed(guesser, now), Some(FIRST_LOCKOUT));
        assert_eq!(logins.check(guesser, now), Err(FIRST_LOCKOUT));
        assert_eq!(
            logins.check(guesser, now + Duration::from_secs(59)),
            Err(Duration::from_secs(1))
        );
        assert_eq!(logins.check(source("192.0.2.2"), now), Ok(()));
        assert_eq!(logins.check(guesser, now + FIRST_LOCKOUT), Ok(()));
    }

    #[test]
    fn each_wrong_password_after_a_lockout_doubles_the_next_up_to_the_cap() {
        let (logins, mut now) = (Logins::default(), Instant::now());
        let guesser = source("192.0.2.1");
        let mut lockouts = Vec::new();
        for _ in 0..FREE_FAILURES + 6 {
            if let Some(lockout) = logins.failed(guesser, now) {
                lockouts.push(lockout.as_secs() / 60);
                now += lockout;
            }
        }
        assert_eq!(lockouts, [1, 2, 4, 8, 15, 15, 15]);
    }

    #[test]
    fn the_right_password_or_an_hour_without_a_wrong_one_starts_afresh() {
        let (logins, now) = (Logins::default(), Instant::now());
        let admin = source("192.0.2.1");
        fail(&logins, admin, now, FREE_FAILURES - 1);
        logins.succeeded(admin);
        assert_eq!(fail(&logins, admin, now, FREE_FAILURES - 1), None);
        let later = now + FORGET_AFTER;
        assert_eq!(fail(&logins, admin, later, FREE_FAILURES - 1), None);
        assert_eq!(logins.failed(admin, later), Some(FIRST_LOCKOUT));
    }

    #[test]
    fn an_ipv6_host_is_one_source_across_its_slash_64() {
        let (logins, now) = (Logins::default(), Instant::now());
        fail(&logins, source("2001:db8:1:2::1"), now, FREE_FAILURES);
        assert!(logins.check(source("2001:db8:1:2:ffff::9"), now).is_err());
        assert_eq!(logins.check(source("2001:db8:1:3::1"), now), Ok(()));
        // An IPv4 client of a dual-stack listener is its IPv4 address.
        fail(&logins, source("192.0.2.7"), now, FREE_FAILURES);
        assert!(logins.check(source("::ffff:192.0.2.7"), now).is_err());
        assert_eq!(source("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn a_flood_of_sources_stays_bounded_and_forgets_the_quietest_first() {
        let (logins, start) = (Logins::default(), Instant::now());
        let early = source("198.51.100.1");
        fail(&logins, early, start, FREE_FAILURES);
        let later = start + Duration::from_secs(1);
        for n in 0..MAX_SOURCES as u32 + 10 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            logins.failed(ip.into(), later);
        }
        assert_eq!(logins.sources.lock().unwrap().len(), MAX_SOURCES);
        assert_eq!(
            logins.check(early, later),
            Ok(()),
            "the quietest went first"
        );
    }
}
