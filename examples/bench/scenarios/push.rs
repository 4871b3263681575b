//! Web Push (issue 34): a hub pushing the records of a per-user topic to users with no
//! socket open, against a push service of this process on loopback (the hub's test setting
//! `--push-allow-loopback`) that answers 201 at once and notes when each request arrives.
//! What one hub pushes per second, how long a record takes from its produce ack to its push
//! request, and what a stored subscription costs.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::{SinkExt, StreamExt, stream};
use openssl::bn::BigNumContext;
use openssl::ec::{EcGroup, EcKey, PointConversionForm};
use openssl::nid::Nid;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_tungstenite::tungstenite::Message;
use wskafka::{Grants, mint};

use crate::clients::next_text;
use crate::kafka::Broker;
use crate::load::paced;
use crate::report::{Usage, histogram, print_latency, report_client};
use crate::scenarios::flood::Database;
use crate::servers::Server;
use crate::{Args, SECRET};

/// The per-user topic pushed (4 partitions), under the hub's `--user-topics bench.push.*`.
pub const PUSH_TOPIC: &str = "bench.push.inbox";

/// Users, each with one stored subscription (a device).
const USERS: usize = 10_000;

/// Records/s of the paced run, one per user, for latency without a queue.
const PACED_RATE: f64 = 100.0;

/// The push service: when each device's requests arrived, by device (user) number.
#[derive(Clone, Default)]
struct PushService {
    arrived: Arc<Mutex<HashMap<usize, Vec<Instant>>>>,
}

impl PushService {
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        origin
    }

    fn count(&self) -> usize {
        self.arrived.lock().unwrap().values().map(Vec::len).sum()
    }

    /// Takes the arrivals so far, leaving none.
    fn take(&self) -> HashMap<usize, Vec<Instant>> {
        std::mem::take(&mut *self.arrived.lock().unwrap())
    }

    /// Waits until `count` requests arrived, or `patience` passed; the arrivals, taken.
    async fn wait_for(&self, count: usize, patience: Duration) -> HashMap<usize, Vec<Instant>> {
        let deadline = Instant::now() + patience;
        while self.count() < count && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.take()
    }
}

async fn receive(State(service): State<PushService>, uri: Uri) -> StatusCode {
    let at = Instant::now();
    if let Some(user) = uri
        .path()
        .strip_prefix("/device/")
        .and_then(|n| n.parse().ok())
    {
        service
            .arrived
            .lock()
            .unwrap()
            .entry(user)
            .or_default()
            .push(at);
    }
    StatusCode::CREATED
}

/// A browser's push subscription: a P-256 key pair's public half (uncompressed point) and a
/// 16-byte auth secret, as `tests/it/push.rs` makes them, base64url.
fn subscription(endpoint: &str) -> serde_json::Value {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = EcKey::generate(&group).unwrap();
    let mut ctx = BigNumContext::new().unwrap();
    let point = key
        .public_key()
        .to_bytes(&group, PointConversionForm::UNCOMPRESSED, &mut ctx)
        .unwrap();
    let mut auth = [0u8; 16];
    openssl::rand::rand_bytes(&mut auth).unwrap();
    serde_json::json!({"endpoint": endpoint, "expirationTime": null,
        "keys": {"p256dh": URL_SAFE_NO_PAD.encode(point), "auth": URL_SAFE_NO_PAD.encode(auth)}})
}

fn user(n: usize) -> String {
    format!("push-{n}")
}

/// Stores one subscription per user, each over a socket of its own, closed after.
async fn register(hub: &Server, origin: &str) {
    let done = stream::iter(0..USERS)
        .map(|n| async move {
            let mut socket = hub.open(&hub.ws_url(&user(n))).await;
            let request = serde_json::json!({"type": "push_subscribe", "id": 1,
                "subscription": subscription(&format!("{origin}/device/{n}"))});
            socket
                .send(Message::text(request.to_string()))
                .await
                .unwrap();
            let reply = next_text(&mut socket)
                .await
                .expect("a push_subscribe reply");
            assert!(reply.contains("push_subscribed"), "{reply}");
            let _ = socket.close(None).await;
        })
        .buffer_unordered(32)
        .count()
        .await;
    assert_eq!(done, USERS);
}

