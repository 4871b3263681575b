//! Authentication before the upgrade, authorization per topic, expiry on live sockets.

use crate::common::*;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const RS256_PUBLIC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/rs256-public.pem"
);
const RS256_PRIVATE: &[u8] = include_bytes!("../fixtures/rs256-private.pem");
const ES256_PUBLIC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/es256-public.pem"
);
const ES256_PRIVATE: &[u8] = include_bytes!("../fixtures/es256-private.pem");

fn claims(sub: &str, exp: u64) -> Value {
    json!({"sub": sub, "exp": exp, "wskafka": {"publish": ["*"], "subscribe": ["*"]}})
}

fn claims_with(sub: &str, exp: u64, subscribe: &[&str]) -> Value {
    json!({"sub": sub, "exp": exp, "wskafka": {"subscribe": subscribe}})
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
    // (No token at all opens the socket for first-frame authentication: see below.)
    let hub = Hub::start("auth.*", &[]).await;
    let valid = claims("alice", now_secs() + 600);
    let unsigned = format!(
        "{}.{}.",
        B64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        B64.encode(valid.to_string())
    );
    let cases = [
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
        ("expired", hub.url(&hs256(&claims("alice", now_secs() - 5)))),
        ("alg none", hub.url(&unsigned)),
        (
            "HS512 with the right secret",
            hub.url(&sign(
                Algorithm::HS512,
                &EncodingKey::from_secret(SECRET.as_bytes()),
                &valid,
            )),
        ),
        ("no sub", hub.url(&hs256(&json!({"exp": now_secs() + 600})))),
        ("no exp", hub.url(&hs256(&json!({"sub": "alice"})))),
        (
            "tampered claims",
            hub.url(&{
                let token = hs256(&valid);
                let parts: Vec<&str> = token.split('.').collect();
                let forged = B64.encode(claims("mallory", now_secs() + 600).to_string());
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
async fn a_hub_that_names_an_audience_and_issuer_refuses_tokens_without_them_everywhere() {
    let hub = Hub::start(
        "auth.*",
        &[
            "--jwt-audience",
            "wskafka",
            "--jwt-issuer",
            "https://idp.test",
        ],
    )
    .await;
    let full = |remove: &str| {
        let mut claims = json!({"sub": "alice", "exp": now_secs() + 600,
            "aud": "wskafka", "iss": "https://idp.test"});
        claims.as_object_mut().unwrap().remove(remove);
        hs256(&claims)
    };
    let good = full("");
    assert_eq!(hub.handshake_status(&hub.url(&good)).await, 101);
    for (claim, reason) in [
        ("aud", "token lacks the `aud` claim"),
        ("iss", "token lacks the `iss` claim"),
        ("sub", "token lacks the `sub` claim"),
        ("exp", "token lacks the `exp` claim"),
    ] {
        hub.refuses_on_every_path(&good, &full(claim), reason).await;
    }
}

#[tokio::test]
async fn a_bearer_header_authenticates_like_the_query_string() {
    let hub = Hub::start("auth.*", &[]).await;
    let mut client = hub
        .connect_with_header(&hs256(&claims("alice", now_secs() + 600)))
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
    let valid = claims("alice", now_secs() + 600);
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
    let valid = claims("alice", now_secs() + 600);
    assert_eq!(hub.handshake_status(&hub.url(&es256(&valid))).await, 101);
    assert_eq!(hub.handshake_status(&hub.url(&rs256(&valid))).await, 401);
}

#[tokio::test]
async fn a_live_socket_is_warned_then_closed_with_4401_when_its_token_expires() {
    let hub = Hub::start("auth.*", &["--expiry-warning", "1s"]).await;
    // Far enough out that the ping below is answered before the warning.
    let exp = now_secs() + 3;
    let mut client = hub.connect(&hs256(&claims("alice", exp))).await;
    assert_eq!(client.call(json!({"type": "ping"})).await["type"], "pong");
    assert_eq!(
        client.recv().await,
        json!({"type": "expiring", "expires_at": exp * 1000})
    );
    let close = client.closed().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 4401);
    assert_eq!(close.reason, "token expired");
}

#[tokio::test]
async fn a_socket_opened_without_a_token_authenticates_with_its_first_frame() {
    let (topic, glob) = fresh_topic("firstframe", 1).await;
    let hub = Hub::start(&glob, &["--auth-timeout", "1s"]).await;
    let bare = format!("ws://{}/ws", hub.addr);
    let connect = || async {
        tokio_tungstenite::connect_async(bare.as_str())
            .await
            .unwrap()
            .0
    };

    let mut client = Client {
        ws: connect().await,
    };
    let token = token("alice", &[&glob], &[&glob]);
    let reply = client
        .call(json!({"type": "auth", "id": "a", "token": token}))
        .await;
    assert_eq!(reply["type"], "authenticated", "{reply}");
    assert_eq!(
        (reply["id"].as_str(), reply["sub"].as_str()),
        (Some("a"), Some("alice"))
    );
    assert!(reply["expires_at"].as_u64().unwrap() > now_secs() * 1000);
    client.subscribe(&topic).await;
    client
        .send(json!({"type": "publish", "topic": topic, "payload": 1}))
        .await;
    // The ack and the record coming back may arrive in either order.
    let mut frames = [client.recv().await, client.recv().await];
    frames.sort_by_key(|f| f["type"].as_str().unwrap().to_string());
    let [ack, message] = frames;
    assert_eq!(
        (ack["type"].as_str(), message["type"].as_str()),
        (Some("ack"), Some("message"))
    );
    assert_eq!(ack["offset"], message["offset"]);

    // Anything else first, a bad token, or silence: closed with 4403 and a reason.
    let bad = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"guess"),
        &claims("eve", now_secs() + 60),
    );
    for (first, reason) in [
        (Some(json!({"type": "ping"})), "expected an auth frame"),
        (
            Some(json!({"type": "auth", "token": bad})),
            "token signature does not verify",
        ),
        (None, "no auth frame in time"),
    ] {
        let mut client = Client {
            ws: connect().await,
        };
        if let Some(frame) = first {
            client.send(frame).await;
        }
        let close = client.closed().await.expect("a close frame");
        assert_eq!(
            (u16::from(close.code), close.reason.as_str()),
            (4403, reason)
        );
    }
}

#[tokio::test]
async fn a_refreshed_token_moves_the_expiry_and_ends_what_it_no_longer_allows() {
    let prefix = unique("refresh");
    let (kept, dropped) = (format!("{prefix}.kept"), format!("{prefix}.dropped"));
    for topic in [&kept, &dropped] {
        create_topic(topic, 1).await;
    }
    let hub = Hub::start(&format!("{prefix}.*"), &["--expiry-warning", "1s"]).await;
    // The old token's warning is at least a second away while the requests below run.
    let short = claims_with("alice", now_secs() + 3, &[&kept, &dropped]);
    let mut client = hub.connect(&hs256(&short)).await;
    client.subscribe(&kept).await;
    client.subscribe(&dropped).await;

    // Another user's token and garbage are refused, and change nothing.
    let reply = client
        .call(json!({"type": "auth", "id": 1, "token": hs256(&claims_with("bob", now_secs() + 60, &[&kept]))}))
        .await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    let reply = client
        .call(json!({"type": "auth", "id": 2, "token": "garbage"}))
        .await;
    assert_eq!(reply["code"], "unauthorized", "{reply}");

    let exp = now_secs() + 5;
    client
        .send(
            json!({"type": "auth", "id": 3, "token": hs256(&claims_with("alice", exp, &[&kept]))}),
        )
        .await;
    assert_eq!(
        client.recv().await,
        json!({"type": "error", "code": "forbidden", "topic": dropped,
               "message": format!("subscription to {dropped:?} ended: the new token does not allow it")})
    );
    assert_eq!(
        client.recv().await,
        json!({"type": "authenticated", "id": 3, "sub": "alice", "expires_at": exp * 1000})
    );
    // The first warning is about the new expiry, and comes after the old one has passed.
    assert_eq!(
        client.recv().await,
        json!({"type": "expiring", "expires_at": exp * 1000})
    );
    assert!(now_secs() > short["exp"].as_u64().unwrap());
    let producer = producer();
    produce(&producer, &dropped, "k", b"1").await;
    let (_, offset) = produce(&producer, &kept, "k", b"2").await;
    let (position, message) = client.message().await;
    assert_eq!(
        (position, message["topic"].as_str()),
        ((0, offset), Some(kept.as_str()))
    );
    let close = client.closed().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 4401);
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
    let mut greedy = hub
        .connect(&hs256(&claims("alice", now_secs() + 600)))
        .await;
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
    let good = hs256(&claims("alice", now_secs() + 600));
    let bad = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"other"),
        &claims("eve", now_secs() + 600),
    );
    let mut client = hub.connect(&good).await;
    client.call(json!({"type": "ping"})).await;
    assert_eq!(hub.handshake_status(&hub.url(&bad)).await, 401);
    drop(client);
    let _ = hub.get("/healthz").await;

    let lines = hub.log_lines();
    assert!(
        lines.iter().any(|l| l.contains("refused a token")),
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

#[tokio::test]
async fn only_a_demo_hub_mints_tokens_and_its_tokens_cannot_publish_to_user_topics() {
    let plain = Hub::start("auth.*", &[]).await;
    assert_eq!(plain.get("/dev/token?user=eve").await.0, 404);
    assert_eq!(plain.get("/").await.0, 404);
    let (status, client) = plain.get("/wskafka.js").await;
    assert_eq!(status, 200);
    assert!(client.contains("export class WsKafka"));

    let prefix = unique("demo");
    let notes = format!("{prefix}.notes");
    create_topic(&notes, 1).await;
    let demo = Hub::start(
        &format!("{prefix}.*,{notes}"),
        &["--demo", "--user-topics", &notes],
    )
    .await;
    assert_eq!(demo.get("/dev/token?user=not%20valid").await.0, 400);
    let (status, body) = demo.get("/dev/token?user=mallory").await;
    assert_eq!(status, 200);
    let token: Value = serde_json::from_str(&body).unwrap();
    let mut client = demo.connect(token["token"].as_str().unwrap()).await;
    let refused = client
        .call(json!({"type": "publish", "topic": notes, "key": "alice", "payload": 1}))
        .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
}

#[tokio::test]
async fn header_tricks_and_oversized_tokens_are_refused() {
    let hub = Hub::start("auth.*", &[]).await;
    let valid = claims("alice", now_secs() + 600);
    let with_header = |header: Value, key: &[u8]| {
        let header = B64.encode(header.to_string());
        let body = B64.encode(valid.to_string());
        let signing_input = format!("{header}.{body}");
        let signature = jsonwebtoken::crypto::sign(
            signing_input.as_bytes(),
            &EncodingKey::from_secret(key),
            Algorithm::HS256,
        )
        .unwrap();
        format!("{signing_input}.{signature}")
    };
    // `kid`, `jku` and `x5u` select nothing: the hub has one key, and never fetches one.
    for header in [
        json!({"alg":"HS256","kid":"../../../../dev/null"}),
        json!({"alg":"HS256","kid":"' OR 1=1 --"}),
        json!({"alg":"HS256","jku":"http://127.0.0.1:9/keys.json"}),
        json!({"alg":"HS256","x5u":"http://127.0.0.1:9/cert.pem"}),
    ] {
        let forged = with_header(header.clone(), b"");
        assert_eq!(
            hub.handshake_status(&hub.url(&forged)).await,
            401,
            "{header}"
        );
        // With the real secret the same header is accepted: it was never consulted.
        let genuine = with_header(header.clone(), SECRET.as_bytes());
        assert_eq!(
            hub.handshake_status(&hub.url(&genuine)).await,
            101,
            "{header}"
        );
    }
    // Oversized: a 1 MB token is refused with the request headers, before any verifying.
    let padded = json!({"sub": "alice", "exp": now_secs() + 600, "pad": "x".repeat(1 << 20)});
    let status = hub.bearer_upgrade_status(&hs256(&padded)).await;
    // 431, or the connection closed mid-request (0).
    assert!(matches!(status, 431 | 0), "got {status}");
    assert_eq!(hub.handshake_status(&hub.url(&hs256(&valid))).await, 101);
}

#[tokio::test]
async fn clock_skew_is_allowed_up_to_the_leeway_and_no_further() {
    let hub = Hub::start("auth.*", &["--jwt-leeway", "30s"]).await;
    let cases = [
        (
            "expired within the leeway",
            json!({"sub":"a","exp": now_secs() - 10}),
            101,
        ),
        (
            "expired beyond the leeway",
            json!({"sub":"a","exp": now_secs() - 60}),
            401,
        ),
        (
            "not yet valid within the leeway",
            json!({"sub":"a","exp": now_secs() + 600, "nbf": now_secs() + 10}),
            101,
        ),
        (
            "not yet valid beyond the leeway",
            json!({"sub":"a","exp": now_secs() + 600, "nbf": now_secs() + 60}),
            401,
        ),
    ];
    for (case, claims, status) in cases {
        assert_eq!(
            hub.handshake_status(&hub.url(&hs256(&claims))).await,
            status,
            "{case}"
        );
    }
}
