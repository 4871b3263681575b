//! Start, readiness, slow sockets and graceful shutdown.

use crate::common::*;
use futures_util::StreamExt;
use serde_json::Value;

#[tokio::test]
async fn health_answers_and_readiness_comes_with_known_positions() {
    let (_, glob) = fresh_topic("health", 2).await;
    let hub = Hub::start(&glob, &[]).await;
    assert_eq!(hub.get("/healthz").await, (200, "ok".into()));
    assert_eq!(
        hub.get("/readyz").await,
        (200, r#"{"ready":true,"waiting_for":[]}"#.into())
    );
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

    assert_every_ack_is_in_kafka(&topic, &acks).await;
    eprintln!(
        "{} of 500 publishes were acked before the hub stopped",
        acks.len()
    );
}

#[tokio::test]
async fn sigkill_under_publish_load_loses_no_acknowledged_record() {
    let (topic, glob) = fresh_topic("kill", 2).await;
    let hub = Hub::start(&glob, &["--publish-rate", "100000"]).await;
    let mut client = hub.connect(&token("alice", &[&glob], &[])).await;

    client.publish_many(&topic, 2000).await;
    let mut acks = client.acks(100).await;
    // No shutdown, no flush: the process is gone mid-stream.
    hub.kill().await;
    // Every ack that made it out before the socket died must point at a stored record.
    while let Some(Ok(message)) = client.ws.next().await {
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            let reply: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(reply["type"], "ack", "{reply}");
            acks.push(reply);
        }
    }
    assert_every_ack_is_in_kafka(&topic, &acks).await;
    eprintln!("{} of 2000 publishes were acked before SIGKILL", acks.len());
}
