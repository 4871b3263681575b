//! Presence across two hubs: a join and a signal from one to the other, and what a large
//! room costs the roster of a hub that holds none of its sockets.

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt, stream};
use tokio_tungstenite::tungstenite::Message;

use crate::clients::next_text;
use crate::kafka::Broker;
use crate::records::stamp;
use crate::report::{histogram, print_latency};
use crate::servers::Server;
use crate::{Socket, now_us};

/// Members of the presence scenario's large room.
pub const PRESENCE_MEMBERS: usize = 10_000;

/// Joins, and signals, timed one at a time from one hub to the other.
pub const PRESENCE_SAMPLES: usize = 300;

/// The subscribe of the presence scenario: room `key`, with joins and signals or without.
pub fn enter_room(key: &str, told: bool) -> String {
    format!(
        r#"{{"type":"subscribe","id":"s","topic":"bench.rooms","key":"{key}","presence":{told},"signals":{told}}}"#
    )
}

/// Two hubs with presence on, on the same broker: how long a join on one takes to show on
/// the other, the same for a signal, what a member costs the roster of a hub that holds
/// none of its sockets, and a room of `PRESENCE_MEMBERS`.
pub async fn presence(binary: &Path, kafka: &Broker, work: &Path) {
    let settings = [
        "--presence-topic",
        "bench.presence-events",
        "--roster-topic",
        "bench.roster",
        "--signal-topic",
        "bench.signals",
        "--roster-limit",
        "20000",
        "--signal-rate",
        "1000",
    ];
    let cap = PRESENCE_MEMBERS + 1000;
    let a = Server::hub(binary, &kafka.addr, work, cap, "presence-a", &settings).await;
    let b = Server::hub(binary, &kafka.addr, work, cap, "presence-b", &settings).await;
    println!("two hubs with presence on, both on core 0");
    let mut observer = a.open(&a.ws_url("observer")).await;
    observer
        .send(Message::text(enter_room("timed", true)))
        .await
        .unwrap();
    let reply = next_text(&mut observer).await.unwrap();
    assert!(reply.contains("subscribed"), "{reply}");

    // A join on hub b, seen on hub a.
    let mut joins = histogram();
    for n in 0..PRESENCE_SAMPLES {
        let mut member = b.open(&b.ws_url(&format!("member-{n}"))).await;
        let user = serde_json::Value::from(format!("member-{n}"));
        let sent = Instant::now();
        member
            .send(Message::text(enter_room("timed", true)))
            .await
            .unwrap();
        loop {
            let frame = next_text(&mut observer).await.expect("a join");
            // Joins come batched, in a `presence_diff` per room and interval (250 ms).
            let frame: serde_json::Value = serde_json::from_str(&frame).unwrap();
            let joined = frame["joins"].as_array().is_some_and(|j| j.contains(&user));
            if frame["type"] == "presence_diff" && joined {
                break;
            }
        }
        joins.record(sent.elapsed().as_micros() as u64).unwrap();
        drop(member);
    }
    print_latency(
        "a join on one hub, seen on the other (batched per 250 ms)",
        &joins,
    );

    // Signals from hub b to a subscriber on hub a, each stamped with its send time.
    let mut sender = b.open(&b.ws_url("typist")).await;
    sender
        .send(Message::text(enter_room("timed", true)))
        .await
        .unwrap();
    // The first signal sets up the producer's connection and the topic's metadata.
    sender
        .send(Message::text(
            r#"{"type":"signal","topic":"bench.rooms","key":"timed","payload":"warm-up"}"#,
        ))
        .await
        .unwrap();
    while !next_text(&mut observer)
        .await
        .expect("the warm-up signal")
        .contains("warm-up")
    {}
    let mut signals = histogram();
    for n in 0..PRESENCE_SAMPLES {
        let signal = format!(
            r#"{{"type":"signal","topic":"bench.rooms","key":"timed","payload":{{"t":{},"i":{n}}}}}"#,
            now_us()
        );
        sender.send(Message::text(signal)).await.unwrap();
        loop {
            let frame = next_text(&mut observer).await.expect("a signal");
            if !frame.contains(r#""type":"signal""#) {
                continue;
            }
            if let Some((sent, i)) = stamp(&frame)
                && i == n
            {
                signals.record(now_us().saturating_sub(sent)).unwrap();
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    print_latency(
        "a signal from one hub to a subscriber on the other",
        &signals,
    );
    drop((observer, sender));
    a.wait_idle().await;

    // A room of 10,000 members, all on hub b: what hub a's roster pays for them, and how
    // long until hub a counts them all.
    let (before, before_b) = (a.usage(), b.usage());
    let started = Instant::now();
    let members: Vec<Socket> = stream::iter(0..PRESENCE_MEMBERS)
        .map(|n| {
            let b = &b;
            async move {
                let mut socket = b.open(&b.ws_url(&format!("crowd-{n}"))).await;
                socket
                    .send(Message::text(enter_room("crowd", false)))
                    .await
                    .unwrap();
                let reply = next_text(&mut socket).await.expect("a reply");
                assert!(reply.contains("subscribed"), "{reply}");
                socket
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let mut asker = a.open(&a.ws_url("asker")).await;
    let ask = r#"{"type":"presence","topic":"bench.rooms","key":"crowd"}"#;
    let counted = loop {
        asker.send(Message::text(ask)).await.unwrap();
        let reply = next_text(&mut asker).await.expect("a presence answer");
        let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
        if reply["count"].as_u64() == Some(PRESENCE_MEMBERS as u64) {
            break started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let after = a.usage();
    println!(
        "{PRESENCE_MEMBERS} members joined one room through hub b: all counted on hub a after {:.1} s; hub a RSS {} -> {} KiB ({:.0} bytes per member, none of whose sockets it holds); CPU meanwhile: hub a {:.2} s, hub b {:.2} s",
        counted.as_secs_f64(),
        before.rss_kib,
        after.rss_kib,
        (after.rss_kib as f64 - before.rss_kib as f64) * 1024.0 / PRESENCE_MEMBERS as f64,
        (after.cpu - before.cpu).as_secs_f64(),
        (b.usage().cpu - before_b.cpu).as_secs_f64(),
    );
    let mut pages = histogram();
    for _ in 0..50 {
        let sent = Instant::now();
        asker.send(Message::text(ask)).await.unwrap();
        next_text(&mut asker).await.expect("a presence answer");
        pages.record(sent.elapsed().as_micros() as u64).unwrap();
    }
    print_latency("a presence page of 100 from the 10,000-member room", &pages);
    drop(members);
}
