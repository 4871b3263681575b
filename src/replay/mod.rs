//! Replays: a subscription that starts in the past reads its topic from where the client
//! asks up to where the hub's live stream took over, so a resumed client gets no gap and no
//! duplicate at the seam.
//!
//! The seam starts at the live position the subscription read right after joining the
//! registry (see `LivePositions`): the live stream delivers every record at or past it, so
//! the replay covers `[start, live)` per partition. Live records of a partition that arrive
//! while its replay runs are not held: the connection drops them and the replay, which
//! reads the same partition, goes on past them (see [`Seam`]). A socket resuming into a busy
//! topic therefore holds nothing more than a socket that is up to date, however long its
//! replay takes, and it catches up as fast as Kafka serves the replay.
//!
//! A replay that starts within the records the hub keeps in memory (see `recent`), as a
//! socket that was away for a moment does, is served from there. Any other reads with a
//! short-lived Kafka client of its own, on a blocking thread, with no consumer group; the
//! shared consumer never waits for it. A semaphore bounds how many of those run at once.

mod reader;
pub(crate) mod seam;

use self::reader::{from_recent, replay};
pub(crate) use self::seam::Plan;
pub use seam::Seam;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use crate::config::LimitsConfig;
use crate::kafka::Clients;
use crate::kafka::KafkaLog;
use crate::kafka_settings::Side;
use crate::metrics;
use crate::protocol::{ErrorCode, Lost, Start};
use crate::recent::Recent;
use crate::registry::{Delivery, Filter};
use crate::store::StoreError;
use crate::store::commits::Commits;

/// Bound on each metadata or ListOffsets round trip.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// A replay that receives nothing from Kafka for this long gives up.
const STALL_TIMEOUT: Duration = Duration::from_secs(15);
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// What a replay reports to its connection, in this order: `Started` once, then `Record`s
/// and one `Done` per replayed partition; or `Failed` at any point, which ends it.
#[derive(Debug)]
pub enum Event {
    Started {
        /// The next offset the socket gets from each partition.
        starts: BTreeMap<i32, i64>,
        lost: BTreeMap<i32, Lost>,
        /// Unread records, for a `committed` start without a filter.
        waiting: Option<u64>,
        /// Partitions with records to replay; the others are served live from the start.
        replaying: BTreeSet<i32>,
    },
    Record(Arc<Delivery>),
    Done(i32),
    Failed(ReplayError),
}

/// An event of the replay for one subscription; `generation` tells a replaced subscription's
/// leftovers apart.
#[derive(Debug)]
pub struct Report {
    pub topic: Arc<str>,
    /// The key the subscription follows; none: the whole topic.
    pub key: Option<Arc<str>>,
    /// A record's room in its replay's `Window`, to drop once the record is written.
    pub room: Option<OwnedSemaphorePermit>,
    pub generation: u64,
    pub event: Event,
}

pub struct Request {
    pub topic: Arc<str>,
    pub key: Option<Arc<str>>,
    pub generation: u64,
    pub from: Start,
    /// Whose read positions a `committed` start reads, and under which key (see
    /// `Store::commit`).
    pub user: String,
    pub positions_key: String,
    /// Shared with the connection, which hands it the live records the replay covers.
    pub seam: Arc<Seam>,
    pub filter: Arc<Filter>,
    /// The socket's share of the readers, taken before one of the hub's.
    pub share: Arc<Semaphore>,
}

impl Request {
    fn report(&self, event: Event) -> Box<Report> {
        Box::new(Report {
            topic: self.topic.clone(),
            key: self.key.clone(),
            room: None,
            generation: self.generation,
            event,
        })
    }

    /// The first event, once `plan` is made; it counts the unread records (`waiting`) for a
    /// start from the stored positions without a filter only.
    fn started(&self, plan: Plan) -> Event {
        let counted = matches!(self.from, Start::Committed(_)) && self.filter.is_empty();
        Event::Started {
            replaying: plan.ranges.keys().copied().collect(),
            starts: plan.starts,
            lost: plan.lost,
            waiting: counted.then_some(plan.waiting),
        }
    }
}

