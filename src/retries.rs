//! Resent publishes answered from Kafka, so that a record is written once however often a
//! client sends it, through whichever hubs (`docs/protocol.md`, "Publishing exactly once").
//!
//! A publish with a `publish_id` carries it in a header; with a key it goes to its key's
//! partition, which every hub computes alike. A resend says how long ago, on the client's own
//! clock, the first attempt left; the hub then reads that partition (every partition of the
//! topic, for a record without a key) for a record with the id and answers with its position
//! when it finds one. When it does not, an
//! earlier attempt may still be on its way, and writing now could write twice. How late can
//! an attempt still land? It reaches its hub at most `ping_interval + pong_timeout` after it
//! was sent, since a hub stops reading a socket that does not answer its pings; the hub
//! hands it to its producer at once; the producer gives up `publish_timeout` later; and
//! `LANDING_MARGIN` covers the broker appending and replicating a request it already had.
//! That sum is `landing`. A first resend waits until the first attempt is `landing` old; a
//! later resend, whose previous attempt may itself have been waiting, waits `landing` from
//! its own arrival (a waiting resend is dropped when its socket closes, and its socket is
//! closed at most `ping_interval + pong_timeout` after the client gave up on it). Only then,
//! if the record has still not appeared, is it written.
//!
//! One reader per partition serves every resend of that partition at once, from where the
//! oldest of their first attempts could have been written (its age back, and `CLOCK_SKEW`),
//! going back when a resend reaches further: after a hub dies and thousands of clients
//! resend to the others, each partition is read once, not once per resend.

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Headers as _;
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use tokio::sync::oneshot;

use crate::clock::now_millis;
use crate::config::ServeConfig;
use crate::kafka::Clients;
use crate::kafka::KafkaLog;
use crate::metrics;
use crate::protocol::{ErrorCode, PUBLISH_ID_HEADER, SENDER_HEADER};

/// Time for the broker to append and replicate a produce request it received before the
/// producer gave up on it.
const LANDING_MARGIN: Duration = Duration::from_secs(10);
/// How far apart the hubs' clocks may be: record timestamps are the writing hub's.
const CLOCK_SKEW: Duration = Duration::from_secs(10);
/// Bound on each metadata or watermark round trip.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// A partition's reader with nothing to look for stops after this long.
const IDLE: Duration = Duration::from_secs(30);
/// Partitions read for resends at once; past it a resend is answered `unavailable`.
const MAX_READERS: usize = 64;

/// What a resend is compared on: a record with its id and another fingerprint is another
/// record, not this one.
pub fn fingerprint(key: Option<&[u8]>, payload: &[u8], sender: Option<&[u8]>) -> u64 {
    let mut hasher = DefaultHasher::new();
    (key, payload, sender).hash(&mut hasher);
    hasher.finish()
}

/// What became of a resend's earlier attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The record is in Kafka at this offset of the partition looked in.
    Found { offset: i64 },
    /// A record with the id is there, but it is another record.
    Conflict { offset: i64 },
    /// None is there, and none can land any more: write it.
    Absent,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RetryError {
    #[error("Kafka did not answer the search for the first attempt: {0}")]
    Kafka(KafkaError),
    #[error("too many partitions are being searched for resent publishes: send again shortly")]
    Busy,
    #[error("the search for the first attempt stopped")]
    Crashed,
}

impl RetryError {
    pub fn code(&self) -> ErrorCode {
        match self {
            RetryError::Crashed => ErrorCode::Internal,
            _ => ErrorCode::Unavailable,
        }
    }
}

/// Finds resends' earlier attempts; clones share the readers.
#[derive(Clone)]
pub struct Retries {
    inner: Arc<Inner>,
}

struct Inner {
    client: ClientConfig,
    log: KafkaLog,
    readers: Mutex<HashMap<Partition, mpsc::Sender<Waiter>>>,
    landing: Duration,
    window: Duration,
}

/// A topic's name and a partition of it.
type Partition = (Box<str>, i32);

