//! History: paging back through a sparse room, and what sockets paging all along cost live
//! delivery.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use rdkafka::producer::FutureRecord;
use tokio_tungstenite::tungstenite::Message;

use crate::clients::next_text;
use crate::kafka::Broker;
use crate::load::timed_run;
use crate::records::payload;
use crate::report::{histogram, print_latency};
use crate::servers::Server;
use crate::{Args, now_us};

pub const HISTORY_TOPIC: &str = "bench.history";

/// Records in the history topic, and rooms (keys) they are spread over: one record in a
/// hundred is the measured room's.
pub const HISTORY_RECORDS: usize = 100_000;

pub const HISTORY_ROOMS: usize = 100;

/// History readers paging at once beside the live fan-out.
pub const HISTORY_READERS: usize = 100;

/// `history` pages of 50 back through a room that holds 1% of its topic's records, from the
/// newest to the oldest; then live latency to `--subscribers` with and without
/// `HISTORY_READERS` sockets paging history all along.
pub async fn history(hub: &Server, kafka: &Broker, args: &Args) {
    let producer = kafka.producer(&[("partitioner", "murmur2_random"), ("linger.ms", "5")]);
    let mut acks = Vec::with_capacity(HISTORY_RECORDS);
    for i in 0..HISTORY_RECORDS {
        let (room, value) = (format!("room-{}", i % HISTORY_ROOMS), payload(now_us(), i));
        let mut record = FutureRecord::to(HISTORY_TOPIC).key(&room).payload(&value);
        loop {
            match producer.send_result(record) {
                Ok(ack) => break acks.push(ack),
                Err((_, back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }
    for ack in acks {
        ack.await.unwrap().unwrap();
    }
    println!(
        "{HISTORY_RECORDS} records over {HISTORY_ROOMS} rooms (keys) in 4 partitions; paging back through room-0 (1% of the topic's records)"
    );

    let mut reader = hub.open(&hub.ws_url("reader")).await;
    let read_before = hub.metric("wskafka_history_offsets_read_total").await;
    let mut times = histogram();
    let (mut pages, mut messages) = (0, 0);
    let mut before = String::new();
    loop {
        let request = format!(
            r#"{{"type":"history","topic":"{HISTORY_TOPIC}","key":"room-0","limit":50{before}}}"#
        );
        let sent = Instant::now();
        reader.send(Message::text(request)).await.unwrap();
        let reply = next_text(&mut reader).await.expect("a history page");
        times.record(sent.elapsed().as_micros() as u64).unwrap();
        let page: serde_json::Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(page["type"], "history", "{page}");
        pages += 1;
        messages += page["messages"].as_array().unwrap().len();
        if page["oldest"] == true {
            break;
        }
        before = format!(r#","before":{}"#, page["before"]);
    }
    let read = hub.metric("wskafka_history_offsets_read_total").await - read_before;
    println!(
        "{pages} pages, {messages} records of the room; offsets read per page: {:.0} (the room's partition holds {} records)",
        read / pages as f64,
        HISTORY_RECORDS / 4
    );
    print_latency("history page of 50, request to answer", &times);
    drop(reader);

    let rate = args.rate;
    println!(
        "{rate:.1} records/s to {} subscribers, clean and then with {HISTORY_READERS} sockets paging history",
        args.subscribers
    );
    let clean = timed_run(hub, kafka, "bench.latency", args, rate, args.subscribers, 0)
        .await
        .socket;
    print_latency("clean run", &clean);
    hub.wait_idle().await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pages = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for n in 0..HISTORY_READERS {
        let mut socket = hub.open(&hub.ws_url("reader")).await;
        let (stop, pages) = (stop.clone(), pages.clone());
        readers.push(tokio::spawn(async move {
            let room = format!("room-{}", n % HISTORY_ROOMS);
            let mut before = String::new();
            while !stop.load(Ordering::Relaxed) {
                let request = format!(
                    r#"{{"type":"history","topic":"{HISTORY_TOPIC}","key":"{room}","limit":50{before}}}"#
                );
                socket.send(Message::text(request)).await.unwrap();
                let Some(reply) = next_text(&mut socket).await else { break };
                let page: serde_json::Value = serde_json::from_str(&reply).unwrap();
                pages.fetch_add(1, Ordering::Relaxed);
                before = if page["oldest"] == true {
                    String::new()
                } else {
                    format!(r#","before":{}"#, page["before"])
                };
            }
        }));
    }
    let loaded = timed_run(hub, kafka, "bench.latency", args, rate, args.subscribers, 0)
        .await
        .socket;
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        let _ = reader.await;
    }
    print_latency("with history readers", &loaded);
    println!(
        "history pages served during the loaded run: {} ({:.0}/s); loaded p99 / clean p99 = {:.2}",
        pages.load(Ordering::Relaxed),
        pages.load(Ordering::Relaxed) as f64 / args.seconds as f64,
        loaded.value_at_quantile(0.99) as f64 / clean.value_at_quantile(0.99) as f64
    );
}
