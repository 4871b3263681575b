//! Faults: storms of sockets that come and go, and a broker that goes away under load.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::*;
use rdkafka::Message as _;
use serde_json::json;

#[tokio::test]
async fn storms_of_sockets_that_come_and_go_leave_nothing_held() {
    let (topic, glob) = fresh_topic("storm", 1).await;
    let hub = Hub::start(
        &glob,
        &[
            "--max-connections-per-user",
            "4",
            "--max-awaiting-auth",
            "4",
            "--max-connections",
            "8",
        ],
    )
    .await;
    let alice = token("alice", &[&glob], &[&glob]);
    for round in 0..100 {
        // Closed politely, dropped mid-subscription, and opened without ever authenticating.
        let mut polite = hub.connect(&alice).await;
        polite.subscribe(&topic).await;
        polite.ws.close(None).await.unwrap();
        let mut rude = hub.connect(&alice).await;
        rude.send(json!({"type":"subscribe","topic":topic,"from":"earliest"}))
            .await;
        drop(rude);
        let mut stranger = hub.connect_bare().await;
        if round % 2 == 0 {
            stranger.send_text("not an auth frame").await;
        }
        drop(stranger);
        drop(polite);
    }
    hub.until_metric("wskafka_connections", 0.0).await;
    hub.until_metric(&format!("wskafka_subscriptions{{topic=\"{topic}\"}}"), 0.0)
        .await;

    // Every seat, every pre-authentication slot and every socket permit came back: the
    // limits admit a full set again, and the sockets work.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut client = hub.connect(&alice).await;
        client.subscribe(&topic).await;
        held.push(client);
    }
    assert_eq!(hub.handshake_status(&hub.url(&alice)).await, 429);
    let mut waiting = Vec::new();
    for _ in 0..4 {
        waiting.push(hub.connect_bare().await);
    }
    let bob = hub.url(&token("bob", &[], &[]));
    assert_eq!(hub.handshake_status(&bob).await, 503, "the hub is full");
    let (_, message) = held[0]
        .publish_to_self(
            json!({"type":"publish","id":"p","topic":topic,"payload":"after the storm"}),
        )
        .await;
    assert_eq!(message["payload"], "after the storm");
    for client in &mut held[1..] {
        assert_eq!(client.recv().await["payload"], "after the storm");
    }
}

#[tokio::test]
async fn the_hub_rides_out_a_broker_restart_and_never_acks_falsely() {
    // A broker of the test's own, killed and started again on the same port and data.
    let mut kafka = KafkaNode::start(&KafkaNode::single()).await;
    let brokers = kafka.addr();
    let prefix = unique("outage");
    let (topic, glob) = (format!("{prefix}.room"), format!("{prefix}.*"));
    create_topic_with(&brokers, &topic, 1, 1, &[]).await;
    // The hub's own producer settings: idempotent, acks=all.
    let hub = Hub::start(&glob, &["--brokers", &brokers, "--publish-timeout", "3s"]).await;
    let grant = token("alice", &[&glob], &[&glob]);
    let mut reader = hub.connect(&grant).await;
    reader.subscribe(&topic).await;
    let mut writer = hub.connect(&grant).await;
    let mut acked = Vec::new();
    let frame = |n: usize| json!({"type":"publish","id":n,"topic":topic,"payload":{"n":n}});
    for n in 0..20 {
        let ack = writer.call(frame(n)).await;
        assert_eq!(ack["type"], "ack", "{ack}");
        acked.push((position(&ack), n));
    }

    kafka.kill();
    let unready = hub.wait_readyz(503).await;
    // Publishes while no broker answers: each gets an answer, and it is never an ack.
    let outage = std::time::Instant::now();
    for n in 20..25 {
        writer.send(frame(n)).await;
    }
    for _ in 20..25 {
        let reply = writer.recv().await;
        assert_eq!(reply["code"], "unavailable", "{reply}");
    }
    let answered = outage.elapsed();
    assert_eq!(
        writer.call(json!({"type":"ping","id":"p"})).await["type"],
        "pong"
    );

    kafka.restart().await;
    let ready = hub.wait_readyz(200).await;
    // The producer may still be reconnecting: a client retries on `unavailable`, as the
    // protocol tells it to, until Kafka takes its record again.
    let back = std::time::Instant::now();
    let (mut refused, mut first_ack) = (0, None);
    let mut n = 25;
    while acked.len() < 40 {
        let reply = writer.call(frame(n)).await;
        match reply["type"].as_str() {
            Some("ack") => {
                first_ack.get_or_insert_with(|| back.elapsed());
                acked.push((position(&reply), n));
            }
            _ if reply["code"] == "unavailable" && acked.len() == 20 => refused += 1,
            _ => {
                panic!("after the first ack following the restart, every publish is acked: {reply}")
            }
        }
        assert!(
            back.elapsed() < 10 * PATIENCE,
            "Kafka never took a record again"
        );
        n += 1;
    }
    let first_ack = first_ack.expect("publishes were acked after the restart");
    eprintln!(
        "broker down: /readyz 503 after {unready:?}; 5 publishes answered unavailable within {answered:?}; \
         broker back: /readyz 200 after {ready:?}, {refused} publishes unavailable, first ack {first_ack:?} after ready"
    );

    // The subscription carried on: every acknowledged record, in order, exactly once.
    for &(position, n) in &acked {
        let (at, message) = reader.message().await;
        assert_eq!(
            (at, message["payload"]["n"].as_u64()),
            (position, Some(n as u64))
        );
    }
    // And Kafka holds every acknowledged record.
    let stored = read_records_at(&brokers, &topic, acked.iter().map(|(p, _)| *p)).await;
    for (position, n) in acked {
        let value: serde_json::Value =
            serde_json::from_slice(rdkafka::Message::payload(&stored[&position]).unwrap()).unwrap();
        assert_eq!(value, json!({"n": n}));
    }
}

