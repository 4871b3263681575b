//! Publish and consume-back through the real hub and a real broker.

use std::collections::{BTreeMap, HashMap};

use crate::common::*;
use base64::Engine as _;
use rdkafka::Message as _;
use rdkafka::message::Headers as _;
use serde_json::{Value, json};

#[tokio::test]
async fn a_publish_is_acked_at_the_position_kafka_holds_it_with_key_headers_and_payload() {
    let (topic, glob) = fresh_topic("pub", 3).await;
    let hub = Hub::start(&glob, &[]).await;
    let mut client = hub.connect(&token("alice", &[&glob], &[])).await;

    let payload = json!({"text": "hello", "n": [1, 2.5, null], "nested": {"ü": "✓"}});
    let ack = client
        .call(
            json!({"type": "publish", "id": "1", "topic": topic, "key": "alice",
                     "headers": {"trace": "abc", "lang": "en"}, "payload": payload}),
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["id"], "1");
    assert_eq!(ack["topic"], topic.as_str());
    let (partition, offset) = (
        ack["partition"].as_i64().unwrap(),
        ack["offset"].as_i64().unwrap(),
    );

    let stored = read_records(&topic, [(partition as i32, offset)]).await;
    let record = &stored[&(partition as i32, offset)];
    assert_eq!(record.key(), Some(b"alice".as_slice()));
    let value: Value = serde_json::from_slice(record.payload().unwrap()).unwrap();
    assert_eq!(value, payload);
    let headers: HashMap<&str, &[u8]> = record
        .headers()
        .unwrap()
        .iter()
        .map(|h| (h.key, h.value.unwrap()))
        .collect();
    // The hub names the publisher itself, beside the client's headers.
    assert_eq!(
        headers,
        HashMap::from([
            ("trace", b"abc".as_slice()),
            ("lang", b"en".as_slice()),
            ("wskafka-sender", b"alice".as_slice())
        ])
    );

    // Numeric ids are echoed as numbers, and consecutive acks on one partition advance.
    let second = client
        .call(json!({"type": "publish", "id": 2, "topic": topic, "key": "alice", "payload": "plain string"}))
        .await;
    assert_eq!(second["id"], 2);
    assert_eq!(second["partition"].as_i64(), Some(partition));
    assert_eq!(second["offset"].as_i64(), Some(offset + 1));
    let stored = read_records(&topic, [(partition as i32, offset + 1)]).await;
    assert_eq!(
        stored[&(partition as i32, offset + 1)].payload(),
        Some(br#""plain string""#.as_slice())
    );
}

#[tokio::test]
async fn records_from_a_plain_producer_reach_every_subscriber_on_two_hubs_in_order() {
    let (topic, glob) = fresh_topic("fan", 3).await;
    let (hub_a, hub_b) = tokio::join!(Hub::start(&glob, &[]), Hub::start(&glob, &[]));
    let reader = token("reader", &[], &[&glob]);
    let mut clients = vec![
        hub_a.connect(&reader).await,
        hub_a.connect(&reader).await,
        hub_b.connect(&reader).await,
        hub_b.connect(&reader).await,
    ];
    for client in &mut clients {
        client.subscribe(&topic).await;
    }

    let producer = producer();
    let mut produced = BTreeMap::new();
    for i in 0..150 {
        let key = format!("user-{}", i % 7);
        let value = json!({"seq": i}).to_string();
        let position = produce(&producer, &topic, &key, value.as_bytes()).await;
        produced.insert(position, (key, i));
    }

    for client in &mut clients {
        let mut seen = BTreeMap::new();
        let mut last_offset: HashMap<i64, i64> = HashMap::new();
        while seen.len() < produced.len() {
            let m = client.recv().await;
            assert_eq!(m["type"], "message", "{m}");
            assert_eq!(m["topic"], topic.as_str());
            let (p, o) = (
                m["partition"].as_i64().unwrap(),
                m["offset"].as_i64().unwrap(),
            );
            if let Some(previous) = last_offset.insert(p, o) {
                assert!(o > previous, "partition {p}: offset {o} after {previous}");
            }
            assert!(m["timestamp"].as_i64().unwrap() > 0);
            let entry = (
                (p as i32, o),
                (
                    m["key"].as_str().unwrap().to_string(),
                    m["payload"]["seq"].as_i64().unwrap(),
                ),
            );
            assert!(
                seen.insert(entry.0, entry.1).is_none(),
                "delivered twice: {m}"
            );
        }
        assert_eq!(seen, produced);
    }
}

#[tokio::test]
async fn pipelined_publishes_are_each_answered_once_at_the_record_kafka_holds() {
    let (topic, glob) = fresh_topic("pipelined", 3).await;
    let hub = Hub::start(&glob, &["--publish-rate", "100000"]).await;
    let mut client = hub.connect(&token("alice", &[&glob], &[])).await;
    // Many in flight at once, so that acks arrive together and share writes.
    client.publish_many(&topic, 1000).await;
    let acks = client.acks(1000).await;
    assert_every_ack_is_in_kafka(&topic, &acks).await;
}

#[tokio::test]
async fn a_publish_through_one_hub_reaches_a_subscriber_on_another() {
    let (topic, glob) = fresh_topic("cross", 1).await;
    let (hub_a, hub_b) = tokio::join!(Hub::start(&glob, &[]), Hub::start(&glob, &[]));
    let mut bob = hub_b.connect(&token("bob", &[], &[&glob])).await;
    bob.subscribe(&topic).await;
    let mut alice = hub_a.connect(&token("alice", &[&glob], &[])).await;
    let ack = alice
        .call(
            json!({"type": "publish", "id": "a", "topic": topic, "key": "alice",
                     "headers": {"h": "v"}, "payload": {"text": "hi bob"}}),
        )
        .await;
    let message = bob.recv().await;
    assert_eq!(
        message,
        json!({"type": "message", "topic": topic, "partition": ack["partition"], "offset": ack["offset"],
               "timestamp": message["timestamp"], "key": "alice", "sender": "alice",
               "headers": {"h": "v"}, "payload": {"text": "hi bob"}})
    );
}

#[tokio::test]
async fn records_that_are_not_json_arrive_base64_encoded() {
    let (topic, glob) = fresh_topic("raw", 1).await;
    let hub = Hub::start(&glob, &[]).await;
    let mut client = hub.connect(&token("c", &[], &[&glob])).await;
    client.subscribe(&topic).await;

    let bytes = [0xde, 0xad, 0xbe, 0xef, 0x00];
    produce(&producer(), &topic, "k", &bytes).await;
    produce(&producer(), &topic, "k", b"not json {").await;
    let binary = client.recv().await;
    assert_eq!(
        binary["payload_base64"],
        base64::engine::general_purpose::STANDARD.encode(bytes)
    );
    assert!(binary.get("payload").is_none());
    let text = client.recv().await;
    assert_eq!(text["payload_base64"], "bm90IGpzb24gew==");
}

#[tokio::test]
async fn unsubscribe_stops_delivery_to_that_socket_only() {
    let (topic, glob) = fresh_topic("unsub", 1).await;
    let hub = Hub::start(&glob, &[]).await;
    let reader = token("r", &[], &[&glob]);
    let (mut leaver, mut witness) = (hub.connect(&reader).await, hub.connect(&reader).await);
    leaver.subscribe(&topic).await;
    witness.subscribe(&topic).await;
    let producer = producer();

    produce(&producer, &topic, "k", b"1").await;
    assert_eq!(leaver.recv().await["payload"], 1);
    assert_eq!(witness.recv().await["payload"], 1);

    let reply = leaver
        .call(json!({"type": "unsubscribe", "id": "u", "topic": topic}))
        .await;
    assert_eq!(
        reply,
        json!({"type": "unsubscribed", "id": "u", "topic": topic})
    );
    produce(&producer, &topic, "k", b"2").await;
    // Once the witness has record 2, its fan-out is over: the leaver was not in it.
    assert_eq!(witness.recv().await["payload"], 2);

    leaver.subscribe(&topic).await;
    produce(&producer, &topic, "k", b"3").await;
    assert_eq!(
        leaver.recv().await["payload"],
        3,
        "record 2 reached an unsubscribed socket"
    );
    assert_eq!(witness.recv().await["payload"], 3);
}

#[tokio::test]
async fn a_topic_created_while_the_hub_runs_is_served_within_a_second_from_its_first_record() {
    let prefix = unique("late");
    let glob = format!("{prefix}.*");
    create_topic(&format!("{prefix}.early"), 1).await;
    let hub = Hub::start(&glob, &[]).await;
    let mut client = hub.connect(&token("c", &[&glob], &[&glob])).await;
    let topic = format!("{prefix}.new");
    let refused = client
        .call(json!({"type": "subscribe", "id": 1, "topic": topic}))
        .await;
    assert_eq!(refused["code"], "unknown_topic", "{refused}");

    create_topic(&topic, 2).await;
    // Asked for just before it existed: served once that answer is a second old (the
    // protocol's promise), and `eventually` allows far more.
    eventually("a subscribe to the new topic", async || {
        let reply = client
            .call(json!({"type": "subscribe", "id": 2, "topic": topic}))
            .await;
        reply["type"] == "subscribed"
    })
    .await;
    let position = produce(&producer(), &topic, "k", b"{\"first\":true}").await;
    let message = client.recv().await;
    assert_eq!(message["payload"], json!({"first": true}));
    assert_eq!(
        (message["partition"].as_i64(), message["offset"].as_i64()),
        (Some(position.0 as i64), Some(position.1))
    );

    // A topic nobody asked for before it existed is served at once: the first request that
    // names it makes the hub look again.
    let fresh = format!("{prefix}.fresh");
    create_topic(&fresh, 1).await;
    let ack = client
        .call(json!({"type": "publish", "id": 3, "topic": fresh, "payload": 2}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
}
