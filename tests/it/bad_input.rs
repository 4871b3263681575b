//! Bad input gets a clear error frame, and the connection (and every other) keeps working.

use std::collections::BTreeSet;

use crate::common::*;
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
    for more in ["2", "3"] {
        create_topic(&format!("{topic}{more}"), 1).await;
    }
    // Kafka answers CreateTopics before every broker's metadata lists the topic.
    let created = [format!("{topic}2"), format!("{topic}3")];
    eventually("the new topics are in Kafka's metadata", async || {
        let names = topic_names(broker()).await;
        created.iter().all(|t| names.contains(t))
    })
    .await;
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

/// `/metrics` as its series' names.
async fn series(hub: &Hub) -> BTreeSet<String> {
    hub.metrics().await.into_keys().collect()
}

async fn refreshes_on_a_miss(hub: &Hub) -> f64 {
    let name = "wskafka_topic_refreshes_total{cause=\"miss\"}";
    hub.metric(name).await
}

#[tokio::test]
async fn a_flood_of_requests_for_missing_topics_costs_few_metadata_requests_and_no_series() {
    let (topic, glob) = fresh_topic("flood", 1).await;
    let prefix = glob.trim_end_matches(".*");
    // Past every budget of one socket (see tests/limits.rs): what the catalogue alone bounds.
    let rates = "publish=1000000,subscribe=1000000,history=1000000";
    let hub = Hub::start(&glob, &["--request-rates", rates]).await;
    let grant = token("a", &[&glob], &[&glob]);
    let mut bystander = hub.connect(&grant).await;
    bystander.subscribe(&topic).await;
    let publish = json!({"type": "publish", "topic": topic, "payload": 1});
    bystander.publish_to_self(publish.clone()).await;
    // The consumer's lag comes with librdkafka's statistics, every five seconds.
    let lag = format!("wskafka_consumer_lag{{topic=\"{topic}\",partition=\"0\"}}");
    eventually(&lag, || async { hub.metrics().await.contains_key(&lag) }).await;
    let mut attacker = hub.connect(&grant).await;
    let request = |n: usize| {
        let topic = format!("{prefix}.missing{n}");
        match n % 3 {
            0 => json!({"type": "publish", "id": n, "topic": topic, "payload": 1}),
            1 => json!({"type": "subscribe", "id": n, "topic": topic}),
            _ => json!({"type": "history", "id": n, "topic": topic}),
        }
    };
    // Every series a miss can make exists before the count starts.
    for n in 0..3 {
        let reply = attacker.call(request(n)).await;
        assert_eq!(reply["code"], "unknown_topic", "{reply}");
    }
    let before = (series(&hub).await, refreshes_on_a_miss(&hub).await);
    let started = std::time::Instant::now();

    const REQUESTS: usize = 3000;
    for n in 0..REQUESTS {
        attacker.send(request(n)).await;
    }
    // Another socket is served meanwhile.
    let (ack, _) = bystander.publish_to_self(publish).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    for n in 0..REQUESTS {
        let reply = attacker.recv().await;
        assert_eq!(
            (reply["code"].as_str(), reply["id"].as_u64()),
            (Some("unknown_topic"), Some(n as u64)),
            "{reply}"
        );
    }
    let elapsed = started.elapsed();
    let after = (series(&hub).await, refreshes_on_a_miss(&hub).await);
    assert_eq!(after.0, before.0, "series came or went");
    // The hub asks Kafka at most every 100 ms, however many names it is asked for and
    // however slowly Kafka answers: a small fraction of the requests.
    let refreshes = after.1 - before.1;
    let bound = (elapsed.as_millis() / 100 + 2) as f64;
    eprintln!(
        "{REQUESTS} requests for missing topics in {elapsed:?}: {refreshes} metadata requests"
    );
    assert!(
        refreshes <= bound,
        "{refreshes} metadata requests in {elapsed:?}"
    );
    assert!(
        refreshes <= (REQUESTS / 20) as f64,
        "{refreshes} metadata requests"
    );
    still_works(&mut attacker).await;
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
