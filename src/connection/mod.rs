//! One task per socket: it reads requests, writes replies and records, and ends the
//! connection for the reasons `docs/protocol.md` lists, each with its close code.
//!
//! Publishes are not awaited one by one: each becomes a future in `in_flight`, answered when
//! Kafka acknowledges it, so a client can pipeline. When the hub stops, the loop stops
//! reading but still answers every publish it took before closing with 1001.
//!
//! Every subscription remembers the next offset it delivers per partition. That one map
//! drops what was already delivered (at a replay's seam, or after a resubscribe), and it is
//! what `lagged` hands to a client that fell behind, so its next connection resumes exactly.

mod auth;
mod history;
mod open;
mod presence;
mod publish;
mod push;
mod requests;
mod subscribe;
mod write;

use self::presence::RosterWrites;
use self::subscribe::leave;
use self::write::write_all;

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::FuturesUnordered;
use futures_util::{Sink, Stream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::auth::Session;
use crate::budget::Budgets;
use crate::clock::{instant_at, unix_millis};
use crate::heartbeat::{Beat, Heartbeat};
use crate::hub::{Admission, Hub, Registration, Seat};
use crate::metrics;
use crate::presence::DisconnectReason;
use crate::protocol::{ErrorCode, Refused, Reply, RequestId, close, cursor};
use crate::registry::{ConnId, Outbound, Queued};
use crate::replay::Report;
use crate::stop::{Stop, StopReason};
use crate::store::OpenSession;
use crate::subscription::{Failed, Outgoing, Subscriptions};

/// Reports taken from a replay before one flush: many frames per syscall under load.
const REPORT_BATCH: usize = 64;
/// How long to wait for the client's reply to our close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// History pages and Kafka replays one socket may have running at once, each also taking one
/// of the hub's (`WSKAFKA_MAX_CONCURRENT_HISTORY`, `WSKAFKA_MAX_CONCURRENT_REPLAYS`): the
/// rest wait their turn behind this socket's own, never in front of other sockets'.
const SHARE: usize = 2;
/// Replay records a connection holds before the replay waits for it.
const REPLAY_QUEUE: usize = 64;
/// What a connection talks over: axum's `WebSocket`, an SSE stream with requests over
/// `POST` (see `server::sse`), or in tests a pair of channels (as in axum's
/// `testing-websockets` example).
pub trait Socket:
    Sink<Message, Error = axum::Error> + Stream<Item = Result<Message, axum::Error>> + Unpin + Send
{
    /// Whether what it writes carries where a new connection takes every subscription up
    /// (an SSE stream's event id, which a reopened stream sends back).
    fn resumable(&self) -> bool {
        false
    }

    /// The resume cursor after the frames fed until the next flush (see `protocol::cursor`).
    fn resume_at(&mut self, _cursor: String) {}
}

impl Socket for axum::extract::ws::WebSocket {}

/// What a socket is let in with, kept together behind one pointer: the task that serves
/// the socket keeps its arguments, and the upgrade's callback that made it, for as long as
/// the socket lives, and what is in here is moved out once it is open.
pub struct Opening {
    pub hub: Arc<Hub>,
    pub admission: Admission,
    /// Its permit under the hub's cap on sockets.
    pub open: OwnedSemaphorePermit,
    /// What the admin view lists it as.
    pub transport: &'static str,
}

/// Serves one socket until it ends.
///
/// Not an `async fn`: those keep their arguments twice in the future, once as arguments and
/// once as locals, and this future lives as long as the socket. For the same reason opening
/// the socket is boxed: a future keeps room for the largest thing it ever awaits for as
/// long as it lives, and what opening awaits (the `auth` frame, the token's check, the
/// session written for presence) is over once the socket is served.
#[allow(clippy::manual_async_fn)]
pub fn run(opening: Box<Opening>, mut socket: impl Socket) -> impl Future<Output = ()> + Send {
    async move {
        let Some((mut connection, frames, span)) = Box::pin(open(opening, &mut socket)).await
        else {
            return;
        };
        connection
            .serve(&mut socket, &frames)
            .instrument(span)
            .await;
    }
}

/// `Connection::open` in the connection's span, which comes back with it: made here rather
/// than in `run`, whose future would keep room for it twice.
async fn open(
    opening: Box<Opening>,
    socket: &mut impl Socket,
) -> Option<(Connection, flume::Receiver<Outbound>, tracing::Span)> {
    let id = opening.hub.next_conn_id();
    let span = tracing::info_span!("conn", id, sub = tracing::field::Empty);
    let (connection, frames) = Connection::open(opening, socket, id)
        .instrument(span.clone())
        .await?;
    Some((connection, frames, span))
}

fn closing(code: u16, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }
}

