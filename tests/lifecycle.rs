//! Start, readiness, slow sockets and graceful shutdown.

mod common;

use std::collections::HashSet;

use common::*;
use futures_util::StreamExt;
use rdkafka::Message as _;
use serde_json::{Value, json};

#[tokio::test]
async fn health_answers_and_readiness_comes_with_known_positions() {
    let (_, glob) = fresh_topic("health", 2).await;
    let hub = Hub::start(&glob, &[]).await;
    assert_eq!(hub.get("/healthz").await, (200, "ok".into()));
    assert_eq!(hub.get("/readyz").await, (200, "ready".into()));
}

#[tokio::test]
async fn sigterm_answers_every_publish_it_took_closes_with_1001_and_loses_no_ack() {
    let (topic, glob) = fresh_topic("stop", 2).await;
    // Rate limiting is not what this test is about: let all 500 publishes through.
    let hub = Hub::start(&glob, &["--publish-rate", "100000"]).await;
    let mut client = hub.connect(&token("alice", &[&glob], &[])).await;

    client.publish_many(&topic, 500).await;
    // Stop once the hub is demonstrably mid-stream.
    let first = client.recv().await;
    assert_eq!(first["type"], "ack", "{first}");
    let stopped = tokio::spawn(hub.terminate());

    let mut acks = vec![first];
    let close = loop {
        match client.ws.next().await {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) => {
                let reply: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(
                    reply["type"], "ack",
                    "an in-flight publish failed at shutdown: {reply}"
                );
                acks.push(reply);
            }
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => break frame,
            other => panic!("expected acks then a close frame, got {other:?}"),
        }
    };
    let close = close.expect("a close frame with a code");
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (1001, "going away")
    );
    assert_eq!(stopped.await.unwrap(), Some(0), "the hub exits 0");

    let position = |ack: &Value| {
        (
            ack["partition"].as_i64().unwrap() as i32,
            ack["offset"].as_i64().unwrap(),
        )
    };
    let stored = read_records(&topic, acks.iter().map(position)).await;
    let mut ids = HashSet::new();
    for ack in &acks {
        assert!(
            ids.insert(ack["id"].as_str().unwrap().to_string()),
            "acked twice: {ack}"
        );
        let position = (
            ack["partition"].as_i64().unwrap() as i32,
            ack["offset"].as_i64().unwrap(),
        );
        let record = stored
            .get(&position)
            .unwrap_or_else(|| panic!("acked record {ack} is not in Kafka"));
        let stored: Value = serde_json::from_slice(record.payload().unwrap()).unwrap();
        assert_eq!(
            stored["seq"].as_i64().unwrap().to_string(),
            ack["id"].as_str().unwrap(),
            "ack {ack} points at {stored}"
        );
    }
    eprintln!(
        "{} of 500 publishes were acked before the hub stopped",
        acks.len()
    );
}

#[tokio::test]
async fn a_socket_that_stops_reading_is_closed_4429_while_others_get_everything() {
    let (topic, glob) = fresh_topic("slow", 1).await;
    let hub = Hub::start(&glob, &["--send-queue", "64"]).await;
    let reader = token("r", &[], &[&glob]);
    let (mut slow, mut healthy) = (hub.connect(&reader).await, hub.connect(&reader).await);
    slow.subscribe(&topic).await;
    healthy.subscribe(&topic).await;

    // The healthy socket reads while records arrive; the slow one never does.
    let count = 600;
    let reading = tokio::spawn(async move {
        for expected in 0..count {
            let message = healthy.recv().await;
            assert_eq!(
                message["offset"].as_i64(),
                Some(expected),
                "the healthy socket missed a record"
            );
        }
    });
    // Far more than socket buffers hold, so the slow socket's queue must overflow.
    let producer = producer();
    let body = json!({"pad": "x".repeat(50_000)}).to_string();
    for _ in 0..count {
        produce(&producer, &topic, "k", body.as_bytes()).await;
    }
    reading.await.unwrap();

    let close = slow.closed().await.expect("a close frame");
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (4429, "send queue full")
    );
}
