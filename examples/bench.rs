//! The benchmark harness and load generator behind `scripts/bench`.
//!
//! It starts an Apache Kafka broker (`scripts/kafka`), a release hub and the bare axum
//! reference (`examples/bare_broadcast.rs`), then drives each scenario and prints figures.
//! The hub and the bare server are pinned to core 0; `scripts/bench` pins this process to
//! core 1, so the load never competes with the server it measures (the broker floats over
//! both, and each scenario says how much of the machine it took).
//!
//! Every latency is taken against the record's intended send time, carried in its payload,
//! so a stalled sender shows up as latency instead of hiding it. Hub and plain-Kafka figures
//! come from the same run and the same records wherever possible, so their ratios hold on a
//! noisy machine. A scenario during which this process used more than 90% of its core is
//! flagged: its figures measure the load generator, not the hub.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{SinkExt, StreamExt, stream};
use hdrhistogram::Histogram;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message as _, Offset, TopicPartitionList};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Barrier;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use wskafka::{Grants, mint};

type Socket = WebSocketStream<TcpStream>;

#[derive(Parser)]
struct Args {
    /// Scenarios to run, in this order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "idle,fanout,ingest,latency,room,slow,storm,history,presence"
    )]
    scenarios: Vec<String>,
    /// The Centrifugo binary measured beside the hub (`scripts/bench` builds it).
    #[arg(long, env = "CENTRIFUGO")]
    centrifugo: PathBuf,
    /// Sockets held open by the idle scenario; the hub's cap is set to this many.
    #[arg(long, default_value_t = 19_000)]
    idle: usize,
    /// Subscribers of the fan-out, latency and slow-consumer scenarios.
    #[arg(long, default_value_t = 1_000)]
    subscribers: usize,
    /// Records each server sends in the fan-out scenario, in bursts of `BURST`, over
    /// `ROUNDS` rounds.
    #[arg(long, default_value_t = 15_000)]
    records: usize,
    /// Publishing sockets in the ingest scenario, each with this many publishes in flight.
    #[arg(long, default_value_t = 1_000)]
    publishers: usize,
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Subscribers of the large room.
    #[arg(long, default_value_t = 10_000)]
    room: usize,
    /// Length of the timed runs (paced fan-out, ingest, latency, slow consumers).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Records/s in the latency and slow-consumer scenarios. At the default, 40 records/s
    /// to 1,000 subscribers, each record is mostly a write of its own to each socket; at
    /// higher rates both servers write several per flush (600 records/s to 1,000 sockets
    /// held here with 79% of the hub's core), so latency then includes that batching.
    #[arg(long, default_value_t = 40.0)]
    rate: f64,
    /// Records/s to `--subscribers` in the paced fan-out run: 150 records/s to 1,000
    /// sockets is the target's 150,000 deliveries/s.
    #[arg(long, default_value_t = 150.0)]
    paced_rate: f64,
    /// Records/s in the one-subscriber latency run.
    #[arg(long, default_value_t = 500.0)]
    single_rate: f64,
}

/// The clock every timestamp in a payload is read from.
static START: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_us() -> u64 {
    START.elapsed().as_micros() as u64
}

const SECRET: &str = "bench-secret-never-for-production";
const PAYLOAD_BYTES: usize = 100;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    LazyLock::force(&START);
    let bin = std::env::current_exe().unwrap();
    let examples = bin.parent().unwrap();
    let work = tempdir();
    let kafka = Broker::start(&work).await;
    for (topic, partitions) in [
        ("bench.idle", 1),
        ("bench.fanout", 1),
        ("bench.ingest", 3),
        ("bench.latency", 1),
        ("bench.room", 1),
        ("bench.slow", 1),
        ("bench.history", 4),
        ("bench.rooms", 4),
        (STORM_TOPIC, 1),
        ("warmup", 1),
    ] {
        kafka.create_topic(topic, partitions).await;
    }
    for topic in CENTRIFUGO_TOPICS {
        kafka.create_topic(topic, 1).await;
    }
    kafka.warm_up().await;
    let hub_binary = examples.join("../wskafka");
    let hub = Server::hub(&hub_binary, &kafka.addr, &work, args.idle, "hub", &[]).await;
    let bare = Server::bare(&examples.join("bare_broadcast")).await;
    let centrifugo = Server::centrifugo(&args.centrifugo, &kafka.addr, &work).await;
    let servers = Servers {
        hub,
        bare,
        centrifugo,
    };
    println!(
        "machine: {} cores; hub, bare server and Centrifugo on core 0, load generator on core 1",
        // Not available_parallelism: this process is pinned to one of them.
        std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count()
    );

    for scenario in &args.scenarios {
        println!("\n== {scenario}");
        let broker = Usage::of(&kafka.pid);
        let Servers {
            hub,
            bare,
            centrifugo,
        } = &servers;
        match scenario.as_str() {
            "idle" => idle(&servers, args.idle).await,
            "fanout" => fanout(&servers, &kafka, &args).await,
            "ingest" => ingest(hub, bare, &kafka, &args).await,
            "latency" => latency(&servers, &kafka, &args).await,
            "slow" => slow(&servers, &kafka, &args).await,
            "room" => room(&servers, &kafka, args.room).await,
            "storm" => storm(&servers, &kafka, &args).await,
            "history" => history(hub, &kafka, &args).await,
            "presence" => presence(&hub_binary, &kafka, &work).await,
            other => panic!("no scenario called {other}"),
        }
        println!(
            "broker over the scenario: {:.0}% of a core (of 2), RSS {} MiB",
            Usage::of(&kafka.pid).cpu_since(&broker) * 100.0,
            Usage::of(&kafka.pid).rss_kib / 1024
        );
        hub.wait_idle().await;
        centrifugo.wait_idle().await;
        // The next scenario starts once the broker has settled what this one left it.
        wait_quiet(&kafka.pid, 0.2).await;
    }
}

/// Until the process used less than `share` of a core over half a second.
async fn wait_quiet(pid: &str, share: f64) {
    loop {
        let before = Usage::of(pid);
        tokio::time::sleep(Duration::from_millis(500)).await;
        if Usage::of(pid).cpu_since(&before) < share {
            return;
        }
    }
}

// ---- Scenarios -------------------------------------------------------------------------

/// The servers under test, all on core 0.
struct Servers {
    hub: Server,
    bare: Server,
    centrifugo: Server,
}

