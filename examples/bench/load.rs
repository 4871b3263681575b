//! The drivers the scenarios share: bursts timed until every socket had them, paced runs at
//! a fixed rate through a server and a plain consumer at once, and the latency readers.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use hdrhistogram::Histogram;
use rdkafka::producer::FutureProducer;
use tokio_tungstenite::tungstenite::Message;

use crate::clients::{Counters, next_text};
use crate::kafka::{Broker, next_stamp, produce, warm_up};
use crate::records::{message_frame, payload, stamps};
use crate::report::{Usage, histogram, print_hub_side, report_client};
use crate::servers::{Kind, Route, Server};
use crate::{Args, Socket, now_us};

/// `BURST` records produced as fast as the producer takes them, each acked.
pub async fn kafka_burst(producer: &FutureProducer, route: &Route) {
    let mut acks = Vec::with_capacity(BURST);
    for i in 0..BURST {
        acks.push(produce(producer, route, payload(now_us(), i)).await);
    }
    for ack in acks {
        ack.await.unwrap().expect("the broker took the record");
    }
}

/// Records per fan-out burst: under the servers' 1024-frame queues.
pub const BURST: usize = 500;

/// Alternating rounds of bursts per server; the ratio reported is their median.
pub const ROUNDS: usize = 3;

/// Deliveries per second from `server` to the sockets behind `delivered` over `bursts`
/// calls of `send_burst` (`BURST` records each), timing each burst until every socket has
/// it; prints the rate and the CPU both sides used, and returns the rate and the server's
/// share of its core.
pub async fn burst_rate(
    server: &Server,
    delivered: &Counters,
    round: usize,
    bursts: usize,
    mut send_burst: impl AsyncFnMut(),
) -> (f64, f64) {
    let n = delivered.tasks.len();
    let (client, before) = (Usage::of_self(), server.usage());
    let mut elapsed = Duration::ZERO;
    for _ in 0..bursts {
        let target = delivered.count.load(Ordering::Relaxed) + n * BURST;
        let started = Instant::now();
        send_burst().await;
        delivered.wait_for(target).await;
        elapsed += started.elapsed();
    }
    let rate = (n * BURST * bursts) as f64 / elapsed.as_secs_f64();
    let cpu = server.usage().cpu_since(&before);
    println!(
        "round {round}: {}: {bursts} bursts of {BURST} records to {n} sockets: {rate:.0} deliveries/s, server CPU {:.0}%",
        server.label(),
        cpu * 100.0
    );
    report_client(&client);
    (rate, cpu)
}

/// What a timed run through a server measured.
pub struct Run {
    /// From each record's send time to its arrival at each reading subscriber.
    pub socket: Histogram<u64>,
    /// From each record's send time to its arrival at the plain consumer.
    pub plain: Histogram<u64>,
    /// Per record and subscriber, its arrival there minus its arrival at the plain consumer
    /// in µs, sorted (negative where the hub's consumer was the quicker of the two).
    pub added: Vec<i64>,
    /// The server's share of its core.
    pub cpu: f64,
}

/// Sends records at `rate` for the configured time to the subscribers of `topic`,
/// `subscribers` sockets of `server` (`stalled` of them never read), and to a plain consumer.
pub async fn timed_run(
    server: &Server,
    kafka: &Broker,
    topic: &str,
    args: &Args,
    rate: f64,
    subscribers: usize,
    stalled: usize,
) -> Run {
    let mut readers = server.subscribers(topic, subscribers).await;
    let held: Vec<Socket> = readers.drain(..stalled).collect();
    let plain = kafka.consumer_at_end();
    let producer = kafka.producer(&[]);
    let route = server.route(topic);
    warm_up(&producer, &route, &plain).await;
    // Every subscriber has its first record before the clock starts.
    for socket in &mut readers {
        tokio::time::timeout(Duration::from_secs(30), next_text(socket))
            .await
            .expect("a subscriber got the warm-up record");
    }
    let total = (rate * args.seconds as f64) as usize;
    let patience = Duration::from_secs_f64(total as f64 / rate + 30.0);
    let (client, before) = (Usage::of_self(), server.usage());
    let written_before = match server.kind {
        Kind::Hub => Some(server.delivery_buckets().await),
        _ => None,
    };
    let readers = spawn_latency_readers(readers, total, patience);
    let reading = tokio::spawn(async move {
        let mut latency = histogram();
        let mut arrivals = vec![None; total];
        while latency.len() < total as u64 {
            let (sent, i) = next_stamp(&plain).await;
            let at = now_us();
            latency.record(at.saturating_sub(sent)).unwrap();
            if let Some(slot) = arrivals.get_mut(i) {
                *slot = Some(at);
            }
        }
        (latency, arrivals)
    });
    paced(rate, total, async |i, sent| {
        drop(produce(&producer, &route, payload(sent, i)).await);
    })
    .await;
    let (socket_latency, socket_arrivals) = merge(readers).await;
    let (plain_latency, plain_arrivals) = reading.await.unwrap();
    let cpu = server.usage().cpu_since(&before);
    println!("  {} CPU {:.0}%", server.label(), cpu * 100.0);
    report_client(&client);
    if let Some(before) = written_before {
        print_hub_side(server, &before).await;
    }
    drop(held);
    let mut added: Vec<i64> = socket_arrivals
        .into_iter()
        .flatten()
        .filter_map(|(i, at)| Some(at as i64 - (*plain_arrivals.get(i)?)? as i64))
        .collect();
    added.sort_unstable();
    Run {
        socket: socket_latency,
        plain: plain_latency,
        added,
        cpu,
    }
}