/// One resend waiting for its partition's reader.
struct Waiter {
    publish_id: Box<str>,
    fingerprint: u64,
    /// The earliest its earlier attempts can have been written, in ms since the epoch by
    /// this hub's clock (the first attempt's age back, and the clock skew).
    since: i64,
    /// When no earlier attempt can land any more.
    deadline: Instant,
    answer: oneshot::Sender<Result<Outcome, RetryError>>,
}

impl Retries {
    /// `landing` as `landing` computes it; `window` is `WSKAFKA_PUBLISH_RETRY_WINDOW`.
    pub fn new(clients: &Clients, landing: Duration, window: Duration) -> Self {
        let mut client = clients.reader("retries");
        // It follows the partition's end while resends wait: a short fetch wait so that a
        // record landing is seen at once.
        client.set("fetch.wait.max.ms", "50");
        client.set("queued.max.messages.kbytes", "1024");
        client.set("fetch.queue.backoff.ms", "10");
        Retries {
            inner: Arc::new(Inner {
                client,
                log: clients.log().clone(),
                readers: Mutex::default(),
                landing,
                window,
            }),
        }
    }

    /// How old a first attempt may be and still be looked for.
    pub fn window(&self) -> Duration {
        self.inner.window
    }

    /// How long a resend waits for its earlier attempts: a first resend until the first
    /// attempt is `landing` old, a later one `landing` from now (see the module's comment).
    pub fn wait(&self, age: Duration, attempt: u32) -> Duration {
        match attempt {
            1 => self.inner.landing.saturating_sub(age),
            _ => self.inner.landing,
        }
    }

    /// Looks in `partition` of `topic` for the record `publish_id` names, written since its
    /// first attempt left `age` ago, until `wait` has passed and the partition has been read
    /// up to its end as it then was.
    pub async fn find(
        &self,
        topic: &str,
        partition: i32,
        publish_id: &str,
        fingerprint: u64,
        age: Duration,
        wait: Duration,
    ) -> Result<Outcome, RetryError> {
        let (answer, answered) = oneshot::channel();
        let waiter = Waiter {
            publish_id: publish_id.into(),
            fingerprint,
            since: now_millis() - (age + CLOCK_SKEW).as_millis() as i64,
            deadline: Instant::now() + wait,
            answer,
        };
        self.enqueue(topic, partition, waiter)?;
        answered.await.map_err(|_| RetryError::Crashed)?
    }

    /// `find` in each of `partitions` at once: the first record found (or found to be
    /// another) answers, with its partition; `Absent` once every partition said so.
    pub async fn find_in(
        &self,
        topic: &str,
        partitions: &[i32],
        publish_id: &str,
        fingerprint: u64,
        age: Duration,
        wait: Duration,
    ) -> Result<(i32, Outcome), RetryError> {
        let mut searches: FuturesUnordered<_> = partitions
            .iter()
            .map(|&partition| async move {
                let found = self
                    .find(topic, partition, publish_id, fingerprint, age, wait)
                    .await;
                (partition, found)
            })
            .collect();
        let mut absent = (partitions.first().copied().unwrap_or(0), Outcome::Absent);
        while let Some((partition, found)) = searches.next().await {
            match found? {
                Outcome::Absent => absent.0 = partition,
                outcome => return Ok((partition, outcome)),
            }
        }
        Ok(absent)
    }