async fn idle(servers: &Servers, count: usize) {
    let (hub, centrifugo) = (&servers.hub, &servers.centrifugo);
    let per_socket = async |server: &Server| {
        let before = server.usage();
        let client = Usage::of_self();
        let sockets = server.subscribers("bench.idle", count).await;
        let after = server.usage();
        let per_socket = (after.rss_kib - before.rss_kib) as f64 / count as f64;
        println!(
            "{}: {count} sockets open and subscribed: RSS {} -> {} KiB, {per_socket:.1} KiB per socket",
            server.label(),
            before.rss_kib,
            after.rss_kib
        );
        report_client(&client);
        (per_socket, sockets)
    };
    let (hub_kib, sockets) = per_socket(hub).await;
    let over = match hub.try_open(&hub.ws_url("idle")).await {
        Ok(_) => "ACCEPTED (the cap did not hold)".to_string(),
        Err(tungstenite::Error::Http(response)) => format!("HTTP {}", response.status()),
        Err(e) => format!("failed without an answer: {e}"),
    };
    println!("hub socket {} (over the cap): {over}", count + 1);
    drop(sockets);
    hub.wait_idle().await;
    let (centrifugo_kib, sockets) = per_socket(centrifugo).await;
    drop(sockets);
    println!(
        "idle: memory per socket hub / Centrifugo = {:.2} (target: <= 0.5)",
        hub_kib / centrifugo_kib
    );
}

/// Records go out in bursts that fit the per-socket queues (which both servers have), each
/// burst sent as fast as possible and the next one only once every socket had the last:
/// the figure is how fast a server empties full queues onto many sockets.
async fn fanout(servers: &Servers, kafka: &Broker, args: &Args) {
    let Servers {
        hub,
        bare,
        centrifugo,
    } = servers;
    let n = args.subscribers;
    let bursts = args.records.div_ceil(BURST * ROUNDS);
    let topic = "bench.fanout";

    // The bare server gets one more socket, which publishes frames shaped like the hub's
    // messages. Every server's readers stay open and the rounds alternate, so that a machine
    // slowing down over the scenario weighs on every side of every ratio.
    let bare_readers = spawn_counters(bare.sockets(n).await);
    let mut publisher = bare.open(&bare.ws_url("publisher")).await;
    let hub_readers = spawn_counters(hub.subscribers(topic, n).await);
    let centrifugo_readers = spawn_counters(centrifugo.subscribers(topic, n).await);
    let producer = kafka.producer(&[]);
    let (hub_route, centrifugo_route) = (hub.route(topic), centrifugo.route(topic));
    // A burst through each Kafka path before anything is timed.
    for (route, readers) in [
        (&hub_route, &hub_readers),
        (&centrifugo_route, &centrifugo_readers),
    ] {
        kafka_burst(&producer, route).await;
        readers.wait_for(n * BURST).await;
    }
    let (mut to_bare, mut to_centrifugo, mut per_cpu) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        let (bare_rate, _) = burst_rate(bare, &bare_readers, round, bursts, async || {
            for i in 0..BURST {
                let frame = message_frame(topic, i, payload(now_us(), i));
                publisher.feed(Message::text(frame)).await.unwrap();
            }
            publisher.flush().await.unwrap();
        })
        .await;
        let (hub_rate, hub_cpu) = burst_rate(hub, &hub_readers, round, bursts, async || {
            kafka_burst(&producer, &hub_route).await
        })
        .await;
        let (centrifugo_rate, centrifugo_cpu) =
            burst_rate(centrifugo, &centrifugo_readers, round, bursts, async || {
                kafka_burst(&producer, &centrifugo_route).await
            })
            .await;
        to_bare.push(hub_rate / bare_rate);
        to_centrifugo.push(hub_rate / centrifugo_rate);
        per_cpu.push((hub_rate / hub_cpu) / (centrifugo_rate / centrifugo_cpu));
    }
    drop((bare_readers, hub_readers, centrifugo_readers, publisher));
    println!(
        "fan-out bursts: hub / bare = {} (target: >= 0.75; bursts >= 1000000/s)",
        median_of(to_bare)
    );
    println!(
        "fan-out bursts: hub / Centrifugo = {}",
        median_of(to_centrifugo)
    );
    println!(
        "fan-out bursts, deliveries per CPU-second: hub / Centrifugo = {} (target: >= 2)",
        median_of(per_cpu)
    );

    // As many sockets, fed a steady stream at the target rate: kept up with means every
    // record reached every socket and the latency did not grow over the run.
    let rate = args.paced_rate;
    let expected = (rate * args.seconds as f64) as u64 * n as u64;
    println!(
        "paced: {rate:.0} records/s to {n} sockets, {:.0} deliveries/s for {} s",
        rate * n as f64,
        args.seconds
    );
    let (bare_latency, bare_cpu) = paced_bare(bare, args, rate).await;
    print_latency("bare axum, publisher socket to subscriber", &bare_latency);
    let mut per_cpu_second = Vec::new();
    for server in [hub, centrifugo] {
        let run = timed_run(server, kafka, topic, args, rate, n, 0).await;
        print_latency(
            &format!("{}, record produced to subscriber", server.label()),
            &run.socket,
        );
        let delivered = run.socket.len();
        let per_cpu = delivered as f64 / (run.cpu * args.seconds as f64);
        println!(
            "{}: delivered {delivered} of {expected} at {:.0}% of its core: {per_cpu:.0} deliveries per CPU-second",
            server.label(),
            run.cpu * 100.0,
        );
        per_cpu_second.push(per_cpu);
    }
    println!(
        "paced fan-out: bare axum delivered {} of {expected} at {:.0}% of its core (target: >= 150000/s)",
        bare_latency.len(),
        bare_cpu * 100.0
    );
    println!(
        "paced fan-out, deliveries per CPU-second: hub / Centrifugo = {:.2} (target: >= 2)",
        per_cpu_second[0] / per_cpu_second[1]
    );
}

/// "m, the median of rounds a, b, c".
fn median_of(mut ratios: Vec<f64>) -> String {
    let rounds: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    ratios.sort_by(f64::total_cmp);
    format!(
        "{:.2}, the median of rounds {}",
        ratios[ratios.len() / 2],
        rounds.join(", ")
    )
}

/// `BURST` records produced as fast as the producer takes them, each acked.
async fn kafka_burst(producer: &FutureProducer, route: &Route) {
    let mut acks = Vec::with_capacity(BURST);
    for i in 0..BURST {
        acks.push(produce(producer, route, payload(now_us(), i)).await);
    }
    for ack in acks {
        ack.await.unwrap().expect("the broker took the record");
    }
}

/// Records per fan-out burst: under the servers' 1024-frame queues.
const BURST: usize = 500;
/// Alternating rounds of bursts per server; the ratio reported is their median.
const ROUNDS: usize = 3;

