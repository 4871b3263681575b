//! Bad input gets a clear error frame, and the connection (and every other) keeps working.

mod common;

use common::*;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

async fn still_works(client: &mut Client) {
    assert_eq!(
        client.call(json!({"type": "ping", "id": "alive"})).await,
        json!({"type": "pong", "id": "alive"})
    );
}

fn assert_error(reply: &Value, code: &str, id: Option<&str>) {
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], code, "{reply}");
    assert_eq!(reply["id"].as_str(), id, "{reply}");
    assert!(!reply["message"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn each_malformed_request_gets_its_error_and_the_socket_stays_usable() {
    let (topic, glob) = fresh_topic("bad", 1).await;
    let hub = Hub::start(
        &glob,
        // Each case below in a row: far past what one socket may send of invalid frames.
        &[
            "--max-frame-bytes",
            "1024",
            "--max-subscriptions",
            "2",
            "--request-rates",
            "invalid=1000,subscribe=1000,ping=1000",
        ],
    )
    .await;
    let mut client = hub.connect(&token("alice", &[&glob], &[&glob])).await;

    let cases: Vec<(String, &str, Option<&str>)> = vec![
        ("{not json".into(), "bad_request", None),
        ("[1,2,3]".into(), "bad_request", None),
        (r#"{"id":"1","topic":"x"}"#.into(), "bad_request", Some("1")),
        (
            r#"{"type":"teleport","id":"2"}"#.into(),
            "bad_request",
            Some("2"),
        ),
        (
            r#"{"type":"publish","id":"3","payload":1}"#.into(),
            "bad_request",
            Some("3"),
        ),
        (
            format!(r#"{{"type":"publish","id":"4","topic":"{topic}"}}"#),
            "bad_request",
            Some("4"),
        ),
        (
            r#"{"type":"subscribe","id":"5"}"#.into(),
            "bad_request",
            Some("5"),
        ),
        (
            r#"{"type":"subscribe","id":"6","topic":"no spaces allowed"}"#.into(),
            "bad_request",
            Some("6"),
        ),
        (
            r#"{"type":"subscribe","id":"7","topic":"chat.*"}"#.into(),
            "bad_request",
            Some("7"),
        ),
        (
            format!(
                r#"{{"type":"publish","id":"8","topic":"{topic}","payload":"{}"}}"#,
                "x".repeat(2000)
            ),
            "too_large",
            Some("8"),
        ),
    ];
    for (frame, code, id) in cases {
        client.send_text(frame.clone()).await;
        assert_error(&client.recv().await, code, id);
        still_works(&mut client).await;
    }

    client
        .ws
        .send(Message::binary(vec![1u8, 2, 3]))
        .await
        .unwrap();
    assert_error(&client.recv().await, "bad_request", None);
    still_works(&mut client).await;

    // The subscription limit counts distinct topics.
    client.subscribe(&topic).await;
    client.subscribe(&topic).await;
    client.subscribe(&format!("{topic}2")).await;
    let refused = client
        .call(json!({"type": "subscribe", "id": "9", "topic": format!("{topic}3")}))
        .await;
    assert_error(&refused, "limit_exceeded", Some("9"));

    // After all that, the socket still publishes and receives.
    let (ack, message) = client
        .publish_to_self(
            json!({"type": "publish", "id": "ok", "topic": topic, "payload": {"still": "here"}}),
        )
        .await;
    assert_eq!(ack["id"], "ok", "{ack}");
    assert_eq!(message["payload"], json!({"still": "here"}));
}

#[tokio::test]
async fn a_publish_kafka_cannot_take_in_time_is_answered_unavailable() {
    let prefix = unique("missing");
    let glob = format!("{prefix}.*");
    let hub = Hub::start(&glob, &["--publish-timeout", "1s"]).await;
    let mut client = hub.connect(&token("alice", &[&glob], &[])).await;
    // The broker creates no topic on demand (auto.create.topics.enable=false, as on most
    // production clusters): there is no such topic.
    let reply = client
        .call(json!({"type": "publish", "id": "1", "topic": format!("{prefix}.nowhere"), "payload": 1}))
        .await;
    assert_error(&reply, "unavailable", Some("1"));
    still_works(&mut client).await;
}

#[tokio::test]
async fn a_frame_past_the_hard_limit_ends_only_that_socket() {
    let (topic, glob) = fresh_topic("huge", 1).await;
    let hub = Hub::start(&glob, &["--max-frame-bytes", "1024"]).await;
    let grant = token("a", &[&glob], &[&glob]);
    let mut bystander = hub.connect(&grant).await;
    bystander.subscribe(&topic).await;
    let mut attacker = hub.connect(&grant).await;

    attacker.send_text("x".repeat(64 * 1024)).await;
    let close = attacker.closed().await;
    if let Some(frame) = close {
        assert_eq!(u16::from(frame.code), 1009, "{frame:?}");
    }

    still_works(&mut bystander).await;
    let (_, record) = bystander
        .publish_to_self(json!({"type": "publish", "topic": topic, "payload": 1}))
        .await;
    assert_eq!(record["payload"], 1);
}

#[tokio::test]
async fn deeply_nested_json_is_refused_without_harm() {
    let (topic, glob) = fresh_topic("nested", 1).await;
    let hub = Hub::start(&glob, &[]).await;
    let mut client = hub.connect(&token("alice", &[&glob], &[&glob])).await;
    // Far past serde_json's recursion limit (128), well inside the frame limit.
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    client.send_text(deep(20_000)).await;
    assert_error(&client.recv().await, "bad_request", None);
    let nested_payload = format!(
        r#"{{"type":"publish","id":"deep","topic":"{topic}","payload":{}}}"#,
        deep(20_000)
    );
    client.send_text(nested_payload).await;
    // Consumers behind Kafka would choke on it (serde_json reads at most 127 levels).
    assert_error(&client.recv().await, "bad_request", Some("deep"));
    // Nesting a JSON document may legitimately have is published as it is.
    let fine = format!(
        r#"{{"type":"publish","id":"ok","topic":"{topic}","payload":{}}}"#,
        deep(100)
    );
    client.send_text(fine).await;
    assert_eq!(client.recv().await["type"], "ack");
    still_works(&mut client).await;
}

#[tokio::test]
async fn a_text_frame_of_invalid_utf8_ends_only_that_socket() {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

    let glob = unique("utf8") + ".*";
    let hub = Hub::start(&glob, &[]).await;
    let grant = token("a", &[&glob], &[&glob]);
    let mut bystander = hub.connect(&grant).await;
    let mut attacker = hub.connect(&grant).await;
    let invalid = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    attacker.ws.send(Message::Frame(invalid)).await.unwrap();
    // RFC 6455 says to fail the connection (1007); the hub's WebSocket layer does.
    if let Some(frame) = attacker.closed().await {
        assert_eq!(u16::from(frame.code), 1007, "{frame:?}");
    }
    still_works(&mut bystander).await;
}
