//! A fleet of hubs on one broker (issue 37): `FLEET_TOPICS` topics with records flowing into
//! all of them, each hub's sockets following a different tenth; what the broker sends each
//! hub and what each hub's core pays, with interest-based consumption and without
//! (`--consume-all`), one after the other in the same run.
//!
//! The broker's bytes out to a hub are read from the kernel: the `bytes_received` of every
//! TCP connection the hub holds to the broker's port (`ss -tip`), over the timed window.
//! That is everything the broker sent the hub (fetches, produce and metadata answers), as
//! Kafka's `BytesOutPerSec` would count it per client, without JMX.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};

use crate::Args;
use crate::clients::spawn_counters;
use crate::kafka::{Broker, produce};
use crate::load::paced;
use crate::records::payload;
use crate::report::{Usage, report_client, wait_quiet};
use crate::servers::{Route, Server};

/// Topics the records flow into; each hub's sockets follow a tenth of them.
pub const FLEET_TOPICS: usize = 200;
/// Sockets per followed topic on each hub.
const SOCKETS_PER_TOPIC: usize = 5;

fn topic(i: usize) -> String {
    format!("bench.fleet.t{i:03}")
}

pub async fn fleet(binary: &Path, kafka: &Broker, work: &Path, args: &Args) {
    let admin: AdminClient<_> = kafka.config().create().unwrap();
    let names: Vec<String> = (0..FLEET_TOPICS).map(topic).collect();
    let new: Vec<NewTopic> = names
        .iter()
        .map(|name| NewTopic::new(name, 1, TopicReplication::Fixed(1)))
        .collect();
    for result in admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .unwrap()
    {
        result.unwrap();
    }
    let followed = FLEET_TOPICS / 10;
    let hubs = args.fleet_hubs;
    println!(
        "{hubs} hubs on one broker, {FLEET_TOPICS} topics of one partition with {:.0} records/s spread over all \
         for {} s; hub n's sockets follow topics n*{followed}..(n+1)*{followed}, {SOCKETS_PER_TOPIC} sockets each",
        args.fleet_rate, args.seconds
    );
    let mut received = Vec::new();
    for (label, extra) in [("interest", None), ("consume all", Some("--consume-all"))] {
        println!("-- {label}");
        received.push(phase(binary, kafka, work, args, label, extra).await);
    }
    let (interest, all) = (received[0], received[1]);
    println!(
        "fleet: broker bytes out to the hubs, interest / consume all = {:.3} ({:.1} MiB against {:.1} MiB)",
        interest as f64 / all as f64,
        interest as f64 / 1048576.0,
        all as f64 / 1048576.0
    );
}

/// One fleet: starts the hubs, subscribes their sockets, sends the records, and prints what
/// each hub received from the broker and its CPU; returns the bytes the hubs received.
async fn phase(
    binary: &Path,
    kafka: &Broker,
    work: &Path,
    args: &Args,
    label: &str,
    extra: Option<&str>,
) -> u64 {
    // Every socket is the same user's, subscribing at once.
    let mut settings = vec![
        "--topics",
        "bench.fleet.*",
        "--user-request-rates",
        "subscribe=1000000",
    ];
    settings.extend(extra);
    let mut hubs = Vec::new();
    for n in 0..usize::from(args.fleet_hubs) {
        let name = format!("fleet-{n}-{}", label.replace(' ', "-"));
        hubs.push(Server::hub(binary, &kafka.addr, work, 10_000, &name, &settings).await);
    }
    let followed = FLEET_TOPICS / 10;
    let mut counters = Vec::new();
    for (n, hub) in hubs.iter().enumerate() {
        let names: Vec<String> = (n * followed..(n + 1) * followed).map(topic).collect();
        let subscribing = names
            .iter()
            .map(|name| hub.subscribers(name, SOCKETS_PER_TOPIC));
        let sockets = join_all(subscribing).await.into_iter().flatten().collect();
        counters.push(spawn_counters(sockets));
    }
    // Each hub has settled what its start and subscribes cost (the resumes' lookups).
    for hub in &hubs {
        wait_quiet(&hub.pid, 0.05).await;
    }
    let port = kafka.addr.rsplit(':').next().unwrap().to_string();
    let before: Vec<(u64, Usage)> = hubs
        .iter()
        .map(|hub| (received_from(&hub.pid, &port), hub.usage()))
        .collect();
    let client = Usage::of_self();
    let producer = kafka.producer(&[("linger.ms", "5")]);
    let routes: Vec<Route> = (0..FLEET_TOPICS).map(|t| Route::plain(&topic(t))).collect();
    let total = (args.fleet_rate * args.seconds as f64) as usize;
    let started = Instant::now();
    paced(args.fleet_rate, total, async |i, sent| {
        // Acks are not awaited: the records flow at the pace, whatever Kafka's latency.
        drop(produce(&producer, &routes[i % FLEET_TOPICS], payload(sent, i)).await);
    })
    .await;
    // Every followed record reached every socket of its topic before the window closes.
    let per_hub = (0..total)
        .filter(|i| (0..followed).contains(&(i % FLEET_TOPICS)))
        .count();
    for counter in &counters {
        counter.wait_for(per_hub * SOCKETS_PER_TOPIC).await;
    }
    let window = started.elapsed().as_secs_f64();
    let mut sum = 0;
    for (n, (hub, (bytes, usage))) in hubs.iter().zip(&before).enumerate() {
        let got = received_from(&hub.pid, &port) - bytes;
        sum += got;
        println!(
            "hub {n}: broker sent it {:.2} MiB ({:.0} KiB/s), hub CPU {:.1}% of a core, {} deliveries",
            got as f64 / 1048576.0,
            got as f64 / 1024.0 / window,
            hub.usage().cpu_since(usage) * 100.0,
            per_hub * SOCKETS_PER_TOPIC
        );
    }
    println!(
        "all {} hubs: broker sent {:.2} MiB over {window:.1} s ({total} records of {} bytes produced)",
        hubs.len(),
        sum as f64 / 1048576.0,
        crate::PAYLOAD_BYTES
    );
    report_client(&client);
    drop(counters);
    for hub in &hubs {
        hub.wait_idle().await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    sum
}

/// What the kernel counted as received on every TCP connection process `pid` holds to the
/// broker's `port`.
fn received_from(pid: &str, port: &str) -> u64 {
    let filter = format!("dport = :{port}");
    let output = Command::new("ss")
        .args(["-tinpH", "state", "established", &filter])
        .output()
        .expect("running ss");
    let text = String::from_utf8_lossy(&output.stdout);
    let owner = format!("pid={pid},");
    let mut ours = false;
    let mut sum = 0;
    for line in text.lines() {
        if line.contains("users:(") {
            ours = line.contains(&owner);
            continue;
        }
        if ours {
            sum += line
                .split_whitespace()
                .find_map(|field| field.strip_prefix("bytes_received:"))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    sum
}