/// The bytes of one replay's records on their way to its socket (sent, not yet written):
/// a record takes room for its cost before it is sent, and the connection gives the room
/// back once it has written the record. A slow socket's replay waits; Kafka's client
/// prefetches no more than a window ahead either (see `Replayer::new`).
#[derive(Clone)]
struct Window {
    room: Arc<Semaphore>,
    size: usize,
}

impl Window {
    fn new(size: usize) -> Self {
        let size = size.clamp(1, Semaphore::MAX_PERMITS);
        Window {
            room: Arc::new(Semaphore::new(size)),
            size,
        }
    }

    /// Room for a record of `cost` bytes; one larger than the window takes all of it.
    async fn take(&self, cost: usize) -> OwnedSemaphorePermit {
        let wanted = u32::try_from(cost.min(self.size)).unwrap_or(u32::MAX);
        self.room
            .clone()
            .acquire_many_owned(wanted)
            .await
            .expect("the window is never closed")
    }

    /// The bytes of records sent and not yet written.
    fn held(&self) -> usize {
        self.size - self.room.available_permits()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("topic {0:?} does not exist")]
    NoTopic(String),
    #[error("Kafka deleted records the replay still needed: {0}")]
    OutOfRange(KafkaError),
    #[error("Kafka did not answer the replay: {0}")]
    Kafka(KafkaError),
    #[error("Kafka sent nothing for the replay in {STALL_TIMEOUT:?}")]
    Stalled,
    #[error("the live stream ran too far ahead of the replay")]
    Overtaken,
    #[error("the replay failed unexpectedly")]
    Crashed,
    #[error("cannot read the stored read positions: {0}")]
    Store(#[from] StoreError),
}

impl ReplayError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ReplayError::NoTopic(_) => ErrorCode::UnknownTopic,
            ReplayError::OutOfRange(_)
            | ReplayError::Kafka(_)
            | ReplayError::Stalled
            | ReplayError::Overtaken => ErrorCode::Unavailable,
            ReplayError::Crashed => ErrorCode::Internal,
            ReplayError::Store(_) => ErrorCode::Unavailable,
        }
    }
}

pub struct Replayer {
    client: ClientConfig,
    permits: Arc<Semaphore>,
    /// Each replay's `Window`.
    window: usize,
    /// The windows of replays running, for the bytes they hold in /metrics.
    windows: Arc<Mutex<Vec<Window>>>,
    max_records: i64,
    commits: Arc<Commits>,
    recent: Recent,
    /// The hub's tasks: shutdown waits for replays before it closes the store.
    tasks: TaskTracker,
    log: KafkaLog,
}

impl Replayer {
    pub fn new(
        clients: &Clients,
        limits: &LimitsConfig,
        commits: Arc<Commits>,
        recent: Recent,
        tasks: TaskTracker,
    ) -> Self {
        let mut client = clients.reader("replay");
        let concurrent = limits.max_concurrent_replays.get();
        let window = limits.memory_budget.replay_window(concurrent);
        // librdkafka prefetches up to 64 MB and fetches up to 50 MB at once by default:
        // 16 replays of large records would hold 1.8 GB before a socket saw any.
        let prefetch = limits.memory_budget.replay_prefetch(concurrent);
        client.set("queued.max.messages.kbytes", (prefetch / 1024).to_string());
        client.set("fetch.max.bytes", prefetch.to_string());
        client.set("max.partition.fetch.bytes", prefetch.to_string());
        // Defaults: the operator's consumer properties still win, as for the live consumer.
        clients.operators(&mut client, Side::Consumer);
        Replayer {
            client,
            permits: Arc::new(Semaphore::new(concurrent)),
            window,
            windows: Arc::default(),
            max_records: i64::from(limits.max_replay),
            commits,
            recent,
            tasks,
            log: clients.log().clone(),
        }
    }

