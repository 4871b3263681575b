//! What every integration test stands on: a real Apache Kafka broker (the one `scripts/test`
//! starts for the whole suite, or one per test binary when a test runs on its own), the real
//! `wskafka` binary on a random port, a WebSocket client, and an rdkafka client that checks
//! Kafka independently of the hub.
#![allow(dead_code)] // each test binary uses its own part of this helper

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message as _, Offset, TopicPartitionList};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wskafka::{Grants, mint};

pub const SECRET: &str = "integration-test-secret-of-32-bytes";
/// Upper bound on any single wait; a test that hits it has failed.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Polls `check` until it holds, and fails the test when it still does not after
/// `PATIENCE`: for state that another process shows only when asked (an HTTP endpoint, the
/// broker), where there is no event to await.
pub async fn eventually(what: impl std::fmt::Display, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never came: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Milliseconds since the epoch, as the hub's records and heartbeats count them.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Seconds since the epoch, as tokens count them.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---------------------------------------------------------------------------------------
// The broker

/// The broker under test: `WSKAFKA_TEST_BROKERS` when set (`scripts/test` sets it to the
/// broker it started for the suite), otherwise one started for this test binary.
pub fn broker() -> &'static str {
    static BROKER: OnceLock<(String, Option<KafkaNode>)> = OnceLock::new();
    let (addr, _node) = BROKER.get_or_init(|| match std::env::var("WSKAFKA_TEST_BROKERS") {
        Ok(addr) => (addr, None),
        Err(_) => {
            let node = KafkaNode::start_blocking(&KafkaNode::single());
            (node.addr(), Some(node))
        }
    });
    addr
}

/// How to start one Kafka node through `scripts/kafka`.
#[derive(Clone)]
pub struct NodeSpec {
    pub dir: PathBuf,
    pub port: u16,
    pub controller_port: u16,
    pub node_id: u32,
    /// The controller quorum, `id@127.0.0.1:port,...`.
    pub voters: String,
    pub cluster_id: String,
    pub heap: &'static str,
    /// Server properties beyond `scripts/kafka`'s and `tests/broker.properties`.
    pub settings: Vec<String>,
    /// More `scripts/kafka start` options (`--secure-port`, ...).
    pub options: Vec<String>,
}

/// A Kafka node started through `scripts/kafka`, in a data directory of its own. A shell
/// holds it and stops it with SIGKILL when its stdin closes: when this handle drops or is
/// killed, and when the test process exits, however it exits.
pub struct KafkaNode {
    pub spec: NodeSpec,
    watchdog: Option<std::process::Child>,
}

const KAFKA_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka");
const BROKER_PROPERTIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/broker.properties");

impl KafkaNode {
    /// A single node in combined mode, on free ports.
    pub fn single() -> NodeSpec {
        let controller_port = node_port();
        NodeSpec {
            dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("kafka")),
            port: node_port(),
            controller_port,
            node_id: 1,
            voters: format!("1@127.0.0.1:{controller_port}"),
            cluster_id: cluster_id(),
            heap: "512m",
            settings: Vec::new(),
            options: Vec::new(),
        }
    }

    /// Starts the node; returns once it serves (a node of a cluster: once a quorum of
    /// controllers is up, so start those together).
    pub async fn start(spec: &NodeSpec) -> KafkaNode {
        let spec = spec.clone();
        tokio::task::spawn_blocking(move || KafkaNode::start_blocking(&spec))
            .await
            .unwrap()
    }

    pub fn start_blocking(spec: &NodeSpec) -> KafkaNode {
        KafkaNode {
            watchdog: Some(launch(spec)),
            spec: spec.clone(),
        }
    }

    /// Starts the node again on its data directory, which keeps every record.
    pub async fn restart(&mut self) {
        assert!(self.watchdog.is_none(), "the node is running");
        let spec = self.spec.clone();
        let watchdog = tokio::task::spawn_blocking(move || launch(&spec))
            .await
            .unwrap();
        self.watchdog = Some(watchdog);
    }

    /// SIGKILL: no controlled shutdown, no flush; the data directory stays.
    pub fn kill(&mut self) {
        let mut watchdog = self.watchdog.take().expect("the node is running");
        drop(watchdog.stdin.take());
        watchdog.wait().expect("stopping the Kafka node");
    }

    /// SIGSTOP: the broker holds every connection open and answers nothing, as a broker
    /// in a long garbage-collection pause or behind a stalled network does.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// SIGCONT after `pause`: it answers what it received meanwhile.
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let pid = std::fs::read_to_string(self.spec.dir.join("kafka.pid")).expect("the node's pid");
        let sent = std::process::Command::new("kill")
            .args([&format!("-{name}"), pid.trim()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{name} {pid}");
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.spec.port)
    }

    pub fn is_running(&self) -> bool {
        self.watchdog.is_some()
    }
}

impl Drop for KafkaNode {
    fn drop(&mut self) {
        if self.watchdog.is_some() {
            self.kill();
        }
        let _ = std::fs::remove_dir_all(&self.spec.dir);
    }
}

/// Several Kafka nodes in combined mode (each a broker and a KRaft controller) on this
/// machine, set up as production clusters are: three replicas of everything, and a write
/// acknowledged by all (`acks=all`) only once two of them have it.
pub struct Cluster {
    pub nodes: Vec<KafkaNode>,
}

