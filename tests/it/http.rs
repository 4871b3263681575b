//! `POST /publish`: records from backends over plain HTTP, against the real broker.

use crate::common::*;
use rdkafka::Message as _;
use rdkafka::message::Headers as _;
use serde_json::{Value, json};

/// POSTs `body` to `/publish` with `token`; the status and the JSON answer.
async fn post(hub: &Hub, token: &str, body: &str) -> (u16, Value) {
    let bearer = format!("Bearer {token}");
    let headers = [
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/json"),
    ];
    let (status, body) = hub.request("POST", "/publish", &headers, body).await;
    let answer = serde_json::from_str(&body).unwrap_or_else(|_| json!(body));
    (status, answer)
}

/// One record and a batch: each ack is where Kafka holds the record, with the token's user
/// as its verified sender, and a socket subscribed to the topic gets them all.
#[tokio::test]
async fn records_posted_are_acked_where_kafka_holds_them() {
    let (topic, glob) = fresh_topic("http-publish", 3).await;
    let hub = Hub::start(&glob, &[]).await;
    let backend = token("billing", &[&glob], &[]);
    let mut reader = hub.connect(&token("reader", &[], &[&glob])).await;
    reader.subscribe(&topic).await;

    let record = json!({"id": "0", "topic": topic, "key": "k", "headers": {"h": "v"}, "payload": {"seq": 0}});
    let (status, ack) = post(&hub, &backend, &record.to_string()).await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(ack["type"], "ack", "{ack}");
    let batch: Vec<Value> = (1..=40)
        .map(|seq| json!({"type": "publish", "id": seq.to_string(), "topic": topic, "payload": {"seq": seq}}))
        .collect();
    let (status, acks) = post(&hub, &backend, &Value::from(batch).to_string()).await;
    assert_eq!(status, 200, "{acks}");
    let mut acks = acks.as_array().expect("an array of replies").clone();
    assert_eq!(acks.len(), 40);
    for (seq, ack) in (1..).zip(&acks) {
        assert_eq!(ack["type"], "ack", "{ack}");
        assert_eq!(ack["id"], seq.to_string(), "replies keep the batch's order");
    }
    acks.push(ack);
    assert_every_ack_is_in_kafka(&topic, &acks).await;

    let stored = read_records(&topic, acks.iter().map(position)).await;
    for record in stored.values() {
        let sender = record
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "wskafka-sender"))
            .and_then(|h| h.value);
        assert_eq!(sender, Some(&b"billing"[..]));
    }
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < acks.len() {
        let (at, message) = reader.message().await;
        assert_eq!(message["sender"], "billing", "{message}");
        assert!(seen.insert(at), "delivered twice: {message}");
    }
}

/// A backend that resends after a lost answer gets the first record's position back, and
/// nothing is written twice.
#[tokio::test]
async fn a_resent_post_with_its_publish_id_is_answered_from_kafka() {
    let (topic, glob) = fresh_topic("http-resend", 2).await;
    let hub = Hub::start(&glob, &[]).await;
    let backend = token("billing", &[&glob], &[]);
    let first =
        json!({"topic": topic, "key": "invoice-7", "publish_id": "inv-7", "payload": {"seq": 1}});
    let (status, ack) = post(&hub, &backend, &first.to_string()).await;
    assert_eq!((status, &ack["type"]), (200, &json!("ack")), "{ack}");
    let again = json!({"topic": topic, "key": "invoice-7", "publish_id": "inv-7", "age_ms": 2000, "attempt": 1, "payload": {"seq": 1}});
    let (status, resent) = post(&hub, &backend, &again.to_string()).await;
    assert_eq!(status, 200, "{resent}");
    assert_eq!(
        (&resent["partition"], &resent["offset"]),
        (&ack["partition"], &ack["offset"])
    );
    assert_eq!(read_all(broker(), &topic).await.len(), 1, "written once");
}

/// Every refusal is a clear error with its HTTP status, and writes nothing; a bad record in
/// a batch does not hold back the good ones.
#[tokio::test]
async fn bad_posts_get_a_clear_error_and_write_nothing() {
    let (topic, glob) = fresh_topic("http-refused", 1).await;
    let hub = Hub::start(&glob, &["--max-frame-bytes", "2048"]).await;
    let backend = token("billing", &[&glob], &[]);
    let record = |payload: Value| json!({"topic": topic, "payload": payload}).to_string();

    let (status, body) = hub
        .request("POST", "/publish", &[], &record(json!(1)))
        .await;
    assert_eq!(status, 401, "no token: {body}");
    let (status, _) = post(&hub, "not.a.token", &record(json!(1))).await;
    assert_eq!(status, 401, "a malformed token");
    let reader = token("reader", &[], &[&glob]);
    let (status, error) = post(&hub, &reader, &record(json!(1))).await;
    assert_eq!(
        (status, &error["code"]),
        (403, &json!("forbidden")),
        "{error}"
    );
    let forged = json!({"topic": topic, "headers": {"WSKAFKA-SENDER": "ceo"}, "payload": 1});
    let (status, error) = post(&hub, &backend, &forged.to_string()).await;
    assert_eq!(
        (status, &error["code"]),
        (400, &json!("bad_request")),
        "{error}"
    );
    assert!(
        error["message"].as_str().unwrap().contains("reserved"),
        "{error}"
    );
    let (status, error) = post(&hub, &backend, &record(json!("x".repeat(4096)))).await;
    assert_eq!(
        (status, &error["code"]),
        (413, &json!("too_large")),
        "{error}"
    );
    let (status, error) = post(&hub, &backend, r#"{"topic": "#).await;
    assert_eq!(
        (status, &error["code"]),
        (400, &json!("bad_request")),
        "{error}"
    );
    let (status, error) = post(&hub, &backend, &json!({"topic": topic}).to_string()).await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["message"], "missing field `payload`");
    let missing = format!("{topic}.missing");
    let elsewhere = json!({"topic": missing, "payload": 1}).to_string();
    let (status, error) = post(
        &hub,
        &token("billing", &[&format!("{glob}*")], &[]),
        &elsewhere,
    )
    .await;
    assert_eq!(
        (status, &error["code"]),
        (404, &json!("unknown_topic")),
        "{error}"
    );
    let (status, error) = post(
        &hub,
        &backend,
        &json!({"type": "subscribe", "topic": topic}).to_string(),
    )
    .await;
    assert_eq!(
        (status, &error["code"]),
        (400, &json!("bad_request")),
        "{error}"
    );
    assert_eq!(
        read_all(broker(), &topic).await.len(),
        0,
        "nothing was written"
    );

    let batch = json!([
        {"id": "good", "topic": topic, "payload": {"seq": 1}},
        {"id": "forged", "topic": topic, "headers": {"wskafka-sender": "ceo"}, "payload": 2},
        "not a record",
    ]);
    let (status, replies) = post(&hub, &backend, &batch.to_string()).await;
    assert_eq!(status, 200, "{replies}");
    assert_eq!(replies[0]["type"], "ack", "{replies}");
    assert_eq!(replies[1]["code"], "bad_request", "{replies}");
    assert_eq!(replies[2]["code"], "bad_request", "{replies}");
    assert_eq!(
        read_all(broker(), &topic).await.len(),
        1,
        "only the good record"
    );
}