    /// Starts the replay; dropping the guard stops it.
    pub fn spawn(&self, mut request: Request, events: mpsc::Sender<Box<Report>>) -> DropGuard {
        let cancel = CancellationToken::new();
        let guard = cancel.clone().drop_guard();
        let (client, permits, max) = (self.client.clone(), self.permits.clone(), self.max_records);
        let log = self.log.clone();
        let (commits, recent) = (self.commits.clone(), self.recent.clone());
        let window = Window::new(self.window);
        let windows = self.windows.clone();
        windows.lock().expect("replay windows").push(window.clone());
        self.tasks.spawn(async move {
            let _forget = Forget(windows, window.room.clone());
            let sender = events.clone();
            if let Start::Committed(offsets) = &mut request.from {
                let stored = commits
                    .committed(&request.user, &request.topic, &request.positions_key)
                    .await;
                match stored {
                    Ok(stored) => *offsets = stored,
                    Err(e) => {
                        let _ = sender.send(request.report(Event::Failed(e.into()))).await;
                        return;
                    }
                }
            }
            let request = Arc::new(request);
            let served = tokio::select! {
                _ = cancel.cancelled() => return,
                served = from_recent(&recent, &request, max, &sender, &window) => served,
            };
            match served {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => {
                    let _ = sender.send(request.report(Event::Failed(e))).await;
                    return;
                }
            }
            metrics::replay("kafka");
            let permit = tokio::select! {
                _ = cancel.cancelled() => return,
                permits = async {
                    let share = request.share.clone().acquire_owned().await;
                    let hub = permits.acquire_owned().await;
                    (share, hub)
                } => permits,
            };
            let runtime = tokio::runtime::Handle::current();
            let ran = tokio::task::spawn_blocking({
                let request = request.clone();
                move || {
                    let _permit = permit;
                    let send = |event| {
                        let mut report = request.report(event);
                        if let Event::Record(record) = &report.event {
                            let room = runtime.block_on(async {
                                tokio::select! {
                                    _ = cancel.cancelled() => None,
                                    room = window.take(record.cost()) => Some(room),
                                }
                            });
                            let Some(room) = room else { return false };
                            report.room = Some(room);
                        }
                        events.blocking_send(report).is_ok()
                    };
                    if let Err(e) = replay(&client, &log, &request, max, &send, &cancel) {
                        send(Event::Failed(e));
                    }
                }
            })
            .await;
            if ran.is_err() {
                tracing::error!(topic = %request.topic, "a replay panicked");
                let crashed = request.report(Event::Failed(ReplayError::Crashed));
                let _ = sender.send(crashed).await;
            }
        });
        guard
    }

    /// The bytes of replayed records on their way to sockets.
    pub fn held(&self) -> usize {
        let windows = self.windows.lock().expect("replay windows");
        windows.iter().map(Window::held).sum()
    }
}

/// Takes a replay's window off the list when the replay ends.
struct Forget(Arc<Mutex<Vec<Window>>>, Arc<Semaphore>);

