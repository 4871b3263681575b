//! The load generator's side of each server's protocol: opening sockets from many loopback
//! addresses, authenticating and subscribing as the hub and Centrifugo each expect (and
//! resuming from a position), reading frames while answering Centrifugo's pings, counting
//! deliveries, and publishing with a window in flight.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt, stream};
use tokio::net::TcpSocket;
use tokio::sync::Barrier;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use wskafka::{Grants, mint};

use crate::records::{payload, stamps};
use crate::servers::{Kind, Server};
use crate::{SECRET, Socket, now_us};

/// Where a socket of the storm was: the offset of the last record it had, and Centrifugo's
/// stream epoch, which recovery also needs.
#[derive(Default)]
pub struct Position {
    pub offset: Option<u64>,
    pub epoch: Option<String>,
}

/// The next text frame, answering Centrifugo's pings (`{}`, alone or in a batch of lines)
/// on the way, as its clients must or be disconnected.
pub async fn next_text(socket: &mut Socket) -> Option<tungstenite::Utf8Bytes> {
    loop {
        match socket.next().await? {
            Ok(Message::Text(text)) => {
                if text.starts_with("{}") || text.contains("\n{}") {
                    socket.send(Message::text("{}")).await.ok()?;
                    if text.as_str() == "{}" {
                        continue;
                    }
                }
                return Some(text);
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Counts the frames a set of sockets receive; dropping it closes them.
pub struct Counters {
    pub count: Arc<AtomicUsize>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub fn spawn_counters(sockets: Vec<Socket>) -> Counters {
    let count = Arc::new(AtomicUsize::new(0));
    let tasks = sockets
        .into_iter()
        .map(|mut socket| {
            let count = count.clone();
            tokio::spawn(async move {
                while let Some(text) = next_text(&mut socket).await {
                    count.fetch_add(stamps(&text).count(), Ordering::Relaxed);
                }
            })
        })
        .collect();
    Counters { count, tasks }
}

impl Counters {
    pub async fn wait_for(&self, target: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.count.load(Ordering::Relaxed) < target {
            assert!(
                Instant::now() < deadline,
                "only {} of {target} frames arrived: a socket was dropped",
                self.count.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }
}

impl Drop for Counters {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Keeps `window` publishes in flight on one socket until the deadline; returns the acks
/// and errors it got.
pub async fn publish_loop(
    mut socket: Socket,
    window: usize,
    barrier: Arc<Barrier>,
    deadline: tokio::time::Instant,
    publish_ids: Option<usize>,
) -> (u64, u64) {
    barrier.wait().await;
    let (mut sent, mut acks, mut errors) = (0usize, 0, 0);
    let frame = |n: usize| {
        // With ids, as the browser client sends them: unique per socket and publish.
        let id = publish_ids.map_or(String::new(), |socket| {
            format!(r#","publish_id":"{socket:08x}-0000-4000-8000-{n:012x}""#)
        });
        Message::text(format!(
            r#"{{"type":"publish","id":{n},"topic":"bench.ingest"{id},"payload":{}}}"#,
            payload(now_us(), n)
        ))
    };
    while sent < window {
        socket.feed(frame(sent)).await.unwrap();
        sent += 1;
    }
    socket.flush().await.unwrap();
    while let Ok(Some(reply)) = tokio::time::timeout_at(deadline, next_text(&mut socket)).await {
        if reply.starts_with(r#"{"type":"ack""#) {
            acks += 1;
        } else {
            errors += 1;
        }
        socket.send(frame(sent)).await.unwrap();
        sent += 1;
    }
    (acks, errors)
}

pub static SOURCE: AtomicUsize = AtomicUsize::new(0);

impl Server {
    pub fn token(user: &str) -> String {
        let grants = Grants {
            publish: vec!["bench.*".parse().unwrap()],
            subscribe: vec!["bench.*".parse().unwrap()],
            history: Vec::new(),
            online: Vec::new(),
        };
        mint(SECRET, user, grants, Duration::from_secs(3600))
    }

    pub fn ws_url(&self, user: &str) -> String {
        match self.kind {
            Kind::Centrifugo => format!("ws://{}/connection/websocket", self.addr),
            Kind::Hub | Kind::Bare => {
                format!("ws://{}/ws?token={}", self.addr, Server::token(user))
            }
        }
    }

    /// Opens one socket from one of many loopback addresses, so tens of thousands of
    /// sockets, and those earlier scenarios left in TIME_WAIT, never run out of ports.
    pub async fn try_open(&self, url: &str) -> Result<Socket, tungstenite::Error> {
        let n = SOURCE.fetch_add(1, Ordering::Relaxed);
        let source = Ipv4Addr::new(127, 0, (n / 250 % 250) as u8 + 1, (n % 250) as u8 + 2);
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((source, 0)))?;
        let stream = socket.connect(self.addr.parse().unwrap()).await?;
        stream.set_nodelay(true)?;
        let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
        Ok(ws)
    }

    pub async fn open(&self, url: &str) -> Socket {
        self.try_open(url).await.expect("opening a socket")
    }

    pub async fn sockets(&self, count: usize) -> Vec<Socket> {
        let url = self.ws_url("load");
        stream::iter(0..count)
            .map(|_| self.open(&url))
            .buffer_unordered(64)
            .collect()
            .await
    }

    /// Sockets that get the records of `topic` from its end, each having had its reply to
    /// subscribe (every socket of the bare server gets every frame).
    pub async fn subscribers(&self, topic: &str, count: usize) -> Vec<Socket> {
        if self.kind == Kind::Bare {
            return self.sockets(count).await;
        }
        // A user per socket: a user's requests share a budget across their sockets.
        stream::iter(0..count)
            .map(|n| async move {
                let user = format!("load-{n}");
                let (socket, _) = self.subscribe(topic, &user, &Position::default()).await;
                socket
            })
            .buffer_unordered(64)
            .collect()
            .await
    }

    /// A socket of `user` subscribed to `topic`, from `position` where it has one (the
    /// hub from the next offset, Centrifugo recovering from its history) and from the end
    /// otherwise. Returns it with the lines that came with the reply: Centrifugo carries
    /// recovered publications in the reply, and may batch pushes into its frame.
    pub async fn subscribe(
        &self,
        topic: &str,
        user: &str,
        position: &Position,
    ) -> (Socket, Vec<String>) {
        let mut socket = self.open(&self.ws_url(user)).await;
        if self.kind == Kind::Hub {
            let from = match position.offset {
                Some(last) => format!(r#","from":{{"offsets":{{"0":{}}}}}"#, last + 1),
                None => String::new(),
            };
            let subscribe = format!(r#"{{"type":"subscribe","id":"s","topic":"{topic}"{from}}}"#);
            socket.send(Message::text(subscribe)).await.unwrap();
            let reply = next_text(&mut socket).await.expect("a reply to subscribe");
            assert!(reply.starts_with(r#"{"type":"subscribed""#), "{reply}");
            return (socket, Vec::new());
        }
        let mut subscribe = serde_json::json!({"channel": Server::channel(topic)});
        if let (Some(epoch), Some(offset)) = (&position.epoch, position.offset) {
            subscribe["recover"] = true.into();
            subscribe["epoch"] = epoch.as_str().into();
            subscribe["offset"] = offset.into();
        }
        let commands = format!(
            "{}\n{}",
            serde_json::json!({"id": 1, "connect": {"token": Server::token(user)}}),
            serde_json::json!({"id": 2, "subscribe": subscribe})
        );
        socket.send(Message::text(commands)).await.unwrap();
        // The reply to subscribe first, then the publications it recovered, each as a push
        // would carry it, then what else shared its frames.
        let mut lines = Vec::new();
        let mut pushes = Vec::new();
        while lines.is_empty() {
            let frame = next_text(&mut socket)
                .await
                .expect("replies to connect and subscribe");
            for line in frame.lines() {
                if !line.starts_with(r#"{"id":"#) {
                    pushes.push(line.to_string());
                    continue;
                }
                let reply: serde_json::Value = serde_json::from_str(line).unwrap();
                assert!(reply.get("error").is_none(), "{line}");
                if reply["id"] == 2 {
                    lines.push(line.to_string());
                    let recovered = reply["subscribe"]["publications"].as_array();
                    lines.extend(recovered.into_iter().flatten().map(|publication| {
                        let data = &publication["data"];
                        format!(
                            r#"{{"push":{{"pub":{{"data":{{"t":{},"i":{}}},"offset":{}}}}}}}"#,
                            data["t"], data["i"], publication["offset"]
                        )
                    }));
                }
            }
        }
        lines.append(&mut pushes);
        (socket, lines)
    }
}