    /// Hands `waiter` to the partition's reader, starting one when none runs.
    fn enqueue(&self, topic: &str, partition: i32, waiter: Waiter) -> Result<(), RetryError> {
        let mut readers = self.inner.readers.lock().expect("retry readers");
        let key = (Box::<str>::from(topic), partition);
        let waiter = match readers.get(&key) {
            Some(reader) => match reader.send(waiter) {
                Ok(()) => return Ok(()),
                // It stopped after an error: a new one starts below.
                Err(mpsc::SendError(waiter)) => waiter,
            },
            None => waiter,
        };
        if readers.len() >= MAX_READERS {
            return Err(RetryError::Busy);
        }
        let (sender, waiters) = mpsc::channel();
        sender.send(waiter).expect("the receiver is here");
        readers.insert(key.clone(), sender);
        metrics::retry_readers(readers.len());
        let inner = self.inner.clone();
        let thread_key = key.clone();
        // A thread of its own, not the runtime's blocking pool: a reader lingers `IDLE` after
        // its last resend, and the runtime would hold the hub's exit until it left.
        let spawned = std::thread::Builder::new()
            .name("retries".into())
            .spawn(move || {
            let key = thread_key;
            let mut ledger = Ledger::default();
            if let Err(e) = read(&inner, &key, &waiters, &mut ledger) {
                tracing::warn!(topic = %key.0, partition = key.1, error = %e, "cannot search for resent publishes");
                let mut readers = inner.readers.lock().expect("retry readers");
                // Waiters sent after the reader's last look are answered too.
                ledger.take(&waiters);
                readers.remove(&key);
                metrics::retry_readers(readers.len());
                drop(readers);
                ledger.fail(&RetryError::Kafka(e));
            }
            });
        if spawned.is_err() {
            readers.remove(&key);
            metrics::retry_readers(readers.len());
            return Err(RetryError::Crashed);
        }
        Ok(())
    }
}

/// `ping_interval + pong_timeout + publish_timeout + LANDING_MARGIN`: how long after a client
/// sent an attempt it may still land (see the module's comment).
pub fn landing(config: &ServeConfig) -> Duration {
    config.server.ping_interval
        + config.server.pong_timeout
        + config.kafka.publish_timeout
        + LANDING_MARGIN
}

/// Reads the partition for its waiters until none has been left for `IDLE`, and then leaves
/// the hub's list of readers.
fn read(
    inner: &Inner,
    key: &Partition,
    waiters: &mpsc::Receiver<Waiter>,
    ledger: &mut Ledger,
) -> Result<(), KafkaError> {
    let (topic, partition) = (&*key.0, key.1);
    let consumer: BaseConsumer<KafkaLog> = inner.client.create_with_context(inner.log.clone())?;
    // Ids are kept until no resend the hub accepts can ask for them.
    let memory = inner.window + CLOCK_SKEW;
    // Read from the earliest start any waiter needs; one that needs an earlier start than
    // the reading has made takes it back there.
    let mut covered_from = i64::MAX;
    let mut position = 0;
    // The partition's end, and when it was asked for: waiters past their deadline then are
    // answered once the reading gets there.
    let mut end: Option<(i64, Instant)> = None;
    let mut idle_since = Instant::now();
    // The earliest start wanted by waiters taken since the last look.
    let mut wanted: Option<i64> = None;
    loop {
        wanted = earliest(wanted, ledger.take(waiters));
        if let Some(since) = wanted.take()
            && since < covered_from
        {
            let start = offset_since(&consumer, topic, partition, since)?;
            if covered_from == i64::MAX {
                let mut assignment = TopicPartitionList::new();
                assignment.add_partition_offset(topic, partition, Offset::Offset(start))?;
                consumer.assign(&assignment)?;
                position = start;
            } else if start < position {
                consumer.seek(topic, partition, Offset::Offset(start), LOOKUP_TIMEOUT)?;
                position = start;
            }
            covered_from = since;
        }
        if ledger.is_empty() {
            if idle_since.elapsed() >= IDLE {
                // Under the lock, so that no waiter is sent to a reader that has left.
                let mut readers = inner.readers.lock().expect("retry readers");
                wanted = ledger.take(waiters);
                if ledger.is_empty() {
                    readers.remove(key);
                    metrics::retry_readers(readers.len());
                    return Ok(());
                }
                // One came meanwhile: its start is seen to on the next turn.
                continue;
            }
        } else {
            idle_since = Instant::now();
        }
        if end.is_none() && ledger.any_due(Instant::now()) {
            let asked = Instant::now();
            let (_, high) = consumer.fetch_watermarks(topic, partition, LOOKUP_TIMEOUT)?;
            end = Some((high, asked));
        }
        if let Some((high, asked)) = end
            && position >= high
        {
            ledger.absent_until(asked);
            end = None;
            continue;
        }
        match consumer.poll(POLL_INTERVAL) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => return Err(e),
            Some(Ok(message)) => {
                position = message.offset() + 1;
                let headers = message.headers();
                let header = |name: &str| {
                    headers.and_then(|h| h.iter().filter(|h| h.key == name).last()?.value)
                };
                if let Some(id) =
                    header(PUBLISH_ID_HEADER).and_then(|id| std::str::from_utf8(id).ok())
                {
                    let print = fingerprint(
                        message.key(),
                        message.payload().unwrap_or_default(),
                        header(SENDER_HEADER),
                    );
                    let written = message.timestamp().to_millis().unwrap_or_else(now_millis);
                    ledger.seen(
                        id,
                        message.offset(),
                        print,
                        written,
                        now_millis() - memory.as_millis() as i64,
                    );
                }
            }
        }
    }
}

fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The first offset of the partition written at or after `since` (ms since the epoch), or
/// its end when none is yet.
fn offset_since(
    consumer: &BaseConsumer<KafkaLog>,
    topic: &str,
    partition: i32,
    since: i64,
) -> Result<i64, KafkaError> {
    // The end before the search: a record written after it would be missed if the start
    // were the end as found after the search.
    let (_, end_before) = consumer.fetch_watermarks(topic, partition, LOOKUP_TIMEOUT)?;
    let mut times = TopicPartitionList::new();
    times.add_partition_offset(topic, partition, Offset::Offset(since))?;
    let starts = consumer.offsets_for_times(times, LOOKUP_TIMEOUT)?;
    match starts
        .find_partition(topic, partition)
        .map(|e| (e.offset(), e.error()))
    {
        Some((Offset::Offset(offset), Ok(()))) => Ok(offset.min(end_before)),
        // Nothing written since `since` when it looked: everything from the end before.
        Some((Offset::End, Ok(()))) => Ok(end_before),
        Some((_, Err(e))) => Err(e),
        _ => Err(KafkaError::OffsetFetch(RDKafkaErrorCode::UnknownPartition)),
    }
}

/// What a partition's reader has seen and who waits for what: the logic of `read`, apart
/// from Kafka.
#[derive(Default)]
struct Ledger {
    /// Ids seen, with offset and fingerprint, oldest first, for waiters that come later.
    seen: HashMap<Box<str>, (i64, u64)>,
    order: VecDeque<(i64, Box<str>)>,
    waiting: Vec<Waiter>,
}

impl Ledger {
    fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Takes the waiters sent meanwhile; returns the earliest start those left waiting need.
    fn take(&mut self, waiters: &mpsc::Receiver<Waiter>) -> Option<i64> {
        let mut earliest = None;
        while let Ok(waiter) = waiters.try_recv() {
            if let Some(since) = self.add(waiter) {
                earliest = Some(earliest.map_or(since, |e: i64| e.min(since)));
            }
        }
        earliest
    }

    /// Answers `waiter` from what was seen, or keeps it; returns its start when kept.
    fn add(&mut self, waiter: Waiter) -> Option<i64> {
        match self.seen.get(&waiter.publish_id) {
            Some(&(offset, print)) => {
                answer(waiter, offset, print);
                None
            }
            None => {
                let since = waiter.since;
                self.waiting.push(waiter);
                Some(since)
            }
        }
    }

    /// A record carrying `id`, written at `written` (ms since the epoch); ids written before
    /// `forget_before` are forgotten, since no resend the hub accepts can ask for them.
    fn seen(&mut self, id: &str, offset: i64, print: u64, written: i64, forget_before: i64) {
        while let Some((at, _)) = self.order.front()
            && *at < forget_before
        {
            let (_, old) = self.order.pop_front().expect("a front");
            self.seen.remove(&old);
        }
        // The first record with an id is the one resends are answered with.
        if self.seen.contains_key(id) {
            return;
        }
        self.seen.insert(id.into(), (offset, print));
        self.order.push_back((written, id.into()));
        let (found, waiting) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition::<Vec<_>, _>(|w| *w.publish_id == *id);
        self.waiting = waiting;
        for waiter in found {
            answer(waiter, offset, print);
        }
    }

    fn any_due(&self, now: Instant) -> bool {
        self.waiting.iter().any(|w| w.deadline <= now)
    }