/// Waits until the hub's roster has the last users that registered offline.
async fn until_offline(hub: &Server) {
    let grants = Grants {
        online: vec!["push-*".parse().unwrap()],
        ..Grants::default()
    };
    let token = mint(SECRET, "watcher", grants, Duration::from_secs(600));
    let url = format!("ws://{}/ws?token={token}", hub.addr);
    let mut watcher = hub.open(&url).await;
    let users: Vec<String> = (USERS - 100..USERS).map(user).collect();
    let ask = serde_json::json!({"type": "online", "users": users}).to_string();
    loop {
        watcher.send(Message::text(ask.clone())).await.unwrap();
        let reply = next_text(&mut watcher).await.expect("an online reply");
        let status: serde_json::Value = serde_json::from_str(&reply).unwrap();
        let online = status["users"]
            .as_object()
            .is_some_and(|users| users.values().any(|v| v == true));
        if status["type"] == "online" && !online {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Produces one record for each of `users`, paced at `rate` records/s (unpaced when
/// infinite); each user's produce ack time.
async fn produce(
    producer: &FutureProducer,
    users: std::ops::Range<usize>,
    rate: f64,
) -> HashMap<usize, Instant> {
    let acks = Arc::new(Mutex::new(HashMap::new()));
    let mut waiting = Vec::new();
    let first = users.start;
    let total = users.len();
    paced(rate, total, async |i, _| {
        let n = first + i;
        let key = user(n);
        let value = format!(
            r#"{{"text":"record {n} for {key}","pad":"{}"}}"#,
            "x".repeat(40)
        );
        let mut record = FutureRecord::to(PUSH_TOPIC).key(&key).payload(&value);
        let ack = loop {
            match producer.send_result(record) {
                Ok(ack) => break ack,
                Err((_, back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        };
        let acks = acks.clone();
        waiting.push(tokio::spawn(async move {
            ack.await.unwrap().unwrap();
            acks.lock().unwrap().insert(n, Instant::now());
        }));
    })
    .await;
    for ack in waiting {
        ack.await.unwrap();
    }
    Arc::try_unwrap(acks).unwrap().into_inner().unwrap()
}

/// Ack-to-arrival latencies of each user's push, and how many arrived per user beyond one.
fn latencies(
    acks: &HashMap<usize, Instant>,
    arrived: &HashMap<usize, Vec<Instant>>,
) -> (hdrhistogram::Histogram<u64>, usize, usize) {
    let mut times = histogram();
    let (mut missing, mut extra) = (0, 0);
    for (n, ack) in acks {
        match arrived.get(n).map(Vec::as_slice) {
            Some([at, more @ ..]) => {
                let us = at.saturating_duration_since(*ack).as_micros() as u64;
                times.record(us.max(1)).unwrap();
                extra += more.len();
            }
            _ => missing += 1,
        }
    }
    (times, missing, extra)
}

/// A counter's sum over its labels.
async fn labelled_sum(hub: &Server, name: &str) -> f64 {
    let (_, body) = hub.get("/metrics").await;
    body.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .fold(0.0, |sum, n| sum + n)
}

async fn table_bytes(url: &str) -> i64 {
    use sqlx::Connection as _;
    let mut db = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar("SELECT pg_total_relation_size('push_subscriptions')")
        .fetch_one(&mut db)
        .await
        .unwrap()
}

pub async fn push(binary: &Path, kafka: &Broker, work: &Path, args: &Args) {
    let Some(database) = Database::create(&args.postgres, "push").await else {
        println!("push: skipped, it needs PostgreSQL");
        return;
    };
    let service = PushService::default();
    let origin = service.start().await;
    let settings = [
        "--topics",
        "bench.push.*",
        "--user-topics",
        "bench.push.*",
        "--database-url",
        &database.url,
        "--presence-topic",
        "bench.push-presence",
        "--roster-topic",
        "bench.push-roster",
        "--push",
        "--push-contact",
        "mailto:bench@example.com",
        "--push-group",
        "bench.push",
        "--push-allow-loopback",
        "--request-rates",
        "online=1000",
    ];
    let hub = Server::hub(binary, &kafka.addr, work, 1000, "push", &settings).await;
    println!(
        "one hub with push on (core 0), PostgreSQL {} for its subscriptions and claims; {PUSH_TOPIC} (4 partitions); a loopback push service in the load generator answering 201 at once",
        args.postgres
    );

    let (rss_before, bytes_before) = (
        Usage::of(&hub.pid).rss_kib,
        table_bytes(&database.url).await,
    );
    let started = Instant::now();
    register(&hub, &origin).await;
    let took = started.elapsed();
    until_offline(&hub).await;
    hub.wait_idle().await;
    let (rss_after, bytes_after) = (
        Usage::of(&hub.pid).rss_kib,
        table_bytes(&database.url).await,
    );
    println!(
        "{USERS} subscriptions stored over a socket each in {:.1} s ({:.0}/s)",
        took.as_secs_f64(),
        USERS as f64 / took.as_secs_f64()
    );
    println!(
        "  hub RSS {} -> {} MiB ({:+.0} bytes per subscription: the hub holds none in memory, it reads a user's from the database per record)",
        rss_before / 1024,
        rss_after / 1024,
        (rss_after as f64 - rss_before as f64) * 1024.0 / USERS as f64
    );
    println!(
        "  push_subscriptions table with its indexes: {} -> {} KiB, {:.0} bytes per subscription",
        bytes_before / 1024,
        bytes_after / 1024,
        (bytes_after - bytes_before) as f64 / USERS as f64
    );

    let producer = kafka.producer(&[("linger.ms", "0")]);
    // Paced: latency of pushes that find no queue.
    let paced_count = (PACED_RATE * args.seconds as f64) as usize;
    let acks = produce(&producer, 0..paced_count, PACED_RATE).await;
    let arrived = service.wait_for(paced_count, Duration::from_secs(60)).await;
    let (times, missing, extra) = latencies(&acks, &arrived);
    println!(
        "paced: {paced_count} records at {PACED_RATE:.0}/s, one per user; pushes missing {missing}, extra {extra}"
    );
    print_latency("  produce ack to push request", &times);

    // Burst: one record for every user at once, pushed as fast as the hub can.
    hub.wait_idle().await;
    let (hub_usage, own) = (hub.usage(), Usage::of_self());
    let sent_before = hub.metric("wskafka_push_sent_total").await;
    let start = Instant::now();
    let acks = produce(&producer, 0..USERS, f64::INFINITY).await;
    let produced = start.elapsed();
    let arrived = service.wait_for(USERS, Duration::from_secs(300)).await;
    let last = arrived.values().flatten().max().copied().unwrap_or(start);
    let span = last.saturating_duration_since(start).as_secs_f64();
    let hub_cpu = hub.usage().cpu_since(&hub_usage);
    let (times, missing, extra) = latencies(&acks, &arrived);
    let sent = hub.metric("wskafka_push_sent_total").await - sent_before;
    println!(
        "burst: {USERS} records, one per user, produced in {:.2} s; last push after {span:.2} s: {:.0} pushes/s on one hub; pushes missing {missing}, extra {extra}; the hub counted {sent:.0} sent",
        produced.as_secs_f64(),
        USERS as f64 / span
    );
    println!(
        "  hub CPU {:.0}% of its core over the burst, {:.0} us per push",
        hub_cpu * 100.0,
        hub_cpu * span * 1e6 / USERS as f64
    );
    print_latency("  produce ack to push request", &times);
    report_client(&own);
    println!(
        "push failures: {:.0}, records skipped: {:.0}",
        labelled_sum(&hub, "wskafka_push_failed_total").await,
        labelled_sum(&hub, "wskafka_push_skipped_total").await
    );
    drop(hub);
    database.drop().await;
}