impl Cluster {
    pub async fn start(size: u32) -> Cluster {
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (node_port(), node_port())).collect();
        let voters: Vec<String> = ports
            .iter()
            .zip(1..)
            .map(|((_, controller), id)| format!("{id}@127.0.0.1:{controller}"))
            .collect();
        let (voters, cluster_id) = (voters.join(","), cluster_id());
        let replicas = size.min(3);
        let settings = vec![
            format!("default.replication.factor={replicas}"),
            format!("offsets.topic.replication.factor={replicas}"),
            format!("transaction.state.log.replication.factor={replicas}"),
            "min.insync.replicas=2".to_string(),
            "transaction.state.log.min.isr=2".to_string(),
        ];
        let specs: Vec<NodeSpec> = ports
            .iter()
            .zip(1..)
            .map(|(&(port, controller_port), node_id)| NodeSpec {
                dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("cluster")),
                port,
                controller_port,
                node_id,
                voters: voters.clone(),
                cluster_id: cluster_id.clone(),
                heap: "384m",
                settings: settings.clone(),
                options: Vec::new(),
            })
            .collect();
        // Each node serves once a quorum of controllers is up: they start together.
        let nodes = futures_util::future::join_all(specs.iter().map(KafkaNode::start)).await;
        Cluster { nodes }
    }

    /// Every node's address, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        let addrs: Vec<String> = self.nodes.iter().map(KafkaNode::addr).collect();
        addrs.join(",")
    }

    /// The running nodes' addresses.
    pub fn running(&self) -> String {
        let addrs: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .map(KafkaNode::addr)
            .collect();
        addrs.join(",")
    }

    /// The node that leads `partition` of `topic` now.
    pub fn leader(&self, topic: &str, partition: i32) -> usize {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.running())
            .create()
            .unwrap();
        let metadata = consumer.fetch_metadata(Some(topic), PATIENCE).unwrap();
        let leader = metadata.topics()[0]
            .partitions()
            .iter()
            .find(|p| p.id() == partition)
            .expect("the partition exists")
            .leader();
        self.nodes
            .iter()
            .position(|n| n.spec.node_id as i32 == leader)
            .expect("the leader is a node of the cluster")
    }
}

/// Runs `scripts/kafka start` under a shell that stops the node when its stdin closes.
fn launch(spec: &NodeSpec) -> std::process::Child {
    let mut args = vec![
        "--port".to_string(),
        spec.port.to_string(),
        "--controller-port".into(),
        spec.controller_port.to_string(),
        "--node-id".into(),
        spec.node_id.to_string(),
        "--voters".into(),
        spec.voters.clone(),
        "--cluster-id".into(),
        spec.cluster_id.clone(),
        "--heap".into(),
        spec.heap.into(),
        "--config".into(),
        BROKER_PROPERTIES.into(),
    ];
    for setting in &spec.settings {
        args.extend(["--set".to_string(), setting.clone()]);
    }
    args.extend(spec.options.iter().cloned());
    let script = r#"kafka="$1" dir="$2"; shift 2
            "$kafka" start "$dir" "$@" >&2 || exit 1
            echo started
            read -r _
            "$kafka" stop "$dir" --now"#;
    let mut watchdog = std::process::Command::new("bash")
        .args(["-c", script, "watchdog", KAFKA_SCRIPT])
        .arg(&spec.dir)
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting scripts/kafka");
    let mut started = String::new();
    std::io::BufReader::new(watchdog.stdout.take().unwrap())
        .read_line(&mut started)
        .unwrap();
    assert_eq!(
        started.trim(),
        "started",
        "Kafka node {} did not start: see {}/kafka.log",
        spec.node_id,
        spec.dir.display()
    );
    watchdog
}

/// A new KRaft cluster id: a UUID in URL-safe base64 without padding, as Kafka writes them.
/// One in 64 such strings begins with `-`, which a command line reads as an option; Kafka's
/// own `Uuid.randomUuid` draws again for those, and so does this.
pub fn cluster_id() -> String {
    use base64::Engine as _;
    loop {
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(uuid::Uuid::new_v4().as_bytes());
        if !id.starts_with('-') {
            return id;
        }
    }
}

/// A port for a Kafka node to listen on, which nothing listens on now, below the kernel's
/// ephemeral range (32768 and up here): a port the kernel picked for `bind(0)` can be handed
/// out again as the source port of a client's connection before the node binds it, and a
/// node starts seconds after its ports are chosen.
pub fn node_port() -> u16 {
    loop {
        let port = 20_000 + (uuid::Uuid::new_v4().as_u128() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}.{}", uuid::Uuid::new_v4().simple())
}

/// Creates `<unique prefix>.room` and returns it with the glob `<unique prefix>.*`, which
/// exposes it and any other topic the test names under it, and nothing another test creates.
pub async fn fresh_topic(prefix: &str, partitions: i32) -> (String, String) {
    let prefix = unique(prefix);
    let topic = format!("{prefix}.room");
    create_topic(&topic, partitions).await;
    (topic, format!("{prefix}.*"))
}

pub async fn create_topic(name: &str, partitions: i32) {
    create_topic_with(broker(), name, partitions, 1, &[]).await;
}

/// Creates `name` with one partition unless it exists: for a fixed name that tests share
/// (the hub serves no topic that does not exist).
pub async fn ensure_topic(name: &str) {
    let topic = NewTopic::new(name, 1, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(PATIENCE));
    for result in admin(broker())
        .create_topics([&topic], &options)
        .await
        .unwrap()
    {
        match result {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, e)) => panic!("creating {topic}: {e}"),
        }
    }
}