/// Why a connection ended, and so which close frame it gets.
#[derive(Debug)]
enum Ending {
    ClientClosed,
    Broken,
    GoingAway,
    TokenExpired,
    Revoked,
    Lagged,
    Unresponsive,
    Abusive,
}

impl From<StopReason> for Ending {
    fn from(reason: StopReason) -> Self {
        match reason {
            StopReason::GoingAway => Ending::GoingAway,
            StopReason::Revoked => Ending::Revoked,
            StopReason::Lagged => Ending::Lagged,
        }
    }
}

impl Ending {
    fn disconnect_reason(&self) -> DisconnectReason {
        match self {
            Ending::ClientClosed => DisconnectReason::Closed,
            Ending::Broken => DisconnectReason::Broken,
            Ending::GoingAway => DisconnectReason::GoingAway,
            Ending::TokenExpired => DisconnectReason::TokenExpired,
            Ending::Revoked => DisconnectReason::Revoked,
            Ending::Lagged => DisconnectReason::Lagged,
            Ending::Unresponsive => DisconnectReason::Unresponsive,
            Ending::Abusive => DisconnectReason::PolicyViolation,
        }
    }

    fn close_frame(&self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            Ending::ClientClosed | Ending::Broken => return None,
            Ending::GoingAway => (close::GOING_AWAY, "going away"),
            Ending::TokenExpired => (close::TOKEN_EXPIRED, "token expired"),
            Ending::Revoked => (close::AUTH_FAILED, "token revoked"),
            Ending::Lagged => (close::LAGGED, "lagged"),
            Ending::Unresponsive => (close::UNRESPONSIVE, "no answer to ping"),
            Ending::Abusive => (close::POLICY_VIOLATION, "too many requests"),
        };
        Some(closing(code, reason))
    }
}

struct Connection {
    hub: Arc<Hub>,
    id: ConnId,
    session: Session,
    /// The session's user, shared by the socket's subscriptions in the registry.
    user: Arc<str>,
    /// This socket's queue, shared by all its subscriptions in the registry.
    queue: flume::Sender<Outbound>,
    /// The bytes of the records queued for it and not yet written.
    queued: Arc<Queued>,
    /// The bytes of the records taken from the queue this turn, no longer counted once the
    /// turn's frames are written.
    taken: usize,
    /// Replayed records' room in their replay's window (see `replay::Window`), given back
    /// once the turn's frames are written.
    replayed: Vec<OwnedSemaphorePermit>,
    subscriptions: Subscriptions,
    /// What it may still ask, per request type (see `budget`).
    budgets: Budgets,
    /// It went on past its budget after being told to wait: closed with 1008.
    abusive: bool,
    /// How many of the hub's history readers and Kafka replays it may hold at once.
    share: Arc<Semaphore>,
    /// It committed read positions, which its close asks to be written at once.
    committed_any: bool,
    /// What the roster was last told of its rooms, and when.
    roster: RosterWrites,
    /// Users whose online status this socket is told of.
    watching: Vec<String>,
    /// Where its replays report, made with the first replay and dropped once none runs:
    /// a channel costs about 800 bytes from the start, most sockets replay only as they
    /// subscribe or never, and an idle socket's memory is what a hub of many pays. The
    /// reports are boxed because tokio allocates a channel's first block of 32 slots up
    /// front.
    replays: Option<Replays>,
    /// Frames to write at the end of this turn of the loop.
    out: Vec<Outgoing>,
    stop: Stop,
    /// The session behind presence events, when they are on.
    presence: Option<OpenSession>,
    /// Why the connection ended, for its `disconnect` presence event.
    ended: DisconnectReason,
    /// A request naming a topic the hub has to ask Kafka about first.
    held: Option<Box<Held>>,
    /// The request being handled again waited for its topic's live positions.
    positions_waited: bool,
    /// What it talks over, for its metrics.
    transport: metrics::Transport,
    /// Its writes carry a resume cursor (SSE), last this many bytes long.
    resumable: bool,
    resume_len: usize,
    /// Cancelled when the socket ends: resends still waiting are dropped unwritten. Made
    /// at the first resend.
    abandon: Option<CancellationToken>,
    _seat: Seat,
    /// Its permit under the hub's cap on sockets.
    _open: OwnedSemaphorePermit,
    /// Keeps it in the hub's listing: dropped after the rest of it.
    _registration: Registration,
}

