//! The SSE fallback against WebSocket on the same hub in the same run: the hub's memory per
//! idle subscribed stream and per idle subscribed socket, then fan-out bursts to as many
//! streams as sockets, in alternating rounds, as deliveries per second and per CPU-second.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::{StreamExt, stream};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

use crate::clients::{Counters, Position, SOURCE, spawn_counters};
use crate::kafka::Broker;
use crate::load::{BURST, ROUNDS, burst_rate, kafka_burst};
use crate::records::stamps;
use crate::report::{Usage, median_of, report_client};
use crate::servers::Server;
use crate::{Args, Socket};

pub const SSE_TOPIC: &str = "bench.sse";
const SOCKET_TOPIC: &str = "bench.fanout";

/// One stream as a browser's `EventSource` holds it: the response read line by line.
struct Sse {
    lines: BufReader<TcpStream>,
}

impl Sse {
    /// The next `data:` line (one frame), or `None` when the stream ended.
    async fn frame(&mut self) -> Option<String> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.lines.read_line(&mut line).await.ok()? == 0 {
                return None;
            }
            if let Some(frame) = line.strip_prefix("data: ") {
                return Some(frame.trim_end().to_string());
            }
        }
    }
}

/// Opens a stream of `user` subscribed to `topic` from its end: a ticket, the stream over a
/// connection from one of many loopback addresses (as the sockets' are), and the subscribe
/// `POST`ed; returns once the hub confirmed it.
async fn subscribed(hub: &Server, http: &reqwest::Client, topic: &str, user: &str) -> Sse {
    let base = format!("http://{}", hub.addr);
    let bearer = format!("Bearer {}", Server::token(user));
    let ticket = http
        .post(format!("{base}/sse/ticket"))
        .header("Authorization", &bearer)
        .send()
        .await
        .expect("a ticket")
        .text()
        .await
        .unwrap();
    let ticket: serde_json::Value = serde_json::from_str(&ticket).expect("a ticket");
    let ticket = ticket["ticket"].as_str().expect("a ticket");
    let n = SOURCE.fetch_add(1, Ordering::Relaxed);
    let source = Ipv4Addr::new(127, 0, (n / 250 % 250) as u8 + 1, (n % 250) as u8 + 2);
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    let mut connection = socket.connect(hub.addr.parse().unwrap()).await.unwrap();
    connection.set_nodelay(true).unwrap();
    // HTTP/1.0: the body comes as it is, delimited by the connection's end, not chunked.
    let request = format!("GET /sse?ticket={ticket} HTTP/1.0\r\nHost: bench\r\n\r\n");
    connection.write_all(request.as_bytes()).await.unwrap();
    let mut sse = Sse {
        lines: BufReader::with_capacity(16 * 1024, connection),
    };
    let first = sse.frame().await.expect("the stream's first event");
    let opened: serde_json::Value = serde_json::from_str(&first).unwrap();
    let id = opened["id"].as_str().expect("the stream's id");
    let subscribe = format!(r#"{{"type":"subscribe","id":"s","topic":"{topic}"}}"#);
    let status = http
        .post(format!("{base}/sse/{id}"))
        .header("Authorization", &bearer)
        .body(subscribe)
        .send()
        .await
        .expect("the subscribe's POST")
        .status();
    assert_eq!(status, 202);
    let reply = sse.frame().await.expect("a reply to subscribe");
    assert!(reply.starts_with(r#"{"type":"subscribed""#), "{reply}");
    sse
}

/// Users of their own, one per stream or socket: what many browsers are, and clear of
/// the budget one user's connections share.
fn user(n: usize) -> String {
    format!("sse-bench-{n}")
}

async fn streams(hub: &Server, topic: &str, count: usize) -> Vec<Sse> {
    let http = &reqwest::Client::new();
    stream::iter(0..count)
        .map(|n| async move { subscribed(hub, http, topic, &user(n)).await })
        .buffer_unordered(64)
        .collect()
        .await
}

async fn sockets(hub: &Server, topic: &str, count: usize) -> Vec<Socket> {
    stream::iter(0..count)
        .map(|n| async move {
            let (socket, _) = hub.subscribe(topic, &user(n), &Position::default()).await;
            socket
        })
        .buffer_unordered(64)
        .collect()
        .await
}

/// Counts the records the streams receive, as `spawn_counters` does for sockets.
fn count_streams(streams: Vec<Sse>) -> Counters {
    let count = Arc::new(AtomicUsize::new(0));
    let tasks = streams
        .into_iter()
        .map(|mut sse| {
            let count = count.clone();
            tokio::spawn(async move {
                while let Some(frame) = sse.frame().await {
                    count.fetch_add(stamps(&frame).count(), Ordering::Relaxed);
                }
            })
        })
        .collect();
    Counters { count, tasks }
}

/// The hub's RSS over `count` idle subscribed connections, on a hub of its own so that
/// neither transport reuses memory the other's freed.
async fn idle_kib(binary: &Path, kafka: &Broker, work: &Path, count: usize, sse: bool) -> f64 {
    let name = if sse {
        "sse-idle-streams"
    } else {
        "sse-idle-sockets"
    };
    let hub = Server::hub(binary, &kafka.addr, work, count, name, &[]).await;
    let client = Usage::of_self();
    let before = hub.usage();
    // Weighed while they are held; dropped after.
    let after = match sse {
        true => {
            let _held = streams(&hub, SSE_TOPIC, count).await;
            hub.usage()
        }
        false => {
            let _held = sockets(&hub, SOCKET_TOPIC, count).await;
            hub.usage()
        }
    };
    let per = (after.rss_kib - before.rss_kib) as f64 / count as f64;
    let what = if sse { "SSE streams" } else { "WebSockets" };
    println!(
        "hub: {count} {what} open and subscribed: RSS {} -> {} KiB, {per:.1} KiB each",
        before.rss_kib, after.rss_kib
    );
    report_client(&client);
    per
}

pub async fn sse(hub: &Server, binary: &Path, kafka: &Broker, work: &Path, args: &Args) {
    let count = args.sse_streams;
    let per_socket = idle_kib(binary, kafka, work, count, false).await;
    let per_stream = idle_kib(binary, kafka, work, count, true).await;
    println!(
        "idle: hub memory per SSE stream / per WebSocket = {:.2}",
        per_stream / per_socket
    );

    // Fan-out: bursts to `--subscribers` streams and as many sockets, each on a topic of its
    // own, the rounds alternating.
    let n = args.subscribers;
    let bursts = args.records.div_ceil(BURST * ROUNDS);
    let sse_readers = count_streams(streams(hub, SSE_TOPIC, n).await);
    let socket_readers = spawn_counters(sockets(hub, SOCKET_TOPIC, n).await);
    let producer = kafka.producer(&[]);
    let (sse_route, socket_route) = (hub.route(SSE_TOPIC), hub.route(SOCKET_TOPIC));
    for (route, readers) in [(&sse_route, &sse_readers), (&socket_route, &socket_readers)] {
        kafka_burst(&producer, route).await;
        readers.wait_for(n * BURST).await;
    }
    let (mut rates, mut per_cpu) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        println!("  WebSocket:");
        let (socket_rate, socket_cpu) =
            burst_rate(hub, &socket_readers, round, bursts, async || {
                kafka_burst(&producer, &socket_route).await
            })
            .await;
        println!("  SSE:");
        let (sse_rate, sse_cpu) = burst_rate(hub, &sse_readers, round, bursts, async || {
            kafka_burst(&producer, &sse_route).await
        })
        .await;
        println!(
            "  round {round}: deliveries per CPU-second: SSE {:.0}, WebSocket {:.0}",
            sse_rate / sse_cpu,
            socket_rate / socket_cpu
        );
        rates.push(sse_rate / socket_rate);
        per_cpu.push((sse_rate / sse_cpu) / (socket_rate / socket_cpu));
    }
    drop((sse_readers, socket_readers));
    println!("fan-out bursts: SSE / WebSocket = {}", median_of(rates));
    println!(
        "fan-out bursts, deliveries per CPU-second: SSE / WebSocket = {}",
        median_of(per_cpu)
    );
}