/// Creates a topic with a replication factor and topic-level settings (`retention.ms`...).
pub async fn create_topic_with(
    brokers: &str,
    name: &str,
    partitions: i32,
    replication: i32,
    settings: &[(&str, &str)],
) {
    let admin = admin(brokers);
    let topic = settings.iter().fold(
        NewTopic::new(name, partitions, TopicReplication::Fixed(replication)),
        |topic, (key, value)| topic.set(key, value),
    );
    let results = admin
        .create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(PATIENCE)),
        )
        .await
        .unwrap();
    for result in results {
        result.unwrap_or_else(|(topic, e)| panic!("creating {topic}: {e}"));
    }
}

/// Every topic the broker holds, from a metadata request for all topics (which, unlike one
/// naming a topic, never makes a broker create it).
pub async fn topic_names(brokers: &str) -> BTreeSet<String> {
    let brokers = brokers.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
        let metadata = consumer.fetch_metadata(None, PATIENCE).unwrap();
        metadata
            .topics()
            .iter()
            .map(|t| t.name().to_string())
            .collect()
    })
    .await
    .unwrap()
}

pub fn admin(brokers: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap()
}

/// A producer with librdkafka's defaults: idempotent, batching up to `linger.ms` (5 ms).
pub fn producer() -> FutureProducer {
    producer_at(broker())
}

pub fn producer_at(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap()
}

/// A producer that places keys as Kafka's Java clients do (murmur2), as a backend sharing
/// keyed topics with the hub must.
pub fn murmur2_producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", broker())
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap()
}

/// Produces `(key, value)` records with Kafka's own Java client and its default partitioner
/// (`tests/java/Produce.java`, run from source by the JVM the broker runs on); returns each
/// record's (partition, offset), in order.
pub async fn java_produce(topic: &str, records: &[(String, String)]) -> Vec<(i32, i64)> {
    let libs = std::process::Command::new(KAFKA_SCRIPT)
        .arg("install")
        .output()
        .expect("scripts/kafka install");
    assert!(libs.status.success(), "scripts/kafka install failed");
    let classpath = format!("{}/*", String::from_utf8(libs.stdout).unwrap().trim());
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/java/Produce.java");
    let mut java = Command::new("java")
        .args(["-cp", &classpath, source, broker(), topic])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting java");
    let input: String = records
        .iter()
        .map(|(key, value)| format!("{key}\t{value}\n"))
        .collect();
    let mut stdin = java.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    let output = tokio::time::timeout(3 * PATIENCE, java.wait_with_output())
        .await
        .expect("the Java producer did not finish in time")
        .unwrap();
    assert!(output.status.success(), "the Java producer failed");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let (p, o) = line.split_once(' ').unwrap();
            (p.parse().unwrap(), o.parse().unwrap())
        })
        .collect()
}

/// Produces `count` records `{"seq": i}` with keys `k<i % 7>`, up to 1,000 in flight (so
/// librdkafka packs them into batches of many records), straight into Kafka; returns each
/// record's position with its `seq`.
pub async fn produce_many(topic: &str, count: i64) -> BTreeMap<(i32, i64), i64> {
    let producer = producer();
    let sends = futures_util::stream::iter(0..count).map(|seq| {
        let producer = &producer;
        async move {
            let body = serde_json::json!({"seq": seq}).to_string();
            let key = format!("k{}", seq % 7);
            (produce(producer, topic, &key, body.as_bytes()).await, seq)
        }
    });
    sends.buffer_unordered(1000).collect().await
}

/// Produces straight into Kafka, bypassing the hub; returns (partition, offset).
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    value: &[u8],
) -> (i32, i64) {
    let delivery = producer
        .send(
            FutureRecord::to(topic).key(key).payload(value),
            Duration::from_secs(5),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("producing to {topic}: {e}"));
    (delivery.partition, delivery.offset)
}

/// Every record Kafka holds in `topic`, read from the beginning of each partition to its
/// end by a consumer of no group.
pub async fn read_all(brokers: &str, topic: &str) -> BTreeMap<(i32, i64), OwnedMessage> {
    let (topic, addr) = (topic.to_string(), brokers.to_string());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &addr)
            .set("group.id", unique("reader"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .create()
            .unwrap();
        let metadata = consumer.fetch_metadata(Some(&topic), PATIENCE).unwrap();
        let mut tpl = TopicPartitionList::new();
        for partition in metadata.topics()[0].partitions() {
            tpl.add_partition_offset(&topic, partition.id(), Offset::Beginning)
                .unwrap();
        }
        let mut open = tpl.count();
        consumer.assign(&tpl).unwrap();
        let mut records = BTreeMap::new();
        let deadline = std::time::Instant::now() + PATIENCE;
        while open > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{topic}: not read to its end in time"
            );
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    let message = message.detach();
                    records.insert((message.partition(), message.offset()), message);
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => open -= 1,
                Some(Err(e)) => panic!("reading {topic}: {e}"),
                None => {}
            }
        }
        records
    })
    .await
    .unwrap()
}