/// A request handled again once the hub's list of topics is refreshed, or a subscribe once
/// its topic's live positions are resolved. Nothing else is read from the socket meanwhile,
/// so requests are still handled in the order they came.
struct Held {
    text: Box<str>,
    /// Done once what it waits for is known.
    ready: BoxFuture<'static, ()>,
    /// It waited for live positions: handled again, it does not wait for them twice.
    positions: bool,
}

/// What a request awaited in the background comes back as.
enum Answer {
    Reply(Reply),
    /// A refreshed token that verified and is not revoked; boxed, as the answers waited for
    /// are held in every socket's task.
    Refreshed(Option<RequestId>, Box<Session>),
}

type Pending = BoxFuture<'static, Answer>;

/// The answers a socket awaits, made with the first: a `FuturesUnordered` allocates its
/// ready queue when made, and most sockets never ask for anything answered later.
#[derive(Default)]
struct InFlight(Option<FuturesUnordered<Pending>>);

impl InFlight {
    fn push(&mut self, pending: Pending) {
        self.0
            .get_or_insert_with(FuturesUnordered::new)
            .push(pending);
    }

    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, FuturesUnordered::len)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Stream for InFlight {
    type Item = Answer;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Answer>> {
        match &mut self.0 {
            Some(pending) => pending.poll_next_unpin(cx),
            None => Poll::Ready(None),
        }
    }
}

/// What a request's handler comes back with; a refusal is its `Err`, written by `handle`
/// (see `requests`) like any answer.
enum Answered {
    /// The answer, at once.
    Now(Reply),
    /// Work whose answer comes later, off the socket's task (a publish, a history page).
    Later(Pending),
    /// Nothing to say now: a replay says `subscribed` once it starts, a signal is answered
    /// only when refused, a held request once the topics are known.
    Nothing,
}

type Handled = Result<Answered, Refused>;

impl Drop for Connection {
    fn drop(&mut self) {
        metrics::connection_closed(self.transport);
        if self.committed_any {
            self.hub.commits.write_soon();
        }
        for (topic, _, filter) in self.subscriptions.iter() {
            leave(&self.hub, self.id, topic, filter);
        }
        // Out of the registry, so nothing is counted for it any more.
        self.hub.registry.written(&self.queued, self.queued.bytes());
        if let Some(roster) = &self.hub.roster {
            for user in &self.watching {
                roster.unwatch(self.id, user);
            }
        }
        if let (Some(presence), Some(open)) = (&self.hub.presence, self.presence.take()) {
            let mut topics: Vec<&str> = self.subscriptions.iter().map(|(t, _, _)| t).collect();
            topics.sort_unstable();
            topics.dedup();
            presence.disconnected(open, &topics, self.ended);
        }
    }
}

/// The channel a connection's replays report through (see `Connection::replays`).
struct Replays {
    sender: mpsc::Sender<Box<Report>>,
    events: mpsc::Receiver<Box<Report>>,
}

impl Replays {
    /// A replay holds a sender, or left reports behind.
    fn running(&self) -> bool {
        self.sender.strong_count() > 1 || !self.events.is_empty()
    }

    /// Not polled without a channel: see the `select!` in `serve`.
    async fn next(replays: &mut Option<Replays>) -> Option<Box<Report>> {
        replays.as_mut()?.events.recv().await
    }
}

impl Connection {
    /// Where a new replay reports.
    fn replay_sender(&mut self) -> mpsc::Sender<Box<Report>> {
        let replays = self.replays.get_or_insert_with(|| {
            let (sender, events) = mpsc::channel(REPLAY_QUEUE);
            Replays { sender, events }
        });
        replays.sender.clone()
    }

