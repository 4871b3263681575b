//! What one socket may ask of the hub, per request type: a token bucket each (a rate per
//! second, and as many at once), so that a hostile or buggy client costs Kafka, the database
//! and other users a bounded amount whatever it sends. A request over its budget is refused
//! with `rate_limited` and when to retry; a socket that keeps going past its budget (more
//! refusals than `REFUSALS_PER_SECOND`, after a burst of `REFUSAL_BURST`) is closed with 1008.
//!
//! The defaults fit the busiest page the demo makes (a chat in a few rooms with history
//! scrolled, typing, read marks, and a notification centre) with room to spare; each can be
//! changed with `WSKAFKA_REQUEST_RATES` (`history=10,subscribe=40`, ...).

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, QuantaClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// The request types, with what each costs beyond this socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A record written to Kafka.
    Publish,
    /// A record written to the signal topic, read by every hub.
    Signal,
    /// `subscribe` and `unsubscribe`: roster records every hub reads, joins and leaves to
    /// every member, replays from Kafka.
    Subscribe,
    /// A page read backwards from Kafka.
    History,
    /// A database write (read positions).
    Commit,
    Presence,
    Online,
    /// A token refresh: a signature check, perhaps a JWKS fetch, a revocation lookup.
    Auth,
    Ping,
    /// A frame that is not a valid request: its `error` reply is cheap but not free.
    Invalid,
}

pub const KINDS: [Kind; 10] = [
    Kind::Publish,
    Kind::Signal,
    Kind::Subscribe,
    Kind::History,
    Kind::Commit,
    Kind::Presence,
    Kind::Online,
    Kind::Auth,
    Kind::Ping,
    Kind::Invalid,
];

impl Kind {
    /// The name in settings, metrics and error messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Publish => "publish",
            Kind::Signal => "signal",
            Kind::Subscribe => "subscribe",
            Kind::History => "history",
            Kind::Commit => "commit",
            Kind::Presence => "presence",
            Kind::Online => "online",
            Kind::Auth => "auth",
            Kind::Ping => "ping",
            Kind::Invalid => "invalid",
        }
    }

    /// Requests per second, and so many at once, unless set. Publish and signal have
    /// settings of their own (`WSKAFKA_PUBLISH_RATE`, `WSKAFKA_SIGNAL_RATE`).
    fn default_rate(self) -> u32 {
        match self {
            Kind::Publish => 100,
            Kind::Signal => 10,
            Kind::Subscribe => 20,
            Kind::History => 5,
            Kind::Commit => 10,
            Kind::Presence => 10,
            Kind::Online => 10,
            Kind::Auth => 5,
            Kind::Ping => 10,
            Kind::Invalid => 10,
        }
    }
}

/// Refused requests a socket may send before it is closed: a burst, then a rate.
const REFUSAL_BURST: u32 = 100;
const REFUSALS_PER_SECOND: u32 = 10;

/// Requests per second for each kind, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rates([NonZeroU32; KINDS.len()]);

impl Default for Rates {
    fn default() -> Self {
        Rates(KINDS.map(|kind| NonZeroU32::new(kind.default_rate()).expect("defaults are set")))
    }
}

impl Rates {
    pub fn get(&self, kind: Kind) -> NonZeroU32 {
        self.0[kind as usize]
    }

    pub fn set(&mut self, kind: Kind, rate: NonZeroU32) {
        self.0[kind as usize] = rate;
    }

    /// The defaults, with the publish and signal rates and then `overrides` set over them.
    pub fn new(publish: NonZeroU32, signal: NonZeroU32, overrides: &[(Kind, NonZeroU32)]) -> Rates {
        let mut rates = Rates::default();
        rates.set(Kind::Publish, publish);
        rates.set(Kind::Signal, signal);
        for &(kind, rate) in overrides {
            rates.set(kind, rate);
        }
        rates
    }
}

