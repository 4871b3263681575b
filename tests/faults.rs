//! Faults: storms of sockets that come and go, and a broker that goes away under load.

mod common;

use common::*;
use serde_json::json;

/// Waits until `/metrics` shows `name` at `value`.
async fn until_metric(hub: &Hub, name: &str, value: f64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let seen = hub.metrics().await.get(name).copied().unwrap_or(0.0);
        if seen == value {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} stayed at {seen}, not {value}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

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
    until_metric(&hub, "wskafka_connections", 0.0).await;
    until_metric(
        &hub,
        &format!("wskafka_subscriptions{{topic=\"{topic}\"}}"),
        0.0,
    )
    .await;

    // Every seat and every pre-authentication slot came back: the limits admit a full
    // set again, and the sockets work.
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
    let ack = held[0]
        .call(json!({"type":"publish","id":"p","topic":topic,"payload":"after the storm"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    for client in &mut held {
        assert_eq!(client.recv().await["payload"], "after the storm");
    }
}