/// The same paced load through the bare server, from a publisher socket; returns the
/// subscribers' latency and the server's CPU share.
pub async fn paced_bare(bare: &Server, args: &Args, rate: f64) -> (Histogram<u64>, f64) {
    let readers = bare.sockets(args.subscribers).await;
    let mut publisher = bare.open(&bare.ws_url("publisher")).await;
    let total = (rate * args.seconds as f64) as usize;
    let patience = Duration::from_secs_f64(total as f64 / rate + 30.0);
    let (client, server) = (Usage::of_self(), bare.usage());
    let readers = spawn_latency_readers(readers, total, patience);
    paced(rate, total, async |i, sent| {
        let frame = message_frame("bench.latency", i, payload(sent, i));
        publisher.send(Message::text(frame)).await.unwrap();
    })
    .await;
    let (latency, _) = merge(readers).await;
    let cpu = bare.usage().cpu_since(&server);
    println!("  bare server CPU {:.0}%", cpu * 100.0);
    report_client(&client);
    (latency, cpu)
}

/// Calls `send(i, intended send time)` for `total` records at `rate`. Each record leaves at
/// its intended time and carries that time, so a stalled sender shows as latency.
pub async fn paced(rate: f64, total: usize, mut send: impl AsyncFnMut(usize, u64)) {
    let start = tokio::time::Instant::now();
    for i in 0..total {
        let intended = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(intended).await;
        send(i, now_us() - intended.elapsed().as_micros() as u64).await;
    }
}

/// One task per socket recording the latency of each stamped frame, and when it arrived,
/// until the socket had record `total - 1` or `patience` ran out.
pub fn spawn_latency_readers(
    sockets: Vec<Socket>,
    total: usize,
    patience: Duration,
) -> Vec<tokio::task::JoinHandle<Reader>> {
    let deadline = tokio::time::Instant::now() + patience;
    sockets
        .into_iter()
        .map(|mut socket| {
            tokio::spawn(async move {
                let mut latency = histogram();
                let mut arrivals = Vec::with_capacity(total);
                while let Ok(Some(text)) =
                    tokio::time::timeout_at(deadline, next_text(&mut socket)).await
                {
                    let at = now_us();
                    for (sent, i) in stamps(&text) {
                        latency.record(at.saturating_sub(sent)).unwrap();
                        arrivals.push((i, at));
                    }
                    if arrivals.last().is_some_and(|(i, _)| i + 1 >= total) {
                        break;
                    }
                }
                (latency, arrivals)
            })
        })
        .collect()
}

/// What one reading socket saw: its latency histogram, and (index, arrival) per record.
pub type Reader = (Histogram<u64>, Vec<(usize, u64)>);

pub async fn merge(
    readers: Vec<tokio::task::JoinHandle<Reader>>,
) -> (Histogram<u64>, Vec<Vec<(usize, u64)>>) {
    let mut merged = histogram();
    let mut arrivals = Vec::with_capacity(readers.len());
    for reader in readers {
        let (latency, seen) = reader.await.unwrap();
        merged.add(latency).unwrap();
        arrivals.push(seen);
    }
    (merged, arrivals)
}
