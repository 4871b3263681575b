//! Whether a socket's peer is still there. A network that stops passing packets without
//! closing the connection (a phone leaving Wi-Fi, a NAT dropping the flow, a laptop lid
//! closed) goes unnoticed by TCP for as long as the hub has nothing to send, often hours, and
//! the user's seat, subscriptions and presence stay held meanwhile. So the hub sends a
//! WebSocket ping every interval, which browsers and WebSocket libraries answer on their own,
//! and takes the peer for gone when the pong does not come within the timeout.
//!
//! Sockets' pings are spread over the interval by their ids, so that a hub whose sockets all
//! connected at once (after a restart) does not wake every socket task at the same instant.

use std::time::Duration;

use tokio::time::Instant;

/// What to do when the heartbeat's deadline has come.
#[derive(Debug, PartialEq, Eq)]
pub enum Beat {
    Ping,
    /// The last ping went unanswered for the timeout.
    Unresponsive,
}

#[derive(Debug)]
pub struct Heartbeat {
    interval: Duration,
    timeout: Duration,
    /// When the unanswered ping was sent.
    awaiting: Option<Instant>,
    /// When that ping was due: the next one is due an interval later.
    due: Instant,
    deadline: Instant,
}

impl Heartbeat {
    /// None when heartbeats are off (a zero interval).
    pub fn new(id: u64, interval: Duration, timeout: Duration, now: Instant) -> Option<Self> {
        if interval.is_zero() {
            return None;
        }
        let first = now + phase(id, interval);
        Some(Heartbeat {
            interval,
            timeout,
            awaiting: None,
            due: first,
            deadline: first,
        })
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The deadline has come: ping, or give the peer up.
    pub fn due(&mut self, now: Instant) -> Beat {
        if self.awaiting.is_some() {
            return Beat::Unresponsive;
        }
        self.awaiting = Some(now);
        self.due = self.deadline;
        self.deadline = now + self.timeout;
        Beat::Ping
    }

    /// A pong came; returns the round trip when it answers the ping in flight. The next ping
    /// is due an interval after the last one was due, whatever the round trip and however
    /// late a busy hub sent it: pings that a stall bunched together return to their places in
    /// the interval instead of staying bunched.
    pub fn pong(&mut self, now: Instant) -> Option<Duration> {
        let sent = self.awaiting.take()?;
        self.deadline = self.due + self.interval;
        Some(now - sent)
    }
}

/// Where in the interval socket `id` pings: the fractional parts of multiples of the golden
/// ratio, so that consecutive ids fall evenly apart however many there are.
fn phase(id: u64, interval: Duration) -> Duration {
    const GOLDEN: f64 = 0.618_033_988_749_895;
    interval.mul_f64((id as f64 * GOLDEN).fract())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(25);
    const TIMEOUT: Duration = Duration::from_secs(10);

    #[test]
    fn an_answered_ping_keeps_the_socket_and_an_unanswered_one_ends_it() {
        let start = Instant::now();
        let mut beat = Heartbeat::new(7, INTERVAL, TIMEOUT, start).unwrap();
        let first = beat.deadline();
        assert!(first >= start && first < start + INTERVAL);
        assert_eq!(beat.due(first), Beat::Ping);
        assert_eq!(beat.deadline(), first + TIMEOUT);
        let rtt = Duration::from_millis(40);
        assert_eq!(beat.pong(first + rtt), Some(rtt));
        // A pong nobody asked for changes nothing.
        assert_eq!(beat.pong(first + 2 * rtt), None);
        assert_eq!(beat.deadline(), first + INTERVAL);
        let second = beat.deadline();
        assert_eq!(beat.due(second), Beat::Ping);
        assert_eq!(beat.due(second + TIMEOUT), Beat::Unresponsive);
        assert!(Heartbeat::new(1, Duration::ZERO, TIMEOUT, start).is_none());
    }

    #[test]
    fn a_ping_sent_late_keeps_the_sockets_place_in_the_interval() {
        let start = Instant::now();
        let mut beat = Heartbeat::new(3, INTERVAL, TIMEOUT, start).unwrap();
        let due = beat.deadline();
        // The hub was busy: the ping went out 700 ms after it was due.
        let late = due + Duration::from_millis(700);
        assert_eq!(beat.due(late), Beat::Ping);
        beat.pong(late + Duration::from_millis(5));
        assert_eq!(beat.deadline(), due + INTERVAL);
    }

    #[test]
    fn pings_of_sockets_that_came_together_spread_over_the_interval() {
        // 10,000 sockets connected within one instant: how many ping in the busiest tenth
        // of a percent of the interval (25 ms of 25 s)?
        let mut buckets = vec![0u32; 1000];
        for id in 0..10_000u64 {
            let at = phase(id, INTERVAL).as_secs_f64() / INTERVAL.as_secs_f64();
            buckets[(at * 1000.0) as usize] += 1;
        }
        let busiest = *buckets.iter().max().unwrap();
        // Evenly spread would be 10 in each.
        assert!(busiest <= 12, "{busiest} pings in one bucket");
    }
}
