//! Exactly-once publish: ingest with `publish_id`s against ingest without (the same hub, in
//! alternating rounds of one run), and how long resends take to be answered: found in Kafka,
//! and written after waiting out a first attempt that could still have landed.

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

use crate::Args;
use crate::clients::next_text;
use crate::report::{histogram, print_latency};
use crate::scenarios::ingest::publish_run;
use crate::servers::Server;

pub const ONCE_TOPIC: &str = "bench.once";
/// The hub's landing bound with its default settings: ping interval 25 s + pong timeout 10 s
/// + publish timeout 10 s + 10 s (docs/protocol.md, "Publishing exactly once").
const LANDING: Duration = Duration::from_secs(55);
const RESENDS: usize = 200;
const ROUNDS: usize = 5;

pub async fn once(hub: &Server, args: &Args) {
    // Alternating rounds, so that drift on a shared machine falls on both sides alike; the
    // median of the rounds' ratios is the figure.
    let mut ratios = Vec::new();
    for round in 0..ROUNDS {
        let without = publish_run(hub, args, false).await.0;
        let with = publish_run(hub, args, true).await.0;
        println!(
            "round {round}: with publish ids / without = {:.3}",
            with / without
        );
        ratios.push(with / without);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "ingest with publish ids / without, median of {ROUNDS} rounds = {:.3} (target >= 0.95)",
        ratios[ROUNDS / 2]
    );

    let mut socket = hub.open(&hub.ws_url("once")).await;
    let frame = |n: usize, id: &str, extra: &str| {
        format!(
            r#"{{"type":"publish","id":{n},"topic":"{ONCE_TOPIC}","key":"room-{}","publish_id":"{id}"{extra},"payload":{{"n":{n}}}}}"#,
            n % 8
        )
    };
    // First attempts, acked; then each resent as if its ack had been lost.
    for n in 0..RESENDS {
        socket
            .send(Message::text(frame(n, &format!("found-{n}"), "")))
            .await
            .unwrap();
        let ack = next_text(&mut socket).await.unwrap();
        assert!(ack.starts_with(r#"{"type":"ack""#), "{ack}");
    }
    let mut found = histogram();
    let mut first = None;
    for n in 0..RESENDS {
        let resend = frame(n, &format!("found-{n}"), r#","age_ms":2000,"attempt":1"#);
        let asked = Instant::now();
        socket.send(Message::text(resend)).await.unwrap();
        let ack = next_text(&mut socket).await.unwrap();
        assert!(ack.starts_with(r#"{"type":"ack""#), "{ack}");
        let took = asked.elapsed();
        // The first resend of each of the topic's partitions starts its reader.
        first.get_or_insert(took);
        found.record(took.as_micros() as u64).unwrap();
    }
    println!(
        "resend found in Kafka: first (starts the partition's reader) {:.1} ms",
        first.unwrap().as_secs_f64() * 1e3
    );
    print_latency("resend found in Kafka, each", &found);

    // First attempts that never reached a hub, resent 1 s before they could no longer land:
    // each waits out that second, then is written.
    let wait = Duration::from_secs(1);
    let age = (LANDING - wait).as_millis();
    let sent = Instant::now();
    for n in 0..RESENDS {
        let extra = format!(r#","age_ms":{age},"attempt":1"#);
        socket
            .feed(Message::text(frame(n, &format!("waited-{n}"), &extra)))
            .await
            .unwrap();
    }
    socket.flush().await.unwrap();
    let mut waited = histogram();
    for _ in 0..RESENDS {
        let ack = next_text(&mut socket).await.unwrap();
        assert!(ack.starts_with(r#"{"type":"ack""#), "{ack}");
        waited
            .record(sent.elapsed().saturating_sub(wait).as_micros() as u64)
            .unwrap();
    }
    print_latency(
        &format!("{RESENDS} resends at once that waited out {wait:?}, beyond that wait"),
        &waited,
    );
}
