//! Per-user topics and subscribe-time filters: what a subscriber must never receive.

use crate::common::*;
use serde_json::json;

#[tokio::test]
async fn a_user_keyed_topic_delivers_each_user_only_their_own_records() {
    let prefix = unique("users");
    let (notes, chat) = (format!("{prefix}.notes"), format!("{prefix}.chat"));
    // One partition, so that a user's last record comes after everything produced before it.
    create_topic(&notes, 1).await;
    create_topic(&chat, 1).await;
    let glob = format!("{prefix}.*");
    let hub = Hub::start(&glob, &["--user-topics", &notes]).await;
    let reader = |sub| token(sub, &[&glob], &[&glob]);
    let (mut alice, mut bob) = (
        hub.connect(&reader("alice")).await,
        hub.connect(&reader("bob")).await,
    );
    alice.subscribe(&notes).await;
    bob.subscribe(&notes).await;

    // Asking for someone else's key is refused; asking for one's own is fine.
    let reply = alice
        .call(json!({"type": "subscribe", "id": 1, "topic": notes, "filter": {"key": "bob"}}))
        .await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    // A glob grant does not allow publishing to a per-user topic; a literal one does.
    let reply = alice
        .call(json!({"type": "publish", "id": 2, "topic": notes, "key": "bob", "payload": 1}))
        .await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    let mut service = hub.connect(&token("service", &[&notes], &[])).await;
    let ack = service
        .call(json!({"type": "publish", "topic": notes, "key": "alice", "payload": {"n": "from the service"}}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");

    let producer = producer();
    let mut expected = (vec![position(&ack)], vec![]);
    for i in 0..60 {
        let key = ["alice", "bob", "carol", "alice-2", ""][i % 5];
        let position = produce(&producer, &notes, key, b"{}").await;
        match key {
            "alice" => expected.0.push(position),
            "bob" => expected.1.push(position),
            _ => {}
        }
    }
    // A last record for each, so that anything leaked would have arrived before it.
    let last_alice = produce(&producer, &notes, "alice", b"{}").await;
    let last_bob = produce(&producer, &notes, "bob", b"{}").await;
    expected.0.push(last_alice);
    expected.1.push(last_bob);

    for (client, sub, wanted, last) in [
        (&mut alice, "alice", &expected.0, last_alice),
        (&mut bob, "bob", &expected.1, last_bob),
    ] {
        let mut got = Vec::new();
        loop {
            let (position, message) = client.message().await;
            assert_eq!(message["key"], sub, "{sub} received {message}");
            got.push(position);
            if position == last {
                break;
            }
        }
        assert_eq!(&got, wanted, "{sub}");
    }

    // A replay of a per-user topic is filtered the same way.
    let mut again = hub.connect(&reader("bob")).await;
    again.subscribe_from(&notes, json!("earliest")).await;
    let mut replayed = Vec::new();
    while replayed.len() < expected.1.len() {
        let (position, message) = again.message().await;
        assert_eq!(message["key"], "bob", "{message}");
        replayed.push(position);
    }
    assert_eq!(replayed, expected.1);
}

#[tokio::test]
async fn subscribe_filters_pass_only_records_with_the_key_and_headers_asked_for() {
    let (topic, glob) = fresh_topic("filters", 1).await;
    let hub = Hub::start(&glob, &[]).await;
    let mut client = hub.connect(&token("w", &[&glob], &[&glob])).await;
    let reply = client
        .call(json!({"type": "subscribe", "id": "f", "topic": topic,
                     "filter": {"key": "room-1", "headers": {"lang": "en"}}}))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");

    let cases = [
        ("room-1", json!({"lang": "en"}), true),
        ("room-1", json!({"lang": "fr"}), false),
        ("room-2", json!({"lang": "en"}), false),
        ("room-1", json!({}), false),
        ("room-1", json!({"lang": "en", "extra": "x"}), true),
    ];
    // Sent without waiting: acks and messages interleave.
    let mut wanted = Vec::new();
    for (i, (key, headers, passes)) in cases.iter().enumerate() {
        client
            .send(
                json!({"type": "publish", "id": i, "topic": topic, "key": key,
                         "headers": headers, "payload": i}),
            )
            .await;
        if *passes {
            wanted.push(i);
        }
    }
    // One partition and the last record passes: every other record was decided before it.
    let (mut got, mut acks) = (Vec::new(), 0);
    while acks < cases.len() || got.last() != wanted.last() {
        let frame = client.recv().await;
        match frame["type"].as_str() {
            Some("ack") => acks += 1,
            Some("message") => got.push(frame["payload"].as_u64().unwrap() as usize),
            _ => panic!("unexpected {frame}"),
        }
    }
    assert_eq!(got, wanted);
}
