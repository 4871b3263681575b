//! What a real Kafka log does under a subscription: records deleted before a client came
//! back, transactions aborted and committed, a compacted topic and its tombstones; topics
//! that do not exist, on brokers that create topics on demand and brokers that do not; and
//! Kafka's own topics, which the hub never serves.

use std::collections::BTreeMap;

use crate::common::*;
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

/// Publish, subscribe and history on a topic that does not exist, through a hub on
/// `brokers`: each answered `unknown_topic`, naming the topic, before anything could come
/// from Kafka (the publish timeout is past the test's patience), and no topic is created,
/// neither by the requests nor by the hub's consumer following a literal exposed name.
async fn missing_topics_are_refused_and_never_created(brokers: &str) {
    let prefix = unique("missing");
    let literal = unique("literal");
    let hub = Hub::start(
        &format!("{prefix}.*,{literal}"),
        &["--brokers", brokers, "--publish-timeout", "60s"],
    )
    .await;
    let glob = format!("{prefix}.*");
    let mut client = hub
        .connect(&token("alice", &[&glob, &literal], &[&glob, &literal]))
        .await;
    let nowhere = format!("{prefix}.nowhere");
    for topic in [&nowhere, &literal] {
        for (id, request) in [
            (
                "p",
                json!({"type": "publish", "id": "p", "topic": topic, "payload": 1}),
            ),
            ("s", json!({"type": "subscribe", "id": "s", "topic": topic})),
            ("h", json!({"type": "history", "id": "h", "topic": topic})),
        ] {
            let reply = client.call(request).await;
            assert_eq!(
                (
                    reply["type"].as_str(),
                    reply["code"].as_str(),
                    reply["id"].as_str()
                ),
                (Some("error"), Some("unknown_topic"), Some(id)),
                "{reply}"
            );
            let message = reply["message"].as_str().unwrap();
            assert!(message.contains(&format!("{topic:?}")), "{message}");
        }
    }
    assert_eq!(client.call(json!({"type": "ping"})).await["type"], "pong");
    let topics = topic_names(brokers).await;
    assert!(!topics.contains(&nowhere), "{nowhere} was created");
    assert!(!topics.contains(&literal), "{literal} was created");
}

#[tokio::test]
async fn a_missing_topic_is_refused_at_once_on_a_broker_that_creates_none() {
    missing_topics_are_refused_and_never_created(broker()).await;
}

#[tokio::test]
async fn a_missing_topic_is_refused_and_not_created_on_a_broker_that_creates_topics_on_demand() {
    let mut spec = KafkaNode::single();
    spec.settings
        .push("auto.create.topics.enable=true".to_string());
    let node = KafkaNode::start(&spec).await;
    let brokers = node.addr();
    // The broker does create topics on demand: a plain producer's record makes one.
    let created = unique("on-demand");
    produce(&producer_at(&brokers), &created, "k", b"1").await;
    assert!(topic_names(&brokers).await.contains(&created));

    missing_topics_are_refused_and_never_created(&brokers).await;
}

/// The topics of the assignment of the classic consumer protocol (KIP-429's `Assignment`:
/// a version, then an array of topics, each a name and an array of partitions).
fn assigned_topics(assignment: &[u8]) -> Vec<String> {
    let mut at = 2;
    let mut take = |n: usize| {
        let bytes = &assignment[at..at + n];
        at += n;
        bytes
    };
    let count = i32::from_be_bytes(take(4).try_into().unwrap());
    let mut topics = Vec::new();
    for _ in 0..count.max(0) {
        let len = i16::from_be_bytes(take(2).try_into().unwrap()) as usize;
        topics.push(String::from_utf8(take(len).to_vec()).unwrap());
        let partitions = i32::from_be_bytes(take(4).try_into().unwrap());
        take(4 * partitions.max(0) as usize);
    }
    topics
}

#[tokio::test]
async fn kafkas_own_topics_are_never_served_nor_read_whatever_the_exposure_and_grants() {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};

    // Both exist on the broker: groups have committed, and a transaction has begun.
    let _transactions = transactional_producer();
    let (topic, _) = fresh_topic("ordinary", 1).await;
    let instance = uuid::Uuid::new_v4().simple().to_string();
    let hub = Hub::start("*", &["--instance-id", &instance]).await;
    let mut client = hub.connect(&token("root", &["*"], &["*"])).await;
    for internal in [
        "__consumer_offsets",
        "__transaction_state",
        "__share_group_state",
    ] {
        for request in [
            json!({"type": "subscribe", "id": 1, "topic": internal}),
            json!({"type": "publish", "id": 1, "topic": internal, "payload": 1}),
            json!({"type": "history", "id": 1, "topic": internal}),
        ] {
            let reply = client.call(request.clone()).await;
            assert_eq!(
                (reply["type"].as_str(), reply["code"].as_str()),
                (Some("error"), Some("forbidden")),
                "{request} got {reply}"
            );
        }
    }
    // An ordinary topic is still served.
    client.subscribe(&topic).await;
    let (ack, _) = client
        .publish_to_self(json!({"type": "publish", "topic": topic, "payload": 1}))
        .await;
    assert_eq!(ack["type"], "ack");

    // The hub's consumer group reads the ordinary topic, and none of Kafka's own.
    let group_prefix = format!("wskafka-{instance}-");
    let brokers = broker().to_string();
    let assigned = tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
        let groups = client.fetch_group_list(None, PATIENCE).unwrap();
        let group = groups
            .groups()
            .iter()
            .find(|g| g.name().starts_with(&group_prefix))
            .expect("the hub's consumer group")
            .name()
            .to_string();
        let described = client.fetch_group_list(Some(&group), PATIENCE).unwrap();
        let members = described.groups()[0].members();
        assert_eq!(members.len(), 1, "the hub is its group's only member");
        assigned_topics(members[0].assignment().expect("an assignment"))
    })
    .await
    .unwrap();
    assert!(assigned.contains(&topic), "{assigned:?}");
    let internal: Vec<&String> = assigned.iter().filter(|t| t.starts_with("__")).collect();
    assert!(internal.is_empty(), "the hub's group reads {internal:?}");
}

#[tokio::test]
async fn the_metrics_of_a_deleted_topic_go_with_it() {
    let (topic, glob) = fresh_topic("deleted", 1).await;
    let hub = Hub::start(&glob, &[]).await;
    let mut client = hub.connect(&token("a", &[&glob], &[&glob])).await;
    client.subscribe(&topic).await;
    let (ack, _) = client
        .publish_to_self(json!({"type": "publish", "topic": topic, "payload": 1}))
        .await;
    assert_eq!(ack["type"], "ack");
    let ours = |series: &BTreeMap<String, f64>| {
        series
            .keys()
            .filter(|name| name.contains(&topic))
            .cloned()
            .collect::<Vec<_>>()
    };
    eventually(
        "the topic's subscription, paused partitions and lag series",
        || async { ours(&hub.metrics().await).len() == 3 },
    )
    .await;

    admin(broker())
        .delete_topics(
            &[&topic],
            &AdminOptions::new().operation_timeout(Some(PATIENCE)),
        )
        .await
        .unwrap();
    // The hub lists Kafka's topics every ten seconds.
    eventually("no series of the deleted topic", || async {
        ours(&hub.metrics().await).is_empty()
    })
    .await;
    let reply = client
        .call(json!({"type": "publish", "id": 1, "topic": topic, "payload": 2}))
        .await;
    assert_eq!(reply["code"], "unknown_topic", "{reply}");
}
