//! Authentication before the upgrade, authorization per topic, expiry on live sockets.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const RS256_PUBLIC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/rs256-public.pem"
);
const RS256_PRIVATE: &[u8] = include_bytes!("fixtures/rs256-private.pem");
const ES256_PUBLIC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/es256-public.pem"
);
const ES256_PRIVATE: &[u8] = include_bytes!("fixtures/es256-private.pem");

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str, exp: u64) -> Value {
    json!({"sub": sub, "exp": exp, "wskafka": {"publish": ["*"], "subscribe": ["*"]}})
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

fn rs256(claims: &Value) -> String {
    sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(RS256_PRIVATE).unwrap(),
        claims,
    )
}

fn es256(claims: &Value) -> String {
    sign(
        Algorithm::ES256,
        &EncodingKey::from_ec_pem(ES256_PRIVATE).unwrap(),
        claims,
    )
}

#[tokio::test]
async fn every_bad_token_gets_401_and_no_socket() {
    let hub = Hub::start("auth.*", &[]).await;
    let valid = claims("alice", now() + 600);
    let unsigned = format!(
        "{}.{}.",
        B64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        B64.encode(valid.to_string())
    );
    let cases = [
        ("missing", hub.url("").replace("?token=", "")),
        ("empty", hub.url("")),
        ("malformed", hub.url("not-a-jwt")),
        (
            "wrong secret",
            hub.url(&sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"guess"),
                &valid,
            )),
        ),
        ("expired", hub.url(&hs256(&claims("alice", now() - 5)))),
        ("alg none", hub.url(&unsigned)),
        (
            "HS512 with the right secret",
            hub.url(&sign(
                Algorithm::HS512,
                &EncodingKey::from_secret(SECRET.as_bytes()),
                &valid,
            )),
        ),
        ("no sub", hub.url(&hs256(&json!({"exp": now() + 600})))),
        ("no exp", hub.url(&hs256(&json!({"sub": "alice"})))),
        (
            "tampered claims",
            hub.url(&{
                let token = hs256(&valid);
                let parts: Vec<&str> = token.split('.').collect();
                let forged = B64.encode(claims("mallory", now() + 600).to_string());
                format!("{}.{forged}.{}", parts[0], parts[2])
            }),
        ),
    ];
    for (case, url) in cases {
        assert_eq!(hub.handshake_status(&url).await, 401, "{case}");
    }
    assert_eq!(hub.handshake_status(&hub.url(&hs256(&valid))).await, 101);
}

#[tokio::test]
async fn a_bearer_header_authenticates_like_the_query_string() {
    let hub = Hub::start("auth.*", &[]).await;
    let mut client = hub
        .connect_with_header(&hs256(&claims("alice", now() + 600)))
        .await
        .unwrap();
    assert_eq!(
        client.call(json!({"type": "ping", "id": "p"})).await,
        json!({"type": "pong", "id": "p"})
    );
    match hub.connect_with_header("garbage").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401)
        }
        other => panic!("expected a 401, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn rs256_hub_accepts_rs256_and_refuses_hs256_signed_with_its_public_key() {
    let hub = Hub::start("auth.*", &["--jwt-public-key", RS256_PUBLIC]).await;
    let valid = claims("alice", now() + 600);
    assert_eq!(hub.handshake_status(&hub.url(&rs256(&valid))).await, 101);

    let public_pem = std::fs::read(RS256_PUBLIC).unwrap();
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&public_pem),
        &valid,
    );
    assert_eq!(hub.handshake_status(&hub.url(&confused)).await, 401);
    assert_eq!(hub.handshake_status(&hub.url(&hs256(&valid))).await, 401);
    assert_eq!(hub.handshake_status(&hub.url(&es256(&valid))).await, 401);
}

#[tokio::test]
async fn es256_hub_accepts_es256_only() {
    let hub = Hub::start("auth.*", &["--jwt-public-key", ES256_PUBLIC]).await;
    let valid = claims("alice", now() + 600);
    assert_eq!(hub.handshake_status(&hub.url(&es256(&valid))).await, 101);
    assert_eq!(hub.handshake_status(&hub.url(&rs256(&valid))).await, 401);
}

#[tokio::test]
async fn a_live_socket_is_closed_with_4401_when_its_token_expires() {
    let hub = Hub::start("auth.*", &[]).await;
    let mut client = hub.connect(&hs256(&claims("alice", now() + 2))).await;
    assert_eq!(client.call(json!({"type": "ping"})).await["type"], "pong");
    let close = client.closed().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 4401);
    assert_eq!(close.reason, "token expired");
}

#[tokio::test]
async fn topics_need_both_the_hub_exposure_and_the_token_grant() {
    let prefix = unique("authz");
    let (open, other) = (format!("{prefix}.open"), format!("{prefix}.other"));
    for topic in [&open, &other] {
        create_topic(topic, 1).await;
    }
    let hub = Hub::start(&open, &[]).await;
    // The token grants everything; the hub exposes one topic.
    let mut greedy = hub.connect(&hs256(&claims("alice", now() + 600))).await;
    let refused = greedy
        .call(json!({"type": "publish", "id": "1", "topic": other, "payload": 1}))
        .await;
    assert_eq!(
        (
            refused["type"].as_str(),
            refused["code"].as_str(),
            refused["id"].as_str()
        ),
        (Some("error"), Some("forbidden"), Some("1"))
    );
    let refused = greedy
        .call(json!({"type": "subscribe", "id": "2", "topic": other}))
        .await;
    assert_eq!(refused["code"], "forbidden");
    assert_eq!(
        greedy
            .call(json!({"type": "publish", "id": "3", "topic": open, "payload": 1}))
            .await["type"],
        "ack"
    );

    // The hub exposes the topic; the token grants subscribing only.
    let mut reader = hub.connect(&token("bob", &[], &[&open])).await;
    let refused = reader
        .call(json!({"type": "publish", "id": "4", "topic": open, "payload": 1}))
        .await;
    assert_eq!(refused["code"], "forbidden");
    reader.subscribe(&open).await;
}

#[tokio::test]
async fn tokens_never_reach_the_logs() {
    let hub = Hub::start("auth.*", &[]).await;
    let good = hs256(&claims("alice", now() + 600));
    let bad = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"other"),
        &claims("eve", now() + 600),
    );
    let mut client = hub.connect(&good).await;
    client.call(json!({"type": "ping"})).await;
    assert_eq!(hub.handshake_status(&hub.url(&bad)).await, 401);
    drop(client);
    let _ = hub.get("/healthz").await;

    let lines = hub.log_lines();
    assert!(
        lines.iter().any(|l| l.contains("refused a connection")),
        "the refusal is logged"
    );
    for token in [&good, &bad] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(
            !lines.iter().any(|l| l.contains(signature)),
            "a token was logged"
        );
    }
}
