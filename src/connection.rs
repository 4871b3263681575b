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

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tracing::Instrument;

use crate::auth::Session;
use crate::clock::{instant_at, now_millis, unix_millis};
use crate::hub::{Admission, ConnectionInfo, Hub, Seat};
use crate::kafka::Publisher;
use crate::metrics::{self, Metrics};
use crate::policy::{self, Action};
use crate::presence::{self, DisconnectReason};
use crate::protocol::{
    self, ErrorCode, Publish, Reply, Request, RequestId, Start, Subscribe, close,
};
use crate::registry::{ConnId, Delivery, Filter, Subscriber};
use crate::replay::{self, Report, Seam};
use crate::stop::{Stop, StopReason};
use crate::store::OpenSession;
use crate::subscription::{Failed, Outgoing, Subscriptions};

/// Frames taken from a queue before one flush: many frames per syscall under load.
pub const WRITE_BATCH: usize = 64;
/// How long to wait for the client's reply to our close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Replay records a connection holds before the replay waits for it.
const REPLAY_QUEUE: usize = 64;

/// Serves one socket until it ends; `open` is its place under the hub's cap.
///
/// Not an `async fn`: those keep their arguments twice in the future, once as arguments and
/// once as locals, and this future lives as long as the socket.
#[allow(clippy::manual_async_fn)]
pub fn run(
    hub: Arc<Hub>,
    mut socket: WebSocket,
    admission: Admission,
    open: OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send {
    async move {
        let _open = open;
        let id = hub.next_conn_id();
        let span = tracing::info_span!("conn", id, sub = tracing::field::Empty);
        let authenticated = match admission {
            Admission::Admitted(session, seat) => Ok((session, seat)),
            // The permit is given back once the first frame is handled, whatever it was.
            Admission::Awaiting(_permit) => {
                first_frame_auth(&hub, &mut socket)
                    .instrument(span.clone())
                    .await
            }
        };
        let (session, seat) = match authenticated {
            Ok(pair) => pair,
            Err((code, reason)) => {
                tracing::debug!(parent: &span, code, reason, "refused the socket");
                return refuse(&mut socket, code, Utf8Bytes::from(reason)).await;
            }
        };
        span.record("sub", session.sub.as_str());
        let stop = Stop::default();
        let info = ConnectionInfo {
            sub: session.sub.clone(),
            since: now_millis(),
            token: session.token.clone(),
            stop: stop.clone(),
        };
        // Registered before the last revocation check: see `control` for why. Shutdown is
        // checked after it too: see `Hub::going_away`.
        let _registration = hub.register(id, info);
        if hub.shutdown.is_cancelled() {
            stop.going_away();
        }
        if hub.revoked_since_start(&session.sub, &session.token) {
            let reason = Utf8Bytes::from_static("token revoked");
            return refuse(&mut socket, close::AUTH_FAILED, reason).await;
        }
        let presence = match &hub.presence {
            None => None,
            Some(presence) => match presence.connected(&session.sub).await {
                Ok(open) => Some(open),
                Err(e) => {
                    tracing::error!(parent: &span, error = %e, "cannot record the session for presence");
                    let reason = Utf8Bytes::from_static("try again shortly");
                    return refuse(&mut socket, close::INTERNAL, reason).await;
                }
            },
        };
        metrics::connection_opened();
        let (queue, mut frames) = mpsc::channel(hub.config.send_queue);
        let (replays, mut replay_events) = mpsc::channel(REPLAY_QUEUE);
        let mut connection = Connection {
            queue,
            subscriptions: Subscriptions::new(hub.config.send_queue),
            publishes: RateLimiter::direct_with_clock(
                Quota::per_second(hub.config.publish_rate),
                hub.rate_clock.clone(),
            ),
            replays,
            out: Vec::new(),
            stop,
            presence,
            ended: DisconnectReason::Closed,
            hub: hub.clone(),
            id,
            session,
            _seat: seat,
        };
        connection
            .serve(&mut socket, &mut frames, &mut replay_events)
            .instrument(span)
            .await;
    }
}

/// Ends a socket before it is served.
async fn refuse(socket: &mut WebSocket, code: u16, reason: Utf8Bytes) {
    let frame = CloseFrame { code, reason };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

/// Waits for the `auth` frame of a socket opened without a token.
async fn first_frame_auth(
    hub: &Arc<Hub>,
    socket: &mut WebSocket,
) -> Result<(Session, Seat), (u16, String)> {
    let refused = |reason: String| (close::AUTH_FAILED, reason);
    let first = tokio::select! {
        _ = hub.shutdown.cancelled() => return Err((close::GOING_AWAY, "going away".into())),
        first = tokio::time::timeout(hub.config.auth_timeout, socket.recv()) => first,
    };
    let text = match first {
        Err(_) => {
            metrics::auth_failed("timeout");
            return Err(refused("no auth frame in time".into()));
        }
        Ok(Some(Ok(Message::Text(text)))) => text,
        Ok(_) => {
            metrics::auth_failed("no_auth_frame");
            return Err(refused("expected an auth frame".into()));
        }
    };
    let (id, token) = match protocol::parse(&text) {
        Ok(Request::Auth { id, token }) => (id, token),
        _ => {
            metrics::auth_failed("no_auth_frame");
            return Err(refused("expected an auth frame".into()));
        }
    };
    let (session, seat) = hub
        .admit(&token)
        .await
        .map_err(|refusal| refusal.close_frame())?;
    let reply = authenticated(id, &session);
    socket
        .send(Message::Text(reply.to_json().into()))
        .await
        .map_err(|_| refused("socket closed".into()))?;
    Ok((session, seat))
}

fn authenticated(id: Option<RequestId>, session: &Session) -> Reply {
    Reply::Authenticated {
        id,
        sub: session.sub.clone(),
        expires_at: unix_millis(session.expires_at),
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
        }
    }

    fn close_frame(&self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            Ending::ClientClosed | Ending::Broken => return None,
            Ending::GoingAway => (close::GOING_AWAY, "going away"),
            Ending::TokenExpired => (close::TOKEN_EXPIRED, "token expired"),
            Ending::Revoked => (close::AUTH_FAILED, "token revoked"),
            Ending::Lagged => (close::LAGGED, "lagged"),
        };
        Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        })
    }
}

