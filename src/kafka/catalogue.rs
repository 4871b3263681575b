//! Which topics exist, from Kafka's metadata: checked before every publish, subscribe and
//! history, so that a topic that does not exist gets `unknown_topic` at once, instead of a
//! publish that waits out its timeout, a subscription that never hears a word, or (on a
//! broker that creates topics on demand) a new topic the cluster pays for.
//!
//! The list is refreshed every `REFRESH_EVERY` (which also drops the metrics of topics that
//! went away), and when a request names a topic missing from it, so that a topic an operator
//! just created is usable at once. A client asking again and again for topics that do not
//! exist must not become a storm of metadata requests: a refresh starts at most once per
//! `MIN_GAP`, whatever the names (requests meanwhile share the one running, or are answered
//! from the list it just gave), and a topic a refresh found missing is answered missing for
//! `MISSING_FOR` without asking Kafka again. A topic created while the hub runs is therefore
//! usable at once, or at worst `MISSING_FOR` plus `MIN_GAP` after someone last asked for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use rdkafka::error::KafkaError;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::TopicsConfig;
use crate::kafka::Publisher;
use crate::metrics;

/// How often the list is refreshed when nobody asks for a missing topic.
const REFRESH_EVERY: Duration = Duration::from_secs(10);
/// Least time between the starts of two refreshes.
const MIN_GAP: Duration = Duration::from_millis(100);
/// How long a topic a refresh found missing is answered missing without a new refresh.
const MISSING_FOR: Duration = Duration::from_secs(1);
/// Most topics remembered as missing; past it, invented names wait for a refresh instead.
const MAX_MISSING: usize = 10_000;
/// How long a refresh waits for Kafka's answer.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// Every topic in the cluster with its partition count, or why Kafka did not say.
type Source = Arc<dyn Fn() -> Result<Vec<(String, usize)>, KafkaError> + Send + Sync>;

/// What the hub knows about a topic.
pub enum Lookup {
    Exists,
    Missing,
    /// The last refresh got no answer from Kafka.
    Unreachable,
    /// Resolves once a refresh has answered: ask again then, with `may_wait` false.
    Refreshing(BoxFuture<'static, ()>),
}

/// The topics that exist, Kafka's own and the closed ones left out; clones share it.
#[derive(Clone)]
pub struct Catalogue {
    inner: Arc<Inner>,
}

struct Inner {
    source: Source,
    is_closed: Box<dyn Fn(&str) -> bool + Send + Sync>,
    state: Mutex<State>,
    /// Counts finished refreshes, for requests waiting on one.
    refreshed: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    /// With their partition counts.
    topics: HashMap<Box<str>, usize>,
    /// When the latest refresh started; none has yet, when `None`.
    started: Option<Instant>,
    /// A refresh is scheduled or waiting for Kafka.
    running: bool,
    /// The latest refresh got no answer.
    failed: bool,
    /// Topics found missing, with when the refresh that found them started.
    missing: HashMap<Box<str>, Instant>,
}

impl Catalogue {
    /// The catalogue of the cluster `publisher` talks to.
    pub fn new(topics: &TopicsConfig, publisher: Publisher) -> Catalogue {
        let topics = topics.clone();
        Catalogue::with_source(
            Arc::new(move || publisher.topics(METADATA_TIMEOUT)),
            Box::new(move |topic| topics.is_closed(topic)),
        )
    }

    fn with_source(source: Source, is_closed: Box<dyn Fn(&str) -> bool + Send + Sync>) -> Self {
        Catalogue {
            inner: Arc::new(Inner {
                source,
                is_closed,
                state: Mutex::default(),
                refreshed: watch::Sender::new(0),
            }),
        }
    }

    /// A catalogue that always lists `topics` (its refreshes answer at once).
    #[cfg(test)]
    pub fn fixed(topics: &[&str]) -> Catalogue {
        let topics: Vec<(String, usize)> = topics.iter().map(|t| (t.to_string(), 1)).collect();
        Catalogue::with_source(Arc::new(move || Ok(topics.clone())), Box::new(|_| false))
    }

