//! Subscriptions that start in the past: resuming after a drop, `earliest` and `timestamp`
//! replays, the replay bound, and a lagging socket told where to resume.

use std::collections::BTreeMap;

use crate::common::*;
use rdkafka::producer::FutureRecord;
use serde_json::{Value, json};

#[tokio::test]
async fn a_client_dropped_mid_stream_resumes_on_another_hub_with_every_record_exactly_once() {
    let (topic, glob) = fresh_topic("resume", 3).await;
    // The records come in one burst, which a test client reading in a debug build can fall
    // behind: a queue that holds the burst keeps this test about resuming, not lagging.
    let roomy = ["--send-queue", "10000"];
    let (hub_a, hub_b) = tokio::join!(Hub::start(&glob, &roomy), Hub::start(&glob, &roomy));
    let reader = token("reader", &[], &[&glob]);

    let mut first = hub_a.connect(&reader).await;
    let subscribed = first.subscribe_from(&topic, json!("latest")).await;
    let mut before = Received::starting_at(&subscribed);

    let count = 3000;
    let producing = tokio::spawn({
        let topic = topic.clone();
        async move { produce_many(&topic, count).await }
    });
    while before.seqs.len() < 1000 {
        let (position, message) = first.message().await;
        before.take(position, &message);
    }
    // The network goes away mid-stream: whatever was in flight to this socket is lost to it.
    drop(first);

    let mut second = hub_b.connect(&reader).await;
    let subscribed = second.subscribe_from(&topic, before.resume()).await;
    assert_eq!(
        Received::starting_at(&subscribed).next,
        before.next,
        "the replay starts where the first session stopped"
    );
    assert!(subscribed.get("lost").is_none(), "{subscribed}");
    let produced = producing.await.unwrap();
    Received::starting_at(&subscribed)
        .resumed_after(before, &mut second, &produced)
        .await;
}

/// A socket back on the same hub a moment later is served from the records the hub keeps in
/// memory; one away for longer than they reach, from Kafka. Records keep arriving all
/// along, and either way each arrives exactly once.
#[tokio::test]
async fn a_socket_back_after_a_moment_resumes_from_memory_and_after_longer_from_kafka() {
    let (topic, glob) = fresh_topic("recent", 3).await;
    let flags = ["--send-queue", "10000", "--recent-records", "500"];
    let hub = Hub::start(&glob, &flags).await;
    let reader = token("reader", &[], &[&glob]);
    // A second socket reads everything, to tell when the hub has read the records sent
    // while the first was away.
    let mut witness = hub.connect(&reader).await;
    witness.subscribe_from(&topic, json!("latest")).await;

    // Away for 100 records: within the 500 kept per partition. Away for 3,000: past them,
    // in every partition that holds at least three of the seven keys, as one must.
    for (away, served_from) in [(100, "recent"), (3000, "kafka")] {
        let mut first = hub.connect(&reader).await;
        let subscribed = first.subscribe_from(&topic, json!("latest")).await;
        let mut before = Received::starting_at(&subscribed);
        let mut produced = produce_many(&topic, 300).await;
        while before.seqs.len() < 200 {
            let (position, message) = first.message().await;
            before.take(position, &message);
        }
        drop(first);
        let missed = produce_many(&topic, away).await;
        let mut seen = 0;
        while seen < produced.len() + missed.len() {
            witness.message().await;
            seen += 1;
        }
        produced.extend(missed);

        let replays = |hub_metrics: BTreeMap<String, f64>| {
            hub_metrics
                .get(&format!("wskafka_replays_total{{from=\"{served_from}\"}}"))
                .copied()
                .unwrap_or(0.0)
        };
        let replays_before = replays(hub.metrics().await);
        let mut second = hub.connect(&reader).await;
        let live = tokio::spawn({
            let topic = topic.clone();
            async move { produce_many(&topic, 300).await }
        });
        let subscribed = second.subscribe_from(&topic, before.resume()).await;
        assert!(subscribed.get("lost").is_none(), "{subscribed}");
        assert_eq!(
            replays(hub.metrics().await),
            replays_before + 1.0,
            "{served_from}"
        );
        produced.extend(live.await.unwrap());
        Received::starting_at(&subscribed)
            .resumed_after(before, &mut second, &produced)
            .await;
        // The witness saw the live records too.
        for _ in 0..300 {
            witness.message().await;
        }
    }
}

#[tokio::test]
async fn earliest_and_timestamp_replays_then_join_the_live_stream() {
    let (topic, glob) = fresh_topic("replay", 2).await;
    let producer = producer();
    // The producer stamps each record (CreateTime, Kafka's default): the first twenty two
    // hours ago, the next ten one hour ago, all appended now. A lookup by append time would
    // replay all thirty from the boundary; by record timestamp, only the last ten.
    let boundary = now_ms() - 3_600_000;
    let mut history = BTreeMap::new();
    for seq in 0..30 {
        let stamp = if seq < 20 {
            boundary - 3_600_000 + seq
        } else {
            boundary + seq
        };
        let (key, body) = (format!("k{seq}"), json!({"seq": seq}).to_string());
        let record = FutureRecord::to(&topic)
            .key(&key)
            .payload(&body)
            .timestamp(stamp);
        let delivered = producer.send(record, PATIENCE).await.unwrap();
        history.insert((delivered.partition, delivered.offset), seq);
    }
    let hub = Hub::start(&glob, &[]).await;
    let reader = token("reader", &[], &[&glob]);

    for (round, (from, first_seq)) in [(json!("earliest"), 0), (json!({"timestamp": boundary}), 20)]
        .into_iter()
        .enumerate()
    {
        let mut client = hub.connect(&reader).await;
        let subscribed = client.subscribe_from(&topic, from.clone()).await;
        let mut received = Received::starting_at(&subscribed);
        let wanted: BTreeMap<_, _> = history
            .iter()
            .filter(|(_, seq)| **seq >= first_seq)
            .map(|(p, s)| (*p, *s))
            .collect();
        while received.seqs.len() < wanted.len() {
            let (position, message) = client.message().await;
            received.take(position, &message);
        }
        assert_eq!(received.seqs, wanted, "replay from {from}");

        // The same subscription then carries what is appended after the replay (which the
        // next round's replay includes).
        let seq = 100 + round as i64;
        let body = json!({"seq": seq}).to_string();
        let live = produce(&producer, &topic, "live", body.as_bytes()).await;
        let (position, message) = client.message().await;
        assert_eq!(position, live, "{message}");
        history.insert(live, seq);
    }
}

