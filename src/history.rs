//! `history`: pages of past records, newest page first, read from Kafka directly: "load older
//! messages" as far back as retention goes, with no subscription and no cache.
//!
//! A room is a key, and every producer places a key in the partition Kafka's Java clients
//! choose for it (murmur2; the hub's own producer does too), so a room's history is one
//! partition's: a page reads only that partition, backwards, in windows that double until
//! the page is full, the partition's start is reached, or the request has read
//! `WSKAFKA_HISTORY_SCAN` offsets (and at most one more per partition). A page cut short by that bound says so (`partial`) and
//! its cursor carries on where the reading stopped, so a room whose records are sparse among
//! its topic's costs more requests, never an unbounded one. Without a key, every partition
//! is read the same way and the pages merge them newest first by record timestamp (exact
//! order exists within a partition only).
//!
//! A page's records are bounded in bytes too (`WSKAFKA_MEMORY_BUDGET`'s share, split among
//! the concurrent pages): reading keeps the newest records that fit, and a page cut short
//! by its bytes is `partial` the same way, its cursor past the records it left. One record
//! is always kept, however large, so that every page moves back.
//!
//! Reads run on blocking threads with clients of their own, at most
//! `WSKAFKA_MAX_CONCURRENT_HISTORY` at once: live delivery never waits for them.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use serde_json::value::RawValue;
use tokio::sync::Semaphore;

use crate::config::LimitsConfig;
use crate::kafka::KafkaLog;
use crate::kafka::{Clients, frame_of, headers_of};
use crate::metrics;
use crate::protocol::ErrorCode;
use crate::registry::{Filter, RecordMeta};

/// Bound on each metadata or watermark round trip.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// A read that receives nothing from Kafka for this long gives up.
const STALL_TIMEOUT: Duration = Duration::from_secs(15);
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The first window read backwards, in offsets; each next one is twice as long.
const FIRST_WINDOW: i64 = 64;

/// What a `history` request asks, once authorized.
#[derive(Debug, Clone)]
pub struct Query {
    pub topic: String,
    /// The room: only records with this key, read from its partition only.
    pub key: Option<String>,
    /// Per partition, the offset the page ends before (exclusive).
    pub before: BTreeMap<i32, i64>,
    /// Where the partitions `before` does not list end: at their end (`None`), or before
    /// this offset.
    pub unlisted: Option<i64>,
    pub limit: usize,
}

#[derive(Debug, Default)]
pub struct Page {
    /// `message` frames, oldest first.
    pub messages: Vec<Box<RawValue>>,
    pub before: BTreeMap<i32, i64>,
    pub oldest: bool,
    pub partial: bool,
    /// Offsets read from Kafka to make it.
    pub read: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("topic {0:?} does not exist")]
    NoTopic(String),
    #[error("Kafka did not answer: {0}")]
    Kafka(#[from] KafkaError),
    #[error("Kafka deleted records of the page while it was read (retention): retry")]
    Deleted,
    #[error("Kafka stopped sending records of the page")]
    Stalled,
    #[error("the history read failed")]
    Crashed,
}

impl HistoryError {
    pub fn code(&self) -> ErrorCode {
        match self {
            HistoryError::NoTopic(_) => ErrorCode::UnknownTopic,
            HistoryError::Crashed => ErrorCode::Internal,
            _ => ErrorCode::Unavailable,
        }
    }
}

/// Reads history pages; clones share the clients and the bound on concurrent reads.
#[derive(Clone)]
pub struct HistoryReader {
    client: ClientConfig,
    log: KafkaLog,
    /// Clients between requests: each holds its connections, so a page does not pay for
    /// setting them up.
    idle: Arc<Mutex<Vec<BaseConsumer<KafkaLog>>>>,
    permits: Arc<Semaphore>,
    scan: i64,
    /// The bytes of one page's records.
    page_bytes: usize,
    /// The bytes of the pages being read, for /metrics.
    held: Arc<AtomicUsize>,
}