struct Connection {
    hub: Arc<Hub>,
    id: ConnId,
    session: Session,
    /// This socket's queue, shared by all its subscriptions in the registry.
    queue: mpsc::Sender<Arc<Delivery>>,
    subscriptions: Subscriptions,
    publishes: DefaultDirectRateLimiter,
    /// Boxed: tokio allocates a channel's first block of 32 slots up front, which unboxed
    /// cost every socket 3.8 KB whether or not it ever replays.
    replays: mpsc::Sender<Box<Report>>,
    /// Frames to write at the end of this turn of the loop.
    out: Vec<Outgoing>,
    stop: Stop,
    /// The session behind presence events, when they are on.
    presence: Option<OpenSession>,
    /// Why the connection ended, for its `disconnect` presence event.
    ended: DisconnectReason,
    _seat: Seat,
}

/// What a request awaited in the background comes back as.
enum Answer {
    Reply(Reply),
    /// A refreshed token that verified and is not revoked.
    Refreshed(Option<RequestId>, Session),
}

type Pending = BoxFuture<'static, Answer>;

impl Drop for Connection {
    fn drop(&mut self) {
        metrics::connection_closed();
        for (topic, filter) in self.subscriptions.topics() {
            leave(&self.hub, self.id, topic, filter);
        }
        if let (Some(presence), Some(open)) = (&self.hub.presence, self.presence.take()) {
            let topics: Vec<&str> = self.subscriptions.topics().map(|(t, _)| t).collect();
            presence.disconnected(open, &topics, self.ended);
        }
    }
}