    /// Whether `topic` exists. `may_wait` is false for a request that already waited for a
    /// refresh: it gets the answer that refresh gave.
    pub fn lookup(&self, topic: &str, may_wait: bool) -> Lookup {
        let now = Instant::now();
        let mut state = self.inner.state.lock().expect("catalogue lock");
        if state.topics.contains_key(topic) {
            return Lookup::Exists;
        }
        let known_missing = state
            .missing
            .get(topic)
            .is_some_and(|found| now.duration_since(*found) < MISSING_FOR);
        if known_missing {
            return Lookup::Missing;
        }
        if !may_wait {
            return self.lookup_answered(&mut state, topic, now);
        }
        let fresh = state
            .started
            .is_some_and(|started| now.duration_since(started) < MIN_GAP);
        if fresh && !state.running {
            return self.lookup_answered(&mut state, topic, now);
        }
        // Subscribed under the lock: the refresh announces its end under it too.
        let mut refreshed = self.inner.refreshed.subscribe();
        if !state.running {
            self.start_refresh(&mut state, "miss");
        }
        Lookup::Refreshing(Box::pin(async move {
            let _ = refreshed.changed().await;
        }))
    }

    /// How many partitions `topic` had at the latest refresh, when it was listed.
    pub fn partitions(&self, topic: &str) -> Option<usize> {
        let state = self.inner.state.lock().expect("catalogue lock");
        state.topics.get(topic).copied()
    }

    /// What the latest refresh said of `topic`, which it did not list.
    fn lookup_answered(&self, state: &mut State, topic: &str, now: Instant) -> Lookup {
        if state.failed {
            return Lookup::Unreachable;
        }
        if let Some(started) = state.started {
            state.remember_missing(topic, started, now);
        }
        Lookup::Missing
    }

    /// Refreshes the list every `REFRESH_EVERY` until `stop`.
    pub async fn keep_fresh(self, stop: CancellationToken) {
        let mut every = tokio::time::interval(REFRESH_EVERY);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = every.tick() => {
                    let mut state = self.inner.state.lock().expect("catalogue lock");
                    if !state.running {
                        self.start_refresh(&mut state, "periodic");
                    }
                }
            }
        }
    }

    /// Starts a refresh, `MIN_GAP` after the previous one started at the earliest.
    fn start_refresh(&self, state: &mut State, cause: &'static str) {
        state.running = true;
        let now = Instant::now();
        let at = state
            .started
            .map_or(now, |started| (started + MIN_GAP).max(now));
        state.started = Some(at);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            metrics::topics_refreshed(cause);
            let source = inner.source.clone();
            let listed = tokio::task::spawn_blocking(move || source()).await;
            if let Ok(Ok(topics)) = &listed {
                tracing::debug!(count = topics.len(), cause, "listed Kafka's topics");
            }
            let mut state = inner.state.lock().expect("catalogue lock");
            state.running = false;
            match listed {
                Ok(Ok(topics)) => {
                    let topics: HashMap<Box<str>, usize> = topics
                        .into_iter()
                        .filter(|(topic, _)| !(inner.is_closed)(topic))
                        .map(|(topic, partitions)| (Box::from(topic), partitions))
                        .collect();
                    state.missing.retain(|topic, _| !topics.contains_key(topic));
                    metrics::retain_topics(|topic| topics.contains_key(topic));
                    state.topics = topics;
                    state.failed = false;
                }
                Ok(Err(e)) => {
                    // Which broker does not answer, and why, `KafkaLog` says once: a line
                    // here every refresh would repeat it for the whole outage.
                    tracing::debug!(error = %e, "cannot list Kafka's topics");
                    state.failed = true;
                }
                Err(_) => state.failed = true,
            }
            inner.refreshed.send_modify(|count| *count += 1);
        });
    }
}