/// One `TYPE=RATE` entry of `WSKAFKA_REQUEST_RATES`.
pub fn parse_rate(entry: &str) -> Result<(Kind, NonZeroU32), String> {
    let (name, rate) = entry
        .split_once('=')
        .ok_or_else(|| format!("{entry:?} is not TYPE=RATE"))?;
    let kind = KINDS
        .into_iter()
        .find(|kind| kind.name() == name.trim())
        .ok_or_else(|| {
            let names: Vec<&str> = KINDS.iter().map(|k| k.name()).collect();
            format!("{name:?} is not a request type: {}", names.join(", "))
        })?;
    let rate = rate
        .trim()
        .parse()
        .map_err(|_| format!("the rate of {name} must be a whole number above 0"))?;
    Ok((kind, rate))
}

/// What a request may do.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Go,
    /// Refused: it may be sent again after this long.
    Wait(Duration),
    /// Refused, and the socket has been refused too often: close it.
    Close,
}

/// One socket's buckets.
pub struct Budgets {
    each: [DefaultDirectRateLimiter; KINDS.len()],
    refusals: DefaultDirectRateLimiter,
    clock: QuantaClock,
}

impl Budgets {
    pub fn new(rates: &Rates, clock: &QuantaClock) -> Self {
        let bucket = |rate: NonZeroU32, burst: NonZeroU32| {
            RateLimiter::direct_with_clock(
                Quota::per_second(rate).allow_burst(burst),
                clock.clone(),
            )
        };
        Budgets {
            each: KINDS.map(|kind| bucket(rates.get(kind), rates.get(kind))),
            refusals: bucket(
                NonZeroU32::new(REFUSALS_PER_SECOND).expect("not zero"),
                NonZeroU32::new(REFUSAL_BURST).expect("not zero"),
            ),
            clock: clock.clone(),
        }
    }

    pub fn spend(&self, kind: Kind) -> Verdict {
        match self.each[kind as usize].check() {
            Ok(()) => Verdict::Go,
            Err(not_until) => {
                if self.refusals.check().is_err() {
                    return Verdict::Close;
                }
                Verdict::Wait(not_until.wait_time_from(self.clock.now()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_goes_then_requests_wait_then_a_flood_closes() {
        let mut rates = Rates::default();
        rates.set(Kind::History, NonZeroU32::new(2).unwrap());
        let budgets = Budgets::new(&rates, &QuantaClock::default());
        assert_eq!(budgets.spend(Kind::History), Verdict::Go);
        assert_eq!(budgets.spend(Kind::History), Verdict::Go);
        let Verdict::Wait(wait) = budgets.spend(Kind::History) else {
            panic!("a third history request in an instant goes")
        };
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        // Other types have budgets of their own.
        assert_eq!(budgets.spend(Kind::Subscribe), Verdict::Go);
        let refused = (0..200)
            .take_while(|_| budgets.spend(Kind::History) != Verdict::Close)
            .count();
        // The one refusal above, and `REFUSAL_BURST` less it here, give or take refills.
        assert!((98..=101).contains(&refused), "{refused}");
    }

    #[test]
    fn rates_are_set_by_name_and_a_typo_is_refused_naming_the_types() {
        let overrides = [
            parse_rate("history=40").unwrap(),
            parse_rate(" commit = 3").unwrap(),
        ];
        let ten = NonZeroU32::new(10).unwrap();
        let rates = Rates::new(ten, ten, &overrides);
        assert_eq!(rates.get(Kind::History).get(), 40);
        assert_eq!(rates.get(Kind::Commit).get(), 3);
        assert_eq!(rates.get(Kind::Publish).get(), 10);
        assert_eq!(rates.get(Kind::Subscribe).get(), 20);
        let typo = parse_rate("histroy=4").unwrap_err();
        assert!(typo.contains("history, commit"), "{typo}");
        assert!(parse_rate("history=0").is_err());
    }
}
