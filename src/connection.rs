//! One task per socket: it reads requests, writes replies and queued records, and ends the
//! connection for the reasons `docs/protocol.md` lists, each with its close code.
//!
//! Publishes are not awaited one by one: each becomes a future in `in_flight`, answered when
//! Kafka acknowledges it, so a client can pipeline. When the hub stops, the loop stops
//! reading but still answers every publish it took before closing with 1001.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, SplitSink};
use futures_util::{SinkExt, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::auth::Session;
use crate::kafka::Publisher;
use crate::protocol::{self, ErrorCode, Publish, Reply, Request, RequestId, close};
use crate::registry::{ConnId, Subscriber};
use crate::server::{Hub, Seat};
use crate::topic::{any_matches, is_valid_topic};

/// Queued records written before one flush: many frames per syscall under load.
const WRITE_BATCH: usize = 64;
/// How long to wait for the client's reply to our close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

type Sink = SplitSink<WebSocket, Message>;

pub async fn run(hub: Arc<Hub>, socket: WebSocket, session: Session, seat: Seat) {
    let id = hub.next_conn_id();
    let span = tracing::info_span!("conn", id, sub = %session.sub);
    let (queue, frames) = mpsc::channel(hub.config.send_queue);
    let connection = Connection {
        subscriber: Subscriber {
            queue,
            overflowed: CancellationToken::new(),
        },
        topics: HashSet::new(),
        publishes: RateLimiter::direct(Quota::per_second(hub.config.publish_rate)),
        hub,
        id,
        session,
        _seat: seat,
    };
    connection.serve(socket, frames).instrument(span).await;
}

/// Why a connection ended, and so which close frame it gets.
#[derive(Debug)]
enum Ending {
    ClientClosed,
    Broken,
    GoingAway,
    TokenExpired,
    TooSlow,
}

impl Ending {
    fn close_frame(&self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            Ending::ClientClosed | Ending::Broken => return None,
            Ending::GoingAway => (close::GOING_AWAY, "going away"),
            Ending::TokenExpired => (close::TOKEN_EXPIRED, "token expired"),
            Ending::TooSlow => (close::TOO_SLOW, "send queue full"),
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
    subscriber: Subscriber,
    topics: HashSet<String>,
    publishes: DefaultDirectRateLimiter,
    _seat: Seat,
}

impl Drop for Connection {
    fn drop(&mut self) {
        for topic in &self.topics {
            self.hub.registry.unsubscribe(topic, self.id);
        }
    }
}

impl Connection {
    async fn serve(mut self, socket: WebSocket, mut frames: mpsc::Receiver<Utf8Bytes>) {
        tracing::debug!("connected");
        let (mut sink, mut stream) = socket.split();
        let write_timeout = self.hub.config.write_timeout;
        let max_in_flight = self.hub.config.max_in_flight;
        let mut in_flight: FuturesUnordered<BoxFuture<'static, Reply>> = FuturesUnordered::new();
        let shutdown = self.hub.shutdown.clone();
        let overflowed = self.subscriber.overflowed.clone();
        let expiry = tokio::time::sleep_until(until(self.session.expires_at));
        tokio::pin!(expiry);

        let ending = loop {
            let reply = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ending::GoingAway,
                _ = &mut expiry => break Ending::TokenExpired,
                _ = overflowed.cancelled() => break Ending::TooSlow,
                Some(reply) = in_flight.next() => reply,
                Some(frame) = frames.recv() => {
                    if write_batch(&mut sink, frame, &mut frames, write_timeout).await.is_err() {
                        break Ending::Broken;
                    }
                    continue;
                }
                incoming = stream.next(), if in_flight.len() < max_in_flight => match incoming {
                    Some(Ok(Message::Text(text))) => match self.handle(&text) {
                        Handled::Reply(reply) => reply,
                        Handled::Pending(delivery) => {
                            in_flight.push(delivery);
                            continue;
                        }
                    },
                    Some(Ok(Message::Binary(_))) => Reply::error(
                        None,
                        ErrorCode::BadRequest,
                        "binary frames are not supported: send JSON text frames",
                    ),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | None => break Ending::ClientClosed,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "socket read failed");
                        break Ending::Broken;
                    }
                },
            };
            if write(&mut sink, reply.to_json(), write_timeout)
                .await
                .is_err()
            {
                break Ending::Broken;
            }
        };
        tracing::debug!(?ending, "closing");

        // Every publish taken gets its answer while the socket can still carry it.
        let writable = !matches!(ending, Ending::ClientClosed | Ending::Broken);
        while let Some(reply) = in_flight.next().await {
            if writable {
                let _ = write(&mut sink, reply.to_json(), write_timeout).await;
            }
        }
        if let Some(frame) = ending.close_frame() {
            let _ =
                tokio::time::timeout(write_timeout, sink.send(Message::Close(Some(frame)))).await;
            // Wait for the client's close frame so the TCP connection ends cleanly.
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                while let Some(Ok(_)) = stream.next().await {}
            })
            .await;
        } else {
            // Flushes tungstenite's reply to a client's close frame.
            let _ = tokio::time::timeout(write_timeout, sink.close()).await;
        }
    }

    fn handle(&mut self, text: &str) -> Handled {
        let max = self.hub.config.max_frame_bytes;
        if text.len() > max {
            return Handled::Reply(Reply::error(
                protocol::peek_id(text),
                ErrorCode::TooLarge,
                format!(
                    "frame of {} bytes exceeds the limit of {max} bytes",
                    text.len()
                ),
            ));
        }
        let reply = match protocol::parse(text) {
            Err(bad) => bad.into(),
            Ok(Request::Ping { id }) => Reply::Pong { id },
            Ok(Request::Subscribe { id, topic }) => self.subscribe(id, &topic),
            Ok(Request::Unsubscribe { id, topic }) => self.unsubscribe(id, &topic),
            Ok(Request::Publish(publish)) => return self.publish(publish),
        };
        Handled::Reply(reply)
    }

    /// A topic is allowed when the hub exposes it and the token grants the action on it.
    fn authorize(&self, id: &Option<RequestId>, topic: &str, action: Action) -> Result<(), Reply> {
        if !is_valid_topic(topic) {
            return Err(Reply::error(
                id.clone(),
                ErrorCode::BadRequest,
                format!("invalid topic name {topic:?}"),
            ));
        }
        let granted = match action {
            Action::Publish => self.session.may_publish(topic),
            Action::Subscribe => self.session.may_subscribe(topic),
        };
        if granted && any_matches(&self.hub.config.topics, topic) {
            Ok(())
        } else {
            Err(Reply::error(
                id.clone(),
                ErrorCode::Forbidden,
                format!("not allowed to {} topic {topic:?}", action.verb()),
            ))
        }
    }

    fn publish(&mut self, publish: Publish<'_>) -> Handled {
        let Publish {
            id,
            topic,
            key,
            headers,
            payload,
        } = publish;
        if let Err(refusal) = self.authorize(&id, &topic, Action::Publish) {
            return Handled::Reply(refusal);
        }
        if self.publishes.check().is_err() {
            let rate = self.hub.config.publish_rate;
            return Handled::Reply(Reply::error(
                id,
                ErrorCode::RateLimited,
                format!("more than {rate} publishes per second: this one was not published"),
            ));
        }
        let sent =
            self.hub
                .publisher
                .send(&topic, key.as_deref(), &headers, payload.get().as_bytes());
        let delivery = match sent {
            Ok(delivery) => delivery,
            Err(e) => return Handled::Reply(Reply::error(id, e.code(), e.to_string())),
        };
        let topic = topic.into_owned();
        Handled::Pending(Box::pin(async move {
            match Publisher::delivered(delivery).await {
                Ok(position) => Reply::Ack {
                    id,
                    topic,
                    partition: position.partition,
                    offset: position.offset,
                },
                Err(e) => Reply::error(id, e.code(), e.to_string()),
            }
        }))
    }

    fn subscribe(&mut self, id: Option<RequestId>, topic: &str) -> Reply {
        if let Err(refusal) = self.authorize(&id, topic, Action::Subscribe) {
            return refusal;
        }
        let max = self.hub.config.max_subscriptions;
        if self.topics.len() >= max && !self.topics.contains(topic) {
            return Reply::error(
                id,
                ErrorCode::LimitExceeded,
                format!("a connection may hold at most {max} subscriptions"),
            );
        }
        self.hub
            .registry
            .subscribe(topic, self.id, self.subscriber.clone());
        self.topics.insert(topic.to_string());
        Reply::Subscribed {
            id,
            topic: topic.to_string(),
        }
    }

    fn unsubscribe(&mut self, id: Option<RequestId>, topic: &str) -> Reply {
        if self.topics.remove(topic) {
            self.hub.registry.unsubscribe(topic, self.id);
        }
        Reply::Unsubscribed {
            id,
            topic: topic.to_string(),
        }
    }
}