impl HistoryReader {
    pub fn new(clients: &Clients, limits: &LimitsConfig) -> Self {
        let mut client = clients.reader("history");
        // A page reads windows that end before the partition does, then moves on: a fetch
        // left waiting at the partition's end for new records (500 ms by default) would hold
        // up the next window's, and every request on that connection.
        client.set("fetch.wait.max.ms", "10");
        // A window is read and what comes after it dropped: fetch in small pieces, and do
        // not queue ahead the megabytes librdkafka prefetches by default (which also cost
        // the broker: 73% of a core against 64% in the history benchmark). Past those bounds
        // librdkafka waits `fetch.queue.backoff.ms` before fetching again: 1 s by default,
        // which made a page take a second.
        client.set("max.partition.fetch.bytes", "65536");
        client.set("queued.min.messages", "1000");
        client.set("queued.max.messages.kbytes", "1024");
        client.set("fetch.queue.backoff.ms", "10");
        HistoryReader {
            client,
            log: clients.log().clone(),
            idle: Arc::default(),
            permits: Arc::new(Semaphore::new(limits.max_concurrent_history.get())),
            scan: i64::from(limits.history_scan),
            page_bytes: limits
                .memory_budget
                .history_page(limits.max_concurrent_history.get()),
            held: Arc::default(),
        }
    }

    /// The bytes of the pages being read.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    pub async fn page(&self, query: Query) -> Result<Page, HistoryError> {
        let started = Instant::now();
        let page = self.read_page(query).await;
        if let Ok(page) = &page {
            metrics::history_page(started.elapsed(), page.read as u64, page.partial);
        }
        page
    }

    async fn read_page(&self, query: Query) -> Result<Page, HistoryError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let reader = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let taken = reader.idle.lock().expect("history clients").pop();
            let consumer = match taken {
                Some(consumer) => consumer,
                None => reader.client.create_with_context(reader.log.clone())?,
            };
            let page = read(
                &consumer,
                &query,
                reader.scan,
                reader.page_bytes,
                &reader.held,
            );
            // A client that failed may hold a broken assignment: let it go.
            if page.is_ok() {
                reader.idle.lock().expect("history clients").push(consumer);
            }
            page
        })
        .await
        .map_err(|_| HistoryError::Crashed)?
    }
}

/// The partition Kafka's Java clients (and the hub's producer) place `key` in: murmur2 of
/// its bytes, made positive, modulo the partition count.
pub fn partition_for(key: &[u8], partitions: usize) -> i32 {
    let positive = murmur2(key) & 0x7fff_ffff;
    (positive as usize % partitions.max(1)) as i32
}

/// Kafka's `Utils.murmur2`: MurmurHash2, 32 bits, seed 0x9747b28c.
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// A record that belongs on a page.
#[derive(Debug)]
struct Found {
    offset: i64,
    timestamp: i64,
    frame: String,
}

/// One partition's reading, backwards from its end.
#[derive(Debug)]
struct Scan {
    partition: i32,
    /// The oldest offset Kafka holds.
    low: i64,
    /// Everything from here up to where the page ends has been read.
    from: i64,
    /// Matches read, oldest first.
    found: Vec<Found>,
    /// The length of the next window.
    window: i64,
}

fn read(
    consumer: &BaseConsumer<KafkaLog>,
    query: &Query,
    budget: i64,
    page_bytes: usize,
    held: &AtomicUsize,
) -> Result<Page, HistoryError> {
    let topic = query.topic.as_str();
    let metadata = consumer.fetch_metadata(Some(topic), LOOKUP_TIMEOUT)?;
    let count = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
        .next()
        .unwrap_or(0);
    if count == 0 {
        return Err(HistoryError::NoTopic(topic.to_string()));
    }
    let partitions: Vec<i32> = match &query.key {
        Some(key) => vec![partition_for(key.as_bytes(), count)],
        None => (0..count as i32).collect(),
    };
    let filter = Filter {
        key: query.key.as_ref().map(|k| k.as_bytes().into()),
        headers: Vec::new(),
    };
    let mut scans = Vec::with_capacity(partitions.len());
    for partition in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, LOOKUP_TIMEOUT)?;
        let end = query
            .before
            .get(&partition)
            .copied()
            .or(query.unlisted)
            .map_or(high, |b| b.min(high));
        scans.push(Scan {
            partition,
            low,
            from: end.max(low),
            found: Vec::new(),
            window: FIRST_WINDOW.max(2 * query.limit as i64),
        });
    }
    let mut counted = 0;
    let scanned = scan_back(
        &mut scans,
        query.limit,
        budget,
        page_bytes,
        |partition, start, end, room| {
            let kept = read_range(consumer, topic, partition, start, end, &filter, room);
            if let Ok(kept) = &kept {
                counted += kept.bytes;
                held.fetch_add(kept.bytes, Ordering::Relaxed);
            }
            kept
        },
    );
    let page = scanned.map(|(cut, read)| Page {
        read,
        ..assemble(scans, query.limit, cut)
    });
    held.fetch_sub(counted, Ordering::Relaxed);
    page
}

