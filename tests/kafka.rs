//! What a real Kafka log does under a subscription: records deleted before a client came
//! back, transactions aborted and committed, a compacted topic and its tombstones.

mod common;

use std::collections::BTreeMap;

use common::*;
use rdkafka::admin::AdminOptions;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use serde_json::{Value, json};

#[tokio::test]
async fn records_kafka_deleted_before_a_client_resumed_are_reported_lost_not_skipped_silently() {
    let (topic, glob) = fresh_topic("retention", 2).await;
    let produced = produce_many(&topic, 200).await;
    // What retention does to a partition's oldest segments, at a chosen offset.
    let mut cut = TopicPartitionList::new();
    cut.add_partition_offset(&topic, 0, Offset::Offset(30))
        .unwrap();
    let cut = admin(broker())
        .delete_records(&cut, &AdminOptions::new())
        .await
        .unwrap();
    assert_eq!(
        cut.elements()[0].offset(),
        Offset::Offset(30),
        "the new low watermark"
    );
    let hub = Hub::start(&glob, &[]).await;
    let mut client = hub.connect(&token("reader", &[], &[&glob])).await;

    // The client last read partition 0 up to offset 10 and partition 1 up to 5.
    let subscribed = client
        .subscribe_from(&topic, json!({"offsets": {"0": 10, "1": 5}}))
        .await;
    assert_eq!(
        subscribed["lost"],
        json!({"0": {"from": 10, "to": 30, "reason": "retention"}}),
        "{subscribed}"
    );
    assert_eq!(subscribed["partitions"], json!({"0": 30, "1": 5}));
    let wanted: BTreeMap<(i32, i64), i64> = produced
        .iter()
        .filter(|((partition, offset), _)| *offset >= [30, 5][*partition as usize])
        .map(|(position, seq)| (*position, *seq))
        .collect();
    let mut received = Received::starting_at(&subscribed);
    while received.seqs.len() < wanted.len() {
        let (position, message) = client.message().await;
        received.take(position, &message);
    }
    assert_eq!(received.seqs, wanted);
}

/// A transactional producer of its own (`transactional.id` unique to the test).
fn transactional_producer() -> FutureProducer {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker())
        .set("transactional.id", unique("tx"))
        .create()
        .unwrap();
    producer.init_transactions(PATIENCE).unwrap();
    producer
}

/// Sends `seqs` in one transaction, then commits or aborts it.
async fn transaction(
    producer: &FutureProducer,
    topic: &str,
    seqs: std::ops::Range<i64>,
    commit: bool,
) {
    producer.begin_transaction().unwrap();
    for seq in seqs {
        let body = json!({"seq": seq, "committed": commit}).to_string();
        producer
            .send(FutureRecord::<(), _>::to(topic).payload(&body), PATIENCE)
            .await
            .unwrap();
    }
    if commit {
        producer.commit_transaction(PATIENCE).unwrap();
    } else {
        producer.abort_transaction(PATIENCE).unwrap();
    }
}

/// Reads messages until one carries `last` as its seq; returns their seqs in order.
async fn seqs_until(client: &mut Client, last: i64) -> Vec<i64> {
    let mut seqs = Vec::new();
    loop {
        let (_, message) = client.message().await;
        let seq = message["payload"]["seq"].as_i64().unwrap();
        assert_ne!(
            message["payload"]["committed"], false,
            "an aborted record: {message}"
        );
        seqs.push(seq);
        if seq == last {
            return seqs;
        }
    }
}

#[tokio::test]
async fn aborted_transactions_never_reach_a_socket_and_committed_ones_arrive_once() {
    let (topic, glob) = fresh_topic("transactions", 1).await;
    let hub = Hub::start(&glob, &[]).await;
    let reader = token("reader", &[], &[&glob]);
    let mut live = hub.connect(&reader).await;
    live.subscribe(&topic).await;

    let tx = transactional_producer();
    transaction(&tx, &topic, 0..5, false).await;
    transaction(&tx, &topic, 5..10, true).await;
    transaction(&tx, &topic, 10..15, false).await;
    // A record outside any transaction closes the sequence.
    let last = produce(
        &producer(),
        &topic,
        "k",
        json!({"seq": 99}).to_string().as_bytes(),
    )
    .await;
    let committed: Vec<i64> = (5..10).chain([99]).collect();
    assert_eq!(seqs_until(&mut live, 99).await, committed, "live");

    // A replay reads the same log and skips the same records.
    let mut replayed = hub.connect(&reader).await;
    replayed.subscribe_from(&topic, json!("earliest")).await;
    assert_eq!(seqs_until(&mut replayed, 99).await, committed, "replay");

    // Transaction markers take offsets of their own: a client resuming right after the
    // committed records (on a marker's offset) gets what follows, and nothing is lost.
    let kafka = read_all(broker(), &topic).await;
    let last_committed = kafka
        .iter()
        .filter(|(_, m)| serde_json::from_slice::<Value>(m.payload().unwrap()).unwrap()["seq"] == 9)
        .map(|(position, _)| position.1)
        .next()
        .expect("the last committed record is in Kafka");
    assert!(
        last.1 > last_committed + 1,
        "markers and aborted records sit between"
    );
    let mut resumed = hub.connect(&reader).await;
    let subscribed = resumed
        .subscribe_from(&topic, json!({"offsets": {"0": last_committed + 1}}))
        .await;
    assert!(subscribed.get("lost").is_none(), "{subscribed}");
    assert_eq!(seqs_until(&mut resumed, 99).await, [99]);
    let follow = produce(
        &producer(),
        &topic,
        "k",
        json!({"seq": 100}).to_string().as_bytes(),
    )
    .await;
    for client in [&mut live, &mut replayed, &mut resumed] {
        assert_eq!(
            client.message().await.0,
            follow,
            "then the live stream, once"
        );
    }
}

