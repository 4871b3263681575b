//! Large records and sockets that stop reading: the hub stays within
//! `WSKAFKA_MEMORY_BUDGET`, because the recent records, the send queues, replays and
//! `history` pages are bounded in bytes, not counts (the README's "Memory" says how the
//! budget is shared). Scaled to a small budget so that a few hundred records of 900 KB, far
//! more than it holds, stay quick to produce.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const MIB: u64 = 1 << 20;
/// The budget the hubs here run with.
const BUDGET: &str = "256MiB";
const BUDGET_BYTES: u64 = 256 * MIB;
/// Its shares, as `memory::Budget` makes them: the recent records (3/8), one `history`
/// page (1/16 among 8 pages).
const RECENT_BYTES: u64 = BUDGET_BYTES * 3 / 8;
const PAGE_BYTES: usize = (BUDGET_BYTES / 16 / 8) as usize;
/// Kafka's default limit is 1 MB per record.
const PAD: usize = 900_000;

/// Written by hand: serde_json takes tens of milliseconds over 900 KB in a debug build.
fn large(seq: i64) -> Vec<u8> {
    format!("{{\"seq\":{seq},\"pad\":\"{}\"}}", "x".repeat(PAD)).into_bytes()
}

/// Produces `count` records of 900 KB to `topic`, two at a time, keyed over both
/// partitions; returns each one's position with its `seq`.
async fn produce_large(topic: &str, count: i64) -> BTreeMap<(i32, i64), i64> {
    let producer = producer();
    let sends = futures_util::stream::iter(0..count).map(|seq| {
        let producer = &producer;
        async move {
            let key = format!("k{}", seq % 4);
            (produce(producer, topic, &key, &large(seq)).await, seq)
        }
    });
    sends.buffer_unordered(2).collect().await
}

/// Reads the next `message` frame as a socket that keeps up does: its position and `seq`,
/// found without parsing its 900 KB of JSON, which in a debug build takes longer than
/// Kafka takes to bring the next record.
async fn next_record(client: &mut Client) -> ((i32, i64), i64) {
    let text = loop {
        let next = tokio::time::timeout(PATIENCE, client.ws.next()).await;
        match next.expect("no frame in time") {
            Some(Ok(Message::Text(text))) => break text,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("the healthy socket got {other:?}"),
        }
    };
    let number = |name: &str| -> i64 {
        let at = text
            .find(&format!("\"{name}\":"))
            .unwrap_or_else(|| panic!("no {name} in {}", &text[..text.len().min(300)]))
            + name.len()
            + 3;
        let digits: String = text[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().unwrap()
    };
    assert!(text.starts_with("{\"type\":\"message\""), "{text:.300}");
    (
        (number("partition") as i32, number("offset")),
        number("seq"),
    )
}

/// Deletes the topics a test filled with large records once it is done with them: a few
/// hundred megabytes a run would soon fill a shared development broker's disk.
struct Delete(Vec<String>);

impl Drop for Delete {
    fn drop(&mut self) {
        let topics = std::mem::take(&mut self.0);
        // Best effort, and on a thread of its own: a test may be unwinding.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let names: Vec<&str> = topics.iter().map(String::as_str).collect();
                let options = rdkafka::admin::AdminOptions::new();
                let _ = admin(broker()).delete_topics(&names, &options).await;
            });
        })
        .join();
    }
}

/// Samples a process's resident memory every 50 ms until dropped; `peak` is the highest.
struct Peak {
    peak: Arc<AtomicU64>,
    running: Arc<AtomicBool>,
}