/// The matches of a range read for a page, as many of the newest as fit its bytes.
#[derive(Debug)]
struct Kept {
    found: VecDeque<Found>,
    bytes: usize,
    room: usize,
    /// One past the newest match dropped for room: where the partition's reading stands.
    from: Option<i64>,
}

impl Kept {
    fn new(room: usize) -> Self {
        Kept {
            found: VecDeque::new(),
            bytes: 0,
            room,
            from: None,
        }
    }

    /// Keeps a match newer than those kept, dropping the oldest kept while they are over
    /// the room (the newest stays, however large).
    fn push(&mut self, found: Found) {
        self.bytes += found.frame.len();
        self.found.push_back(found);
        while self.bytes > self.room && self.found.len() > 1 {
            let dropped = self.found.pop_front().expect("more than one");
            self.bytes -= dropped.frame.len();
            self.from = Some(dropped.offset + 1);
        }
    }
}

/// Reads each partition backwards, a window at a time, until it has `limit` matches or
/// reaches its oldest record; returns whether the `budget` of offsets ran out first, and how
/// many offsets it read. Each
/// round gives every partition still wanting a share of what is left, at least one offset,
/// so that every request moves every such partition back: a partition left unread would
/// hold the page back (see `assemble`), request after request. `read` gives the matches
/// among offsets `[start, end)` of a partition, oldest first.
fn scan_back(
    scans: &mut [Scan],
    limit: usize,
    budget: i64,
    page_bytes: usize,
    mut read: impl FnMut(i32, i64, i64, usize) -> Result<Kept, HistoryError>,
) -> Result<(bool, i64), HistoryError> {
    let mut left = budget;
    let mut room = page_bytes;
    loop {
        let wanting: Vec<usize> = (0..scans.len())
            .filter(|&i| scans[i].found.len() < limit && scans[i].from > scans[i].low)
            .collect();
        if wanting.is_empty() {
            return Ok((false, budget - left));
        }
        if left <= 0 || room == 0 {
            return Ok((true, budget - left));
        }
        let share = (left / wanting.len() as i64).max(1);
        let mut full = false;
        for i in wanting {
            let scan = &mut scans[i];
            let length = scan.window.min(share).min(scan.from - scan.low);
            let start = scan.from - length;
            let kept = read(scan.partition, start, scan.from, room)?;
            room = room.saturating_sub(kept.bytes);
            full |= kept.from.is_some();
            let mut older: Vec<Found> = kept.found.into();
            older.append(&mut scan.found);
            scan.found = older;
            scan.from = kept.from.unwrap_or(start);
            scan.window = scan.window.saturating_mul(2);
            left -= length;
        }
        if full {
            return Ok((true, budget - left));
        }
    }
}

/// The matches among offsets `[start, end)` of one partition, oldest first.
fn read_range(
    consumer: &BaseConsumer<KafkaLog>,
    topic: &str,
    partition: i32,
    start: i64,
    end: i64,
    filter: &Filter,
    room: usize,
) -> Result<Kept, HistoryError> {
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Offset(start))
        .expect("a fresh list takes any offset");
    consumer.assign(&assignment)?;
    let mut found = Kept::new(room);
    let mut heard = Instant::now();
    loop {
        match consumer.poll(POLL_INTERVAL) {
            None if heard.elapsed() > STALL_TIMEOUT => return Err(HistoryError::Stalled),
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(found),
            Some(Err(e)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::OffsetOutOfRange) => {
                return Err(HistoryError::Deleted);
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(message)) => {
                heard = Instant::now();
                let offset = message.offset();
                if message.partition() != partition || offset < start {
                    continue;
                }
                if offset >= end {
                    return Ok(found);
                }
                let headers = headers_of(&message);
                let meta = RecordMeta {
                    key: message.key(),
                    headers: &headers,
                };
                if filter.matches(&meta) {
                    found.push(Found {
                        offset,
                        timestamp: message.timestamp().to_millis().unwrap_or(-1),
                        frame: frame_of(&message, &headers),
                    });
                }
                if offset + 1 >= end {
                    return Ok(found);
                }
            }
        }
    }
}