#[tokio::test]
async fn a_compacted_topic_delivers_tombstones_without_a_payload_and_replays_what_compaction_kept()
{
    let prefix = unique("compacted");
    let (topic, glob) = (format!("{prefix}.profiles"), format!("{prefix}.*"));
    // Compaction as soon as the broker's cleaner looks (tests/broker.properties has it look
    // often), on segments rolled every 100 ms; tombstones are kept a day, Kafka's default.
    let settings = [
        ("cleanup.policy", "compact"),
        ("segment.ms", "100"),
        ("min.cleanable.dirty.ratio", "0.01"),
    ];
    create_topic_with(broker(), &topic, 1, 1, &settings).await;
    let hub = Hub::start(&glob, &[]).await;
    let reader = token("reader", &[], &[&glob]);
    let mut live = hub.connect(&reader).await;
    live.subscribe(&topic).await;

    let producer = producer();
    let write = async |key: &str, value: Option<Value>| {
        let body = value.map(|v| v.to_string());
        let mut record = FutureRecord::<str, String>::to(&topic).key(key);
        if let Some(body) = &body {
            record = record.payload(body);
        }
        let delivered = producer.send(record, PATIENCE).await.unwrap();
        (delivered.partition, delivered.offset)
    };
    write("alice", Some(json!({"name": "Alice"}))).await;
    write("bob", Some(json!({"name": "Bob"}))).await;
    let renamed = write("alice", Some(json!({"name": "Alice B."}))).await;
    let deleted = write("bob", None).await;

    let mut frames = Vec::new();
    for _ in 0..4 {
        frames.push(live.message().await.1);
    }
    let tombstone = &frames[3];
    assert_eq!(position(tombstone), deleted);
    assert_eq!(tombstone["key"], "bob");
    assert!(
        tombstone.get("payload").is_none() && tombstone.get("payload_base64").is_none(),
        "a tombstone carries no payload field: {tombstone}"
    );

    // Kafka compacts the rolled segments: later records are written until it has, so the
    // segment holding the four above is no longer the active one.
    let deadline = tokio::time::Instant::now() + 3 * PATIENCE;
    let mut filler = 0;
    loop {
        write("filler", Some(json!({"filler": filler}))).await;
        filler += 1;
        let kept = read_all(broker(), &topic).await;
        if !kept.contains_key(&(0, 0)) && !kept.contains_key(&(0, 1)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Kafka never compacted the topic"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let kept = read_all(broker(), &topic).await;

    // A replay reads what compaction kept, the tombstone included, across the gaps it
    // left in the offsets, then joins the live stream.
    let mut replay = hub.connect(&reader).await;
    let subscribed = replay.subscribe_from(&topic, json!("earliest")).await;
    assert!(
        subscribed.get("lost").is_none(),
        "compaction loses nothing: {subscribed}"
    );
    let mut offsets = Vec::new();
    let mut by_position = BTreeMap::new();
    while offsets.len() < kept.len() {
        let (at, message) = replay.message().await;
        offsets.push(at.1);
        by_position.insert(at, message);
    }
    let kept_offsets: Vec<i64> = kept.keys().map(|(_, offset)| *offset).collect();
    assert_eq!(offsets, kept_offsets);
    assert_eq!(
        by_position[&renamed]["payload"],
        json!({"name": "Alice B."})
    );
    assert_eq!(by_position[&deleted]["key"], "bob");
    assert!(by_position[&deleted].get("payload").is_none());
    let after = write("carol", Some(json!({"name": "Carol"}))).await;
    assert_eq!(replay.message().await.0, after);

    // A client resuming from an offset compaction removed starts at the next record kept.
    // It resumes on a hub started since: this one still holds the records it read before
    // compaction among its recent ones, and would serve them too (see protocol.md).
    let restarted = Hub::start(&glob, &[]).await;
    let mut resumed = restarted.connect(&reader).await;
    let subscribed = resumed
        .subscribe_from(&topic, json!({"offsets": {"0": 1}}))
        .await;
    assert!(subscribed.get("lost").is_none(), "{subscribed}");
    let first_kept = *kept.keys().find(|(_, offset)| *offset >= 1).unwrap();
    assert_eq!(resumed.message().await.0, first_kept);
}
