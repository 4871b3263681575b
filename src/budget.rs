//! What one socket may ask of the hub, per request type: a token bucket each (a rate per
//! second, and as many at once), so that a hostile or buggy client costs Kafka, the database
//! and other users a bounded amount whatever it sends. A request over its budget is refused
//! with `rate_limited` and when to retry; a socket that keeps going past its budget (more
//! refusals than `REFUSALS_PER_SECOND`, after a burst of `REFUSAL_BURST`) is closed with 1008.
//!
//! The defaults fit the busiest page the demo makes (a chat in a few rooms with history
//! scrolled, typing, read marks, and a notification centre) with room to spare; each can be
//! changed with `WSKAFKA_REQUEST_RATES` (`history=10,subscribe=40`, ...).
//!
//! A user may hold many sockets on a hub (`WSKAFKA_MAX_CONNECTIONS_PER_USER`, 32): each with
//! a whole budget, they would multiply it. So a user's sockets together also spend from
//! buckets of the user's, `USER_SHARE` times a socket's unless `WSKAFKA_USER_REQUEST_RATES`
//! says otherwise: a few tabs and devices of one person are served as they would be alone,
//! and thirty-two sockets get no more than four. They are made when a user's second socket
//! opens (one socket never exceeds them) and forgotten with the user's last socket.

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
    /// `push_subscribe`, `push_unsubscribe`, `push_key`: a DNS lookup and a database write.
    Push,
    Presence,
    Online,
    /// A token refresh: a signature check, perhaps a JWKS fetch, a revocation lookup.
    Auth,
    Ping,
    /// A frame that is not a valid request: its `error` reply is cheap but not free.
    Invalid,
}

pub const KINDS: [Kind; 11] = [
    Kind::Publish,
    Kind::Signal,
    Kind::Subscribe,
    Kind::History,
    Kind::Commit,
    Kind::Push,
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
            Kind::Push => "push",
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
            Kind::Push => 5,
            Kind::Presence => 10,
            Kind::Online => 10,
            Kind::Auth => 5,
            Kind::Ping => 10,
            Kind::Invalid => 10,
        }
    }
}

/// How many sockets' budgets a user's sockets on a hub share, unless set.
pub const USER_SHARE: u32 = 4;

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

    /// A user's: `USER_SHARE` times each of a socket's `rates`, then `overrides`.
    pub fn of_users(rates: &Rates, overrides: &[(Kind, NonZeroU32)]) -> Rates {
        let mut users = Rates(
            rates
                .0
                .map(|rate| rate.saturating_mul(USER_SHARE.try_into().expect("not zero"))),
        );
        for &(kind, rate) in overrides {
            users.set(kind, rate);
        }
        users
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
    /// Refused: it may be sent again after this long. `user`: the user's budget refused it,
    /// not the socket's.
    Wait {
        wait: Duration,
        user: bool,
    },
    /// Refused, and the socket has been refused too often: close it.
    Close,
}

fn bucket(rate: NonZeroU32, clock: &QuantaClock) -> DefaultDirectRateLimiter {
    RateLimiter::direct_with_clock(Quota::per_second(rate).allow_burst(rate), clock.clone())
}

/// One socket's buckets, each made when the socket first makes a request of its type (a
/// bucket made then is as full as one made at the socket's start): most sockets use a few
/// of the types, and ten buckets held from the start were 830 of the bytes an idle socket
/// costs (BENCHMARKS.md, "Memory per socket").
pub struct Budgets {
    each: [Option<Box<DefaultDirectRateLimiter>>; KINDS.len()],
    refusals: Option<Box<DefaultDirectRateLimiter>>,
    rates: Rates,
    clock: QuantaClock,
}

/// One user's buckets on this hub, which all of the user's sockets spend from too.
pub struct UserBudgets {
    each: [DefaultDirectRateLimiter; KINDS.len()],
}

impl UserBudgets {
    pub fn new(rates: &Rates, clock: &QuantaClock) -> Self {
        UserBudgets {
            each: KINDS.map(|kind| bucket(rates.get(kind), clock)),
        }
    }
}

