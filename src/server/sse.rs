//! The transport for networks that break WebSocket upgrades: frames from the hub over a
//! Server-Sent Events stream (`GET /sse`), requests over `POST /sse/{stream}`.
//!
//! A stream is served by the very task that serves a socket (`connection::run`), over a
//! `Socket` made of the stream's body and a channel the stream's `POST`s feed: every frame,
//! limit, budget, heartbeat, expiry, refresh and revocation is the socket's. What differs:
//!
//! - `EventSource` cannot send headers, and a long-lived token does not belong in a URL, so
//!   a stream opens with a ticket: `POST /sse/ticket` with `Authorization: Bearer` returns
//!   a random one, good for one stream within `TICKET_TTL`, kept in this hub's memory. A
//!   ticket (and a stream's requests) must reach the hub that holds it: behind a load
//!   balancer, route one client to one hub (sticky sessions), as Socket.IO's polling needs.
//! - Each write is one SSE event (its frames as `data:` lines, a line each) whose `id` is
//!   the resume cursor after it (see `protocol::cursor`). A browser takes an event whole or
//!   not at all, so the id matches what it got exactly. A stream opened with that id
//!   (`Last-Event-ID`, or `last_event_id` in the query since a new `EventSource` cannot set
//!   the header) subscribes again from there, on whichever hub it reaches.
//! - The hub's WebSocket pings are comments (`: ping`), answered by the write itself: a
//!   client that stops reading fills the stream's buffers, and the write times out as a
//!   socket's would.
//! - A close frame is an event `{"type":"close","code":…,"reason":…}`, then the stream ends.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ws::Message;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dashmap::DashMap;
use futures_util::{Sink, Stream};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, PollSender, WaitForCancellationFutureOwned};

use crate::connection::{self, Socket};
use crate::hub::{Admission, Hub};
use crate::metrics;
use crate::protocol::cursor;

use super::{bearer, origin_allowed};

/// How long a ticket may wait for its stream.
pub const TICKET_TTL: Duration = Duration::from_secs(30);
/// Tickets waiting at once on one hub; past it, tickets are refused until some are used
/// or run out.
const MAX_TICKETS: usize = 10_000;
/// Requests a stream holds before its task reads them; past it, a `POST` is refused 429.
const REQUEST_QUEUE: usize = 64;
/// Events written ahead of the client's reading: the writes wait beyond it, and time out
/// as a socket's do.
const BODY_QUEUE: usize = 8;
/// The most a `POST` may hold, unless one frame may be larger.
const MAX_BODY: usize = 1 << 20;

/// The hub's tickets and streams.
#[derive(Default)]
struct Streams {
    tickets: DashMap<String, Ticket>,
    /// By stream id: whose it is, and where its requests go.
    open: DashMap<String, Open>,
}

struct Ticket {
    /// The token it was given for: the stream is admitted with it, as an upgrade is.
    token: String,
    expires: Instant,
}

struct Open {
    sub: String,
    requests: mpsc::Sender<Message>,
}

pub fn routes(hub: &Arc<Hub>) -> Router<Arc<Hub>> {
    let streams = Arc::new(Streams::default());
    let limit = MAX_BODY.max(hub.config.limits.max_frame_bytes);
    let (a, b, c) = (streams.clone(), streams.clone(), streams);
    Router::new()
        .route(
            "/sse/ticket",
            post(move |State(hub), headers| ticket(hub, a, headers)),
        )
        .route(
            "/sse",
            get(move |State(hub), headers, query| open(hub, b, headers, query)),
        )
        .route(
            "/sse/{stream}",
            post(move |State(hub), path, headers, body| request(hub, c, path, headers, body)),
        )
        .layer(DefaultBodyLimit::max(limit))
}

fn refused(status: StatusCode, reason: &'static str) -> Response {
    (status, reason).into_response()
}

fn no_token() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "a token is needed: Authorization: Bearer <token>",
    )
        .into_response()
}