/// The records at each of `wanted` (partition, offset), read from the beginning by a
/// consumer of no group as they arrive; fails if Kafka has not got one of them in time.
pub async fn read_records(
    topic: &str,
    wanted: impl IntoIterator<Item = (i32, i64)>,
) -> BTreeMap<(i32, i64), OwnedMessage> {
    read_records_at(broker(), topic, wanted).await
}

pub async fn read_records_at(
    brokers: &str,
    topic: &str,
    wanted: impl IntoIterator<Item = (i32, i64)>,
) -> BTreeMap<(i32, i64), OwnedMessage> {
    let wanted: BTreeSet<(i32, i64)> = wanted.into_iter().collect();
    let (topic, addr) = (topic.to_string(), brokers.to_string());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &addr)
            .set("group.id", unique("reader"))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for partition in wanted.iter().map(|(p, _)| *p).collect::<BTreeSet<_>>() {
            tpl.add_partition_offset(&topic, partition, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let mut records = BTreeMap::new();
        let deadline = std::time::Instant::now() + PATIENCE;
        while records.len() < wanted.len() {
            if std::time::Instant::now() > deadline {
                let missing: Vec<_> = wanted
                    .iter()
                    .filter(|w| !records.contains_key(*w))
                    .collect();
                panic!("{topic}: Kafka has no record at {missing:?}");
            }
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                let message = message.unwrap().detach();
                let position = (message.partition(), message.offset());
                if wanted.contains(&position) {
                    records.insert(position, message);
                }
            }
        }
        records
    })
    .await
    .unwrap()
}

// ---------------------------------------------------------------------------------------
// Tokens

pub fn grants(publish: &[&str], subscribe: &[&str]) -> Grants {
    let parse = |globs: &[&str]| globs.iter().map(|g| g.parse().unwrap()).collect();
    Grants {
        publish: parse(publish),
        subscribe: parse(subscribe),
        history: Vec::new(),
        online: Vec::new(),
    }
}