/// Deliveries per second from `server` to the sockets behind `delivered` over `bursts`
/// calls of `send_burst` (`BURST` records each), timing each burst until every socket has
/// it; prints the rate and the CPU both sides used, and returns the rate and the server's
/// share of its core.
async fn burst_rate(
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

async fn ingest(hub: &Server, bare: &Server, kafka: &Broker, args: &Args) {
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

    let (rate, hub_cpu) = publish_run(hub, args).await;
    let (bare_rate, bare_cpu) = publish_run(bare, args).await;
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

/// Publishes from `--publishers` sockets, `--window` in flight each, for `--seconds`;
/// returns the answered publishes per second and the server's share of its core.
async fn publish_run(server: &Server, args: &Args) -> (f64, f64) {
    let duration = Duration::from_secs(args.seconds);
    let sockets = server.sockets(args.publishers).await;
    let (client, before) = (Usage::of_self(), server.usage());
    let barrier = Arc::new(Barrier::new(sockets.len()));
    let deadline = tokio::time::Instant::now() + duration;
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|socket| tokio::spawn(publish_loop(socket, args.window, barrier.clone(), deadline)))
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

/// To one subscriber, where the server's own path is all it adds, and fanned out to
/// `--subscribers`: first at fixed rates, the same for every server, then at half of each
/// server's own saturation rate, and both at half of the lower one.
async fn latency(servers: &Servers, kafka: &Broker, args: &Args) {
    let Servers {
        hub,
        bare,
        centrifugo,
    } = servers;
    let topic = "bench.latency";
    let rate = args.single_rate;
    println!("{rate:.1} records/s to one subscriber");
    let mut runs = Vec::new();
    for server in [hub, centrifugo] {
        let run = timed_run(server, kafka, topic, args, rate, 1, 0).await;
        print_added(server, &run);
        runs.push(run);
    }
    compare_p99(&format!("one subscriber at {rate:.0} records/s"), &runs);

    let (rate, n) = (args.rate, args.subscribers);
    println!("{rate:.1} records/s to {n} subscribers");
    let (bare_latency, bare_cpu) = paced_bare(bare, args, rate).await;
    print_latency("bare axum, publisher socket to subscriber", &bare_latency);
    let mut runs = Vec::new();
    for server in [hub, centrifugo] {
        let run = timed_run(server, kafka, topic, args, rate, n, 0).await;
        println!(
            "server CPU at this rate: {} {:.0}%, bare axum {:.0}%: bare / {0} = {:.2} (the share of the bare server's sustained fan-out it reaches)",
            server.label(),
            run.cpu * 100.0,
            bare_cpu * 100.0,
            bare_cpu / run.cpu
        );
        print_added(server, &run);
        runs.push(run);
    }
    compare_p99(&format!("{n} subscribers at {rate:.0} records/s"), &runs);

    // Each at half of its own saturation, then both at half of the lower one: the first
    // loads the faster server more, the second compares the two under the same load.
    for subscribers in [1, n] {
        let mut p99 = Vec::new();
        let mut lowest = f64::INFINITY;
        for server in [hub, centrifugo] {
            let saturation = saturation(server, kafka, topic, subscribers).await;
            lowest = lowest.min(saturation);
            let rate = saturation / 2.0;
            println!(
                "{}: saturates at {saturation:.0} records/s to {subscribers} subscribers; at half, {rate:.0} records/s:",
                server.label()
            );
            let run = timed_run(server, kafka, topic, args, rate, subscribers, 0).await;
            print_delivered(server, &run, rate, subscribers, args);
            p99.push(run.socket.value_at_quantile(0.99) as f64);
        }
        println!(
            "{subscribers} subscribers at half of each one's saturation: p99 hub / Centrifugo = {:.2} (target: <= 1)",
            p99[0] / p99[1]
        );
        let rate = lowest / 2.0;
        println!(
            "both at {rate:.0} records/s to {subscribers} subscribers, half of the lower saturation:"
        );
        let mut runs = Vec::new();
        for server in [hub, centrifugo] {
            let run = timed_run(server, kafka, topic, args, rate, subscribers, 0).await;
            print_delivered(server, &run, rate, subscribers, args);
            runs.push(run);
        }
        compare_p99(
            &format!("{subscribers} subscribers at {rate:.0} records/s"),
            &runs,
        );
    }
}

/// A run's end-to-end latency and how many of the records sent reached its subscribers: a
/// socket the server closed for falling behind (the hub's `lagged`) stops counting there.
fn print_delivered(server: &Server, run: &Run, rate: f64, subscribers: usize, args: &Args) {
    print_latency(&format!("{} end to end", server.label()), &run.socket);
    let sent = (rate * args.seconds as f64) as usize * subscribers;
    println!(
        "{}: delivered {} of {sent} ({:.1}%)",
        server.label(),
        run.socket.len(),
        run.socket.len() as f64 * 100.0 / sent as f64
    );
}

/// The hub's p99 over Centrifugo's, end to end and as added to the plain consumer's in the
/// same run (which takes out what Kafka's own jitter did differently in the two runs).
fn compare_p99(what: &str, runs: &[Run]) {
    let [hub, centrifugo] = runs else {
        unreachable!("one run per server")
    };
    let added = |run: &Run| {
        run.added[((run.added.len() as f64 * 0.99) as usize).min(run.added.len() - 1)] as f64
    };
    println!(
        "{what}: p99 hub / Centrifugo = {:.2} end to end, {:.2} added to Kafka's (target: <= 1)",
        hub.socket.value_at_quantile(0.99) as f64
            / centrifugo.socket.value_at_quantile(0.99) as f64,
        added(hub) / added(centrifugo)
    );
}

/// Records per second `server` delivers to each of `subscribers` sockets when records
/// come as fast as it takes them: bursts of `BURST`, each timed until every socket had it.
async fn saturation(server: &Server, kafka: &Broker, topic: &str, subscribers: usize) -> f64 {
    let readers = spawn_counters(server.subscribers(topic, subscribers).await);
    let producer = kafka.producer(&[]);
    let route = server.route(topic);
    let (rate, _) = burst_rate(server, &readers, 1, SATURATION_BURSTS, async || {
        kafka_burst(&producer, &route).await
    })
    .await;
    drop(readers);
    server.wait_idle().await;
    rate / subscribers as f64
}

/// Bursts that measure a saturation rate.
const SATURATION_BURSTS: usize = 10;

/// End to end, the plain path, and what the hub adds to it: per record and subscriber, its
/// arrival at the socket minus its arrival at the plain consumer, which fetched the same
/// record from the same broker (so a stall of Kafka's own weighs on both sides).
fn print_added(server: &Server, run: &Run) {
    let name = server.label();
    print_latency(&format!("{name} end to end"), &run.socket);
    print_latency("plain rdkafka produce to consume", &run.plain);
    let added = |q: f64| {
        let at = ((run.added.len() as f64 * q) as usize).min(run.added.len() - 1);
        run.added[at] as f64 / 1e3
    };
    println!(
        "{name}-added latency: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms (hub target at one subscriber: <= 0.5 ms and <= 3 ms)",
        added(0.5),
        added(0.99),
        added(0.999)
    );
}

async fn slow(servers: &Servers, kafka: &Broker, args: &Args) {
    let rate = args.rate;
    let stalled = args.subscribers / 10;
    println!(
        "{rate:.1} records/s to {} subscribers, clean and then with {stalled} not reading",
        args.subscribers
    );
    let mut p99 = Vec::new();
    for server in [&servers.hub, &servers.centrifugo] {
        let name = server.label();
        let topic = "bench.slow";
        let clean = timed_run(server, kafka, topic, args, rate, args.subscribers, 0).await;
        print_latency(
            &format!("{name}, clean run, every subscriber"),
            &clean.socket,
        );
        server.wait_idle().await;
        let lagged = server.metric("wskafka_lagged_closes_total").await;
        let healthy = timed_run(server, kafka, topic, args, rate, args.subscribers, stalled)
            .await
            .socket;
        print_latency(
            &format!("{name}, with stalled sockets, healthy subscribers"),
            &healthy,
        );
        if server.kind == Kind::Hub {
            println!(
                "stalled sockets closed as lagged during the run: {}",
                server.metric("wskafka_lagged_closes_total").await - lagged
            );
        }
        let (clean, healthy) = (
            clean.socket.value_at_quantile(0.99) as f64,
            healthy.value_at_quantile(0.99) as f64,
        );
        println!(
            "{name}: healthy p99 / clean p99 = {:.2} (hub target: <= 1.2)",
            healthy / clean
        );
        p99.push(healthy);
        server.wait_idle().await;
    }
    println!(
        "slow consumers: healthy subscribers' p99 hub / Centrifugo = {:.2} (target: <= 1)",
        p99[0] / p99[1]
    );
}

/// The topic of the reconnect storm. Centrifugo's channel for it is in a namespace with
/// history and recovery; the hub's subscribers resume from offsets.
const STORM_TOPIC: &str = "bench.storm";

/// Where a socket of the storm was: the offset of the last record it had, and Centrifugo's
/// stream epoch, which recovery also needs.
#[derive(Default)]
struct Position {
    offset: Option<u64>,
    epoch: Option<String>,
}

/// `--subscribers` sockets read `--rate` records/s for `--seconds`; a third of the way in
/// every one of them drops at once, reconnects and resumes where it left off: the hub's
/// from the next offset, Centrifugo's from its history by epoch and offset. Measured: how
/// long after the drop each socket was caught up (it had every record sent so far, then
/// one sent after it resubscribed), and records lost or delivered twice.
async fn storm(servers: &Servers, kafka: &Broker, args: &Args) {
    let (n, rate) = (args.subscribers, args.rate);
    let total = (rate * args.seconds as f64) as usize;
    println!(
        "{rate:.1} records/s to {n} subscribers for {} s; after {:.1} s every socket drops at once, reconnects and resumes",
        args.seconds,
        args.seconds as f64 / 3.0
    );
    let mut slowest = Vec::new();
    for server in [&servers.hub, &servers.centrifugo] {
        let producer = kafka.producer(&[]);
        let route = server.route(STORM_TOPIC);
        let mut sockets: Vec<Storm> = stream::iter(0..n)
            .map(|k| async move {
                let user = format!("storm-{k}");
                let position = Position::default();
                let (socket, lines) = server.subscribe(STORM_TOPIC, &user, &position).await;
                let mut storm = Storm {
                    user,
                    socket: Some(socket),
                    position,
                    received: vec![0; total],
                    contiguous: 0,
                    dropped_at: None,
                    resubscribed_at: u64::MAX,
                    caught_up: None,
                };
                storm.take(&lines);
                storm
            })
            .buffer_unordered(64)
            .collect()
            .await;
        // Each socket has a record, so a position, before the stream starts.
        drop(
            produce(&producer, &route, r#"{"warm":true}"#.into())
                .await
                .await,
        );
        for storm in &mut sockets {
            while storm.position.offset.is_none() {
                let socket = storm.socket.as_mut().unwrap();
                let frame = next_text(socket).await.expect("the warm-up record");
                storm.take(&frame.lines().collect::<Vec<_>>());
            }
        }
        let (client, before) = (Usage::of_self(), server.usage());
        let (drop_all, dropped) = tokio::sync::watch::channel(None);
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs_f64(total as f64 / rate + 60.0);
        let sending = paced(rate, total, async |i, sent| {
            if i == total / 3 {
                drop_all.send_replace(Some(now_us()));
            }
            drop(produce(&producer, &route, payload(sent, i)).await);
        });
        let reading = futures_util::future::join_all(
            sockets
                .into_iter()
                .map(|storm| storm.run(server, dropped.clone(), deadline)),
        );
        let ((), sockets) = tokio::join!(sending, reading);
        println!(
            "  {} CPU {:.0}%",
            server.label(),
            server.usage().cpu_since(&before) * 100.0
        );
        report_client(&client);
        let mut caught_up = histogram();
        let (mut lost, mut repeated, mut behind) = (0, 0, 0);
        for storm in &sockets {
            lost += storm.received.iter().filter(|&&c| c == 0).count();
            repeated += storm
                .received
                .iter()
                .map(|&c| usize::from(c).saturating_sub(1))
                .sum::<usize>();
            match storm.caught_up {
                Some(after) => caught_up.record(after.max(1)).unwrap(),
                None => behind += 1,
            }
        }
        print_latency(
            &format!("{}: from the drop until caught up", server.label()),
            &caught_up,
        );
        println!(
            "{}: {lost} records lost, {repeated} delivered twice, {behind} sockets never caught up, of {} ({total} records to each of {n} sockets)",
            server.label(),
            total * n
        );
        slowest.push(caught_up.max() as f64);
        drop(sockets);
        server.wait_idle().await;
    }
    println!(
        "storm: last socket caught up, hub / Centrifugo = {:.2} (target: <= 1, and no loss)",
        slowest[0] / slowest[1]
    );
}

/// One socket of the storm, and what it has had of the stream.
struct Storm {
    user: String,
    /// None between the drop and the new socket.
    socket: Option<Socket>,
    position: Position,
    /// Per record index, how many times it arrived.
    received: Vec<u8>,
    /// Records `0..contiguous` have all arrived.
    contiguous: usize,
    dropped_at: Option<u64>,
    resubscribed_at: u64,
    /// From the drop until the socket was caught up, in µs.
    caught_up: Option<u64>,
}

impl Storm {
    /// Reads until the last record arrives or the deadline passes; when `dropped` says so,
    /// drops the socket and resubscribes from its position.
    async fn run(
        mut self,
        server: &Server,
        mut dropped: tokio::sync::watch::Receiver<Option<u64>>,
        deadline: tokio::time::Instant,
    ) -> Storm {
        while self.received.last() == Some(&0) {
            let frame = tokio::select! {
                _ = dropped.changed(), if self.dropped_at.is_none() => None,
                frame = tokio::time::timeout_at(deadline, next_text(self.socket.as_mut().unwrap())) => {
                    match frame {
                        Ok(Some(frame)) => Some(frame),
                        _ => break,
                    }
                }
            };
            match frame {
                Some(frame) => self.take(&frame.lines().collect::<Vec<_>>()),
                None => {
                    self.dropped_at = *dropped.borrow();
                    // The socket closes without a word, as a lost network would.
                    self.socket = None;
                    let (socket, lines) = server
                        .subscribe(STORM_TOPIC, &self.user, &self.position)
                        .await;
                    self.socket = Some(socket);
                    self.resubscribed_at = now_us();
                    self.take(&lines);
                }
            }
        }
        self
    }

    fn take<L: AsRef<str>>(&mut self, lines: &[L]) {
        for line in lines.iter().map(AsRef::as_ref) {
            if line.starts_with(r#"{"id":2"#) {
                let reply: serde_json::Value = serde_json::from_str(line).unwrap();
                let subscribed = &reply["subscribe"];
                if let Some(epoch) = subscribed["epoch"].as_str() {
                    self.position.epoch = Some(epoch.to_string());
                }
                continue;
            }
            if !line.starts_with(r#"{"type":"message""#) && !line.starts_with(r#"{"push""#) {
                continue;
            }
            self.position.offset = number_after(line, r#""offset":"#);
            let Some((sent, i)) = stamp(line) else {
                continue;
            };
            let Some(count) = self.received.get_mut(i) else {
                continue;
            };
            *count = count.saturating_add(1);
            while self.received.get(self.contiguous).is_some_and(|&c| c > 0) {
                self.contiguous += 1;
            }
            if let Some(dropped_at) = self.dropped_at
                && self.caught_up.is_none()
                && self.contiguous > i
                && sent >= self.resubscribed_at
            {
                self.caught_up = Some(now_us() - dropped_at);
            }
        }
    }
}

const HISTORY_TOPIC: &str = "bench.history";
/// Records in the history topic, and rooms (keys) they are spread over: one record in a
/// hundred is the measured room's.
const HISTORY_RECORDS: usize = 100_000;
const HISTORY_ROOMS: usize = 100;
/// History readers paging at once beside the live fan-out.
const HISTORY_READERS: usize = 100;

/// `history` pages of 50 back through a room that holds 1% of its topic's records, from the
/// newest to the oldest; then live latency to `--subscribers` with and without
/// `HISTORY_READERS` sockets paging history all along.
async fn history(hub: &Server, kafka: &Broker, args: &Args) {
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

/// Members of the presence scenario's large room.
const PRESENCE_MEMBERS: usize = 10_000;
/// Joins, and signals, timed one at a time from one hub to the other.
const PRESENCE_SAMPLES: usize = 300;

/// The subscribe of the presence scenario: room `key`, with joins and signals or without.
fn enter_room(key: &str, told: bool) -> String {
    format!(
        r#"{{"type":"subscribe","id":"s","topic":"bench.rooms","key":"{key}","presence":{told},"signals":{told}}}"#
    )
}

/// Two hubs with presence on, on the same broker: how long a join on one takes to show on
/// the other, the same for a signal, what a member costs the roster of a hub that holds
/// none of its sockets, and a room of `PRESENCE_MEMBERS`.
async fn presence(binary: &Path, kafka: &Broker, work: &Path) {
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
        let user = format!(r#""user":"member-{n}""#);
        let sent = Instant::now();
        member
            .send(Message::text(enter_room("timed", true)))
            .await
            .unwrap();
        loop {
            let frame = next_text(&mut observer).await.expect("a join");
            if frame.contains(r#""type":"join""#) && frame.contains(&user) {
                break;
            }
        }
        joins.record(sent.elapsed().as_micros() as u64).unwrap();
        drop(member);
    }
    print_latency("a join on one hub, seen on the other", &joins);

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

/// One record at a time to `size` subscribers, first through the bare server, then through
/// the hub; the figure is how long the last subscriber waits for each record.
async fn room(servers: &Servers, kafka: &Broker, size: usize) {
    let Servers {
        hub,
        bare,
        centrifugo,
    } = servers;
    let topic = "bench.room";
    let readers = bare.sockets(size).await;
    let mut publisher = bare.open(&bare.ws_url("publisher")).await;
    let (client, server) = (Usage::of_self(), bare.usage());
    let bare_last = last_deliveries(readers, async |i| {
        let frame = message_frame(topic, i, payload(now_us(), i));
        publisher.send(Message::text(frame)).await.unwrap();
    })
    .await;
    println!("{ROOM_RECORDS} records, one at a time, to {size} subscribers");
    println!(
        "  bare server CPU {:.0}%",
        bare.usage().cpu_since(&server) * 100.0
    );
    report_client(&client);
    print_latency("bare axum, last delivery of each record", &bare_last);
    drop(publisher);

    let readers = hub.subscribers(topic, size).await;
    let plain = kafka.consumer_at_end();
    let producer = kafka.producer(&[]);
    let route = hub.route(topic);
    warm_up(&producer, &route, &plain).await;
    let (client, server) = (Usage::of_self(), hub.usage());
    let written_before = hub.delivery_buckets().await;
    let mut plain_latency = histogram();
    let hub_last = last_deliveries(readers, async |i| {
        let ack = produce(&producer, &route, payload(now_us(), i)).await;
        ack.await.unwrap().expect("the broker took the record");
        let (sent, _) = next_stamp(&plain).await;
        plain_latency.record(now_us() - sent).unwrap();
    })
    .await;
    println!("  hub CPU {:.0}%", hub.usage().cpu_since(&server) * 100.0);
    report_client(&client);
    print_hub_side(hub, &written_before).await;
    print_latency("hub, last delivery of each record", &hub_last);
    print_latency("plain rdkafka produce to consume", &plain_latency);
    hub.wait_idle().await;

    let readers = centrifugo.subscribers(topic, size).await;
    let route = centrifugo.route(topic);
    let (client, server) = (Usage::of_self(), centrifugo.usage());
    let centrifugo_last = last_deliveries(readers, async |i| {
        let ack = produce(&producer, &route, payload(now_us(), i)).await;
        ack.await.unwrap().expect("the broker took the record");
    })
    .await;
    println!(
        "  Centrifugo CPU {:.0}%",
        centrifugo.usage().cpu_since(&server) * 100.0
    );
    report_client(&client);
    print_latency("Centrifugo, last delivery of each record", &centrifugo_last);
    let p99 = |h: &Histogram<u64>| h.value_at_quantile(0.99) as f64;
    println!(
        "room: hub p99 / bare p99 = {:.2} (target: hub last delivery p99 <= 60 ms)",
        p99(&hub_last) / p99(&bare_last)
    );
    println!(
        "room: last delivery p99 hub / Centrifugo = {:.2} (target: <= 1)",
        p99(&hub_last) / p99(&centrifugo_last)
    );
}

/// Records sent to the room, 200 ms apart so each one's fan-out is measured alone.
const ROOM_RECORDS: usize = 30;

/// The hub's own view since `before`: from each record's Kafka timestamp to its write to
/// the socket, which tells what the hub did from what the reading side did.
async fn print_hub_side(hub: &Server, before: &[(String, f64)]) {
    let written = hub.delivery_buckets().await;
    let total = written.last().map_or(0.0, |(_, n)| *n) - before.last().map_or(0.0, |(_, n)| *n);
    let shares: Vec<String> = written
        .iter()
        .zip(before)
        .filter(|((le, _), _)| {
            ["0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1"].contains(&le.as_str())
        })
        .map(|((le, n), (_, b))| format!("{:.0}% by {le} s", (n - b) / total * 100.0))
        .collect();
    println!(
        "hub-side, record timestamp to socket write: {}",
        shares.join(", ")
    );
}

/// Calls `send(i)` for each record of the room and returns, per record, how long after its
/// send time the last of `readers` had it.
async fn last_deliveries(readers: Vec<Socket>, mut send: impl AsyncFnMut(usize)) -> Histogram<u64> {
    // The latest arrival of each record, in µs after its send time.
    let last: Arc<Vec<AtomicU64>> =
        Arc::new((0..ROOM_RECORDS).map(|_| AtomicU64::new(0)).collect());
    let tasks: Vec<_> = readers
        .into_iter()
        .map(|mut socket| {
            let last = last.clone();
            tokio::spawn(async move {
                let mut seen = 0;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
                while seen < ROOM_RECORDS {
                    let Ok(Some(text)) =
                        tokio::time::timeout_at(deadline, next_text(&mut socket)).await
                    else {
                        panic!("a subscriber of the room lost its socket or its records");
                    };
                    for (sent, i) in stamps(&text).filter(|(_, i)| *i < ROOM_RECORDS) {
                        last[i].fetch_max(now_us() - sent, Ordering::Relaxed);
                        seen += 1;
                    }
                }
            })
        })
        .collect();
    for i in 0..ROOM_RECORDS {
        send(i).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut last_delivery = histogram();
    for l in last.iter() {
        last_delivery.record(l.load(Ordering::Relaxed)).unwrap();
    }
    last_delivery
}

// ---- Load ------------------------------------------------------------------------------

/// A JSON payload of `PAYLOAD_BYTES` carrying its send time and index.
fn payload(sent_us: u64, i: usize) -> String {
    let head = format!(r#"{{"t":{sent_us},"i":{i},"pad":""#);
    let pad = PAYLOAD_BYTES.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad))
}

/// What the bare server relays: a frame shaped and sized like the hub's `message`.
fn message_frame(topic: &str, offset: usize, payload: String) -> String {
    format!(
        r#"{{"type":"message","topic":"{topic}","partition":0,"offset":{offset},"timestamp":1764480000000,"payload":{payload}}}"#
    )
}

/// The send time and index of each record in a frame: Centrifugo may batch several, one
/// per line.
fn stamps(frame: &str) -> impl Iterator<Item = (u64, usize)> {
    frame.split('\n').filter_map(stamp)
}

/// Reads the send time and index back out of a frame carrying `payload`.
fn stamp(frame: &str) -> Option<(u64, usize)> {
    Some((
        number_after(frame, r#"{"t":"#)?,
        number_after(frame, r#","i":"#)? as usize,
    ))
}

/// The number right after the first `key` in `text`.
fn number_after(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let digits = text[at..].split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}

async fn produce(
    producer: &FutureProducer,
    route: &Route,
    value: String,
) -> rdkafka::producer::DeliveryFuture {
    let mut record = FutureRecord::<(), String>::to(&route.topic).payload(&value);
    if let Some(channel) = &route.channel {
        record = record.headers(OwnedHeaders::new().insert(Header {
            key: "centrifugo-channels",
            value: Some(channel),
        }));
    }
    loop {
        match producer.send_result(record) {
            Ok(ack) => return ack,
            Err((_, back)) => {
                // librdkafka's queue is full: give its threads a moment to drain it.
                record = back;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

/// The next text frame, answering Centrifugo's pings (`{}`, alone or in a batch of lines)
/// on the way, as its clients must or be disconnected.
async fn next_text(socket: &mut Socket) -> Option<tungstenite::Utf8Bytes> {
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
struct Counters {
    count: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn spawn_counters(sockets: Vec<Socket>) -> Counters {
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
    async fn wait_for(&self, target: usize) {
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
async fn publish_loop(
    mut socket: Socket,
    window: usize,
    barrier: Arc<Barrier>,
    deadline: tokio::time::Instant,
) -> (u64, u64) {
    barrier.wait().await;
    let (mut sent, mut acks, mut errors) = (0usize, 0, 0);
    let frame = |n: usize| {
        Message::text(format!(
            r#"{{"type":"publish","id":{n},"topic":"bench.ingest","payload":{}}}"#,
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

/// What a timed run through a server measured.
struct Run {
    /// From each record's send time to its arrival at each reading subscriber.
    socket: Histogram<u64>,
    /// From each record's send time to its arrival at the plain consumer.
    plain: Histogram<u64>,
    /// Per record and subscriber, its arrival there minus its arrival at the plain consumer
    /// in µs, sorted (negative where the hub's consumer was the quicker of the two).
    added: Vec<i64>,
    /// The server's share of its core.
    cpu: f64,
}

/// Sends records at `rate` for the configured time to the subscribers of `topic`,
/// `subscribers` sockets of `server` (`stalled` of them never read), and to a plain consumer.
async fn timed_run(
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
async fn paced_bare(bare: &Server, args: &Args, rate: f64) -> (Histogram<u64>, f64) {
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
async fn paced(rate: f64, total: usize, mut send: impl AsyncFnMut(usize, u64)) {
    let start = tokio::time::Instant::now();
    for i in 0..total {
        let intended = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(intended).await;
        send(i, now_us() - intended.elapsed().as_micros() as u64).await;
    }
}

/// One task per socket recording the latency of each stamped frame, and when it arrived,
/// until the socket had record `total - 1` or `patience` ran out.
fn spawn_latency_readers(
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
type Reader = (Histogram<u64>, Vec<(usize, u64)>);

async fn merge(
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

/// Sends records until the plain consumer sees one, so its position is known.
async fn warm_up(producer: &FutureProducer, route: &Route, plain: &StreamConsumer) {
    loop {
        // Whether it was acked shows in whether the consumer sees it.
        drop(produce(producer, route, r#"{"warm":true}"#.into()).await);
        match tokio::time::timeout(Duration::from_millis(200), plain.recv()).await {
            Ok(Ok(_)) => return,
            _ => continue,
        }
    }
}

async fn next_stamp(consumer: &StreamConsumer) -> (u64, usize) {
    loop {
        let message = consumer.recv().await.expect("the plain consumer reads");
        if let Some(found) = message
            .payload()
            .and_then(|p| std::str::from_utf8(p).ok())
            .and_then(stamp)
        {
            return found;
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap()
}

fn print_latency(what: &str, h: &Histogram<u64>) {
    let ms = |q| h.value_at_quantile(q) as f64 / 1e3;
    println!(
        "{what}: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms ({} samples)",
        ms(0.5),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1e3,
        h.len()
    );
}

// ---- Processes -------------------------------------------------------------------------

/// CPU time and resident memory of a process, read from /proc.
struct Usage {
    at: Instant,
    cpu: Duration,
    rss_kib: u64,
}

impl Usage {
    fn of(pid: &str) -> Usage {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Fields after the command name, which sits in parentheses and may hold spaces.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap();
        Usage {
            at: Instant::now(),
            // USER_HZ is 100 on Linux.
            cpu: Duration::from_millis(ticks * 10),
            rss_kib,
        }
    }

    fn of_self() -> Usage {
        Usage::of("self")
    }

    /// Share of one core used since `earlier`.
    fn cpu_since(&self, earlier: &Usage) -> f64 {
        (self.cpu - earlier.cpu).as_secs_f64() / (self.at - earlier.at).as_secs_f64()
    }
}

/// Returns the load generator's share of its core.
fn report_client(since: &Usage) -> f64 {
    let share = Usage::of_self().cpu_since(since);
    let flag = if share > 0.9 {
        "  LOAD GENERATOR SATURATED: these figures are a floor"
    } else {
        ""
    };
    println!("  load generator CPU {:.0}%{flag}", share * 100.0);
    share
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wskafka-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_port(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `program` on the given CPUs (`taskset`), killed when dropped.
struct Process(Child);

impl Process {
    fn spawn(cpus: &str, program: &Path, args: &[&str], log: Option<&Path>) -> Process {
        let out = match log {
            Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
            None => Stdio::null(),
        };
        let child = Command::new("taskset")
            .args(["-c", cpus])
            .arg(program)
            .args(args)
            .env("WSKAFKA_JWT_SECRET", SECRET)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        Process(child)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The broker: Apache Kafka through `scripts/kafka`, on both cores (its own affinity, not
/// this process's), with its data in the bench's work directory; stopped when dropped.
struct Broker {
    addr: String,
    pid: String,
    dir: PathBuf,
}

const KAFKA_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka");

impl Broker {
    async fn start(work: &Path) -> Broker {
        let dir = work.join("kafka");
        let port = free_port();
        let status = tokio::process::Command::new("taskset")
            .args(["-c", "0,1", KAFKA_SCRIPT, "start"])
            .arg(&dir)
            .args(["--port", &port.to_string()])
            .args(["--controller-port", &free_port().to_string()])
            .args(["--heap", "1g"])
            .status()
            .await
            .expect("running scripts/kafka");
        assert!(status.success(), "the broker did not start");
        let pid = std::fs::read_to_string(dir.join("kafka.pid")).unwrap();
        Broker {
            addr: format!("127.0.0.1:{port}"),
            pid: pid.trim().to_string(),
            dir,
        }
    }

    fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.addr);
        config
    }

    async fn create_topic(&self, name: &str, partitions: i32) {
        wait_port(&self.addr).await;
        let admin: AdminClient<_> = self.config().create().unwrap();
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let results = admin
            .create_topics([&topic], &AdminOptions::new())
            .await
            .unwrap();
        for result in results {
            result.unwrap();
        }
    }

    /// A fresh broker stalls for about half a second in its first second of produce and
    /// fetch traffic (records then reached a plain consumer 0.3-0.6 s late): a few seconds
    /// of it, on a topic of its own, before anything is measured.
    async fn warm_up(&self) {
        let producer = self.producer(&[]);
        let consumer: StreamConsumer = self
            .config()
            .set("group.id", "bench-warmup")
            .create()
            .unwrap();
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset("warmup", 0, Offset::End)
            .unwrap();
        consumer.assign(&assignment).unwrap();
        let (started, mut i) = (Instant::now(), 0);
        while started.elapsed() < Duration::from_secs(5) {
            drop(produce(&producer, &Route::plain("warmup"), payload(now_us(), i)).await);
            while let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(1), consumer.recv()).await
            {}
            i += 1;
        }
        println!("broker warmed up: {i} records produced and consumed over 5 s");
    }

    /// The load generator's producer: `linger.ms=0`, so each record leaves at its send time.
    fn producer(&self, extra: &[(&str, &str)]) -> FutureProducer {
        let mut config = self.config();
        config.set("acks", "all").set("linger.ms", "0");
        for (key, value) in extra {
            config.set(*key, *value);
        }
        config.create().unwrap()
    }

    /// A consumer with the hub's fetch settings that reads what the hub's consumer reads (every
    /// partition of the `bench.*` topics and of the control topic), and Centrifugo's topics,
    /// each from its end: a fetch's cost grows with the partitions it covers, and that is
    /// Kafka's share.
    fn consumer_at_end(&self) -> StreamConsumer {
        let consumer: StreamConsumer = self
            .config()
            .set("group.id", format!("bench-{}", uuid::Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let metadata = consumer
            .fetch_metadata(None, Duration::from_secs(10))
            .unwrap();
        let mut assignment = TopicPartitionList::new();
        for topic in metadata.topics() {
            let name = topic.name();
            if name.starts_with("bench.")
                || name.starts_with("centrifugo.")
                || name == "wskafka.control"
            {
                for partition in topic.partitions() {
                    assignment
                        .add_partition_offset(topic.name(), partition.id(), Offset::End)
                        .unwrap();
                }
            }
        }
        consumer.assign(&assignment).unwrap();
        consumer
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = Command::new(KAFKA_SCRIPT)
            .arg("stop")
            .arg(&self.dir)
            .arg("--now")
            .status();
    }
}

/// Which server a `Server` is: they differ in how a socket authenticates and subscribes,
/// and in where a record for their subscribers is produced.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Hub,
    Bare,
    Centrifugo,
}

/// A WebSocket server under test: the hub, the bare reference or Centrifugo.
struct Server {
    addr: String,
    pid: String,
    kind: Kind,
    _process: Process,
}

static SOURCE: AtomicUsize = AtomicUsize::new(0);

/// The Kafka topics Centrifugo's consumer reads: one per scenario, beside the hub's
/// `bench.*`, so that each server is measured alone on the same broker.
const CENTRIFUGO_TOPICS: [&str; 6] = [
    "centrifugo.idle",
    "centrifugo.fanout",
    "centrifugo.latency",
    "centrifugo.room",
    "centrifugo.slow",
    "centrifugo.storm",
];

/// Where a record for the subscribers of a `bench.*` topic goes: for the hub, that topic;
/// for Centrifugo, its own topic, with the channel named in the header its consumer reads.
struct Route {
    topic: String,
    channel: Option<String>,
}

impl Route {
    fn plain(topic: &str) -> Route {
        Route {
            topic: topic.to_string(),
            channel: None,
        }
    }
}

impl Server {
    /// A hub named `name` (its database and log), with `extra` settings.
    async fn hub(
        binary: &Path,
        brokers: &str,
        work: &Path,
        cap: usize,
        name: &str,
        extra: &[&str],
    ) -> Server {
        let addr = format!("127.0.0.1:{}", free_port());
        let database = format!(
            "sqlite://{}?mode=rwc",
            work.join(format!("{name}.db")).display()
        );
        let cap = cap.to_string();
        let mut args = vec![
            "serve",
            "--listen",
            &addr,
            "--brokers",
            brokers,
            "--topics",
            "bench.*",
            "--database-url",
            &database,
            "--max-connections",
            &cap,
            "--max-connections-per-user",
            "1000000",
            "--publish-rate",
            "1000000",
            "--keyed-topics",
            HISTORY_TOPIC,
        ];
        args.extend(extra);
        let process = Process::spawn("0", binary, &args, Some(&work.join(format!("{name}.log"))));
        let server = Server {
            pid: process.0.id().to_string(),
            addr,
            kind: Kind::Hub,
            _process: process,
        };
        while server.get("/readyz").await.0 != 200 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server
    }

    async fn bare(binary: &Path) -> Server {
        let addr = format!("127.0.0.1:{}", free_port());
        let process = Process::spawn("0", binary, &[&addr], None);
        wait_port(&addr).await;
        Server {
            pid: process.0.id().to_string(),
            addr,
            kind: Kind::Bare,
            _process: process,
        }
    }

    /// Centrifugo as its documentation has it for one node in production, with what the
    /// comparison needs and nothing else; BENCHMARKS.md gives each setting and why.
    async fn centrifugo(binary: &Path, brokers: &str, work: &Path) -> Server {
        let port = free_port();
        let config = serde_json::json!({
            "http_server": {"address": "127.0.0.1", "port": port},
            "log": {"level": "warn"},
            "usage_stats": {"disabled": true},
            "prometheus": {"enabled": true},
            "client": {"token": {"hmac_secret_key": SECRET}},
            "channel": {
                "without_namespace": {"allow_subscribe_for_client": true},
                "namespaces": [{
                    "name": "storm",
                    "allow_subscribe_for_client": true,
                    "history_size": 10_000,
                    "history_ttl": "300s",
                    "force_recovery": true
                }]
            },
            "consumers": [{
                "name": "kafka",
                "enabled": true,
                "type": "kafka",
                "kafka": {
                    "brokers": [brokers],
                    "topics": CENTRIFUGO_TOPICS,
                    "consumer_group": "bench-centrifugo",
                    "publication_data_mode": {
                        "enabled": true,
                        "channels_header": "centrifugo-channels"
                    }
                }
            }]
        });
        let path = work.join("centrifugo.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let path = path.to_str().unwrap();
        let process = Process::spawn(
            "0",
            binary,
            &["--config", path],
            Some(&work.join("centrifugo.log")),
        );
        let addr = format!("127.0.0.1:{port}");
        wait_port(&addr).await;
        Server {
            pid: process.0.id().to_string(),
            addr,
            kind: Kind::Centrifugo,
            _process: process,
        }
    }

    fn label(&self) -> &'static str {
        match self.kind {
            Kind::Hub => "hub",
            Kind::Bare => "bare axum",
            Kind::Centrifugo => "Centrifugo",
        }
    }

    fn usage(&self) -> Usage {
        Usage::of(&self.pid)
    }

    /// The channel Centrifugo's subscribers of `topic` follow: the storm's is in the
    /// namespace with history and recovery.
    fn channel(topic: &str) -> String {
        if topic == STORM_TOPIC {
            format!("storm:{topic}")
        } else {
            topic.to_string()
        }
    }

    fn route(&self, topic: &str) -> Route {
        match self.kind {
            Kind::Centrifugo => Route {
                topic: topic.replacen("bench.", "centrifugo.", 1),
                channel: Some(Server::channel(topic)),
            },
            Kind::Hub | Kind::Bare => Route::plain(topic),
        }
    }

    fn token(user: &str) -> String {
        let grants = Grants {
            publish: vec!["bench.*".parse().unwrap()],
            subscribe: vec!["bench.*".parse().unwrap()],
            history: Vec::new(),
            online: Vec::new(),
        };
        mint(SECRET, user, grants, Duration::from_secs(3600))
    }

    fn ws_url(&self, user: &str) -> String {
        match self.kind {
            Kind::Centrifugo => format!("ws://{}/connection/websocket", self.addr),
            Kind::Hub | Kind::Bare => {
                format!("ws://{}/ws?token={}", self.addr, Server::token(user))
            }
        }
    }

    /// Opens one socket from one of many loopback addresses, so tens of thousands of
    /// sockets, and those earlier scenarios left in TIME_WAIT, never run out of ports.
    async fn try_open(&self, url: &str) -> Result<Socket, tungstenite::Error> {
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

    async fn open(&self, url: &str) -> Socket {
        self.try_open(url).await.expect("opening a socket")
    }

    async fn sockets(&self, count: usize) -> Vec<Socket> {
        let url = self.ws_url("load");
        stream::iter(0..count)
            .map(|_| self.open(&url))
            .buffer_unordered(64)
            .collect()
            .await
    }

    /// Sockets that get the records of `topic` from its end, each having had its reply to
    /// subscribe (every socket of the bare server gets every frame).
    async fn subscribers(&self, topic: &str, count: usize) -> Vec<Socket> {
        if self.kind == Kind::Bare {
            return self.sockets(count).await;
        }
        stream::iter(0..count)
            .map(|_| async {
                let (socket, _) = self.subscribe(topic, "load", &Position::default()).await;
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
    async fn subscribe(
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

    async fn get(&self, path: &str) -> (u16, String) {
        let Ok(mut stream) = TcpStream::connect(&self.addr).await else {
            return (0, String::new());
        };
        let request = format!("GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n");
        if stream.write_all(request.as_bytes()).await.is_err() {
            return (0, String::new());
        }
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response).await;
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (status, body.to_string())
    }

    /// The cumulative buckets of the hub's delivery-latency histogram: (upper bound, count).
    async fn delivery_buckets(&self) -> Vec<(String, f64)> {
        let (_, body) = self.get("/metrics").await;
        body.lines()
            .filter_map(|l| l.strip_prefix("wskafka_delivery_seconds_bucket{le=\""))
            .filter_map(|l| {
                let (le, rest) = l.split_once("\"} ")?;
                Some((le.to_string(), rest.parse().ok()?))
            })
            .collect()
    }

    async fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.get("/metrics").await;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Until the last scenario's sockets are gone and the server has caught up.
    async fn wait_idle(&self) {
        if self.kind == Kind::Hub {
            while self.metric("wskafka_connections").await > 0.0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        wait_quiet(&self.pid, 0.05).await;
    }
}
