//! Which sockets want which topics.
//!
//! The Kafka consumer thread fans every record out through here, so nothing in this module
//! may wait: each socket has a bounded queue, and a full queue marks that socket as too slow
//! (its connection task then closes it) instead of holding up the consumer or the socket
//! next to it.

use std::collections::HashMap;

use axum::extract::ws::Utf8Bytes;
use dashmap::DashMap;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_util::sync::CancellationToken;

pub type ConnId = u64;

/// The delivery side of one connection.
#[derive(Clone)]
pub struct Subscriber {
    pub queue: mpsc::Sender<Utf8Bytes>,
    /// Cancelled when the queue overflows: the connection can no longer be given every record.
    pub overflowed: CancellationToken,
}

#[derive(Default)]
pub struct Registry {
    topics: DashMap<Box<str>, HashMap<ConnId, Subscriber>>,
}

impl Registry {
    /// Returns false when the connection was already subscribed to `topic`.
    pub fn subscribe(&self, topic: &str, conn: ConnId, subscriber: Subscriber) -> bool {
        self.topics
            .entry(topic.into())
            .or_default()
            .insert(conn, subscriber)
            .is_none()
    }

    pub fn unsubscribe(&self, topic: &str, conn: ConnId) {
        if let Some(mut subscribers) = self.topics.get_mut(topic) {
            subscribers.remove(&conn);
        }
        self.topics
            .remove_if(topic, |_, subscribers| subscribers.is_empty());
    }

    pub fn has_subscribers(&self, topic: &str) -> bool {
        self.topics.contains_key(topic)
    }

    pub fn subscriber_count(&self, topic: &str) -> usize {
        self.topics.get(topic).map_or(0, |s| s.len())
    }

    /// Queues `frame` for every subscriber of `topic`; returns how many got it.
    pub fn fan_out(&self, topic: &str, frame: &Utf8Bytes) -> usize {
        let Some(subscribers) = self.topics.get(topic) else {
            return 0;
        };
        let mut queued = 0;
        for subscriber in subscribers.values() {
            match subscriber.queue.try_send(frame.clone()) {
                Ok(()) => queued += 1,
                Err(TrySendError::Full(_)) => subscriber.overflowed.cancel(),
                // The connection is gone; its own cleanup removes it from here.
                Err(TrySendError::Closed(_)) => {}
            }
        }
        queued
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscriber(capacity: usize) -> (Subscriber, mpsc::Receiver<Utf8Bytes>) {
        let (queue, rx) = mpsc::channel(capacity);
        let overflowed = CancellationToken::new();
        (Subscriber { queue, overflowed }, rx)
    }

    fn frame(s: &'static str) -> Utf8Bytes {
        Utf8Bytes::from_static(s)
    }

    #[test]
    fn fan_out_reaches_every_subscriber_of_the_topic_only() {
        let registry = Registry::default();
        let (a, mut rx_a) = subscriber(4);
        let (b, mut rx_b) = subscriber(4);
        let (c, mut rx_c) = subscriber(4);
        assert!(registry.subscribe("chat.lobby", 1, a));
        assert!(registry.subscribe("chat.lobby", 2, b));
        assert!(registry.subscribe("chat.other", 3, c));

        assert_eq!(registry.fan_out("chat.lobby", &frame("m1")), 2);
        assert_eq!(rx_a.try_recv().unwrap(), "m1");
        assert_eq!(rx_b.try_recv().unwrap(), "m1");
        assert!(rx_c.try_recv().is_err());
        assert_eq!(registry.fan_out("nobody.here", &frame("m2")), 0);
    }

    #[test]
    fn subscribing_twice_delivers_once() {
        let registry = Registry::default();
        let (a, mut rx) = subscriber(4);
        assert!(registry.subscribe("t", 1, a.clone()));
        assert!(!registry.subscribe("t", 1, a));
        registry.fan_out("t", &frame("m"));
        assert_eq!(rx.try_recv().unwrap(), "m");
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn unsubscribe_stops_delivery_and_forgets_empty_topics() {
        let registry = Registry::default();
        let (a, mut rx_a) = subscriber(4);
        let (b, mut rx_b) = subscriber(4);
        registry.subscribe("t", 1, a);
        registry.subscribe("t", 2, b);
        registry.unsubscribe("t", 1);
        assert_eq!(registry.fan_out("t", &frame("m")), 1);
        assert!(rx_a.try_recv().is_err());
        assert_eq!(rx_b.try_recv().unwrap(), "m");

        registry.unsubscribe("t", 2);
        assert!(!registry.has_subscribers("t"));
        assert_eq!(registry.subscriber_count("t"), 0);
        registry.unsubscribe("never", 9);
    }

    #[test]
    fn a_full_queue_flags_its_connection_and_spares_the_others() {
        let registry = Registry::default();
        let (slow, _rx_slow) = subscriber(1);
        let (fast, mut rx_fast) = subscriber(8);
        let slow_flag = slow.overflowed.clone();
        registry.subscribe("t", 1, slow);
        registry.subscribe("t", 2, fast);

        assert_eq!(registry.fan_out("t", &frame("1")), 2);
        assert!(!slow_flag.is_cancelled());
        assert_eq!(registry.fan_out("t", &frame("2")), 1);
        assert!(slow_flag.is_cancelled());
        assert_eq!(rx_fast.try_recv().unwrap(), "1");
        assert_eq!(rx_fast.try_recv().unwrap(), "2");
    }

    #[test]
    fn closed_queues_are_skipped() {
        let registry = Registry::default();
        let (gone, rx) = subscriber(1);
        drop(rx);
        let flag = gone.overflowed.clone();
        registry.subscribe("t", 1, gone);
        assert_eq!(registry.fan_out("t", &frame("m")), 0);
        assert!(!flag.is_cancelled());
    }
}