/// A token with its own id (`jti`) and issue time, for revocations to name.
pub fn token_with(sub: &str, jti: &str, iat: u64, subscribe: &[&str]) -> String {
    let claims = wskafka::Claims {
        sub: sub.into(),
        exp: now_secs() + 3600,
        iat: Some(iat),
        jti: Some(jti.into()),
        wskafka: grants(&[], subscribe),
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// `Authorization` for HTTP Basic.
pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

pub fn token(sub: &str, publish: &[&str], subscribe: &[&str]) -> String {
    mint(
        SECRET,
        sub,
        grants(publish, subscribe),
        Duration::from_secs(3600),
    )
}

// ---------------------------------------------------------------------------------------
// Databases

/// A SQLite file of its own, created on first use.
pub fn sqlite_url() -> String {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("db") + ".sqlite");
    format!("sqlite://{}?mode=rwc", path.display())
}

/// PostgreSQL here: 127.0.0.1:5432 as `postgres` (trust), or `WSKAFKA_TEST_POSTGRES`.
pub fn postgres_server() -> String {
    std::env::var("WSKAFKA_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A fresh, empty PostgreSQL database; returns its URL.
pub async fn fresh_postgres() -> String {
    use sqlx::Connection as _;
    let server = postgres_server();
    let name = unique("wskafka_test").replace(['-', '.'], "_");
    let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres"))
        .await
        .expect("PostgreSQL is not reachable (set WSKAFKA_TEST_POSTGRES)");
    // The name is ours: a prefix and a UUID.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    format!("{server}/{name}")
}

// ---------------------------------------------------------------------------------------
// The hub

/// The real binary serving `topics` on `listen`, with a test's defaults (the suite's broker,
/// a database and the test secret), each of which gives way to the same flag in `extra`;
/// it logs at debug level unless the test sets `RUST_LOG` on the command.
pub fn hub_command(listen: &str, topics: &str, extra: &[&str]) -> Command {
    hub_command_of(env!("CARGO_BIN_EXE_wskafka"), listen, topics, extra)
}

/// The same, for another build of the hub (a measurement comparing builds).
pub fn hub_command_of(binary: &str, listen: &str, topics: &str, extra: &[&str]) -> Command {
    let database = sqlite_url();
    let defaults = [
        ("--brokers", broker()),
        ("--jwt-leeway", "0s"),
        // The tests' clients read only when a test asks for a frame, so they answer no ping
        // meanwhile: heartbeats are off unless a test turns them on.
        ("--ping-interval", "0s"),
        // A database of its own unless the test shares one.
        ("--database-url", &database),
    ];
    let mut args = vec!["serve", "--listen", listen, "--topics", topics];
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    let keyed = ["--jwt-public-key", "--jwt-secret", "--auth-config"];
    if !keyed.iter().any(|flag| extra.contains(flag)) {
        args.extend(["--jwt-secret", SECRET]);
    }
    args.extend(extra);
    let mut command = Command::new(binary);
    command
        .args(&args)
        .env("RUST_LOG", "debug,librdkafka=warn,rdkafka=warn");
    command
}

/// Runs `command` until it exits by itself; returns its exit code and what it wrote to
/// stderr.
pub async fn run_to_exit(mut command: Command) -> (Option<i32>, String) {
    let output = tokio::time::timeout(
        PATIENCE,
        command.stderr(Stdio::piped()).kill_on_drop(true).output(),
    )
    .await
    .expect("the hub did not exit by itself")
    .expect("running wskafka");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

pub struct Hub {
    pub addr: SocketAddr,
    process: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Hub {
    /// Starts the real binary exposing `topics` and waits until `/readyz` says ready.
    /// A default set here gives way to the same flag in `extra`.
    pub async fn start(topics: &str, extra: &[&str]) -> Hub {
        Hub::start_at("127.0.0.1:0", topics, extra).await
    }

    /// The same, listening on `listen` (to restart a hub where its clients expect it).
    pub async fn start_at(listen: &str, topics: &str, extra: &[&str]) -> Hub {
        let hub = Hub::launch(hub_command(listen, topics, extra)).await;
        hub.wait_readyz(200).await;
        hub
    }

    /// Starts `command` (from `hub_command`) and returns once the hub listens, ready or not.
    pub async fn launch(mut command: Command) -> Hub {
        let mut process = command
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting wskafka");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let mut lines = BufReader::new(process.stderr.take().unwrap()).lines();
        tokio::spawn({
            let log = log.clone();
            async move {
                let mut addr_tx = Some(addr_tx);
                while let Ok(Some(line)) = lines.next_line().await {
                    eprintln!("hub: {line}");
                    if let Some(addr) = line.split("listening on http://").nth(1) {
                        let addr: String = addr
                            .chars()
                            .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | ':'))
                            .collect();
                        let addr = addr.parse().unwrap();
                        if let Some(tx) = addr_tx.take() {
                            let _ = tx.send(addr);
                        }
                    }
                    log.lock().unwrap().push(line);
                }
            }
        });
        let addr = tokio::time::timeout(PATIENCE, addr_rx)
            .await
            .expect("the hub did not start listening")
            .expect("the hub exited before listening");
        Hub { addr, process, log }
    }

    /// Waits until `/readyz` answers `status`; returns how long that took.
    pub async fn wait_readyz(&self, status: u16) -> Duration {
        let started = tokio::time::Instant::now();
        eventually(format!("/readyz answers {status}"), move || async move {
            self.get("/readyz").await.0 == status
        })
        .await;
        started.elapsed()
    }

    pub fn pid(&self) -> u32 {
        self.process.id().expect("the hub is running")
    }

    /// Waits until `/metrics` shows `name` at `value`.
    pub async fn until_metric(&self, name: &str, value: f64) {
        eventually(format!("{name} = {value}"), move || async move {
            self.metrics().await.get(name) == Some(&value)
        })
        .await;
    }

    /// `/metrics` as a map from `name{labels}` to value.
    pub async fn metrics(&self) -> BTreeMap<String, f64> {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200);
        body.lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .filter_map(|line| line.rsplit_once(' '))
            .map(|(name, value)| (name.to_string(), value.parse().unwrap()))
            .collect()
    }

    /// A bare HTTP/1.1 GET; returns the status and the body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        self.get_with(path, &[]).await
    }

    /// The same, with extra request headers.
    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        self.request("GET", path, headers, "").await
    }

    /// A bare HTTP/1.1 request with a body; returns the status and the body.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        let (status, _, body) = self.exchange(None, method, path, headers, body).await;
        (status, body)
    }

    /// The same from `source`, a loopback address such as 127.0.0.2: another client, as
    /// far as the hub can tell.
    pub async fn request_from(
        &self,
        source: std::net::IpAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        let (status, _, body) = self
            .exchange(Some(source), method, path, headers, body)
            .await;
        (status, body)
    }

    /// A bare GET; returns the status and the response's headers, names in lower case.
    pub async fn response_headers(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, BTreeMap<String, String>) {
        let (status, head, _) = self.exchange(None, "GET", path, headers, "").await;
        (status, head)
    }

    /// Sends one request over a connection of its own (from `source` when given); returns
    /// the status (0 when the hub answered nothing), the headers and the body.
    async fn exchange(
        &self,
        source: Option<std::net::IpAddr>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, BTreeMap<String, String>, String) {
        let connected = match source {
            None => TcpStream::connect(self.addr).await,
            Some(source) => {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind(SocketAddr::new(source, 0)).unwrap();
                socket.connect(self.addr).await
            }
        };
        let Ok(mut stream) = connected else {
            return (0, BTreeMap::new(), String::new());
        };
        let headers: String = headers
            .iter()
            .map(|(name, value)| format!("{name}: {value}\r\n"))
            .collect();
        let length = body.len();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: hub\r\nConnection: close\r\nContent-Length: {length}\r\n{headers}\r\n{body}"
        );
        // A hub that refuses a request midway may close before reading all of it: what it
        // answered, if anything, is still there to read.
        let _ = stream.write_all(request.as_bytes()).await;
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response).await;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        let head = head
            .lines()
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_string()))
            .collect();
        (status, head, body.to_string())
    }

    pub fn url(&self, token: &str) -> String {
        format!("ws://{}/ws?token={token}", self.addr)
    }

    pub async fn connect(&self, token: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(self.url(token))
            .await
            .expect("connecting to the hub");
        Client { ws }
    }

    /// Connects without a token: the first frame must authenticate.
    pub async fn connect_bare(&self) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", self.addr))
            .await
            .expect("connecting to the hub");
        Client { ws }
    }

    /// Connects with `Authorization: Bearer` instead of the query string.
    pub async fn connect_with_header(&self, token: &str) -> Result<Client, tungstenite::Error> {
        let mut request = format!("ws://{}/ws", self.addr)
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(Client { ws })
    }

    /// An upgrade request carrying `token` in `Authorization: Bearer`, sent as plain HTTP:
    /// the status, or 0 when the hub closed the connection mid-request (as it may for a
    /// token too large to read).
    pub async fn bearer_upgrade_status(&self, token: &str) -> u16 {
        let bearer = format!("Bearer {token}");
        self.get_with(
            "/ws",
            &[("Authorization", &bearer), ("Upgrade", "websocket")],
        )
        .await
        .0
    }

    /// The HTTP status a WebSocket handshake with this URL gets.
    pub async fn handshake_status(&self, url: &str) -> u16 {
        self.handshake_status_with(url, &[]).await
    }

    /// The same, with extra request headers.
    pub async fn handshake_status_with(&self, url: &str, headers: &[(&'static str, &str)]) -> u16 {
        let mut request = url.into_client_request().unwrap();
        for (name, value) in headers {
            request.headers_mut().insert(*name, value.parse().unwrap());
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((_, response)) => response.status().as_u16(),
            Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
            Err(e) => panic!("handshake failed without an HTTP answer: {e}"),
        }
    }

    /// Asserts that `bad` is refused with `reason` on every path a token takes: the upgrade
    /// (401 with the reason as its body), the first frame of a socket opened without one
    /// (closed with 4403 and the reason), and a refresh on a socket opened with `good`
    /// (`unauthorized`, the socket carrying on).
    pub async fn refuses_on_every_path(&self, good: &str, bad: &str, reason: &str) {
        let refused = tokio_tungstenite::connect_async(self.url(bad)).await;
        let Err(tungstenite::Error::Http(response)) = refused else {
            panic!("the upgrade was not refused: {refused:?}");
        };
        let body = String::from_utf8(response.body().clone().unwrap_or_default()).unwrap();
        assert_eq!(
            (response.status().as_u16(), body.as_str()),
            (401, reason),
            "the upgrade"
        );

        let mut bare = self.connect_bare().await;
        bare.send(json!({"type": "auth", "token": bad})).await;
        let close = bare.closed().await.expect("a close frame");
        assert_eq!(
            (u16::from(close.code), close.reason.as_str()),
            (4403, reason),
            "the first frame"
        );

        let mut client = self.connect(good).await;
        let refused = client
            .call(json!({"type": "auth", "id": "r", "token": bad}))
            .await;
        assert_eq!(refused["code"], "unauthorized", "a refresh: {refused}");
        assert_eq!(
            refused["message"],
            format!("{reason}: the current token stays in force")
        );
        let pong = client.call(json!({"type": "ping", "id": "p"})).await;
        assert_eq!(pong["type"], "pong", "{pong}");
    }

    /// Sends SIGTERM and returns the exit code.
    pub async fn terminate(mut self) -> Option<i32> {
        let pid = self.process.id().expect("the hub is running").to_string();
        let killed = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(killed.success());
        let status = tokio::time::timeout(PATIENCE, self.process.wait())
            .await
            .expect("the hub did not stop after SIGTERM")
            .unwrap();
        status.code()
    }

    /// Sends the signal `name` (`HUP`, ...) to the hub.
    pub async fn signal(&self, name: &str) {
        let pid = self.process.id().expect("the hub is running").to_string();
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .await
            .unwrap();
        assert!(sent.success());
    }

    /// SIGKILL: no shutdown of any kind.
    pub async fn kill(mut self) {
        self.process.kill().await.expect("killing the hub");
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------------------------------
// The client

/// A process's resident memory, in bytes (Linux).
pub fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .unwrap();
    }

    /// Pipelines `count` publishes to `topic` without reading: ids "0".., keys `k<i % 5>`,
    /// payloads `{"seq": i}`.
    pub async fn publish_many(&mut self, topic: &str, count: usize) {
        for seq in 0..count {
            self.send(
                serde_json::json!({"type": "publish", "id": seq.to_string(), "topic": topic,
                                         "key": format!("k{}", seq % 5), "payload": {"seq": seq}}),
            )
            .await;
        }
    }

    /// The next `count` frames, each of which must be an ack.
    pub async fn acks(&mut self, count: usize) -> Vec<Value> {
        let mut acks = Vec::with_capacity(count);
        while acks.len() < count {
            let reply = self.recv().await;
            assert_eq!(reply["type"], "ack", "{reply}");
            acks.push(reply);
        }
        acks
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws.send(Message::text(text.into())).await.unwrap();
    }

    /// The next frame, which must be JSON text.
    pub async fn recv(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("no frame from the hub in time")
                .expect("the hub closed the socket")
                .expect("socket error");
            match message {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Sends a request and returns the next frame, its reply on a quiet connection.
    pub async fn call(&mut self, frame: Value) -> Value {
        self.send(frame).await;
        self.recv().await
    }

    /// Publishes on a socket subscribed to the same topic; returns the ack and the record
    /// as it came back, which Kafka may deliver before the producer hears its ack.
    pub async fn publish_to_self(&mut self, publish: Value) -> (Value, Value) {
        self.send(publish).await;
        let (first, second) = (self.recv().await, self.recv().await);
        match (first["type"].as_str(), second["type"].as_str()) {
            (Some("ack"), Some("message")) => (first, second),
            (Some("message"), Some("ack")) => (second, first),
            _ => panic!("expected an ack and a message, got {first} and {second}"),
        }
    }

    pub async fn subscribe(&mut self, topic: &str) {
        let reply = self
            .call(serde_json::json!({"type": "subscribe", "id": "sub", "topic": topic}))
            .await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
    }

    /// Subscribes with a `from` start and returns the `subscribed` reply, skipping messages
    /// of other subscriptions that arrive first.
    pub async fn subscribe_from(&mut self, topic: &str, from: Value) -> Value {
        self.send(
            serde_json::json!({"type": "subscribe", "id": "from", "topic": topic, "from": from}),
        )
        .await;
        loop {
            let reply = self.recv().await;
            if reply["type"] != "message" {
                assert_eq!(reply["type"], "subscribed", "{reply}");
                assert_eq!(reply["id"], "from");
                return reply;
            }
        }
    }

    /// The next frame, which must be a `presence_diff`: its joins and leaves.
    pub async fn presence_diff(&mut self) -> (Vec<String>, Vec<String>) {
        let diff = self.recv().await;
        assert_eq!(diff["type"], "presence_diff", "{diff}");
        let users = |field: &str| -> Vec<String> {
            serde_json::from_value(diff[field].clone()).expect("a list of user ids")
        };
        (users("joins"), users("leaves"))
    }

    /// The next `message` frame, as (partition, offset) and the frame.
    pub async fn message(&mut self) -> ((i32, i64), Value) {
        let m = self.recv().await;
        assert_eq!(m["type"], "message", "{m}");
        (position(&m), m)
    }

    /// Reads until the hub's close frame and returns it; other frames are skipped.
    pub async fn closed(&mut self) -> Option<CloseFrame> {
        loop {
            let next = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("the hub did not close the socket in time");
            match next {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Resuming

/// The (partition, offset) a `message` or `ack` frame names.
pub fn position(frame: &Value) -> (i32, i64) {
    let partition = frame["partition"].as_i64().expect("a partition") as i32;
    (partition, frame["offset"].as_i64().expect("an offset"))
}

/// Each ack names a record Kafka holds, with the payload of the publish it answered, and
/// no publish is acked twice.
pub async fn assert_every_ack_is_in_kafka(topic: &str, acks: &[Value]) {
    let stored = read_records(topic, acks.iter().map(position)).await;
    let mut ids = HashSet::new();
    for ack in acks {
        assert!(
            ids.insert(ack["id"].as_str().unwrap().to_string()),
            "acked twice: {ack}"
        );
        let record = stored
            .get(&position(ack))
            .unwrap_or_else(|| panic!("acked record {ack} is not in Kafka"));
        let stored: Value = serde_json::from_slice(record.payload().unwrap()).unwrap();
        assert_eq!(
            stored["seq"].as_i64().unwrap().to_string(),
            ack["id"].as_str().unwrap(),
            "ack {ack} points at {stored}"
        );
    }
}

/// What one subscriber session received, checked as it arrives: each record once and in
/// offset order per partition, plus where a next session should resume.
#[derive(Default)]
pub struct Received {
    pub seqs: BTreeMap<(i32, i64), i64>,
    pub next: BTreeMap<i32, i64>,
}

impl Received {
    /// Starts from a `subscribed` reply's `partitions`.
    pub fn starting_at(subscribed: &Value) -> Self {
        let next = subscribed["partitions"]
            .as_object()
            .expect("`partitions` in the subscribed reply")
            .iter()
            .map(|(p, o)| (p.parse().unwrap(), o.as_i64().unwrap()))
            .collect();
        Received {
            seqs: BTreeMap::new(),
            next,
        }
    }

    pub fn take(&mut self, (partition, offset): (i32, i64), message: &Value) {
        if let Some(&next) = self.next.get(&partition) {
            assert!(
                offset >= next,
                "partition {partition}: offset {offset} arrived when {next} was expected next"
            );
        }
        self.next.insert(partition, offset + 1);
        let seq = message["payload"]["seq"].as_i64().expect("a seq payload");
        self.seqs.insert((partition, offset), seq);
    }

    /// Reads the resumed session on `client` until it and the first session (`before`)
    /// together hold as many records as were `produced`, none in both, and asserts that
    /// together they are exactly those.
    pub async fn resumed_after(
        mut self,
        before: Received,
        client: &mut Client,
        produced: &BTreeMap<(i32, i64), i64>,
    ) {
        while before.seqs.len() + self.seqs.len() < produced.len() {
            let (position, message) = client.message().await;
            assert!(
                !before.seqs.contains_key(&position),
                "{position:?} delivered in both sessions"
            );
            self.take(position, &message);
        }
        let mut both = before.seqs;
        both.extend(self.seqs);
        assert_eq!(&both, produced);
    }

    /// The `from` that resumes after everything received.
    pub fn resume(&self) -> Value {
        let offsets: serde_json::Map<String, Value> = self
            .next
            .iter()
            .map(|(p, o)| (p.to_string(), Value::from(*o)))
            .collect();
        serde_json::json!({ "offsets": offsets })
    }
}

// ---------------------------------------------------------------------------------------
// The browser

/// A headless Chromium driven through `web/test/browser-driver.mjs` (playwright-core), one
/// command at a time. It exits with this handle.
pub struct Browser {
    _process: Child,
    commands: tokio::process::ChildStdin,
    answers: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Browser {
    pub async fn start() -> Browser {
        let driver = concat!(env!("CARGO_MANIFEST_DIR"), "/web/test/browser-driver.mjs");
        let mut process = Command::new("node")
            .arg(driver)
            .env("PATIENCE_MS", PATIENCE.as_millis().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting node: run scripts/test, which installs it");
        let commands = process.stdin.take().unwrap();
        let answers = BufReader::new(process.stdout.take().unwrap()).lines();
        let mut browser = Browser {
            _process: process,
            commands,
            answers,
        };
        assert_eq!(browser.answer().await, "ready");
        browser
    }

    async fn answer(&mut self) -> Value {
        let line = tokio::time::timeout(PATIENCE * 2, self.answers.next_line())
            .await
            .expect("the browser driver did not answer in time")
            .unwrap()
            .expect("the browser driver exited");
        let mut answer: Value = serde_json::from_str(&line).unwrap();
        if let Some(error) = answer.get("error") {
            panic!("browser: {error}");
        }
        answer["ok"].take()
    }

    /// Runs one driver command (see the driver for the list) and returns its result.
    pub async fn run(&mut self, command: Value) -> Value {
        let line = format!("{command}\n");
        self.commands.write_all(line.as_bytes()).await.unwrap();
        self.answer().await
    }

    /// Opens `url` in a new browser context named `name`.
    pub async fn open(&mut self, name: &str, url: &str) {
        self.run(serde_json::json!({"cmd": "open", "name": name, "url": url}))
            .await;
    }

    /// Opens `url` with HTTP Basic credentials.
    pub async fn open_as(&mut self, name: &str, url: &str, username: &str, password: &str) {
        let credentials = serde_json::json!({"username": username, "password": password});
        self.run(serde_json::json!({"cmd": "open", "name": name, "url": url, "credentials": credentials}))
            .await;
    }

    /// Waits until the element at `selector` in `name`'s page contains `text`.
    pub async fn wait_text(&mut self, name: &str, selector: &str, text: &str) {
        self.run(serde_json::json!({"cmd": "wait_text", "name": name, "selector": selector, "text": text}))
            .await;
    }

    /// The inner text of every element matching `selector`.
    pub async fn texts(&mut self, name: &str, selector: &str) -> Vec<String> {
        let texts = self
            .run(serde_json::json!({"cmd": "texts", "name": name, "selector": selector}))
            .await;
        serde_json::from_value(texts).unwrap()
    }

    /// Waits until exactly `count` elements match `selector`.
    pub async fn wait_count(&mut self, name: &str, selector: &str, count: usize) {
        self.run(serde_json::json!({"cmd": "wait_count", "name": name, "selector": selector, "count": count}))
            .await;
    }

    /// Scrolls the element at `selector` to its top.
    pub async fn scroll_top(&mut self, name: &str, selector: &str) {
        self.run(serde_json::json!({"cmd": "scroll_top", "name": name, "selector": selector}))
            .await;
    }

    /// The errors and warnings `name`'s page wrote to its console.
    pub async fn complaints(&mut self, name: &str) -> Vec<String> {
        let complaints = self
            .run(serde_json::json!({"cmd": "complaints", "name": name}))
            .await;
        serde_json::from_value(complaints).unwrap()
    }

    pub async fn click(&mut self, name: &str, selector: &str) {
        self.run(serde_json::json!({"cmd": "click", "name": name, "selector": selector}))
            .await;
    }

    /// Types `text` into the chat box of `name`'s page and sends it.
    pub async fn say(&mut self, name: &str, text: &str) {
        self.run(
            serde_json::json!({"cmd": "type", "name": name, "selector": "#text", "text": text}),
        )
        .await;
    }
}

// ---------------------------------------------------------------------------------------
// A network that stalls

/// A TCP proxy in front of `target` that can stop forwarding, both ways, without closing
/// anything: what a phone leaving Wi-Fi, a NAT dropping a flow or a closed laptop lid look
/// like from either end.
pub struct StallingProxy {
    pub addr: SocketAddr,
    /// Client to server, and server to client.
    up: tokio::sync::watch::Sender<bool>,
    down: tokio::sync::watch::Sender<bool>,
}

impl StallingProxy {
    pub async fn start(target: SocketAddr) -> StallingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, up_watch) = tokio::sync::watch::channel(false);
        let (down, down_watch) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(forward(client_read, server_write, up_watch.clone()));
                tokio::spawn(forward(server_read, client_write, down_watch.clone()));
            }
        });
        StallingProxy { addr, up, down }
    }

    /// Stops passing bytes; what was sent meanwhile waits, as in a kernel's buffers.
    pub fn stall(&self) {
        self.up.send_replace(true);
        self.down.send_replace(true);
    }

    /// Stops passing bytes from the server only: requests arrive, their answers do not.
    pub fn stall_replies(&self) {
        self.down.send_replace(true);
    }

    pub fn resume(&self) {
        self.up.send_replace(false);
        self.down.send_replace(false);
    }

    pub fn url(&self, token: &str) -> String {
        format!("ws://{}/ws?token={token}", self.addr)
    }
}

async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: tokio::sync::watch::Receiver<bool>,
) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        // Neither read nor write while stalled: the sender's buffers fill, as on a dead link.
        if stalled.wait_for(|stalled| !stalled).await.is_err() {
            return;
        }
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if stalled.wait_for(|stalled| !stalled).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
