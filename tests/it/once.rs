//! Exactly-once publish: a publish sent again with its `publish_id`, through another hub,
//! after a lost ack, a hub killed or a broker that held the first attempt, is written once
//! and answered with the one record's position.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::*;
use rdkafka::Message as _;
use rdkafka::message::{Header, Headers as _, OwnedHeaders, OwnedMessage};
use rdkafka::producer::FutureRecord;
use serde_json::{Value, json};

/// Short bounds, so that a resend whose first attempt never landed waits seconds, not a
/// minute: the landing bound is then 1 s + 3 s + the hub's 10 s margin (no heartbeats).
const BOUNDS: [&str; 4] = ["--pong-timeout", "1s", "--publish-timeout", "3s"];
const LANDING: Duration = Duration::from_secs(14);

/// Where Kafka holds records carrying each publish id.
fn positions_by_id(
    records: &BTreeMap<(i32, i64), OwnedMessage>,
) -> BTreeMap<String, Vec<(i32, i64)>> {
    let mut by_id: BTreeMap<String, Vec<(i32, i64)>> = BTreeMap::new();
    for (position, record) in records {
        let id = record.headers().and_then(|headers| {
            headers
                .iter()
                .find(|h| h.key == "wskafka-publish-id")
                .and_then(|h| h.value)
                .map(|v| String::from_utf8(v.to_vec()).unwrap())
        });
        if let Some(id) = id {
            by_id.entry(id).or_default().push(*position);
        }
    }
    by_id
}

fn publish(topic: &str, publish_id: &str, key: Option<&str>, text: &str) -> Value {
    let mut frame = json!({"type":"publish","id":publish_id,"topic":topic,"publish_id":publish_id,
                           "payload":{"text":text}});
    if let Some(key) = key {
        frame["key"] = json!(key);
    }
    frame
}

fn resend(mut first: Value, sent: Instant, attempt: u32) -> Value {
    first["age_ms"] = json!(sent.elapsed().as_millis() as u64);
    first["attempt"] = json!(attempt);
    first
}

#[tokio::test]
async fn a_resend_after_a_lost_ack_gets_the_first_records_position_through_another_hub() {
    let (topic, glob) = fresh_topic("once", 3).await;
    let (a, b) = tokio::join!(Hub::start(&glob, &BOUNDS), Hub::start(&glob, &BOUNDS));
    let grant = token("alice", &[&glob], &[&glob]);
    // A room's message (keyed) and a notification without a key, whose partition comes
    // from its id.
    for (publish_id, key) in [("m-keyed", Some("room-1")), ("m-unkeyed", None)] {
        let first = publish(&topic, publish_id, key, "hello");
        let mut on_a = a.connect(&grant).await;
        let sent = Instant::now();
        on_a.send(first.clone()).await;
        // The ack is lost: the socket goes before it is read.
        drop(on_a);

        let mut on_b = b.connect(&grant).await;
        let ack = on_b.call(resend(first, sent, 1)).await;
        assert_eq!(ack["type"], "ack", "{ack}");
        let records = read_all(broker(), &topic).await;
        let held = positions_by_id(&records);
        assert_eq!(
            held[publish_id],
            vec![position(&ack)],
            "Kafka holds it once, where the ack says"
        );
    }
    let metrics = b.metrics().await;
    assert_eq!(
        metrics.get("wskafka_publish_retries_total{outcome=\"found\"}"),
        Some(&2.0)
    );
    // A partition's reader lingers after its last resend; a hub told to stop does not wait
    // for it (it did, up to 30 s).
    assert_eq!(b.terminate().await, Some(0));
}