impl Peak {
    fn of(pid: u32) -> Peak {
        let (peak, running) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(true)));
        tokio::spawn({
            let (peak, running) = (peak.clone(), running.clone());
            async move {
                while running.load(Ordering::Relaxed) {
                    peak.fetch_max(resident_bytes(pid), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        Peak { peak, running }
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for Peak {
    fn drop(&mut self) {
        self.running.store(false, Ordering::Relaxed);
    }
}

/// Reads a socket that stopped reading until the hub ends it: returns how many records it
/// got, whether a `lagged` came, and the close code (none when the hub dropped it without
/// one, after a write timed out). A socket still open with records missing fails the test.
async fn until_ended(client: &mut Client, all: usize) -> (usize, bool, Option<u16>) {
    let (mut received, mut lagged) = (0, false);
    loop {
        let next = match tokio::time::timeout(PATIENCE, client.ws.next()).await {
            Ok(next) => next,
            Err(_) if received == all => return (received, lagged, None),
            Err(_) => panic!("a slow socket was left open with {received} of {all} records"),
        };
        match next {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(&text).unwrap();
                match frame["type"].as_str() {
                    Some("message") => received += 1,
                    Some("lagged") => lagged = true,
                    _ => panic!("unexpected {frame}"),
                }
            }
            Some(Ok(Message::Close(frame))) => {
                return (received, lagged, frame.map(|f| u16::from(f.code)));
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return (received, lagged, None),
        }
    }
}

// The reading socket and the producer each get a thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_records_and_sockets_that_stop_reading_stay_within_the_budget() {
    let prefix = unique("memory");
    let topics: Vec<String> = (0..3).map(|i| format!("{prefix}.t{i}")).collect();
    for topic in &topics {
        create_topic(topic, 2).await;
    }
    let _delete = Delete(topics.clone());
    let glob = format!("{prefix}.*");
    let flags = ["--memory-budget", BUDGET, "--write-timeout", "3s"];
    let hub = Hub::start(&glob, &flags).await;
    let (mut slow, mut healthy) = slow_and_healthy(&hub, &glob, &topics).await;
    let idle = resident_bytes(hub.pid());
    let peak = Peak::of(hub.pid());

    // 270 MB in all, more than the whole budget.
    let count = 100;
    let reading = tokio::spawn(async move {
        let mut got = BTreeMap::new();
        while got.len() < count {
            let (position, seq) = next_record(&mut healthy).await;
            assert!(got.insert(position, seq).is_none(), "{position:?} twice");
        }
        got
    });
    let mut produced = Vec::new();
    for topic in &topics {
        produced.push(produce_large(topic, count as i64).await);
    }
    let got = reading.await.unwrap();
    assert_eq!(got, produced[0], "the healthy socket got every record once");

    for (i, client) in slow.iter_mut().enumerate() {
        let (received, lagged, code) = until_ended(client, count).await;
        eprintln!("slow socket {i}: {received} records, lagged {lagged}, close {code:?}");
        if lagged {
            assert_eq!(code, Some(4429));
        }
    }
    drop(slow);
    let peak = peak.peak();
    eprintln!("resident: idle {} MiB, peak {} MiB", idle / MIB, peak / MIB);
    assert!(peak < BUDGET_BYTES, "peak {} MiB", peak / MIB);

    // Given back: the recent records may stay, the rest goes.
    let settled = idle + RECENT_BYTES + 32 * MIB;
    eventually(
        format!("resident memory under {} MiB", settled / MIB),
        || async { resident_bytes(hub.pid()) < settled },
    )
    .await;
    eprintln!("resident: settled {} MiB", resident_bytes(hub.pid()) / MIB);
}

// The reading socket and the producer each get a thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_lagged_for_bytes_resumes_with_every_record_once() {
    let (topic, glob) = fresh_topic("bytes-lagged", 2).await;
    let _delete = Delete(vec![topic.clone()]);
    // The slow socket is read again well within the write timeout.
    let flags = ["--memory-budget", BUDGET, "--write-timeout", "60s"];
    let hub = Hub::start(&glob, &flags).await;
    let reader = token("reader", &[], &[&glob]);
    let (mut slow, mut healthy) = (hub.connect(&reader).await, hub.connect(&reader).await);
    let subscribed = slow.subscribe_from(&topic, json!("latest")).await;
    let mut before = Received::starting_at(&subscribed);
    healthy.subscribe(&topic).await;

    // 54 MB: far past a socket's 8 MiB and what socket buffers hold, far below the
    // 4,096 records the send queue counts.
    let count = 60;
    let reading = tokio::spawn(async move {
        for _ in 0..count {
            next_record(&mut healthy).await;
        }
    });
    let produced = produce_large(&topic, count).await;
    reading.await.unwrap();

    let lagged = loop {
        let frame = slow.recv().await;
        match frame["type"].as_str() {
            Some("message") => before.take(position(&frame), &frame),
            Some("lagged") => break frame,
            _ => panic!("unexpected {frame}"),
        }
    };
    assert!(before.seqs.len() < count as usize);
    let close = slow.closed().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 4429);
    assert_eq!(before.resume()["offsets"], lagged["topics"][&topic]);
    hub.until_metric("wskafka_lagged_for_bytes_total", 1.0)
        .await;

    let mut again = hub.connect(&reader).await;
    let subscribed = again.subscribe_from(&topic, before.resume()).await;
    Received::starting_at(&subscribed)
        .resumed_after(before, &mut again, &produced)
        .await;
}

// The reading socket and the producer each get a thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_and_replays_of_large_records_stay_within_their_bytes() {
    let (topic, glob) = fresh_topic("bytes-history", 1).await;
    let _delete = Delete(vec![topic.clone()]);
    // Pages come as fast as the reader asks: a budget of 5 a second is not what this tests.
    let args = ["--memory-budget", BUDGET, "--request-rates", "history=1000"];
    let hub = Hub::start(&glob, &args).await;
    let reader = token("reader", &[], &[&glob]);
    // 22 MB: more than the socket's buffers at both ends take.
    let count = 24;
    let produced = produce_large(&topic, count).await;

    // Each page stops at its bytes and says so; together they hold every record once.
    let mut client = hub.connect(&reader).await;
    let mut paged = BTreeMap::new();
    let mut before: Option<Value> = None;
    for n in 0..=count {
        let mut request = json!({"type": "history", "id": n, "topic": topic, "limit": 50});
        if let Some(before) = &before {
            request["before"] = before.clone();
        }
        let page = client.call(request).await;
        assert_eq!(page["type"], "history", "{page}");
        let messages = page["messages"].as_array().unwrap();
        let bytes: usize = messages.iter().map(|m| m.to_string().len()).sum();
        assert!(bytes <= PAGE_BYTES, "a page of {bytes} bytes");
        for m in messages {
            let seq = m["payload"]["seq"].as_i64().unwrap();
            assert!(paged.insert(position(m), seq).is_none(), "{m} twice");
        }
        if page["oldest"] == true {
            break;
        }
        assert_eq!(page["partial"], true, "a short page says so");
        before = Some(page["before"].clone());
    }
    assert_eq!(paged, produced);

    // A replay from the start to a socket that does not read for a while holds its window
    // (a record larger than the window fills it), not the topic; then the socket gets
    // every record once.
    let pid = hub.pid();
    let idle = resident_bytes(pid);
    let peak = Peak::of(pid);
    let mut replayed = hub.connect(&reader).await;
    replayed
        .send(json!({"type": "subscribe", "id": "r", "topic": topic, "from": "earliest"}))
        .await;
    // Awaited rather than slept for: on a busy machine the replay's first read can take
    // seconds (a fixed 3 s wait once saw 0 bytes held).
    eventually("the replay holding its window", async || {
        hub.metrics().await["wskafka_replay_bytes"] > 0.0
    })
    .await;
    let held = hub.metrics().await["wskafka_replay_bytes"];
    assert!(held <= PAD as f64 * 1.1, "{held} bytes of replay held");
    let subscribed = replayed.recv().await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    let mut got = Received::starting_at(&subscribed);
    while got.seqs.len() < count as usize {
        let (position, message) = replayed.message().await;
        got.take(position, &message);
    }
    assert_eq!(got.seqs, produced);
    let grown = peak.peak().saturating_sub(idle);
    eprintln!("replay: resident grew {} MiB", grown / MIB);
    assert!(grown < 64 * MIB, "resident memory grew {} MiB", grown / MIB);
}

/// Two sockets on each topic that will stop reading, and one that reads the first topic.
async fn slow_and_healthy(hub: &Hub, glob: &str, topics: &[String]) -> (Vec<Client>, Client) {
    let reader = token("reader", &[], &[glob]);
    let mut slow = Vec::new();
    for topic in topics {
        for _ in 0..2 {
            let mut client = hub.connect(&reader).await;
            client.subscribe(topic).await;
            slow.push(client);
        }
    }
    let mut healthy = hub.connect(&reader).await;
    healthy.subscribe(&topics[0]).await;
    (slow, healthy)
}

#[tokio::test]
async fn a_budget_larger_than_the_machine_is_warned_of_and_a_malformed_one_refused() {
    let hub = Hub::start("budget.*", &["--memory-budget", "100000GiB"]).await;
    let warned = |hub: &Hub| {
        hub.log_lines().iter().any(|line| {
            line.contains("WARN") && line.contains("WSKAFKA_MEMORY_BUDGET is more than")
        })
    };
    assert!(warned(&hub), "no warning about a budget of 100000 GiB");
    let fits = Hub::start("budget.*", &["--memory-budget", "128MiB"]).await;
    assert!(!warned(&fits));

    let (code, stderr) = run_to_exit(hub_command(
        "127.0.0.1:0",
        "budget.*",
        &["--memory-budget", "12 parsecs"],
    ))
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("expected bytes such as 512MiB"), "{stderr}");
}