    /// Everything it works on is borrowed from `run`, so that a connection's state is held
    /// once rather than copied into each nested future, and settings are read where used
    /// rather than copied into locals: at tens of thousands of sockets, every byte of this
    /// future counts. Not an `async fn`, for the reason `run` is not.
    #[allow(clippy::manual_async_fn)]
    fn serve(
        &mut self,
        socket: &mut impl Socket,
        frames: &flume::Receiver<Outbound>,
    ) -> impl Future<Output = ()> {
        async move {
            tracing::debug!("connected");
            let mut in_flight = InFlight::default();
            // Its own future, over when the socket's turns are: the timers and the queue's
            // stream take no room while the socket closes.
            let ending = self.turns(socket, frames, &mut in_flight).await;
            tracing::debug!(?ending, "closing");
            self.ended = ending.disconnect_reason();
            if let Some(abandon) = &self.abandon {
                abandon.cancel();
            }

            // Every publish taken gets its answer while the socket can still carry it.
            let writable = !matches!(ending, Ending::ClientClosed | Ending::Broken);
            if matches!(ending, Ending::Lagged) {
                metrics::lagged();
                // After what was already taken off the queue (and counted in the positions);
                // what is still queued is dropped, and the positions say where it starts.
                self.reply(self.subscriptions.lagged());
            }
            while let Some(answer) = in_flight.next().await {
                self.answer(answer);
            }
            if writable {
                let _ = write_all(
                    socket,
                    &mut self.out,
                    false,
                    &self.hub.metrics,
                    self.hub.config.server.write_timeout,
                )
                .await;
            }
            if let Some(frame) = ending.close_frame() {
                let _ = tokio::time::timeout(
                    self.hub.config.server.write_timeout,
                    socket.send(Message::Close(Some(frame))),
                )
                .await;
                // Wait for the client's close frame so the TCP connection ends cleanly.
                let _ = tokio::time::timeout(CLOSE_GRACE, async {
                    while let Some(Ok(_)) = socket.next().await {}
                })
                .await;
            } else {
                // Flushes tungstenite's reply to a client's close frame.
                let _ = tokio::time::timeout(self.hub.config.server.write_timeout, socket.close())
                    .await;
            }
        }
    }