/// `POST /sse/ticket`: a ticket for one stream, for a token that would open a socket.
async fn ticket(hub: Arc<Hub>, streams: Arc<Streams>, headers: HeaderMap) -> Response {
    if !origin_allowed(&hub, &headers) {
        return refused(StatusCode::FORBIDDEN, "origin not allowed");
    }
    let Some(token) = bearer(&headers) else {
        return no_token();
    };
    if let Err(refusal) = hub.verify(token).await {
        return refusal.into_response();
    }
    if streams.tickets.len() >= MAX_TICKETS {
        let now = Instant::now();
        streams.tickets.retain(|_, t| t.expires > now);
        if streams.tickets.len() >= MAX_TICKETS {
            metrics::sse_ticket(false);
            return refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many tickets wait for their stream",
            );
        }
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let ticket = Ticket {
        token: token.to_string(),
        expires: Instant::now() + TICKET_TTL,
    };
    streams.tickets.insert(id.clone(), ticket);
    metrics::sse_ticket(true);
    let body = serde_json::json!({"ticket": id, "expires_in_ms": TICKET_TTL.as_millis()});
    axum::Json(body).into_response()
}

#[derive(Deserialize)]
struct OpenQuery {
    ticket: Option<String>,
    last_event_id: Option<String>,
}

/// `GET /sse?ticket=…`: the stream, served like an admitted socket.
async fn open(
    hub: Arc<Hub>,
    streams: Arc<Streams>,
    headers: HeaderMap,
    Query(query): Query<OpenQuery>,
) -> Response {
    if !origin_allowed(&hub, &headers) {
        return refused(StatusCode::FORBIDDEN, "origin not allowed");
    }
    let redeemed = query
        .ticket
        .and_then(|id| streams.tickets.remove(&id))
        .map(|(_, ticket)| ticket)
        .filter(|ticket| ticket.expires > Instant::now());
    let Some(ticket) = redeemed else {
        return refused(
            StatusCode::UNAUTHORIZED,
            "unknown, used or expired ticket: POST /sse/ticket for a new one, on the hub \
             this stream is opened on",
        );
    };
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or(query.last_event_id)
        .filter(|id| !id.is_empty());
    let resumes = match last.as_deref().map(cursor::decode).transpose() {
        Ok(resumes) => resumes.unwrap_or_default(),
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let Some(permit) = hub.open_socket() else {
        tracing::info!("refused a stream: the hub holds its maximum of sockets");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "this hub is full",
        )
            .into_response();
    };
    let (session, seat) = match hub.admit(&ticket.token).await {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal.into_response(),
    };
    if hub.shutdown.is_cancelled() {
        return refused(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }

    let id = uuid::Uuid::new_v4().simple().to_string();
    let (requests, inbox) = mpsc::channel(REQUEST_QUEUE);
    // The reopened stream's subscriptions are asked for first, as its client would.
    for resume in &resumes {
        let _ = requests.try_send(Message::Text(resume.request().into()));
    }
    let listed = Open {
        sub: session.sub.clone(),
        requests,
    };
    streams.open.insert(id.clone(), listed);
    let (events, body) = mpsc::channel::<Bytes>(BODY_QUEUE);
    let first = format!("data: {{\"type\":\"stream\",\"id\":\"{id}\"}}\n\n");
    let _ = events.try_send(Bytes::from(first));
    let gone = CancellationToken::new();
    let socket = SseSocket {
        inbox,
        events: PollSender::new(events),
        gone: Box::pin(gone.clone().cancelled_owned()),
        event: String::new(),
        cursor: None,
        ping: false,
        pong: false,
        closed: false,
        _listed: Listed {
            streams: streams.clone(),
            id,
        },
    };
    tracing::debug!(resumed = resumes.len(), "SSE stream opened");
    let opening = connection::Opening {
        hub: hub.clone(),
        admission: Admission::Admitted(Box::new(session), seat),
        open: permit,
        transport: "sse",
    };
    let served = connection::run(Box::new(opening), socket);
    tokio::spawn(hub.tracked(served));

    let body = futures_util::stream::unfold((body, gone.drop_guard()), |(mut body, guard)| async {
        let event = body.recv().await?;
        Some((Ok::<_, Infallible>(event), (body, guard)))
    });
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx passes the stream on as it comes instead of buffering it.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// `POST /sse/{stream}`: one request frame, or an array of them, for the stream's task,
/// which answers on the stream. Answered 202 once they are queued, in order.
async fn request(
    hub: Arc<Hub>,
    streams: Arc<Streams>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(token) = bearer(&headers) else {
        return no_token();
    };
    let session = match hub.verify(token).await {
        Ok(session) => session,
        Err(refusal) => return refusal.into_response(),
    };
    let Some(requests) = streams.open.get(&stream).map(|open| {
        let mine = open.sub == session.sub;
        mine.then(|| open.requests.clone())
    }) else {
        metrics::sse_request_refused(404);
        return refused(
            StatusCode::NOT_FOUND,
            "no such stream on this hub: it ended, or is held by another hub; open a new one",
        );
    };
    let Some(requests) = requests else {
        return refused(StatusCode::FORBIDDEN, "the stream is another user's");
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return refused(StatusCode::BAD_REQUEST, "the body is not UTF-8");
    };
    let frames: Vec<&str> = if text.trim_start().starts_with('[') {
        match serde_json::from_str::<Vec<&RawValue>>(text) {
            Ok(frames) => frames.iter().map(|f| f.get()).collect(),
            Err(e) => {
                return (StatusCode::BAD_REQUEST, format!("malformed array: {e}")).into_response();
            }
        }
    } else {
        vec![text]
    };
    let Ok(permits) = requests.try_reserve_many(frames.len()) else {
        metrics::sse_request_refused(429);
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            "the stream has too many requests waiting: wait for answers",
        )
            .into_response();
    };
    for (permit, frame) in permits.zip(frames) {
        permit.send(Message::Text(frame.to_string().into()));
    }
    StatusCode::ACCEPTED.into_response()
}

/// Takes the stream out of the listing when its task ends.
struct Listed {
    streams: Arc<Streams>,
    id: String,
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.streams.open.remove(&self.id);
    }
}