impl Connection {
    /// Everything it works on is borrowed from `run`, so that a connection's state is held
    /// once rather than copied into each nested future: at tens of thousands of sockets,
    /// every byte of it counts.
    async fn serve(
        &mut self,
        socket: &mut WebSocket,
        frames: &mut mpsc::Receiver<Arc<Delivery>>,
        replay_events: &mut mpsc::Receiver<Box<Report>>,
    ) {
        tracing::debug!("connected");
        let write_timeout = self.hub.config.write_timeout;
        let max_in_flight = self.hub.config.max_in_flight;
        let mut in_flight: FuturesUnordered<Pending> = FuturesUnordered::new();
        let mut records = Vec::new();
        let expiry = tokio::time::sleep_until(instant_at(self.session.expires_at));
        let warning = tokio::time::sleep_until(self.warn_at());
        tokio::pin!(expiry, warning);
        let mut warned = false;
        let mut expires_at = self.session.expires_at;

        let ending = loop {
            tokio::select! {
                biased;
                reason = poll_fn(|cx| self.stop.poll_stopped(cx)) => break reason.into(),
                _ = &mut expiry => break Ending::TokenExpired,
                _ = &mut warning, if !warned => {
                    warned = true;
                    let expires_at = unix_millis(self.session.expires_at);
                    self.reply(Reply::Expiring { expires_at });
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
                Some(event) = replay_events.recv(),
                    if self.replays.strong_count() > 1 || !replay_events.is_empty() =>
                {
                    self.on_report(*event);
                    for _ in 1..WRITE_BATCH {
                        let Ok(event) = replay_events.try_recv() else { break };
                        self.on_report(*event);
                    }
                }
                // One call for many records: each receive gives its slot back under the
                // queue's lock, and `recv_many` does that once.
                1.. = frames.recv_many(&mut records, WRITE_BATCH) => {
                    for record in records.drain(..) {
                        self.on_live(record);
                    }
                }
                incoming = socket.next(), if in_flight.len() < max_in_flight => match incoming {
                    Some(Ok(Message::Text(text))) => {
                        self.hub.metrics.frame_received();
                        if let Some(pending) = self.handle(&text) {
                            in_flight.push(pending);
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
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | None => break Ending::ClientClosed,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "socket read failed");
                        break Ending::Broken;
                    }
                },
            }
            if self.session.expires_at != expires_at {
                expires_at = self.session.expires_at;
                expiry.as_mut().reset(instant_at(expires_at));
                warning.as_mut().reset(self.warn_at());
                warned = false;
            }
            if self.stop.has_lagged() {
                break Ending::Lagged;
            }
            if write_all(socket, &mut self.out, &self.hub.metrics, write_timeout)
                .await
                .is_err()
            {
                break Ending::Broken;
            }
        };
        tracing::debug!(?ending, "closing");
        self.ended = ending.disconnect_reason();

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
            let _ = write_all(socket, &mut self.out, &self.hub.metrics, write_timeout).await;
        }
        if let Some(frame) = ending.close_frame() {
            let _ =
                tokio::time::timeout(write_timeout, socket.send(Message::Close(Some(frame)))).await;
            // Wait for the client's close frame so the TCP connection ends cleanly.
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                while let Some(Ok(_)) = socket.next().await {}
            })
            .await;
        } else {
            // Flushes tungstenite's reply to a client's close frame.
            let _ = tokio::time::timeout(write_timeout, socket.close()).await;
        }
    }

    fn reply(&mut self, reply: Reply) {
        self.out.push(reply.into());
    }

    fn answer(&mut self, answer: Answer) {
        match answer {
            Answer::Reply(reply) => self.reply(reply),
            Answer::Refreshed(id, session) => self.refreshed(id, session),
        }
    }

    fn warn_at(&self) -> tokio::time::Instant {
        let warning = self.hub.config.expiry_warning;
        instant_at(self.session.expires_at)
            .checked_sub(warning)
            .unwrap_or_else(tokio::time::Instant::now)
    }

    fn on_live(&mut self, record: Arc<Delivery>) {
        if self.subscriptions.on_live(record, &mut self.out).is_err() {
            self.stop.lagged();
        }
    }

    fn on_report(&mut self, report: Report) {
        let Some(failed) = self.subscriptions.on_report(report, &mut self.out) else {
            return;
        };
        let Failed {
            topic,
            id,
            filter,
            error,
        } = failed;
        tracing::warn!(%topic, %error, "replay failed");
        self.left(&topic, &filter);
        self.reply(Reply::ended(id, &topic, error.code(), error.to_string()));
    }

    fn handle(&mut self, text: &str) -> Option<Pending> {
        let max = self.hub.config.max_frame_bytes;
        if text.len() > max {
            self.reply(Reply::error(
                protocol::peek_id(text),
                ErrorCode::TooLarge,
                format!(
                    "frame of {} bytes exceeds the limit of {max} bytes",
                    text.len()
                ),
            ));
            return None;
        }
        match protocol::parse(text) {
            Err(bad) => self.reply(bad.into()),
            Ok(Request::Ping { id }) => self.reply(Reply::Pong { id }),
            Ok(Request::Subscribe(subscribe)) => self.subscribe(subscribe),
            Ok(Request::Unsubscribe { id, topic }) => {
                self.end_subscription(&topic);
                self.reply(Reply::Unsubscribed {
                    id,
                    topic: topic.into_owned(),
                });
            }
            Ok(Request::Auth { id, token }) => return self.refresh(id, &token),
            Ok(Request::Publish(publish)) => return self.publish(publish),
            Ok(Request::Commit { id, topic, offsets }) => return self.commit(id, &topic, offsets),
        }
        None
    }

    /// Stores the user's read positions; they only move forward.
    fn commit(
        &mut self,
        id: Option<RequestId>,
        topic: &str,
        offsets: BTreeMap<i32, i64>,
    ) -> Option<Pending> {
        if let Err(refusal) = self.authorize(&id, topic, Action::Subscribe) {
            self.reply(refusal);
            return None;
        }
        let store = self.hub.store.clone();
        let (sub, topic) = (self.session.sub.clone(), topic.to_string());
        Some(Box::pin(async move {
            let reply = match store.commit(&sub, &topic, &offsets).await {
                Ok(()) => Reply::Committed { id, topic },
                Err(e) => {
                    tracing::error!(error = %e, "cannot store read positions");
                    Reply::error(
                        id,
                        ErrorCode::Unavailable,
                        "cannot store read positions: retry",
                    )
                }
            };
            Answer::Reply(reply)
        }))
    }

    /// `policy::authorize`, refused with the request's id.
    fn authorize(&self, id: &Option<RequestId>, topic: &str, action: Action) -> Result<(), Reply> {
        policy::authorize(&self.hub.config, &self.session, topic, action)
            .map_err(|denied| Reply::error(id.clone(), denied.code(), denied.to_string()))
    }

    fn publish(&mut self, publish: Publish<'_>) -> Option<Pending> {
        let Publish {
            id,
            topic,
            key,
            headers,
            payload,
        } = publish;
        if let Err(refusal) = self.authorize(&id, &topic, Action::Publish) {
            self.reply(refusal);
            return None;
        }
        if self.publishes.check().is_err() {
            let rate = self.hub.config.publish_rate;
            self.reply(Reply::error(
                id,
                ErrorCode::RateLimited,
                format!("more than {rate} publishes per second: this one was not published"),
            ));
            return None;
        }
        let sent = self.hub.publisher.send(
            &topic,
            key.as_deref(),
            headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            payload.get().as_bytes(),
        );
        let delivery = match sent {
            Ok(delivery) => delivery,
            Err(e) => {
                self.reply(Reply::error(id, e.code(), e.to_string()));
                return None;
            }
        };
        let topic = topic.into_owned();
        let sent_at = std::time::Instant::now();
        let ack_seconds = self.hub.metrics.publish_ack();
        Some(Box::pin(async move {
            Answer::Reply(match Publisher::delivered(delivery).await {
                Ok(position) => {
                    ack_seconds.record(sent_at.elapsed());
                    Reply::Ack {
                        id,
                        topic,
                        partition: position.partition,
                        offset: position.offset,
                    }
                }
                Err(e) => {
                    metrics::publish_failed(e.code().as_str());
                    Reply::error(id, e.code(), e.to_string())
                }
            })
        }))
    }

    fn subscribe(&mut self, request: Subscribe<'_>) {
        let Subscribe {
            id,
            topic,
            from,
            filter,
        } = request;
        if let Err(refusal) = self.authorize(&id, &topic, Action::Subscribe) {
            return self.reply(refusal);
        }
        let max = self.hub.config.max_subscriptions;
        if self.subscriptions.count() >= max && !self.subscriptions.contains(&topic) {
            return self.reply(Reply::error(
                id,
                ErrorCode::LimitExceeded,
                format!("a connection may hold at most {max} subscriptions"),
            ));
        }
        let filter = match policy::filter_for(&self.hub.config, &self.session, &topic, filter) {
            Ok(filter) => Arc::new(filter),
            Err(denied) => return self.reply(Reply::error(id, denied.code(), denied.to_string())),
        };
        // A second subscribe to a topic replaces the first (a new start or filter).
        self.end_subscription(&topic);
        let subscriber = Subscriber {
            queue: self.queue.clone(),
            stop: self.stop.clone(),
            filter: filter.clone(),
        };
        // Join first, then read the live position: every record at or past it reaches us.
        self.hub.registry.subscribe(&topic, self.id, subscriber);
        let (live, resolved) = self.hub.live_positions.of(&topic);
        if from == Start::Latest {
            self.subscriptions.insert_live(&topic, filter, live.clone());
            self.joined(&topic);
            return self.reply(Reply::Subscribed {
                id,
                topic: topic.into_owned(),
                partitions: live,
                lost: BTreeMap::new(),
                waiting: None,
            });
        }
        if resolved.is_err() {
            self.hub
                .registry
                .unsubscribe(&topic, self.id, filter.key.as_deref());
            return self.reply(Reply::error(
                id,
                ErrorCode::Unavailable,
                "the hub is still finding where this topic's live stream starts: retry shortly",
            ));
        }
        let generation = self.subscriptions.next_generation();
        let seam = Arc::new(Seam::new(live));
        let stop = self.hub.replayer.spawn(
            replay::Request {
                topic: topic.as_ref().into(),
                generation,
                from,
                user: self.session.sub.clone(),
                seam: seam.clone(),
                filter: filter.clone(),
            },
            self.replays.clone(),
        );
        self.subscriptions
            .insert_replaying(&topic, generation, filter, id, seam, stop);
        self.joined(&topic);
    }

    /// Counts a subscription that joined the registry, and tells presence.
    fn joined(&self, topic: &str) {
        metrics::subscribed(topic);
        self.tell_presence(presence::Kind::Subscribe, topic);
    }

    fn tell_presence(&self, kind: presence::Kind, topic: &str) {
        if let (Some(presence), Some(open)) = (&self.hub.presence, &self.presence) {
            presence.topic_changed(open, kind, topic);
        }
    }

    fn end_subscription(&mut self, topic: &str) {
        if let Some(filter) = self.subscriptions.remove(topic) {
            self.left(topic, &filter);
        }
    }

    /// What an ended subscription leaves behind: its place in the registry, its count,
    /// presence's record of it.
    fn left(&self, topic: &str, filter: &Filter) {
        leave(&self.hub, self.id, topic, filter);
        self.tell_presence(presence::Kind::Unsubscribe, topic);
    }

    /// A new token for the same user: it moves the expiry, and subscriptions it no longer
    /// allows end. A token that does not verify, or is revoked, changes nothing.
    fn refresh(&mut self, id: Option<RequestId>, token: &str) -> Option<Pending> {
        let session = match self.hub.auth.verify(token) {
            Ok(session) => session,
            Err(e) => {
                self.reply(Reply::error(
                    id,
                    ErrorCode::Unauthorized,
                    format!("{e}: the current token stays in force"),
                ));
                return None;
            }
        };
        if session.sub != self.session.sub {
            self.reply(Reply::error(
                id,
                ErrorCode::Forbidden,
                "a refreshed token must be for the same user (`sub`)",
            ));
            return None;
        }
        let hub = self.hub.clone();
        Some(Box::pin(async move {
            match hub.is_revoked(&session.sub, &session.token).await {
                Ok(false) => Answer::Refreshed(id, session),
                Ok(true) => Answer::Reply(Reply::error(
                    id,
                    ErrorCode::Unauthorized,
                    "token revoked: the current token stays in force",
                )),
                Err(e) => {
                    tracing::error!(error = %e, "cannot check revocations");
                    Answer::Reply(Reply::error(
                        id,
                        ErrorCode::Unavailable,
                        "cannot check the token now: the current token stays in force",
                    ))
                }
            }
        }))
    }

    fn refreshed(&mut self, id: Option<RequestId>, session: Session) {
        self.hub.update_token(self.id, session.token.clone());
        // Registered before checking, as at connect.
        if self.hub.revoked_since_start(&session.sub, &session.token) {
            self.stop.revoked();
        }
        self.session = session;
        let disallowed: Vec<String> = self
            .subscriptions
            .topics()
            .map(|(topic, _)| topic)
            .filter(|topic| {
                !policy::allows(&self.hub.config, &self.session, topic, Action::Subscribe)
            })
            .map(str::to_string)
            .collect();
        for topic in disallowed {
            self.end_subscription(&topic);
            self.reply(Reply::ended(
                None,
                &topic,
                ErrorCode::Forbidden,
                format!("subscription to {topic:?} ended: the new token does not allow it"),
            ));
        }
        self.reply(authenticated(id, &self.session));
    }
}

/// Takes an ended subscription out of the registry and the metrics.
fn leave(hub: &Hub, id: ConnId, topic: &str, filter: &Filter) {
    metrics::unsubscribed(topic);
    hub.registry.unsubscribe(topic, id, filter.key.as_deref());
}

/// A socket that cannot take a write in time is as good as gone.
struct WriteFailed;

/// Counted as sent when the write starts, so a client that has a frame knows it is counted.
async fn write_all(
    socket: &mut WebSocket,
    out: &mut Vec<Outgoing>,
    metrics: &Metrics,
    timeout: Duration,
) -> Result<(), WriteFailed> {
    if out.is_empty() {
        return Ok(());
    }
    let frames = std::mem::take(out);
    metrics.frames_sent(frames.len());
    if let Some(oldest) = frames.iter().filter_map(|f| f.timestamp).min() {
        metrics.delivered(now_millis() - oldest);
    }
    let batch = async {
        for Outgoing { frame, .. } in frames {
            socket.feed(Message::Text(frame)).await?;
        }
        socket.flush().await
    };
    match tokio::time::timeout(timeout, batch).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(WriteFailed),
    }
}