enum Handled {
    Reply(Reply),
    Pending(BoxFuture<'static, Reply>),
}

#[derive(Clone, Copy)]
enum Action {
    Publish,
    Subscribe,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Publish => "publish to",
            Action::Subscribe => "subscribe to",
        }
    }
}

fn until(deadline: SystemTime) -> tokio::time::Instant {
    let left = deadline
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    tokio::time::Instant::now() + left
}

/// A socket that cannot take a write in time is as good as gone.
struct WriteFailed;

async fn write(sink: &mut Sink, text: String, timeout: Duration) -> Result<(), WriteFailed> {
    match tokio::time::timeout(timeout, sink.send(Message::Text(text.into()))).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(WriteFailed),
    }
}

async fn write_batch(
    sink: &mut Sink,
    first: Utf8Bytes,
    frames: &mut mpsc::Receiver<Utf8Bytes>,
    timeout: Duration,
) -> Result<(), WriteFailed> {
    let batch = async {
        sink.feed(Message::Text(first)).await?;
        for _ in 1..WRITE_BATCH {
            let Ok(frame) = frames.try_recv() else { break };
            sink.feed(Message::Text(frame)).await?;
        }
        sink.flush().await
    };
    match tokio::time::timeout(timeout, batch).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(WriteFailed),
    }
}