/// Picks the page from what each partition's reading found: the newest `limit` records,
/// merged newest first by (timestamp, partition, offset) and taken from the end of each
/// partition's matches, so a partition's cursor never passes a record left for the next
/// page. The merge stops at a partition that has no match left but some offsets not read
/// yet (`cut`: the bound on reading ran out): its next records may be newer than the other
/// partitions' remaining ones.
fn assemble(scans: Vec<Scan>, limit: usize, cut: bool) -> Page {
    let mut left: Vec<usize> = scans.iter().map(|s| s.found.len()).collect();
    let mut taken: Vec<(usize, usize)> = Vec::new();
    while taken.len() < limit {
        let blocked = scans
            .iter()
            .zip(&left)
            .any(|(scan, &left)| left == 0 && scan.from > scan.low);
        if blocked {
            break;
        }
        let newest = (0..scans.len()).filter(|&i| left[i] > 0).max_by_key(|&i| {
            let found = &scans[i].found[left[i] - 1];
            (found.timestamp, scans[i].partition, found.offset)
        });
        let Some(i) = newest else { break };
        left[i] -= 1;
        taken.push((i, left[i]));
    }
    let mut page = Page {
        partial: cut && taken.len() < limit,
        ..Page::default()
    };
    let mut oldest = true;
    for (i, scan) in scans.iter().enumerate() {
        let cursor = if left[i] < scan.found.len() {
            // Records below the oldest taken one stay for the next page.
            scan.found[left[i]].offset
        } else if let Some(newest) = scan.found.last() {
            // None taken: the next page starts above the newest match.
            newest.offset + 1
        } else {
            scan.from
        };
        oldest &= left[i] == 0 && scan.from <= scan.low;
        page.before.insert(scan.partition, cursor);
    }
    page.oldest = oldest;
    let mut scans = scans;
    for (i, j) in taken.into_iter().rev() {
        let frame = std::mem::take(&mut scans[i].found[j].frame);
        page.messages
            .push(RawValue::from_string(frame).expect("message frames are JSON"));
    }
    page
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    /// Kafka's own vectors (`UtilsTest.testMurmur2`).
    #[test]
    fn murmur2_is_kafkas() {
        for (key, hash) in [
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            ("abc", 479470107),
        ] {
            assert_eq!(murmur2(key.as_bytes()) as i32, hash, "{key}");
        }
        assert_eq!(partition_for(b"21", 7), ((-973932308i32 & 0x7fffffff) % 7));
    }

    fn found(offset: i64, timestamp: i64, partition: i32) -> Found {
        Found {
            offset,
            timestamp,
            frame: format!("[{partition},{offset}]"),
        }
    }

    fn positions(page: &Page) -> Vec<(i32, i64)> {
        page.messages
            .iter()
            .map(|m| serde_json::from_str(m.get()).unwrap())
            .collect()
    }

    #[test]
    fn one_partition_pages_back_from_its_newest_matches() {
        let scan = |from, offsets: Vec<i64>| Scan {
            partition: 0,
            low: 0,
            from,
            found: offsets.into_iter().map(|o| found(o, o, 0)).collect(),
            window: 64,
        };
        let page = assemble(vec![scan(10, vec![12, 15, 19])], 2, false);
        assert_eq!(positions(&page), [(0, 15), (0, 19)]);
        assert_eq!(page.before, BTreeMap::from([(0, 15)]));
        assert!(!page.oldest && !page.partial);

        let page = assemble(vec![scan(0, vec![3, 5])], 2, false);
        assert_eq!(positions(&page), [(0, 3), (0, 5)]);
        assert!(page.oldest);

        // The bound ran out with nothing found: an empty, partial page that moves back.
        let page = assemble(vec![scan(40, vec![])], 50, true);
        assert!(page.messages.is_empty() && page.partial && !page.oldest);
        assert_eq!(page.before, BTreeMap::from([(0, 40)]));
    }

    /// A model topic: per partition, the offsets of the room's records and their
    /// timestamps. Reading it page after page with any bound gives every record once, newest
    /// page first, each page in order per partition, and ends with `oldest`.
    fn page_through(
        partitions: &[Vec<(i64, bool)>],
        limit: usize,
        budget: i64,
        page_bytes: usize,
    ) -> Vec<Vec<(i32, i64)>> {
        let mut before: BTreeMap<i32, i64> = partitions
            .iter()
            .enumerate()
            .map(|(p, log)| (p as i32, log.len() as i64))
            .collect();
        let mut pages = Vec::new();
        for _ in 0..10_000 {
            let mut scans: Vec<Scan> = (0..partitions.len())
                .map(|p| Scan {
                    partition: p as i32,
                    low: 0,
                    from: before[&(p as i32)],
                    found: Vec::new(),
                    window: 2,
                })
                .collect();
            let (cut, _) = scan_back(
                &mut scans,
                limit,
                budget,
                page_bytes,
                |p, start, end, room| {
                    let log = &partitions[p as usize];
                    let mut kept = Kept::new(room);
                    for o in (start..end).filter(|&o| log[o as usize].1) {
                        kept.push(found(o, log[o as usize].0, p));
                    }
                    Ok(kept)
                },
            )
            .unwrap();
            let page = assemble(scans, limit, cut);
            pages.push(positions(&page));
            before = page.before.clone();
            if page.oldest {
                return pages;
            }
        }
        panic!("paging never reached the oldest record");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn paging_back_returns_every_record_once_newest_pages_first(
            partitions in prop::collection::vec(
                prop::collection::vec((0i64..50, prop::bool::weighted(0.3)), 0..60), 1..4),
            limit in 1usize..8,
            budget in 1i64..40,
            page_bytes in prop_oneof![Just(usize::MAX), 1usize..40],
        ) {
            // Timestamps rise with offsets within a partition, as producers' clocks do.
            let partitions: Vec<Vec<(i64, bool)>> = partitions
                .into_iter()
                .map(|log| {
                    let mut t = 0;
                    log.into_iter().map(|(step, room)| { t += step; (t, room) }).collect()
                })
                .collect();
            let pages = page_through(&partitions, limit, budget, page_bytes);
            let mut seen = BTreeSet::new();
            for page in &pages {
                prop_assert!(page.len() <= limit);
                for &(p, o) in page {
                    prop_assert!(seen.insert((p, o)), "{:?} twice", (p, o));
                }
                for p in 0..partitions.len() as i32 {
                    let offsets: Vec<i64> = page.iter().filter(|(q, _)| *q == p).map(|(_, o)| *o).collect();
                    prop_assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{:?}", page);
                }
            }
            // Newest pages first: within a partition, every page is older than the one before.
            for p in 0..partitions.len() as i32 {
                let order: Vec<i64> = pages.iter().flat_map(|page| {
                    let mut o: Vec<i64> = page.iter().filter(|(q, _)| *q == p).map(|(_, o)| *o).collect();
                    o.reverse();
                    o
                }).collect();
                prop_assert!(order.windows(2).all(|w| w[0] > w[1]), "partition {}: {:?}", p, pages);
            }
            // Across partitions, by timestamp: nothing on a page is older than anything on
            // the page after it.
            let stamp = |(p, o): (i32, i64)| partitions[p as usize][o as usize].0;
            for pair in pages.windows(2) {
                let oldest = pair[0].iter().map(|&r| stamp(r)).min();
                let newest = pair[1].iter().map(|&r| stamp(r)).max();
                if let (Some(oldest), Some(newest)) = (oldest, newest) {
                    prop_assert!(oldest >= newest, "{:?}", pages);
                }
            }
            let expected: BTreeSet<(i32, i64)> = partitions
                .iter()
                .enumerate()
                .flat_map(|(p, log)| log.iter().enumerate().filter(|(_, (_, room))| *room).map(move |(o, _)| (p as i32, o as i64)))
                .collect();
            prop_assert_eq!(seen, expected);
        }
    }
}
