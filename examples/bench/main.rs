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
//!
//! `scenarios/` holds one module per scenario; what they share: `servers` (starting the
//! hub, the bare server and Centrifugo, and reading their metrics), `clients` (each
//! server's protocol from the client's side), `kafka` (the broker and the plain Kafka
//! clients), `records` (stamped payloads), `load` (bursts, paced runs, latency readers) and
//! `report` (CPU, memory and latency figures).

mod clients;
mod kafka;
mod load;
mod records;
mod report;
mod scenarios;
mod servers;

use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Instant;

use clap::Parser;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;

use crate::kafka::Broker;
use crate::report::{Usage, wait_quiet};
use crate::scenarios::flood::{FLOOD_HISTORY_TOPIC, FLOOD_TOPIC};
use crate::scenarios::limits::LIMITS_TOPICS;
use crate::scenarios::storm::STORM_TOPIC;
use crate::servers::{CENTRIFUGO_TOPICS, Server, Servers, WITH_CENTRIFUGO, tempdir};

type Socket = WebSocketStream<TcpStream>;

#[derive(Parser)]
struct Args {
    /// Scenarios to run, in this order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "idle,fanout,ingest,latency,room,slow,storm,history,presence,heartbeat,flood,limits,once,http,sse,push,fleet"
    )]
    scenarios: Vec<String>,
    /// The Centrifugo binary measured beside the hub (`scripts/bench` builds it); needed
    /// by the scenarios that compare with it (idle, fanout, latency, room, slow, storm).
    #[arg(long, env = "CENTRIFUGO")]
    centrifugo: Option<PathBuf>,
    /// Sockets held open by the idle scenario; the hub's cap is set to this many.
    #[arg(long, default_value_t = 19_000)]
    idle: usize,
    /// SSE streams, and as many sockets, held open by the sse scenario to weigh the hub's
    /// memory per stream against its memory per socket.
    #[arg(long, default_value_t = 5_000)]
    sse_streams: usize,
    /// Subscribers of the fan-out, latency and slow-consumer scenarios (and of the sse
    /// scenario's fan-out, as many streams as sockets).
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
    /// Records sent to the large room, 200 ms apart: enough for its p99 not to be its
    /// maximum.
    #[arg(long, default_value_t = 300)]
    room_records: usize,
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
    /// Socket counts of the heartbeat scenario, each held by a hub with heartbeats and then
    /// by one without. The descriptor limit (`ulimit -Hn`) bounds them: a socket is a
    /// descriptor in this process and one in the hub.
    #[arg(long, value_delimiter = ',', default_value = "2000,5000,10000,19000")]
    heartbeat_sockets: Vec<usize>,
    /// Seconds over which the heartbeat scenario takes each idle hub's CPU: several ping
    /// intervals.
    #[arg(long, default_value_t = 75)]
    heartbeat_window: u64,
    /// Ping interval and pong timeout of the heartbeat scenario, in seconds (the hub's
    /// defaults).
    #[arg(long, default_value_t = 25)]
    ping_interval: u64,
    #[arg(long, default_value_t = 10)]
    pong_timeout: u64,
    /// Sockets whose network stalls at once in the heartbeat scenario.
    #[arg(long, default_value_t = 5_000)]
    stalled: usize,
    /// Hub builds the flood scenario measures one after the other, as LABEL=BINARY
    /// (`before=/tmp/wskafka-before,after=target/release/wskafka`); the hub of this tree by
    /// default.
    #[arg(long, value_delimiter = ',', value_parser = parse_build)]
    builds: Vec<(String, PathBuf)>,
    /// Requests a flooding socket keeps awaiting their reply.
    #[arg(long, default_value_t = 64)]
    flood_window: usize,
    /// Records/s the fleet scenario spreads over its topics (after every other scenario:
    /// its topics are created then, so that no other scenario's readers cover them).
    #[arg(long, default_value_t = 2_000.0)]
    fleet_rate: f64,
    /// Hubs of the fleet scenario, each following a different tenth of its topics (at most 10).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=10))]
    fleet_hubs: u8,
    /// The PostgreSQL server the flood scenario's hubs write read positions to (each in a
    /// database of its own, dropped at the end), where its transactions are counted; the
    /// push scenario's hub keeps its subscriptions and claims there.
    #[arg(
        long,
        env = "WSKAFKA_BENCH_POSTGRES",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    postgres: String,
}