impl State {
    /// Remembers that the refresh started at `found` did not list `topic`, when there is
    /// room.
    fn remember_missing(&mut self, topic: &str, found: Instant, now: Instant) {
        if self.missing.len() >= MAX_MISSING {
            self.missing
                .retain(|_, at| now.duration_since(*at) < MISSING_FOR);
        }
        if self.missing.len() < MAX_MISSING {
            self.missing.insert(topic.into(), found);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A catalogue over a list the test changes, counting how often it is read.
    fn counted(topics: &[&str]) -> (Catalogue, Arc<Mutex<Vec<String>>>, Arc<AtomicUsize>) {
        let listed = Arc::new(Mutex::new(
            topics.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
        ));
        let calls = Arc::new(AtomicUsize::new(0));
        let source: Source = {
            let (listed, calls) = (listed.clone(), calls.clone());
            Arc::new(move || {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok(listed
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|t| (t.clone(), 1))
                    .collect())
            })
        };
        let catalogue = Catalogue::with_source(source, Box::new(|t| t.starts_with("__")));
        (catalogue, listed, calls)
    }

    /// What a request gets, waiting for a refresh when told to, as a connection does.
    async fn ask(catalogue: &Catalogue, topic: &str) -> &'static str {
        let mut lookup = catalogue.lookup(topic, true);
        if let Lookup::Refreshing(refreshed) = lookup {
            refreshed.await;
            lookup = catalogue.lookup(topic, false);
        }
        match lookup {
            Lookup::Exists => "exists",
            Lookup::Missing => "missing",
            Lookup::Unreachable => "unreachable",
            Lookup::Refreshing(_) => "waits again",
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_topic_created_meanwhile_is_found_by_the_next_request_that_names_it() {
        let (catalogue, listed, _) = counted(&["chat", "__consumer_offsets"]);
        assert_eq!(ask(&catalogue, "chat").await, "exists");
        assert_eq!(ask(&catalogue, "__consumer_offsets").await, "missing");
        assert_eq!(ask(&catalogue, "news").await, "missing");
        // Made after the latest refresh, which is recent: found by the next one.
        listed.lock().unwrap().push("fresh".into());
        tokio::time::sleep(MIN_GAP).await;
        assert_eq!(ask(&catalogue, "fresh").await, "exists");
        // Asked for while missing: found once `MISSING_FOR` has passed.
        listed.lock().unwrap().push("news".into());
        assert_eq!(ask(&catalogue, "news").await, "missing");
        tokio::time::sleep(MISSING_FOR).await;
        assert_eq!(ask(&catalogue, "news").await, "exists");
    }

    #[tokio::test(start_paused = true)]
    async fn asking_for_missing_topics_refreshes_at_most_once_per_gap() {
        let (catalogue, _, calls) = counted(&["chat"]);
        let started = Instant::now();
        for round in 0..10 {
            for name in 0..50 {
                assert_eq!(ask(&catalogue, &format!("typo{name}")).await, "missing");
                assert_eq!(ask(&catalogue, "chat").await, "exists", "{round}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let calls = calls.load(Ordering::SeqCst);
        let gaps = (started.elapsed().as_millis() / MIN_GAP.as_millis()) as usize;
        assert!(calls <= gaps + 1, "{calls} refreshes in {gaps} gaps");
    }

    #[tokio::test(start_paused = true)]
    async fn a_name_found_missing_is_answered_missing_without_asking_kafka_again() {
        let (catalogue, _, calls) = counted(&["chat"]);
        assert_eq!(ask(&catalogue, "typo").await, "missing");
        let before = calls.load(Ordering::SeqCst);
        // Each past the gap, all within `MISSING_FOR` of the refresh that found it missing.
        for _ in 0..9 {
            tokio::time::sleep(MIN_GAP).await;
            assert_eq!(ask(&catalogue, "typo").await, "missing");
        }
        assert_eq!(calls.load(Ordering::SeqCst), before);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_at_once_share_one_refresh() {
        let (catalogue, _, calls) = counted(&["chat"]);
        let asked = (0..100).map(|n| {
            let catalogue = catalogue.clone();
            async move { ask(&catalogue, &format!("typo{n}")).await }
        });
        let answers = futures_util::future::join_all(asked).await;
        assert!(answers.iter().all(|a| *a == "missing"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn without_an_answer_from_kafka_a_topic_is_neither_known_nor_missing() {
        use rdkafka::types::RDKafkaErrorCode;

        let down: Source =
            Arc::new(|| Err(KafkaError::MetadataFetch(RDKafkaErrorCode::AllBrokersDown)));
        let catalogue = Catalogue::with_source(down, Box::new(|_| false));
        assert_eq!(ask(&catalogue, "chat").await, "unreachable");
    }

    #[tokio::test(start_paused = true)]
    async fn the_missing_names_remembered_are_bounded() {
        let (catalogue, _, _) = counted(&[]);
        for name in 0..MAX_MISSING + 100 {
            catalogue.lookup(&format!("t{name}"), false);
        }
        ask(&catalogue, "first").await;
        for name in 0..MAX_MISSING + 100 {
            catalogue.lookup(&format!("t{name}"), false);
        }
        let state = catalogue.inner.state.lock().unwrap();
        assert_eq!(state.missing.len(), MAX_MISSING);
    }
}