/// Not a test: the figures in BENCHMARKS.md ("Memory"), for builds of the hub named in
/// `WSKAFKA_MEASURE` as `label=path,...` (the one built here when unset), in one run:
/// resident memory over a burst of large records to sockets that stop reading, idle memory
/// per socket, and fan-out. Run by hand:
/// `WSKAFKA_MEASURE=system=/tmp/a,jemalloc=/tmp/b cargo test --test memory -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure() {
    let builds = std::env::var("WSKAFKA_MEASURE")
        .unwrap_or_else(|_| format!("this={}", env!("CARGO_BIN_EXE_wskafka")));
    // `burst`, `fanout` or both (unset).
    let parts = std::env::var("WSKAFKA_MEASURE_PARTS").unwrap_or_default();
    for build in builds.split(',') {
        let (label, binary) = build.split_once('=').expect("label=path");
        if !parts.contains("fanout") {
            measure_burst(label, binary).await;
        }
        if !parts.contains("burst") {
            measure_idle_and_fanout(label, binary).await;
        }
    }
}

async fn start(binary: &str, glob: &str, extra: &[&str]) -> Hub {
    let mut command = hub_command_of(binary, "127.0.0.1:0", glob, extra);
    // As a variable, which builds from before the budget ignore.
    command.env("WSKAFKA_MEMORY_BUDGET", BUDGET);
    command.env("RUST_LOG", "info,librdkafka=warn,rdkafka=warn");
    let hub = Hub::launch(command).await;
    hub.wait_readyz(200).await;
    hub
}

