//! The broker the bench starts (`scripts/kafka`), and the plain rdkafka producer and
//! consumer that load it and give the Kafka side of every comparison.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message as _, Offset, TopicPartitionList};

use crate::now_us;
use crate::records::{payload, stamp};
use crate::servers::{Route, free_port, wait_port};

pub async fn produce(
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

/// Sends records until the plain consumer sees one, so its position is known.
pub async fn warm_up(producer: &FutureProducer, route: &Route, plain: &StreamConsumer) {
    loop {
        // Whether it was acked shows in whether the consumer sees it.
        drop(produce(producer, route, r#"{"warm":true}"#.into()).await);
        match tokio::time::timeout(Duration::from_millis(200), plain.recv()).await {
            Ok(Ok(_)) => return,
            _ => continue,
        }
    }
}

pub async fn next_stamp(consumer: &StreamConsumer) -> (u64, usize) {
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

/// The broker: Apache Kafka through `scripts/kafka`, on both cores (its own affinity, not
/// this process's), with its data in the bench's work directory; stopped when dropped.
pub struct Broker {
    pub addr: String,
    pub pid: String,
    pub dir: PathBuf,
}

pub const KAFKA_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka");

impl Broker {
    pub async fn start(work: &Path) -> Broker {
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

    pub fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.addr);
        config
    }

    pub async fn create_topic(&self, name: &str, partitions: i32) {
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
    pub async fn warm_up(&self) {
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
    pub fn producer(&self, extra: &[(&str, &str)]) -> FutureProducer {
        let mut config = self.config();
        config.set("acks", "all").set("linger.ms", "0");
        for (key, value) in extra {
            config.set(*key, *value);
        }
        config.create().unwrap()
    }

    /// Records written to `topic` so far: the sum of its partitions' end offsets.
    pub async fn end_offsets(&self, topic: &str) -> i64 {
        let consumer: BaseConsumer = self.config().create().unwrap();
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            let timeout = Duration::from_secs(10);
            let metadata = consumer.fetch_metadata(Some(&topic), timeout).unwrap();
            metadata.topics()[0]
                .partitions()
                .iter()
                .map(|p| {
                    consumer
                        .fetch_watermarks(&topic, p.id(), timeout)
                        .unwrap()
                        .1
                })
                .sum()
        })
        .await
        .unwrap()
    }

    /// A consumer with the hub's fetch settings that reads what the hub's consumer reads (every
    /// partition of the `bench.*` topics and of the control topic), and Centrifugo's topics,
    /// each from its end: a fetch's cost grows with the partitions it covers, and that is
    /// Kafka's share.
    pub fn consumer_at_end(&self) -> StreamConsumer {
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
