//! The soak load (run by `scripts/soak`): subscribers that hold on, subscribers that keep
//! dropping and resuming from their offsets, and a publisher at a steady rate, for a bounded
//! time. At the end every subscriber must hold every acknowledged record exactly once, in
//! order; the hub's memory is sampled from /proc meanwhile.
//!
//! Arguments: hub address, topic, JWT secret, hub pid, seconds, subscribers, publishes/s.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use wskafka::{Grants, mint};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Args {
    hub: String,
    topic: String,
    token: String,
    pid: String,
    seconds: u64,
    subscribers: usize,
    rate: u64,
}

#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let grants = Grants {
        publish: vec![a[1].parse().unwrap()],
        subscribe: vec![a[1].parse().unwrap()],
        history: Vec::new(),
        online: Vec::new(),
    };
    let args = Args {
        hub: a[0].clone(),
        topic: a[1].clone(),
        token: mint(&a[2], "soak", grants, Duration::from_secs(86_400)),
        pid: a[3].clone(),
        seconds: a[4].parse().unwrap(),
        subscribers: a[5].parse().unwrap(),
        rate: a[6].parse().unwrap(),
    };
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let readers: Vec<_> = (0..args.subscribers)
        .map(|i| {
            // Every fourth subscriber drops its socket every few seconds and resumes.
            let churn = (i % 4 == 0).then_some(Duration::from_millis(2000 + 97 * i as u64));
            let stop_at = deadline + Duration::from_secs(4);
            tokio::spawn(read(
                args.hub.clone(),
                args.topic.clone(),
                args.token.clone(),
                churn,
                stop_at,
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sampler = tokio::spawn(sample(args.pid.clone(), deadline));
    let acked = publish(&args, deadline).await;
    let rss = sampler.await.unwrap();
    let mut lost = 0;
    let mut repeated = 0;
    for reader in readers {
        let got = reader.await.unwrap();
        for (position, _) in &acked {
            match got.get(position) {
                Some(1) => {}
                Some(_) => repeated += 1,
                None => lost += 1,
            }
        }
    }
    let first = rss.first().copied().unwrap_or(0);
    let last = rss.last().copied().unwrap_or(0);
    println!(
        "published and acknowledged {} records to {} subscribers over {} s",
        acked.len(),
        args.subscribers,
        args.seconds
    );
    println!("hub RSS samples (KiB): {rss:?}");
    println!(
        "hub RSS growth from the first to the last sample: {} KiB",
        last as i64 - first as i64
    );
    println!("records lost: {lost}, delivered twice: {repeated}");
    if lost > 0 || repeated > 0 {
        std::process::exit(1);
    }
}

async fn connect(hub: &str, token: &str) -> Socket {
    let url = format!("ws://{hub}/ws?token={token}");
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

async fn recv(socket: &mut Socket) -> Option<Value> {
    loop {
        match socket.next().await? {
            Ok(Message::Text(text)) => return serde_json::from_str(&text).ok(),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

/// Publishes at the rate until the deadline; returns every acknowledged position.
async fn publish(args: &Args, deadline: Instant) -> Vec<((i64, i64), u64)> {
    let mut socket = connect(&args.hub, &args.token).await;
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / args.rate));
    let mut acked = Vec::new();
    let mut n = 0u64;
    while Instant::now() < deadline {
        ticker.tick().await;
        let frame = json!({"type":"publish","id":n,"topic":args.topic,"payload":{"n":n}});
        socket.send(Message::text(frame.to_string())).await.unwrap();
        n += 1;
        // One in flight at a time keeps the load steady and the bookkeeping plain.
        let ack = recv(&mut socket)
            .await
            .expect("the publisher's socket stayed open");
        assert_eq!(ack["type"], "ack", "{ack}");
        let position = (
            ack["partition"].as_i64().unwrap(),
            ack["offset"].as_i64().unwrap(),
        );
        acked.push((position, n));
    }
    acked
}

/// Reads until `stop_at`; with `churn`, drops the socket that often and resumes from the
/// next offset per partition. Returns how often each position arrived.
async fn read(
    hub: String,
    topic: String,
    token: String,
    churn: Option<Duration>,
    stop_at: Instant,
) -> BTreeMap<(i64, i64), u32> {
    let stop_at = tokio::time::Instant::from_std(stop_at);
    let mut got: BTreeMap<(i64, i64), u32> = BTreeMap::new();
    let mut next: BTreeMap<String, i64> = BTreeMap::new();
    while tokio::time::Instant::now() < stop_at {
        let mut socket = connect(&hub, &token).await;
        let from = if next.is_empty() {
            json!("latest")
        } else {
            json!({ "offsets": next })
        };
        let subscribe = json!({"type":"subscribe","id":"s","topic":topic,"from":from});
        socket
            .send(Message::text(subscribe.to_string()))
            .await
            .unwrap();
        let session_end = churn.map_or(stop_at, |c| (tokio::time::Instant::now() + c).min(stop_at));
        while let Ok(Some(frame)) = tokio::time::timeout_at(session_end, recv(&mut socket)).await {
            if frame["type"] == "message" {
                let partition = frame["partition"].as_i64().unwrap();
                let offset = frame["offset"].as_i64().unwrap();
                *got.entry((partition, offset)).or_default() += 1;
                next.insert(partition.to_string(), offset + 1);
            }
        }
        let _ = socket.close(None).await;
    }
    got
}

/// The hub's resident memory every 10 s until the deadline, in KiB.
async fn sample(pid: String, deadline: Instant) -> Vec<u64> {
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        samples.push(rss);
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    samples
}