#[tokio::test]
async fn a_resend_is_checked_against_the_record_its_id_names() {
    let (topic, glob) = fresh_topic("once", 1).await;
    let hub = Hub::start(
        &glob,
        &[&BOUNDS[..], &["--publish-retry-window", "2m"]].concat(),
    )
    .await;
    // A first attempt with an old timestamp, written before anything else (by a hub whose
    // clock is behind, say): the partition's reader starts after it, and the resend that
    // reaches back to it at the end takes the reader back there.
    let backdated = FutureRecord::to(&topic)
        .key("room")
        .payload(r#"{"text":"long ago"}"#)
        .timestamp(now_millis() - 60_000)
        .headers(
            OwnedHeaders::new()
                .insert(Header {
                    key: "wskafka-sender",
                    value: Some("alice"),
                })
                .insert(Header {
                    key: "wskafka-publish-id",
                    value: Some("m0"),
                }),
        );
    let delivery = producer()
        .send(backdated, Duration::from_secs(10))
        .await
        .unwrap_or_else(|(e, _)| panic!("{e}"));
    let (partition, offset) = (delivery.partition, delivery.offset);
    let mut alice = hub.connect(&token("alice", &[&glob], &[&glob])).await;
    let first = publish(&topic, "m1", Some("room"), "hello");
    let sent = Instant::now();
    let ack = alice.call(first.clone()).await;
    assert_eq!(ack["type"], "ack", "{ack}");

    // The same id with another payload, or from another user, is another record.
    let mut other = resend(first.clone(), sent, 1);
    other["payload"] = json!({"text": "changed"});
    let refused = alice.call(other).await;
    assert_eq!(refused["code"], "id_conflict", "{refused}");
    let mut bob = hub.connect(&token("bob", &[&glob], &[&glob])).await;
    let refused = bob.call(resend(first.clone(), sent, 1)).await;
    assert_eq!(refused["code"], "id_conflict", "{refused}");

    // Older than the window: refused, nothing written.
    let mut stale = resend(first.clone(), sent, 1);
    stale["age_ms"] = json!(121_000);
    let refused = alice.call(stale).await;
    assert_eq!(refused["code"], "retry_expired", "{refused}");

    // A resend whose first attempt never landed, and is too old to land now: written at
    // once, and a further resend finds it.
    let lost = publish(&topic, "m2", Some("room"), "lost the first time");
    let mut late = lost.clone();
    late["age_ms"] = json!(LANDING.as_millis() as u64 + 1_000);
    late["attempt"] = json!(1);
    let written = alice.call(late.clone()).await;
    assert_eq!(written["type"], "ack", "{written}");
    late["attempt"] = json!(2);
    late["age_ms"] = json!(LANDING.as_millis() as u64 + 2_000);
    // A second resend waits out its own landing bound unless it finds the record: it does.
    let again = alice.call(late).await;
    assert_eq!(position(&again), position(&written), "{again}");

    let mut old = publish(&topic, "m0", Some("room"), "long ago");
    old["age_ms"] = json!(65_000);
    let found = alice.call(old).await;
    assert_eq!(position(&found), (partition, offset), "{found}");

    let held = positions_by_id(&read_all(broker(), &topic).await);
    assert_eq!(held["m0"], vec![(partition, offset)]);
    assert_eq!(held["m1"], vec![position(&ack)]);
    assert_eq!(held["m2"], vec![position(&written)]);

    // Malformed ids and resends without one are refused.
    for (frame, field) in [
        (
            json!({"type":"publish","topic":topic,"key":"room","payload":1,"publish_id":"a b"}),
            "publish_id",
        ),
        (
            json!({"type":"publish","topic":topic,"key":"room","payload":1,"publish_id":"x".repeat(65)}),
            "publish_id",
        ),
        (
            json!({"type":"publish","topic":topic,"key":"room","payload":1,"age_ms":5}),
            "publish_id",
        ),
    ] {
        let refused = alice.call(frame).await;
        assert_eq!(refused["code"], "bad_request", "{refused}");
        assert!(
            refused["message"].as_str().unwrap().contains(field),
            "{refused}"
        );
    }
}

#[tokio::test]
async fn a_hub_killed_under_pipelined_publishes_loses_and_repeats_nothing() {
    let (topic, glob) = fresh_topic("once", 3).await;
    // A load past a client's default publish rate.
    let args = [&BOUNDS[..], &["--publish-rate", "10000"]].concat();
    let (a, b) = tokio::join!(Hub::start(&glob, &args), Hub::start(&glob, &args));
    let grant = token("alice", &[&glob], &[&glob]);
    let mut on_a = a.connect(&grant).await;
    const COUNT: usize = 300;
    let frames: Vec<Value> = (0..COUNT)
        .map(|n| {
            publish(
                &topic,
                &format!("p{n}"),
                Some(&format!("room-{}", n % 7)),
                &n.to_string(),
            )
        })
        .collect();
    let mut sent = Vec::with_capacity(COUNT);
    for frame in &frames {
        on_a.send(frame.clone()).await;
        sent.push(Instant::now());
    }
    // Some acks arrive, then the hub dies with the rest unanswered.
    let mut acks: BTreeMap<String, (i32, i64)> = BTreeMap::new();
    while acks.len() < 50 {
        let ack = on_a.recv().await;
        assert_eq!(ack["type"], "ack", "{ack}");
        acks.insert(ack["id"].as_str().unwrap().to_string(), position(&ack));
    }
    a.kill().await;

    // The client sends every publish it has no answer for to the other hub.
    let mut on_b = b.connect(&grant).await;
    let mut resent = 0;
    for (n, frame) in frames.iter().enumerate() {
        if !acks.contains_key(&format!("p{n}")) {
            on_b.send(resend(frame.clone(), sent[n], 1)).await;
            resent += 1;
        }
    }
    for _ in 0..resent {
        let ack = on_b.recv().await;
        assert_eq!(ack["type"], "ack", "{ack}");
        let id = ack["id"].as_str().unwrap().to_string();
        assert!(
            acks.insert(id, position(&ack)).is_none(),
            "answered twice: {ack}"
        );
    }

    let held = positions_by_id(&read_all(broker(), &topic).await);
    assert_eq!(held.len(), COUNT, "every publish is in Kafka");
    for (id, position) in &acks {
        assert_eq!(held[id], vec![*position], "{id}: once, where its ack says");
    }
    let found = b.metrics().await;
    eprintln!(
        "{resent} resent after the kill: {:?} found, {:?} written",
        found.get("wskafka_publish_retries_total{outcome=\"found\"}"),
        found.get("wskafka_publish_retries_total{outcome=\"written\"}"),
    );
}

#[tokio::test]
async fn a_first_attempt_held_by_a_paused_broker_is_waited_for_not_written_twice() {
    let kafka = KafkaNode::start(&KafkaNode::single()).await;
    let brokers = kafka.addr();
    let prefix = unique("once");
    let (topic, glob) = (format!("{prefix}.room"), format!("{prefix}.*"));
    create_topic_with(&brokers, &topic, 2, 1, &[]).await;
    let args = [&BOUNDS[..], &["--brokers", &brokers]].concat();
    let (a, b) = tokio::join!(Hub::start(&glob, &args), Hub::start(&glob, &args));
    let grant = token("alice", &[&glob], &[&glob]);
    let mut on_a = a.connect(&grant).await;
    let mut on_b = b.connect(&grant).await;

    // The broker stops answering; the first attempt goes to hub A, whose producer holds it
    // and retries, and the socket is lost before any answer.
    kafka.pause();
    let first = publish(&topic, "held", Some("room"), "in flight");
    let sent = Instant::now();
    on_a.send(first.clone()).await;
    drop(on_a);
    // The resend reaches hub B while the first attempt is still in flight.
    on_b.send(resend(first, sent, 1)).await;
    // Held for a while (the fault, not a synchronisation): then the broker answers both.
    tokio::time::sleep(Duration::from_secs(2)).await;
    kafka.resume();

    let ack = on_b.recv().await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let held = positions_by_id(&read_all(&brokers, &topic).await);
    assert_eq!(
        held["held"],
        vec![position(&ack)],
        "once, where the ack says"
    );
}

#[tokio::test]
async fn a_first_attempt_held_by_a_stalled_hub_is_waited_for_not_written_twice() {
    let (topic, glob) = fresh_topic("once", 2).await;
    let (a, b) = tokio::join!(Hub::start(&glob, &BOUNDS), Hub::start(&glob, &BOUNDS));
    let grant = token("alice", &[&glob], &[&glob]);
    let (mut on_a, mut on_b) = (a.connect(&grant).await, b.connect(&grant).await);
    // Hub A stalls (a long pause, a starved machine) with the first attempt in its socket's
    // buffer; the client gives up on it and sends the publish again through hub B.
    a.signal("STOP").await;
    let first = publish(&topic, "stalled", None, "in flight");
    let sent = Instant::now();
    on_a.send(first.clone()).await;
    on_b.send(resend(first, sent, 1)).await;
    // Stalled for a while (the fault, not a synchronisation): then A writes its attempt,
    // and B, which waited for it, answers with its position.
    tokio::time::sleep(Duration::from_secs(2)).await;
    a.signal("CONT").await;

    let ack = on_b.recv().await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let first_ack = on_a.recv().await;
    assert_eq!(position(&first_ack), position(&ack), "{first_ack}");
    let held = positions_by_id(&read_all(broker(), &topic).await);
    assert_eq!(
        held["stalled"],
        vec![position(&ack)],
        "once, where the ack says"
    );
}

#[tokio::test]
async fn a_resend_still_waiting_when_its_socket_closes_is_never_written() {
    let (topic, glob) = fresh_topic("once", 1).await;
    let hub = Hub::start(&glob, &BOUNDS).await;
    let grant = token("alice", &[&glob], &[&glob]);
    let mut client = hub.connect(&grant).await;
    // A first attempt that never reached any hub: the resend waits out its landing bound.
    let frame = resend(
        publish(&topic, "gone", Some("room"), "x"),
        Instant::now(),
        1,
    );
    client.send(frame).await;
    hub.until_metric("wskafka_retry_readers", 1.0).await;
    drop(client);
    hub.until_metric("wskafka_publish_retries_total{outcome=\"abandoned\"}", 1.0)
        .await;
    // Dropped, not merely answered: nothing is left to write it later.
    let held = positions_by_id(&read_all(broker(), &topic).await);
    assert!(!held.contains_key("gone"), "{held:?}");
}