    /// The socket's life: each turn waits for whatever comes first, then writes what it
    /// brought.
    #[allow(clippy::manual_async_fn)]
    fn turns(
        &mut self,
        socket: &mut impl Socket,
        frames: &flume::Receiver<Outbound>,
        in_flight: &mut InFlight,
    ) -> impl Future<Output = Ending> {
        async move {
            // Kept across turns: its waker stays registered with the queue, where a receive
            // made on each turn would register one and take it back.
            let mut live = frames.stream();
            let config = &self.hub.config;
            let mut heartbeat = Heartbeat::new(
                self.id,
                config.server.ping_interval,
                config.server.pong_timeout,
                Instant::now(),
            );
            // The heartbeat's deadline has passed; it is judged once nothing else is ready.
            let mut beat_due = false;
            // One timer for whatever is due next: the token's warning, then its expiry; the
            // socket's next roster write; the heartbeat's deadline. A timer takes 112 bytes of
            // the socket's task for as long as the socket lives.
            let timer =
                tokio::time::sleep_until(self.next_due(false, beat_at(&heartbeat, beat_due)));
            tokio::pin!(timer);
            let mut warned = false;
            let mut ping = false;
            let mut expires_at = self.session.expires_at;

            loop {
                tokio::select! {
                    biased;
                    reason = poll_fn(|cx| self.stop.poll_stopped(cx)) => break reason.into(),
                    _ = &mut timer => {
                        let now = Instant::now();
                        if self.roster.due.is_some_and(|due| due <= now) {
                            self.write_rooms(now);
                        }
                        if beat_at(&heartbeat, beat_due).is_some_and(|at| at <= now) {
                            beat_due = true;
                        }
                        // By the wall clock, which the token's expiry is on: the timer may
                        // have come for something else.
                        let wall = SystemTime::now();
                        if wall >= self.session.expires_at {
                            break Ending::TokenExpired;
                        }
                        if !warned && wall + self.hub.config.server.expiry_warning >= self.session.expires_at {
                            warned = true;
                            let expires_at = unix_millis(self.session.expires_at);
                            self.reply(Reply::Expiring { expires_at });
                        }
                        timer.as_mut().reset(self.next_due(warned, beat_at(&heartbeat, beat_due)));
                    }
                    // Not polled while empty: that poll would only register a waker, per record.
                    Some(answer) = in_flight.next(), if !in_flight.is_empty() => {
                        self.answer(answer);
                        // Acks come from Kafka in batches: the ones already there share this
                        // write. (The next turn's `select!` registers the real waker again.)
                        while let Some(Some(answer)) = in_flight.next().now_or_never() {
                            self.answer(answer);
                        }
                    }
                    // Only while a replay task holds a sender or left events behind: polling an
                    // empty channel costs a waker registration, on every record.
                    Some(event) = Replays::next(&mut self.replays),
                        if self.replays.as_ref().is_some_and(Replays::running) =>
                    {
                        self.on_report(*event);
                        for _ in 1..REPORT_BATCH {
                            let Some(Ok(event)) = self.replays.as_mut().map(|r| r.events.try_recv())
                            else {
                                break;
                            };
                            self.on_report(*event);
                        }
                        if !self.replays.as_ref().is_some_and(Replays::running) {
                            self.replays = None;
                        }
                    }
                    // Then everything queued behind it, under one lock, and written in one flush.
                    // `drain` takes the queue's buffer whole: what a burst grew it to goes with it.
                    Some(item) = live.next() => {
                        for item in std::iter::once(item).chain(frames.drain()) {
                            self.taken += item.cost();
                            self.on_live(item);
                        }
                    }
                    () = poll_fn(|cx| match &mut self.held {
                        Some(held) => held.ready.poll_unpin(cx),
                        None => Poll::Pending,
                    }), if self.held.is_some() => {
                        let held = self.held.take().expect("a held request");
                        self.positions_waited = held.positions;
                        if let Some(pending) = self.handle(&held.text, false) {
                            in_flight.push(pending);
                        }
                        self.positions_waited = false;
                    }
                    incoming = socket.next(), if in_flight.len() < self.hub.config.limits.max_in_flight && self.held.is_none() => match incoming {
                        Some(Ok(Message::Text(text))) => {
                            self.hub.metrics.frame_received();
                            if let Some(pending) = self.handle(&text, true) {
                                in_flight.push(pending);
                            }
                            if self.abusive {
                                metrics::abusive();
                                break Ending::Abusive;
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            self.hub.metrics.frame_received();
                            self.reply(Reply::error(
                                None,
                                ErrorCode::BadRequest,
                                "binary frames are not supported: send JSON text frames",
                            ));
                        }
                        Some(Ok(Message::Pong(_))) => {
                            if let Some(beat) = heartbeat.as_mut()
                                && let Some(round_trip) = beat.pong(Instant::now())
                            {
                                metrics::ping_round_trip(round_trip);
                                beat_due = false;
                                timer.as_mut().reset(self.next_due(warned, beat_at(&heartbeat, beat_due)));
                            }
                        }
                        Some(Ok(Message::Ping(_))) => {}
                        Some(Ok(Message::Close(_))) | None => break Ending::ClientClosed,
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "socket read failed");
                            break Ending::Broken;
                        }
                    },
                    // Last, and only while the socket is read: a pong already received wins over
                    // the deadline, and a socket held back by publishes in flight is not judged.
                    () = std::future::ready(()), if beat_due && in_flight.len() < self.hub.config.limits.max_in_flight => {
                        beat_due = false;
                        let Some(beat) = heartbeat.as_mut() else { unreachable!() };
                        match beat.due(Instant::now()) {
                            Beat::Unresponsive => {
                                metrics::unresponsive();
                                break Ending::Unresponsive;
                            }
                            Beat::Ping => ping = true,
                        }
                        timer.as_mut().reset(self.next_due(warned, beat_at(&heartbeat, beat_due)));
                    }
                }
                if self.session.expires_at != expires_at {
                    expires_at = self.session.expires_at;
                    warned = false;
                    timer
                        .as_mut()
                        .reset(self.next_due(warned, beat_at(&heartbeat, beat_due)));
                }
                // A roster write made due this turn (no clock read: most turns have none).
                if let Some(due) = self.roster.due
                    && due < timer.deadline()
                {
                    timer.as_mut().reset(due);
                }
                if self.stop.has_lagged() {
                    break Ending::Lagged;
                }
                self.mark_resume(socket);
                // The ping goes with this turn's frames, out of the `select!`: what that gave
                // back would be held across the wait, and so take room in every socket's task.
                let ping = std::mem::take(&mut ping);
                if write_all(
                    socket,
                    &mut self.out,
                    ping,
                    &self.hub.metrics,
                    self.hub.config.server.write_timeout,
                )
                .await
                .is_err()
                {
                    break Ending::Broken;
                }
                self.hub
                    .registry
                    .written(&self.queued, std::mem::take(&mut self.taken));
                self.replayed.clear();
            }
        }
    }

    fn reply(&mut self, reply: Reply) {
        self.out.push(reply.into());
    }

    /// On a resumable socket, tells it where every subscription stands once this turn's
    /// frames are written. Once per write, not per frame: the SSE stream sends a write as
    /// one event, which a browser takes whole or not at all, so its id is exact.
    fn mark_resume(&mut self, socket: &mut impl Socket) {
        if !self.resumable || self.out.is_empty() {
            return;
        }
        let cursor = cursor::encode(&self.subscriptions.resume());
        self.resume_len = cursor.len();
        socket.resume_at(cursor);
    }

    fn answer(&mut self, answer: Answer) {
        match answer {
            Answer::Reply(reply) => self.reply(reply),
            Answer::Refreshed(id, session) => self.refreshed(id, *session),
        }
    }

    /// When the token next needs the socket: its warning, or once warned its expiry.
    fn token_due(&self, warned: bool) -> Instant {
        let expires = instant_at(self.session.expires_at);
        if warned {
            return expires;
        }
        let warning = self.hub.config.server.expiry_warning;
        expires.checked_sub(warning).unwrap_or_else(Instant::now)
    }

    /// What the timer of `turns` waits for: the token, or a roster write or the heartbeat's
    /// deadline before it.
    fn next_due(&self, warned: bool, beat: Option<Instant>) -> Instant {
        [self.roster.due, beat]
            .into_iter()
            .flatten()
            .fold(self.token_due(warned), Instant::min)
    }

    fn on_live(&mut self, item: Outbound) {
        if self.subscriptions.on_live(item, &mut self.out).is_err() {
            self.stop.lagged();
        }
    }

    fn on_report(&mut self, mut report: Report) {
        self.replayed.extend(report.room.take());
        let Some(failed) = self.subscriptions.on_report(report, &mut self.out) else {
            return;
        };
        let Failed {
            topic,
            key,
            id,
            filter,
            error,
        } = failed;
        tracing::warn!(%topic, %error, "replay failed");
        self.left(&topic, key.as_deref(), &filter);
        let reply = Reply::ended(id, &topic, key.as_deref(), error.code(), error.to_string());
        self.reply(reply);
    }
}