/// One `LABEL=BINARY` of `--builds`.
fn parse_build(entry: &str) -> Result<(String, PathBuf), String> {
    let (label, binary) = entry
        .split_once('=')
        .ok_or_else(|| format!("{entry:?} is not LABEL=BINARY"))?;
    let binary = PathBuf::from(binary);
    if !binary.is_file() {
        return Err(format!("{} is not a file", binary.display()));
    }
    Ok((label.to_string(), binary))
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
        (FLOOD_TOPIC, 1),
        (FLOOD_HISTORY_TOPIC, 4),
        (LIMITS_TOPICS[0], 1),
        (LIMITS_TOPICS[1], 1),
        (scenarios::once::ONCE_TOPIC, 4),
        (scenarios::sse::SSE_TOPIC, 1),
        (scenarios::push::PUSH_TOPIC, 4),
        ("warmup", 1),
    ] {
        kafka.create_topic(topic, partitions).await;
    }
    for topic in CENTRIFUGO_TOPICS {
        kafka.create_topic(topic, 1).await;
    }
    kafka.warm_up().await;
    let hub_binary = examples.join("../wskafka");
    let builds = match args.builds.as_slice() {
        [] => vec![("hub".to_string(), hub_binary.clone())],
        given => given.to_vec(),
    };
    let hub = Server::hub(&hub_binary, &kafka.addr, &work, args.idle, "hub", &[]).await;
    let bare = Server::bare(&examples.join("bare_broadcast")).await;
    let centrifugo = match &args.centrifugo {
        _ if !args
            .scenarios
            .iter()
            .any(|s| WITH_CENTRIFUGO.contains(&s.as_str())) =>
        {
            None
        }
        Some(binary) => Some(Server::centrifugo(binary, &kafka.addr, &work).await),
        None => panic!("--centrifugo (or CENTRIFUGO) is needed by {WITH_CENTRIFUGO:?}"),
    };
    let servers = Servers {
        hub,
        bare,
        centrifugo,
    };
    let beside = match servers.centrifugo {
        Some(_) => "hub, bare server and Centrifugo",
        None => "hub and bare server",
    };
    println!(
        "machine: {} cores; {beside} on core 0, load generator on core 1",
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
            "idle" => scenarios::idle(&servers, args.idle).await,
            "fanout" => scenarios::fanout(&servers, &kafka, &args).await,
            "ingest" => scenarios::ingest(hub, bare, &kafka, &args).await,
            "latency" => scenarios::latency(&servers, &kafka, &args).await,
            "slow" => scenarios::slow(&servers, &kafka, &args).await,
            "room" => scenarios::room(&servers, &kafka, args.room, args.room_records).await,
            "storm" => scenarios::storm(&servers, &kafka, &args).await,
            "history" => scenarios::history(hub, &kafka, &args).await,
            "presence" => scenarios::presence(&hub_binary, &kafka, &work).await,
            "heartbeat" => scenarios::heartbeat(&hub_binary, &kafka, &work, &args).await,
            "flood" => scenarios::flood(&builds, &kafka, &work, &args).await,
            "limits" => scenarios::limits(&hub_binary, &kafka, &work, &args).await,
            "once" => scenarios::once(hub, &args).await,
            "http" => scenarios::http(hub, &args).await,
            "sse" => scenarios::sse(hub, &hub_binary, &kafka, &work, &args).await,
            "push" => scenarios::push(&hub_binary, &kafka, &work, &args).await,
            "fleet" => scenarios::fleet(&hub_binary, &kafka, &work, &args).await,
            other => panic!("no scenario called {other}"),
        }
        println!(
            "broker over the scenario: {:.0}% of a core (of 2), RSS {} MiB",
            Usage::of(&kafka.pid).cpu_since(&broker) * 100.0,
            Usage::of(&kafka.pid).rss_kib / 1024
        );
        hub.wait_idle().await;
        if let Some(centrifugo) = centrifugo {
            centrifugo.wait_idle().await;
        }
        // The next scenario starts once the broker has settled what this one left it.
        wait_quiet(&kafka.pid, 0.2).await;
    }
}