impl Budgets {
    pub fn new(rates: &Rates, clock: &QuantaClock) -> Self {
        Budgets {
            each: Default::default(),
            refusals: None,
            rates: rates.clone(),
            clock: clock.clone(),
        }
    }

    /// Spends one request of `kind` from the socket's bucket, then from its user's (when the
    /// user has more sockets): a request the socket may not make costs the user nothing.
    /// A refusal from either counts towards the socket's close.
    pub fn spend(&mut self, kind: Kind, user: Option<&UserBudgets>) -> Verdict {
        let (rates, clock) = (&self.rates, &self.clock);
        let bucket = self.each[kind as usize]
            .get_or_insert_with(|| Box::new(bucket(rates.get(kind), clock)));
        let refused = match bucket.check() {
            Err(not_until) => (not_until, false),
            Ok(()) => match user.map(|user| user.each[kind as usize].check()) {
                None | Some(Ok(())) => return Verdict::Go,
                Some(Err(not_until)) => (not_until, true),
            },
        };
        let refusals = self.refusals.get_or_insert_with(|| {
            let quota = Quota::per_second(NonZeroU32::new(REFUSALS_PER_SECOND).expect("not zero"))
                .allow_burst(NonZeroU32::new(REFUSAL_BURST).expect("not zero"));
            Box::new(RateLimiter::direct_with_clock(quota, clock.clone()))
        });
        if refusals.check().is_err() {
            return Verdict::Close;
        }
        let (not_until, user) = refused;
        Verdict::Wait {
            wait: not_until.wait_time_from(self.clock.now()),
            user,
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
        let mut budgets = Budgets::new(&rates, &QuantaClock::default());
        assert_eq!(budgets.spend(Kind::History, None), Verdict::Go);
        assert_eq!(budgets.spend(Kind::History, None), Verdict::Go);
        let Verdict::Wait { wait, user: false } = budgets.spend(Kind::History, None) else {
            panic!("a third history request in an instant goes")
        };
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        // Other types have budgets of their own.
        assert_eq!(budgets.spend(Kind::Subscribe, None), Verdict::Go);
        let refused = (0..200)
            .take_while(|_| budgets.spend(Kind::History, None) != Verdict::Close)
            .count();
        // The one refusal above, and `REFUSAL_BURST` less it here, give or take refills.
        assert!((98..=101).contains(&refused), "{refused}");
    }

    #[test]
    fn a_users_sockets_together_spend_the_users_budget_and_another_user_keeps_theirs() {
        let clock = QuantaClock::default();
        let mut rates = Rates::default();
        rates.set(Kind::History, NonZeroU32::new(2).unwrap());
        let users = Rates::of_users(&rates, &[]);
        assert_eq!(users.get(Kind::History).get(), 2 * USER_SHARE);
        assert_eq!(users.get(Kind::Subscribe).get(), 20 * USER_SHARE);
        let (alice, bob) = (
            UserBudgets::new(&users, &clock),
            UserBudgets::new(&users, &clock),
        );
        // Alice's sockets, each within its own budget, until hers runs out.
        let mut sockets: Vec<Budgets> = (0..8).map(|_| Budgets::new(&rates, &clock)).collect();
        let served = sockets
            .iter_mut()
            .map(|socket| {
                (0..2)
                    .filter(|_| socket.spend(Kind::History, Some(&alice)) == Verdict::Go)
                    .count()
            })
            .sum::<usize>();
        assert_eq!(served as u32, 2 * USER_SHARE, "give or take refills");
        let mut fresh = Budgets::new(&rates, &clock);
        assert!(matches!(
            fresh.spend(Kind::History, Some(&alice)),
            Verdict::Wait { user: true, .. }
        ));
        // A socket over its own budget spends none of the user's.
        let mut bobs = Budgets::new(&rates, &clock);
        for _ in 0..2 {
            assert_eq!(bobs.spend(Kind::History, Some(&bob)), Verdict::Go);
        }
        for _ in 0..10 {
            assert!(matches!(
                bobs.spend(Kind::History, Some(&bob)),
                Verdict::Wait { user: false, .. }
            ));
        }
        let mut other = Budgets::new(&rates, &clock);
        for _ in 0..2 {
            assert_eq!(other.spend(Kind::History, Some(&bob)), Verdict::Go);
        }
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