#[tokio::test]
async fn a_partition_leader_killed_under_publish_load_loses_no_acknowledged_record() {
    let mut cluster = Cluster::start(3).await;
    let brokers = cluster.bootstrap();
    let prefix = unique("failover");
    let (topic, glob) = (format!("{prefix}.room"), format!("{prefix}.*"));
    // Three replicas; the brokers take a write with acks=all once two of them have it.
    create_topic_with(&brokers, &topic, 1, 3, &[]).await;
    let hub = Hub::start(&glob, &["--brokers", &brokers, "--publish-rate", "100000"]).await;
    let grant = token("alice", &[&glob], &[&glob]);
    let mut reader = hub.connect(&grant).await;
    let subscribed = reader.subscribe_from(&topic, json!("latest")).await;
    let mut writer = hub.connect(&grant).await;

    // Publishes keep 16 in flight; the leader dies once 500 are acknowledged, and publishing
    // goes on until 500 more are.
    const WINDOW: usize = 16;
    let (mut sent, mut in_flight, mut unavailable) = (0, 0, 0);
    let mut acked: Vec<((i32, i64), i64)> = Vec::new();
    // When the leader was killed, how many acks there were, and how many were sent.
    let mut killed: Option<(std::time::Instant, usize, i64)> = None;
    let (mut last_ack, mut longest_silence) = (std::time::Instant::now(), Duration::ZERO);
    let mut first_ack_after_kill = None;
    let started = std::time::Instant::now();
    while killed.is_none_or(|(_, at, _)| acked.len() < at + 500) || in_flight > 0 {
        let publishing = killed.is_none_or(|(_, at, _)| acked.len() < at + 500);
        if publishing && in_flight < WINDOW {
            writer
                .send(json!({"type":"publish","id":sent,"topic":topic,"payload":{"seq":sent}}))
                .await;
            sent += 1;
            in_flight += 1;
            continue;
        }
        let reply = writer.recv().await;
        in_flight -= 1;
        match reply["type"].as_str() {
            Some("ack") => {
                let now = std::time::Instant::now();
                longest_silence = longest_silence.max(now - last_ack);
                last_ack = now;
                let seq = reply["id"].as_i64().unwrap();
                if let Some((at, _, sent_then)) = killed
                    && seq >= sent_then
                {
                    first_ack_after_kill.get_or_insert(at.elapsed());
                }
                acked.push((position(&reply), seq));
            }
            // The client's cue to publish again, which it does with a new record here.
            _ if reply["code"] == "unavailable" => unavailable += 1,
            _ => panic!("{reply}"),
        }
        if killed.is_none() && acked.len() == 500 {
            let leader = cluster.leader(&topic, 0);
            cluster.nodes[leader].kill();
            killed = Some((std::time::Instant::now(), acked.len(), sent as i64));
        }
        assert!(
            started.elapsed() < 6 * PATIENCE,
            "publishing never recovered"
        );
    }

    // Every acknowledged record is in Kafka, where its ack said, with its payload.
    let kafka = read_all(&cluster.running(), &topic).await;
    for &(at, seq) in &acked {
        let record = kafka
            .get(&at)
            .unwrap_or_else(|| panic!("acked {at:?} is not in Kafka"));
        let value: serde_json::Value = serde_json::from_slice(record.payload().unwrap()).unwrap();
        assert_eq!(value["seq"], seq, "the ack at {at:?}");
    }
    // The subscriber got every record Kafka holds, once and in order, across the failover.
    let mut received = Received::starting_at(&subscribed);
    while received.seqs.len() < kafka.len() {
        let (at, message) = reader.message().await;
        received.take(at, &message);
    }
    let in_kafka: BTreeMap<(i32, i64), i64> = kafka
        .iter()
        .map(|(at, m)| {
            let value: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            (*at, value["seq"].as_i64().unwrap())
        })
        .collect();
    assert_eq!(received.seqs, in_kafka);
    eprintln!(
        "leader killed after 500 acks: {sent} published, {} acked, {unavailable} unavailable, \
         {} in Kafka; the first publish sent after the kill acked {:?} after it; \
         longest time without an ack {longest_silence:?}",
        acked.len(),
        kafka.len(),
        first_ack_after_kill.expect("acks after the kill"),
    );
}