/// The heartbeat's deadline, unless it has passed already and waits to be judged.
fn beat_at(heartbeat: &Option<Heartbeat>, due: bool) -> Option<Instant> {
    heartbeat.as_ref().filter(|_| !due).map(Heartbeat::deadline)
}

#[cfg(test)]
mod tests {
    //! The socket task driven through channels, as axum's `testing-websockets` example does:
    //! no network, no broker. What needs Kafka's answers is in `tests/`.

    use std::pin::Pin;
    use std::task::{Context, Poll};

    use serde_json::{Value, json};
    use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

    use super::*;
    use crate::auth::{Grants, mint};
    use crate::{clock, hub};

    /// The hub's end of a socket whose other end the test holds.
    struct Pipe {
        from_client: UnboundedReceiver<Result<Message, axum::Error>>,
        to_client: UnboundedSender<Message>,
    }

    impl Stream for Pipe {
        type Item = Result<Message, axum::Error>;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.from_client.poll_recv(cx)
        }
    }

    impl Sink<Message> for Pipe {
        type Error = axum::Error;

        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn start_send(self: Pin<&mut Self>, message: Message) -> Result<(), Self::Error> {
            self.to_client.send(message).map_err(axum::Error::new)
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
    }

    impl Socket for Pipe {}

    /// The test's end.
    struct Client {
        to_hub: Option<UnboundedSender<Result<Message, axum::Error>>>,
        from_hub: UnboundedReceiver<Message>,
    }

    impl Client {
        fn send(&self, frame: Value) {
            let text = Message::Text(frame.to_string().into());
            self.to_hub.as_ref().unwrap().send(Ok(text)).unwrap();
        }

        /// The next frame but pings, which are answered, as WebSocket libraries do.
        async fn next(&mut self) -> Message {
            loop {
                let message = tokio::time::timeout(Duration::from_secs(10), self.from_hub.recv())
                    .await
                    .expect("a frame from the hub in time")
                    .expect("the hub's end is open");
                match message {
                    Message::Ping(payload) => {
                        let pong = Ok(Message::Pong(payload));
                        self.to_hub.as_ref().unwrap().send(pong).unwrap();
                    }
                    message => return message,
                }
            }
        }

        async fn recv(&mut self) -> Value {
            match self.next().await {
                Message::Text(text) => serde_json::from_str(&text).unwrap(),
                other => panic!("expected a text frame, got {other:?}"),
            }
        }

        async fn call(&mut self, frame: Value) -> Value {
            self.send(frame);
            self.recv().await
        }

        /// The close frame the hub sends, skipping anything before it; the client then
        /// closes its side.
        async fn closed(&mut self) -> (u16, String) {
            loop {
                if let Message::Close(Some(frame)) = self.next().await {
                    self.to_hub = None;
                    return (frame.code, frame.reason.to_string());
                }
            }
        }
    }

    fn token(sub: &str, subscribe: &[&str], ttl: Duration) -> String {
        let parse = |globs: &[&str]| globs.iter().map(|g| g.parse().unwrap()).collect();
        let grants = Grants {
            publish: parse(&["t.*"]),
            subscribe: parse(subscribe),
            history: Vec::new(),
            online: Vec::new(),
        };
        mint(hub::TEST_SECRET, sub, grants, ttl)
    }

    /// Opens a socket as the upgrade does, with `token` admitted or, without one, awaiting
    /// its `auth` frame.
    async fn connect(hub: &Arc<Hub>, token: Option<&str>) -> Client {
        let (to_hub, from_client) = unbounded_channel();
        let (to_client, from_hub) = unbounded_channel();
        let admission = match token {
            Some(token) => {
                let (session, seat) = hub.admit(token).await.unwrap();
                Admission::Admitted(Box::new(session), seat)
            }
            None => Admission::Awaiting(hub.await_auth().unwrap()),
        };
        let socket = Pipe {
            from_client,
            to_client,
        };
        let opening = Opening {
            hub: hub.clone(),
            admission,
            open: hub.open_socket().unwrap(),
            transport: "test",
        };
        tokio::spawn(run(Box::new(opening), socket));
        Client {
            to_hub: Some(to_hub),
            from_hub,
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn malformed_frames_get_errors_and_the_socket_carries_on() {
        let hub = hub::for_tests(&[]).await;
        let mut client = connect(&hub, Some(&token("alice", &["t.*"], HOUR))).await;
        client.send(json!("not an object"));
        assert_eq!(client.recv().await["code"], "bad_request");
        let reply = client
            .call(json!({"type": "subscribe", "id": 7, "topic": "elsewhere"}))
            .await;
        assert_eq!(
            (reply["code"].as_str(), reply["id"].as_i64()),
            (Some("forbidden"), Some(7))
        );
        client
            .to_hub
            .as_ref()
            .unwrap()
            .send(Ok(Message::Binary(vec![1, 2].into())))
            .unwrap();
        assert_eq!(client.recv().await["code"], "bad_request");
        assert_eq!(
            client.call(json!({"type": "ping", "id": "p"})).await,
            json!({"type": "pong", "id": "p"})
        );
    }

    #[tokio::test]
    async fn publishes_past_the_rate_are_refused_without_reaching_kafka() {
        let hub = hub::for_tests(&["--publish-rate", "2"]).await;
        let mut client = connect(&hub, Some(&token("alice", &[], HOUR))).await;
        // The first two go to the producer, whose broker never answers within the test.
        for id in 0..3 {
            client.send(json!({"type": "publish", "id": id, "topic": "t.room", "payload": 1}));
        }
        let refused = client.recv().await;
        assert_eq!(
            (refused["code"].as_str(), refused["id"].as_i64()),
            (Some("rate_limited"), Some(2))
        );
    }

    #[tokio::test]
    async fn a_refresh_moves_the_expiry_and_ends_what_the_new_token_no_longer_allows() {
        let hub = hub::for_tests(&[]).await;
        let mut client = connect(&hub, Some(&token("alice", &["t.*"], HOUR))).await;
        let subscribed = client
            .call(json!({"type": "subscribe", "topic": "t.room"}))
            .await;
        assert_eq!(subscribed["type"], "subscribed", "{subscribed}");

        let other_user = client
            .call(json!({"type": "auth", "id": 1, "token": token("bob", &["t.*"], HOUR)}))
            .await;
        assert_eq!(other_user["code"], "forbidden", "{other_user}");
        let forged = client
            .call(json!({"type": "auth", "id": 2, "token": "e30.e30.e30"}))
            .await;
        assert_eq!(forged["code"], "unauthorized", "{forged}");

        let narrower = token("alice", &["t.other"], 2 * HOUR);
        client.send(json!({"type": "auth", "id": 3, "token": narrower}));
        let ended = client.recv().await;
        assert_eq!(
            (ended["type"].as_str(), ended["topic"].as_str()),
            (Some("error"), Some("t.room")),
            "{ended}"
        );
        let authenticated = client.recv().await;
        assert_eq!(authenticated["type"], "authenticated");
        let expires_at = authenticated["expires_at"].as_i64().unwrap();
        assert!(
            expires_at > clock::now_millis() + HOUR.as_millis() as i64,
            "{authenticated}"
        );
    }

    /// Waits out a token of two seconds (its `exp` has a resolution of one).
    #[tokio::test]
    async fn a_token_running_out_warns_then_closes_4401() {
        let hub = hub::for_tests(&["--expiry-warning", "1s"]).await;
        let mut client = connect(&hub, Some(&token("alice", &[], Duration::from_secs(2)))).await;
        assert_eq!(client.recv().await["type"], "expiring");
        assert_eq!(
            client.closed().await,
            (close::TOKEN_EXPIRED, "token expired".into())
        );
    }

    #[tokio::test]
    async fn a_revocation_closes_4403_and_shutdown_closes_the_others_1001() {
        let hub = hub::for_tests(&[]).await;
        let mut alice = connect(&hub, Some(&token("alice", &[], HOUR))).await;
        let mut bob = connect(&hub, Some(&token("bob", &[], HOUR))).await;
        // Both are listed (and in reach of revocations) once they answer.
        alice.call(json!({"type": "ping"})).await;
        bob.call(json!({"type": "ping"})).await;
        hub.apply_revocation(&crate::control::Revocation::Sub {
            sub: "alice".into(),
            before: clock::now_secs(),
        });
        assert_eq!(
            alice.closed().await,
            (close::AUTH_FAILED, "token revoked".into())
        );
        hub.going_away();
        assert_eq!(bob.closed().await, (close::GOING_AWAY, "going away".into()));
    }

    #[tokio::test]
    async fn a_socket_without_a_token_must_authenticate_with_its_first_frame() {
        let hub = hub::for_tests(&["--auth-timeout", "200ms"]).await;
        let mut silent = connect(&hub, None).await;
        assert_eq!(
            silent.closed().await,
            (close::AUTH_FAILED, "no auth frame in time".into())
        );

        let mut rude = connect(&hub, None).await;
        rude.send(json!({"type": "ping"}));
        assert_eq!(
            rude.closed().await,
            (close::AUTH_FAILED, "expected an auth frame".into())
        );

        let mut polite = connect(&hub, None).await;
        let reply = polite
            .call(json!({"type": "auth", "id": "a", "token": token("alice", &[], HOUR)}))
            .await;
        assert_eq!(
            (reply["type"].as_str(), reply["sub"].as_str()),
            (Some("authenticated"), Some("alice"))
        );
        assert_eq!(polite.call(json!({"type": "ping"})).await["type"], "pong");
    }

    #[tokio::test]
    async fn the_per_user_limit_closes_a_first_frame_login_4409() {
        let hub = hub::for_tests(&["--max-connections-per-user", "1"]).await;
        let alice = token("alice", &[], HOUR);
        let mut first = connect(&hub, Some(&alice)).await;
        first.call(json!({"type": "ping"})).await;
        let mut second = connect(&hub, None).await;
        second.send(json!({"type": "auth", "token": alice}));
        assert_eq!(
            second.closed().await,
            (
                close::TOO_MANY_CONNECTIONS,
                "too many connections for this user".into()
            )
        );
    }
}
