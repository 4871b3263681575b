//! Ingest: acked publishes per second from many sockets, against a plain producer and the
//! bare server, and what each publish costs a core.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Barrier;

use crate::clients::publish_loop;
use crate::kafka::{Broker, produce};
use crate::records::payload;
use crate::report::{Usage, report_client};
use crate::servers::{Route, Server};
use crate::{Args, now_us};

pub async fn ingest(hub: &Server, bare: &Server, kafka: &Broker, args: &Args) {
    let route = Route::plain("bench.ingest");
    let duration = Duration::from_secs(args.seconds);
    let in_flight = args.publishers * args.window;

    // Plain rdkafka, with the hub's producer settings and as many records in flight.
    let producer = kafka.producer(&[("enable.idempotence", "true"), ("linger.ms", "5")]);
    let client = Usage::of_self();
    let acked = Arc::new(AtomicU64::new(0));
    let permits = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < duration {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let ack = produce(&producer, &route, payload(now_us(), i)).await;
        let acked = acked.clone();
        tokio::spawn(async move {
            if let Ok(Ok(_)) = ack.await {
                acked.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        });
        i += 1;
    }
    let plain = acked.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    println!("plain rdkafka producer: {plain:.0} acked records/s ({in_flight} in flight)");
    let plain_cpu = report_client(&client);
    let _ = permits.acquire_many(in_flight as u32).await;

    let (rate, hub_cpu) = publish_run(hub, args, false).await;
    let (bare_rate, bare_cpu) = publish_run(bare, args, false).await;
    // What each publish costs a core holds whichever side limits the rate. The plain
    // producer's figure includes the load generator's own work, so Kafka's share is at most
    // that. A server paying the bare server's share and Kafka's on one core reaches at most
    // kafka / (bare + kafka) of what the plain producer does with a core of its own (which
    // the measured plain rate, taken on the load generator's core, understates).
    let (kafka_us, hub_us, bare_us) = (
        plain_cpu / plain * 1e6,
        hub_cpu / rate * 1e6,
        bare_cpu / bare_rate * 1e6,
    );
    println!(
        "core time per publish: hub {hub_us:.1} us, bare axum {bare_us:.1} us, plain rdkafka at most {kafka_us:.1} us"
    );
    println!(
        "  so a server doing what both do on one core reaches at most {:.2} of a plain producer on a core of its own",
        kafka_us / (bare_us + kafka_us)
    );
    println!(
        "ingest: hub / plain rdkafka = {:.2} (target: >= 50000/s and >= 0.5)",
        rate / plain
    );
}

/// Publishes from `--publishers` sockets, `--window` in flight each, for `--seconds`, each
/// with a `publish_id` when `publish_ids`; returns the answered publishes per second and the
/// server's share of its core.
pub async fn publish_run(server: &Server, args: &Args, publish_ids: bool) -> (f64, f64) {
    let duration = Duration::from_secs(args.seconds);
    let sockets = server.sockets(args.publishers).await;
    let (client, before) = (Usage::of_self(), server.usage());
    let barrier = Arc::new(Barrier::new(sockets.len()));
    let deadline = tokio::time::Instant::now() + duration;
    let tasks: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, socket)| {
            let ids = publish_ids.then_some(i);
            tokio::spawn(publish_loop(
                socket,
                args.window,
                barrier.clone(),
                deadline,
                ids,
            ))
        })
        .collect();
    let (mut acks, mut errors) = (0, 0);
    for task in tasks {
        let (a, e) = task.await.unwrap();
        acks += a;
        errors += e;
    }
    let rate = acks as f64 / duration.as_secs_f64();
    let cpu = server.usage().cpu_since(&before);
    println!(
        "{}: {rate:.0} acked publishes/s from {} sockets ({errors} errors), server CPU {:.0}%",
        server.label(),
        args.publishers,
        cpu * 100.0
    );
    report_client(&client);
    (rate, cpu)
}
