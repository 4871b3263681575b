//! The broker: the suite's, nodes and clusters of the test's own, topics, and clients that check Kafka independently of the hub.

use futures_util::StreamExt;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message as _, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::*;

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

/// Hub arguments naming presence, roster and signal topics of the test's own: the hubs
/// given them see each other's sockets and no other test's.
pub fn own_presence_topics() -> Vec<String> {
    vec![
        "--presence-topic".into(),
        unique("presence"),
        "--roster-topic".into(),
        unique("roster"),
        "--signal-topic".into(),
        unique("signals"),
    ]
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