async fn measure_burst(label: &str, binary: &str) {
    let prefix = unique("measure");
    let topics: Vec<String> = (0..3).map(|i| format!("{prefix}.t{i}")).collect();
    for topic in &topics {
        create_topic(topic, 2).await;
    }
    let _delete = Delete(topics.clone());
    let glob = format!("{prefix}.*");
    let hub = start(binary, &glob, &["--write-timeout", "3s"]).await;
    let (slow, mut healthy) = slow_and_healthy(&hub, &glob, &topics).await;
    let idle = resident_bytes(hub.pid());
    let peak = Peak::of(hub.pid());
    let count = 100;
    let reading = tokio::spawn(async move {
        let mut got = 0;
        while got < count {
            next_record(&mut healthy).await;
            got += 1;
        }
    });
    for topic in &topics {
        produce_large(topic, count as i64).await;
    }
    reading.await.unwrap();
    drop(slow);
    let burst = peak.peak();
    let mut settled = Vec::new();
    for wait in [5, 15, 40] {
        tokio::time::sleep(Duration::from_secs(wait)).await;
        settled.push(resident_bytes(hub.pid()) / MIB);
    }
    let recent = hub.metrics().await.get("wskafka_recent_bytes").copied();
    println!(
        "{label}: burst of 270 MB: RSS idle {} MiB, peak {} MiB, then {:?} MiB at 5, 20 and 60 s \
         (recent records: {:?} MiB)",
        idle / MIB,
        burst / MIB,
        settled,
        recent.map(|b| b as u64 / MIB)
    );
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

async fn measure_idle_and_fanout(label: &str, binary: &str) {
    const RECORDS: usize = 600;
    let (topic, glob) = fresh_topic("measure-fanout", 1).await;
    let _delete = Delete(vec![topic.clone()]);
    let hub = start(binary, &glob, &["--max-connections-per-user", "100000"]).await;
    let reader = token("reader", &[], &[&glob]);
    let before = resident_bytes(hub.pid());
    let sockets = 500;
    let mut clients = Vec::new();
    for _ in 0..sockets {
        let mut client = hub.connect(&reader).await;
        client.subscribe(&topic).await;
        clients.push(client);
    }
    let after = resident_bytes(hub.pid());
    let per_socket = (after - before) as f64 / sockets as f64 / 1024.0;
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                for _ in 0..RECORDS {
                    client.message().await;
                }
            })
        })
        .collect();
    let ticks = cpu_ticks(hub.pid());
    let started = std::time::Instant::now();
    produce_many(&topic, RECORDS as i64).await;
    for reader in readers {
        reader.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = (cpu_ticks(hub.pid()) - ticks) as f64 / 100.0;
    let deliveries = RECORDS as f64 * sockets as f64;
    println!(
        "{label}: {sockets} idle sockets: {per_socket:.1} KiB each; fan-out of {RECORDS} records to them: \
         {:.0} deliveries/s, {:.0} per CPU-second, RSS after {} MiB",
        deliveries / elapsed,
        deliveries / cpu,
        resident_bytes(hub.pid()) / MIB
    );
}