/// A stream as the socket task sees it.
struct SseSocket {
    /// Requests from the stream's `POST`s.
    inbox: mpsc::Receiver<Message>,
    /// Events for the response body.
    events: PollSender<Bytes>,
    /// Done when the response body is dropped: the client went away.
    gone: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The `data:` lines of the event being made.
    event: String,
    /// Its id.
    cursor: Option<String>,
    /// A ping was fed: write a comment.
    ping: bool,
    /// A comment was written: the ping is answered.
    pong: bool,
    /// A close frame was written: nothing more is read.
    closed: bool,
    _listed: Listed,
}

impl Socket for SseSocket {
    fn resumable(&self) -> bool {
        true
    }

    fn resume_at(&mut self, cursor: String) {
        self.cursor = Some(cursor);
    }
}

fn gone(_: impl std::fmt::Debug) -> axum::Error {
    axum::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
}

impl Stream for SseSocket {
    type Item = Result<Message, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.pong {
            self.pong = false;
            return Poll::Ready(Some(Ok(Message::Pong(Bytes::new()))));
        }
        if self.closed || self.gone.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        self.inbox.poll_recv(cx).map(|m| m.map(Ok))
    }
}

impl Sink<Message> for SseSocket {
    type Error = axum::Error;

    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn start_send(mut self: Pin<&mut Self>, message: Message) -> Result<(), Self::Error> {
        let this = &mut *self;
        let data = |event: &mut String, frame: &str| {
            event.push_str("data: ");
            event.push_str(frame);
            event.push('\n');
        };
        match message {
            Message::Text(frame) => data(&mut this.event, &frame),
            Message::Ping(_) => this.ping = true,
            Message::Close(frame) => {
                let (code, reason) =
                    frame.map_or((1000, String::new()), |f| (f.code, f.reason.to_string()));
                let close = serde_json::json!({"type": "close", "code": code, "reason": reason});
                data(&mut this.event, &close.to_string());
                this.closed = true;
            }
            Message::Binary(_) | Message::Pong(_) => {}
        }
        Ok(())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = &mut *self;
        if this.event.is_empty() && !this.ping {
            return Poll::Ready(Ok(()));
        }
        ready!(this.events.poll_reserve(cx)).map_err(gone)?;
        let mut chunk = std::mem::take(&mut this.event);
        if !chunk.is_empty() {
            if let Some(cursor) = this.cursor.take() {
                chunk.push_str("id: ");
                chunk.push_str(&cursor);
                chunk.push('\n');
            }
            chunk.push('\n');
        }
        if this.ping {
            chunk.push_str(": ping\n\n");
            this.ping = false;
            this.pong = true;
        }
        this.events.send_item(Bytes::from(chunk)).map_err(gone)?;
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        ready!(self.as_mut().poll_flush(cx))?;
        self.events.close();
        Poll::Ready(Ok(()))
    }
}