impl Drop for Forget {
    fn drop(&mut self) {
        let mut windows = self.0.lock().expect("replay windows");
        windows.retain(|w| !Arc::ptr_eq(&w.room, &self.1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::LostReason;
    use crate::replay::seam::plan;

    fn marks(m: &[(i32, i64, i64)]) -> BTreeMap<i32, (i64, i64)> {
        m.iter().map(|&(p, low, high)| (p, (low, high))).collect()
    }

    fn map(m: &[(i32, i64)]) -> BTreeMap<i32, i64> {
        m.iter().copied().collect()
    }

    #[test]
    fn offsets_replay_up_to_the_live_position_and_no_further() {
        let plan = plan(
            &Start::Offsets(map(&[(0, 43), (1, 17)])),
            &marks(&[(0, 0, 60), (1, 0, 20)]),
            &BTreeMap::new(),
            &map(&[(0, 50), (1, 17)]),
            &BTreeMap::new(),
            1000,
        );
        assert_eq!(plan.starts, map(&[(0, 43), (1, 17)]));
        assert_eq!(plan.ranges, BTreeMap::from([(0, (43, 50))]));
        assert!(plan.lost.is_empty());
    }

    #[test]
    fn a_client_ahead_of_this_hub_replays_nothing_and_skips_what_it_has() {
        let plan = plan(
            &Start::Offsets(map(&[(0, 70)])),
            &marks(&[(0, 0, 80)]),
            &BTreeMap::new(),
            &map(&[(0, 50)]),
            &BTreeMap::new(),
            1000,
        );
        assert_eq!(plan.starts, map(&[(0, 70)]));
        assert!(plan.ranges.is_empty() && plan.lost.is_empty());
    }

    #[test]
    fn offsets_older_than_retention_are_reported_lost() {
        let plan = plan(
            &Start::Offsets(map(&[(0, 10)])),
            &marks(&[(0, 25, 60)]),
            &BTreeMap::new(),
            &map(&[(0, 60)]),
            &BTreeMap::new(),
            1000,
        );
        assert_eq!(plan.starts, map(&[(0, 25)]));
        assert_eq!(plan.ranges, BTreeMap::from([(0, (25, 60))]));
        assert_eq!(
            plan.lost[&0],
            Lost {
                from: 10,
                to: 25,
                reason: LostReason::Retention
            }
        );
    }

    #[test]
    fn the_replay_bound_keeps_the_newest_records_and_reports_the_rest() {
        let plan = plan(
            &Start::Earliest,
            &marks(&[(0, 0, 5000), (1, 0, 10)]),
            &BTreeMap::new(),
            &map(&[(0, 5000), (1, 10)]),
            &BTreeMap::new(),
            100,
        );
        assert_eq!(plan.starts, map(&[(0, 4900), (1, 0)]));
        assert_eq!(
            plan.ranges,
            BTreeMap::from([(0, (4900, 5000)), (1, (0, 10))])
        );
        assert_eq!(
            plan.lost[&0],
            Lost {
                from: 0,
                to: 4900,
                reason: LostReason::ReplayLimit
            }
        );
        assert!(!plan.lost.contains_key(&1));
    }

    #[test]
    fn partitions_the_live_stream_has_not_reached_are_served_live() {
        // Partition 1 was created after the hub started: live delivers it from its first
        // record, so a replay would only duplicate; the start still filters what is older.
        let plan = plan(
            &Start::Offsets(map(&[(0, 3), (1, 4)])),
            &marks(&[(0, 0, 9), (1, 0, 9)]),
            &BTreeMap::new(),
            &map(&[(0, 9)]),
            &BTreeMap::new(),
            1000,
        );
        assert_eq!(plan.starts, map(&[(0, 3), (1, 4)]));
        assert_eq!(plan.ranges, BTreeMap::from([(0, (3, 9))]));
    }

    #[test]
    fn unlisted_partitions_start_at_their_oldest_record() {
        let plan = plan(
            &Start::Offsets(map(&[(0, 5)])),
            &marks(&[(0, 0, 9), (1, 2, 9)]),
            &BTreeMap::new(),
            &map(&[(0, 9), (1, 9)]),
            &BTreeMap::new(),
            1000,
        );
        assert_eq!(plan.starts, map(&[(0, 5), (1, 2)]));
        assert!(plan.lost.is_empty());
    }

    #[test]
    fn committed_positions_count_what_waits_and_uncommitted_partitions_start_live() {
        let plan = plan(
            &Start::Committed(map(&[(0, 5), (1, 1)])),
            &marks(&[(0, 0, 9), (1, 3, 9), (2, 0, 9)]),
            &BTreeMap::new(),
            &map(&[(0, 9), (1, 9), (2, 9)]),
            &BTreeMap::new(),
            1000,
        );
        assert_eq!(plan.starts, map(&[(0, 5), (1, 3), (2, 9)]));
        assert_eq!(plan.ranges, BTreeMap::from([(0, (5, 9)), (1, (3, 9))]));
        // 4 on partition 0; on partition 1 only the 6 Kafka still holds.
        assert_eq!(plan.waiting, 10);
        assert_eq!(plan.lost[&1].reason, LostReason::Retention);
    }

    #[test]
    fn timestamps_start_at_the_first_record_at_or_after_them() {
        let plan = plan(
            &Start::Timestamp(1_000),
            &marks(&[(0, 0, 9), (1, 0, 9)]),
            &map(&[(0, 4)]),
            &map(&[(0, 9), (1, 9)]),
            &BTreeMap::new(),
            1000,
        );
        assert_eq!(plan.starts, map(&[(0, 4), (1, 9)]));
        assert_eq!(plan.ranges, BTreeMap::from([(0, (4, 9))]));
    }

    #[test]
    fn live_records_dropped_before_the_plan_extend_what_it_replays() {
        // Partition 0 stood at 50 when the subscription joined and 60..=69 arrived live
        // since; partition 1 had no live position and its first records, 0..=4, arrived.
        let plan = plan(
            &Start::Offsets(map(&[(0, 40), (1, 0)])),
            &marks(&[(0, 0, 70), (1, 0, 5)]),
            &BTreeMap::new(),
            &map(&[(0, 50)]),
            &map(&[(0, 70), (1, 5)]),
            1000,
        );
        assert_eq!(plan.ranges, BTreeMap::from([(0, (40, 70)), (1, (0, 5))]));
        assert_eq!(plan.starts, map(&[(0, 40), (1, 0)]));
    }

    /// The seam for one partition that stood at `live` when the subscription joined.
    fn planned_seam(live: i64, start: i64, dropped_first: &[i64]) -> Seam {
        let seam = Seam::new(map(&[(0, live)]));
        for &offset in dropped_first {
            assert!(
                seam.leave_to_replay(0, offset),
                "before the plan, every record"
            );
        }
        seam.plan(|live, dropped| {
            plan(
                &Start::Offsets(map(&[(0, start)])),
                &marks(&[(0, 0, 1000)]),
                &BTreeMap::new(),
                live,
                dropped,
                1000,
            )
        });
        seam
    }

    #[test]
    fn a_replayed_partition_takes_the_live_records_until_the_replay_has_read_past_them() {
        let seam = planned_seam(10, 5, &[10, 11]);
        for offset in 5..11 {
            assert_eq!(seam.replayed(0, offset), (true, false), "offset {offset}");
        }
        // Two more arrive live while the replay reads: it goes on to them.
        assert!(seam.leave_to_replay(0, 12));
        assert!(seam.leave_to_replay(0, 13));
        assert_eq!(seam.replayed(0, 11), (true, false));
        assert_eq!(seam.replayed(0, 12), (true, false));
        assert_eq!(seam.replayed(0, 13), (true, true));
        // Finished: the next live record is the live stream's to deliver.
        assert!(!seam.leave_to_replay(0, 14));
        assert_eq!(seam.replayed(0, 14), (false, false));
    }

    #[test]
    fn a_replay_that_reads_past_its_end_delivers_only_what_the_live_stream_will_not() {
        let seam = planned_seam(10, 5, &[]);
        for offset in 5..9 {
            assert_eq!(seam.replayed(0, offset), (true, false));
        }
        // Offset 9 was removed by compaction: the replay's next record is past the seam,
        // and the live stream delivers it.
        assert_eq!(seam.replayed(0, 10), (false, true));
        assert!(!seam.leave_to_replay(0, 10));
    }

    #[test]
    fn the_end_of_the_partition_finishes_a_replay_unless_a_later_live_record_was_left_to_it() {
        // The planned end is behind the end of the partition: reaching it is enough, even
        // where the last offsets hold no record the consumer returns (transaction markers).
        let seam = planned_seam(10, 5, &[]);
        assert_eq!(seam.replayed(0, 8), (true, false));
        assert!(seam.reached_end(0, 9));
        assert!(!seam.leave_to_replay(0, 10));

        // A live record left to the replay after it last fetched is not behind it yet.
        let seam = planned_seam(10, 5, &[]);
        assert_eq!(seam.replayed(0, 8), (true, false));
        assert!(seam.leave_to_replay(0, 10));
        assert!(!seam.reached_end(0, 9));
        assert_eq!(seam.replayed(0, 9), (true, false));
        assert_eq!(seam.replayed(0, 10), (true, true));
    }

    #[test]
    fn partitions_the_plan_does_not_replay_are_left_to_the_live_stream() {
        let seam = Seam::new(map(&[(0, 10), (1, 10)]));
        seam.plan(|live, dropped| {
            plan(
                &Start::Offsets(map(&[(0, 5), (1, 10)])),
                &marks(&[(0, 0, 10), (1, 0, 10)]),
                &BTreeMap::new(),
                live,
                dropped,
                1000,
            )
        });
        assert!(!seam.leave_to_replay(1, 10));
        assert!(seam.leave_to_replay(0, 10));
    }
}