    /// The partition has been read up to its end as it was at `asked`: every waiter whose
    /// deadline had passed then has no earlier attempt to wait for.
    fn absent_until(&mut self, asked: Instant) {
        let (due, waiting) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition::<Vec<_>, _>(|w| w.deadline <= asked);
        self.waiting = waiting;
        for waiter in due {
            let _ = waiter.answer.send(Ok(Outcome::Absent));
        }
    }

    fn fail(&mut self, error: &RetryError) {
        for waiter in self.waiting.drain(..) {
            let _ = waiter.answer.send(Err(error.clone()));
        }
    }
}

fn answer(waiter: Waiter, offset: i64, print: u64) {
    let outcome = if print == waiter.fingerprint {
        Outcome::Found { offset }
    } else {
        Outcome::Conflict { offset }
    };
    let _ = waiter.answer.send(Ok(outcome));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter(
        id: &str,
        print: u64,
        deadline: Instant,
    ) -> (Waiter, oneshot::Receiver<Result<Outcome, RetryError>>) {
        let (answer, answered) = oneshot::channel();
        let waiter = Waiter {
            since: 0,
            publish_id: id.into(),
            fingerprint: print,
            deadline,
            answer,
        };
        (waiter, answered)
    }

    #[test]
    fn a_resend_is_answered_with_the_first_record_of_its_id_seen_before_or_after_it_came() {
        let now = Instant::now();
        let mut ledger = Ledger::default();
        ledger.seen("a", 5, 1, 100, 0);
        ledger.seen("a", 9, 1, 101, 0);
        let (early, mut early_answer) = waiter("a", 1, now);
        ledger.add(early);
        assert_eq!(
            early_answer.try_recv().unwrap().unwrap(),
            Outcome::Found { offset: 5 }
        );

        let (late, mut late_answer) = waiter("b", 2, now + Duration::from_secs(60));
        ledger.add(late);
        assert!(
            late_answer.try_recv().is_err(),
            "answered before its record came"
        );
        ledger.seen("b", 12, 2, 102, 0);
        assert_eq!(
            late_answer.try_recv().unwrap().unwrap(),
            Outcome::Found { offset: 12 }
        );
    }

    #[test]
    fn a_record_with_the_id_and_another_content_is_a_conflict() {
        let mut ledger = Ledger::default();
        let (w, mut answered) = waiter("a", 1, Instant::now());
        ledger.add(w);
        ledger.seen("a", 3, 2, 100, 0);
        assert_eq!(
            answered.try_recv().unwrap().unwrap(),
            Outcome::Conflict { offset: 3 }
        );
    }

    #[test]
    fn only_waiters_due_when_the_end_was_asked_for_are_told_to_write() {
        let now = Instant::now();
        let mut ledger = Ledger::default();
        let (due, mut due_answer) = waiter("a", 1, now);
        let (later, mut later_answer) = waiter("b", 1, now + Duration::from_secs(5));
        ledger.add(due);
        ledger.add(later);
        assert!(ledger.any_due(now));
        ledger.absent_until(now);
        assert_eq!(due_answer.try_recv().unwrap().unwrap(), Outcome::Absent);
        assert!(later_answer.try_recv().is_err());
        assert!(!ledger.is_empty());
    }

    #[test]
    fn ids_older_than_any_accepted_resend_are_forgotten() {
        let mut ledger = Ledger::default();
        ledger.seen("old", 1, 1, 100, 0);
        ledger.seen("new", 2, 1, 200, 150);
        assert!(!ledger.seen.contains_key("old"));
        assert!(ledger.seen.contains_key("new"));
    }

    #[test]
    fn a_fingerprint_tells_key_payload_and_sender_apart() {
        let base = fingerprint(Some(b"k"), b"{}", Some(b"alice"));
        assert_eq!(base, fingerprint(Some(b"k"), b"{}", Some(b"alice")));
        assert_ne!(base, fingerprint(None, b"{}", Some(b"alice")));
        assert_ne!(base, fingerprint(Some(b"k"), b"{ }", Some(b"alice")));
        assert_ne!(base, fingerprint(Some(b"k"), b"{}", Some(b"bob")));
    }
}
