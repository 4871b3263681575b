//! The seam between a replay and the live stream, and the replay's plan: which partitions
//! to read from where to where, and what is lost. Pure logic, tested without Kafka.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::protocol::{Lost, LostReason, Start};

/// Where a replay hands a subscription over to the live stream, decided per partition by
/// the replay (which reads Kafka) and the connection (which receives live records) under one
/// lock, so that no record falls between them.
///
/// Until the replay has planned, and then for each partition it still replays, a live
/// record is the replay's to deliver: the connection drops it and the replay's end moves
/// past it. The replay finishes a partition once it has read up to that end; from then on
/// the partition's live records are delivered (held only until the connection has written
/// the replay's last records, which are already on their way).
#[derive(Debug)]
pub struct Seam(Mutex<SeamState>);

#[derive(Debug)]
struct SeamState {
    /// The live stream's position per partition when the subscription joined.
    live: BTreeMap<i32, i64>,
    /// Per partition, one past the newest live record dropped for the replay.
    dropped: BTreeMap<i32, i64>,
    /// `None` until the replay has planned; then the partitions it still replays, each with
    /// the end it planned.
    replaying: Option<BTreeMap<i32, i64>>,
}

impl Seam {
    pub fn new(live: BTreeMap<i32, i64>) -> Self {
        Seam(Mutex::new(SeamState {
            live,
            dropped: BTreeMap::new(),
            replaying: None,
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SeamState> {
        self.0.lock().expect("seam lock")
    }

    /// For the connection: whether the live record at `offset` is left to the replay, which
    /// then delivers it.
    pub fn leave_to_replay(&self, partition: i32, offset: i64) -> bool {
        let mut state = self.state();
        if state
            .replaying
            .as_ref()
            .is_some_and(|replaying| !replaying.contains_key(&partition))
        {
            return false;
        }
        let end = state.dropped.entry(partition).or_insert(offset + 1);
        *end = (*end).max(offset + 1);
        true
    }

    /// Plans with what the live stream has left to the replay so far; from here on only the
    /// planned partitions take live records.
    pub(crate) fn plan(
        &self,
        plan: impl FnOnce(&BTreeMap<i32, i64>, &BTreeMap<i32, i64>) -> Plan,
    ) -> Plan {
        self.try_plan(|live, dropped| Some(plan(live, dropped)))
            .expect("a plan was made")
    }

    /// As `plan`, but a `None` from `plan` leaves the seam as it was, for another plan.
    pub(super) fn try_plan(
        &self,
        plan: impl FnOnce(&BTreeMap<i32, i64>, &BTreeMap<i32, i64>) -> Option<Plan>,
    ) -> Option<Plan> {
        let mut state = self.state();
        let plan = plan(&state.live, &state.dropped)?;
        state.replaying = Some(plan.ranges.iter().map(|(&p, &(_, end))| (p, end)).collect());
        Some(plan)
    }

    /// For the replay, which read the record at `offset`: whether to deliver it, and whether
    /// that finishes the partition.
    pub(crate) fn replayed(&self, partition: i32, offset: i64) -> (bool, bool) {
        let mut state = self.state();
        let dropped = state.dropped.get(&partition).copied();
        let replaying = state.replaying.as_mut().expect("planned");
        let Some(&planned) = replaying.get(&partition) else {
            return (false, false);
        };
        let end = dropped.map_or(planned, |d| d.max(planned));
        let finished = offset + 1 >= end;
        if finished {
            replaying.remove(&partition);
        }
        (offset < end, finished)
    }

    /// For the replay, which reached the end of the partition having read up to `read`
    /// (the next offset it would read): whether that finishes the partition. The planned end
    /// is behind it (the partition reached it before the replay began reading); a live
    /// record dropped since may not be.
    pub(crate) fn reached_end(&self, partition: i32, read: i64) -> bool {
        let mut state = self.state();
        let dropped = state.dropped.get(&partition).copied();
        let replaying = state.replaying.as_mut().expect("planned");
        let finished = replaying.contains_key(&partition) && dropped.is_none_or(|end| end <= read);
        if finished {
            replaying.remove(&partition);
        }
        finished
    }
}

/// Where each partition starts, which offsets are lost, and which ranges to replay.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    pub starts: BTreeMap<i32, i64>,
    pub lost: BTreeMap<i32, Lost>,
    /// `[start, end)` per partition.
    pub ranges: BTreeMap<i32, (i64, i64)>,
    /// Records Kafka holds from the requested start up to the live stream, whether or not
    /// the replay limit lets them all through.
    pub waiting: u64,
}

/// `watermarks` holds each partition's (low, high); `by_time` the first offset at or after
/// the requested timestamp, for partitions that have one; `live` where the live stream stood
/// when the subscription joined, and `dropped` one past the newest live record left to the
/// replay since (see [`Seam`]).
pub(crate) fn plan(
    from: &Start,
    watermarks: &BTreeMap<i32, (i64, i64)>,
    by_time: &BTreeMap<i32, i64>,
    live: &BTreeMap<i32, i64>,
    dropped: &BTreeMap<i32, i64>,
    max_records: i64,
) -> Plan {
    let mut plan = Plan::default();
    for (&partition, &(low, high)) in watermarks {
        let live = live.get(&partition).copied();
        // Where the live stream takes over: every record from there on reaches the socket.
        let seam = match (live, dropped.get(&partition).copied()) {
            (Some(live), Some(dropped)) => Some(live.max(dropped)),
            (live, dropped) => live.or(dropped),
        };
        let requested = match from {
            Start::Latest => live.unwrap_or(high),
            Start::Earliest => low,
            // No record at or after the timestamp when Kafka was asked: only what was
            // appended since is new enough.
            Start::Timestamp(_) => by_time.get(&partition).copied().unwrap_or(high),
            // A partition the client does not know was created after it last looked, so all
            // of it is new to the client.
            Start::Offsets(offsets) => offsets.get(&partition).copied().unwrap_or(low),
            Start::Committed(offsets) => offsets
                .get(&partition)
                .copied()
                .unwrap_or(live.unwrap_or(high)),
        };
        let end = seam.unwrap_or(high);
        plan.waiting += u64::try_from(end - requested.max(low)).unwrap_or(0);
        let mut start = requested;
        let mut reason = None;
        if start < low {
            start = low;
            reason = Some(LostReason::Retention);
        }
        if let Some(seam) = seam
            && start < seam
        {
            if seam - start > max_records {
                start = seam - max_records;
                reason = Some(LostReason::ReplayLimit);
            }
            plan.ranges.insert(partition, (start, seam));
        }
        if let Some(reason) = reason {
            let lost = Lost {
                from: requested,
                to: start,
                reason,
            };
            plan.lost.insert(partition, lost);
        }
        plan.starts.insert(partition, start);
    }
    plan
}