fn now_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    since_epoch.as_millis() as i64
}

#[tokio::test]
async fn a_replay_past_its_bound_reports_the_records_it_will_not_deliver() {
    let (topic, glob) = fresh_topic("bound", 1).await;
    let produced = produce_many(&topic, 20).await;
    let hub = Hub::start(&glob, &["--max-replay", "5"]).await;
    let mut client = hub.connect(&token("reader", &[], &[&glob])).await;

    let subscribed = client
        .subscribe_from(&topic, json!({"offsets": {"0": 2}}))
        .await;
    assert_eq!(subscribed["partitions"], json!({"0": 15}));
    assert_eq!(
        subscribed["lost"],
        json!({"0": {"from": 2, "to": 15, "reason": "replay_limit"}})
    );
    for offset in 15..20 {
        let (position, message) = client.message().await;
        assert_eq!(position, (0, offset));
        assert_eq!(message["payload"]["seq"], produced[&(0, offset)]);
    }
}

#[tokio::test]
async fn a_socket_that_stops_reading_gets_lagged_and_resumes_losslessly_while_others_get_everything()
 {
    let (topic, glob) = fresh_topic("slow", 1).await;
    let hub = Hub::start(&glob, &["--send-queue", "64"]).await;
    let reader = token("r", &[], &[&glob]);
    let (mut slow, mut healthy) = (hub.connect(&reader).await, hub.connect(&reader).await);
    let subscribed = slow.subscribe_from(&topic, json!("latest")).await;
    let mut before = Received::starting_at(&subscribed);
    healthy.subscribe(&topic).await;

    // The healthy socket reads while records arrive; the slow one does not.
    let count = 600;
    let reading = tokio::spawn(async move {
        for expected in 0..count {
            let (position, _) = healthy.message().await;
            assert_eq!(
                position,
                (0, expected),
                "the healthy socket missed a record"
            );
        }
    });
    // Far more than socket buffers hold, so the slow socket's queue must overflow.
    let producer = producer();
    let body = json!({"seq": 0, "pad": "x".repeat(50_000)}).to_string();
    for _ in 0..count {
        produce(&producer, &topic, "k", body.as_bytes()).await;
    }
    reading.await.unwrap();

    // Now the slow socket reads: some records, then `lagged`, then the close.
    let lagged = loop {
        let frame = slow.recv().await;
        match frame["type"].as_str() {
            Some("message") => before.take(position(&frame), &frame),
            Some("lagged") => break frame,
            _ => panic!("unexpected {frame}"),
        }
    };
    assert!(before.seqs.len() < count as usize, "the slow socket lagged");
    let close = slow.closed().await.expect("a close frame");
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (4429, "lagged")
    );
    let resume_at = lagged["topics"][&topic].clone();
    assert_eq!(
        before.resume()["offsets"],
        resume_at,
        "lagged says where delivery stopped"
    );

    let mut again = hub.connect(&reader).await;
    again
        .subscribe_from(&topic, json!({"offsets": resume_at}))
        .await;
    let mut offsets: Vec<i64> = before.seqs.keys().map(|(_, o)| *o).collect();
    while offsets.len() < count as usize {
        let ((_, offset), _) = again.message().await;
        offsets.push(offset);
    }
    assert_eq!(offsets, (0..count).collect::<Vec<_>>());
}

#[tokio::test]
async fn malformed_starts_and_replays_of_missing_topics_are_refused_and_the_socket_carries_on() {
    let (topic, glob) = fresh_topic("badfrom", 1).await;
    let hub = Hub::start(&glob, &[]).await;
    let mut client = hub.connect(&token("r", &[], &[&glob])).await;
    let reply = client
        .call(json!({"type": "subscribe", "id": 1, "topic": topic, "from": "yesterday"}))
        .await;
    assert_eq!(
        (reply["code"].as_str(), reply["id"].as_i64()),
        (Some("bad_request"), Some(1))
    );

    let missing = glob.replace('*', "missing");
    let reply = client
        .call(json!({"type": "subscribe", "id": 2, "topic": missing, "from": "earliest"}))
        .await;
    assert_eq!(
        (reply["code"].as_str(), reply["id"].as_i64()),
        (Some("unknown_topic"), Some(2)),
        "{reply}"
    );
    assert_eq!(client.call(json!({"type": "ping"})).await["type"], "pong");
    let _: Value = client.subscribe_from(&topic, json!("earliest")).await;
}
