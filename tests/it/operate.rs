//! What operators read and use: `/metrics` after a scripted session, the JSON logs, and the
//! admin view and API with what keeps them to their operator.

use std::net::IpAddr;

use crate::common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn metrics_count_a_scripted_session_exactly_and_logs_hold_no_token_or_payload() {
    let (topic, glob) = fresh_topic("metrics", 1).await;
    let hub = Hub::start(
        &glob,
        &[
            "--log-format",
            "json",
            "--kafka-consumer",
            "statistics.interval.ms=200",
        ],
    )
    .await;
    let reader_token = token("reader", &[], &[&glob]);
    let writer_token = token("writer", &[&glob], &[]);
    let mut reader = hub.connect(&reader_token).await;
    let mut writer = hub.connect(&writer_token).await;

    // Refusals: a bad signature and an expired token at the upgrade, and a socket opened
    // without a token whose first frame is not `auth`.
    let forged = {
        let good = token("eve", &[], &[]);
        let (rest, _) = good.rsplit_once('.').unwrap();
        format!("{rest}.{}", "A".repeat(43))
    };
    let expired = {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            - 60;
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &json!({"sub": "old", "exp": exp}),
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    assert_eq!(hub.handshake_status(&hub.url(&forged)).await, 401);
    assert_eq!(hub.handshake_status(&hub.url(&expired)).await, 401);
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", hub.addr))
        .await
        .unwrap();
    let mut bare = Client { ws };
    bare.send(json!({"type": "ping"})).await;
    assert_eq!(bare.closed().await.map(|c| u16::from(c.code)), Some(4403));

    reader.subscribe(&topic).await;
    let marker = format!("payload-marker-{}", uuid::Uuid::new_v4());
    // One record at a time, so each goes out in a write of its own.
    for seq in 0..3 {
        let ack = writer
            .call(json!({"type": "publish", "topic": topic, "payload": {"secret": marker, "seq": seq}}))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
        reader.message().await;
    }
    let refused = writer
        .call(json!({"type": "publish", "topic": "elsewhere", "payload": 1}))
        .await;
    assert_eq!(refused["code"], "forbidden");

    let counted = hub.metrics().await;
    let label = |name: &str, labels: &str| format!("{name}{{{labels}}}");
    let expected = [
        ("wskafka_connections".to_string(), 2.0),
        (
            label("wskafka_subscriptions", &format!("topic=\"{topic}\"")),
            1.0,
        ),
        // reader: subscribe; writer: four publishes
        ("wskafka_frames_received_total".into(), 5.0),
        // reader: subscribed and three messages; writer: three acks and an error
        ("wskafka_frames_sent_total".into(), 8.0),
        ("wskafka_publish_ack_seconds_count".into(), 3.0),
        // one per write that carried records
        ("wskafka_delivery_seconds_count".into(), 3.0),
        (
            label("wskafka_auth_failures_total", "reason=\"bad_signature\""),
            1.0,
        ),
        (
            label("wskafka_auth_failures_total", "reason=\"expired\""),
            1.0,
        ),
        (
            label("wskafka_auth_failures_total", "reason=\"no_auth_frame\""),
            1.0,
        ),
    ];
    for (name, value) in expected {
        assert_eq!(counted.get(&name), Some(&value), "{name} in {counted:#?}");
    }

    // The consumer's lag comes with librdkafka's statistics: zero once all is read.
    let lag = label(
        "wskafka_consumer_lag",
        &format!("topic=\"{topic}\",partition=\"0\""),
    );
    eventually(format!("{lag} = 0"), || async {
        hub.metrics().await.get(&lag) == Some(&0.0)
    })
    .await;

    drop((reader, writer));
    let lines = hub.log_lines();
    assert!(lines.len() > 5);
    for line in &lines {
        let entry: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            entry["level"].is_string() && entry["timestamp"].is_string(),
            "{line}"
        );
        for secret in [&reader_token, &writer_token, &forged, &expired] {
            let signature = secret.rsplit('.').next().unwrap();
            assert!(!line.contains(signature), "a token was logged: {line}");
        }
        assert!(!line.contains(&marker), "a payload was logged: {line}");
    }
}

#[tokio::test]
async fn the_admin_view_needs_its_password_and_lists_live_connections() {
    let plain = Hub::start("admin.*", &[]).await;
    assert_eq!(plain.get("/admin").await.0, 404);

    let hub = Hub::start("admin.*", &["--admin-password", "s3cret"]).await;
    for path in ["/admin", "/admin/connections"] {
        assert_eq!(hub.get(path).await.0, 401, "{path} without credentials");
        let wrong = basic("admin", "guess");
        assert_eq!(
            hub.get_with(path, &[("Authorization", &wrong)]).await.0,
            401
        );
    }
    // Other paths are not the admin's business: unknown ones stay 404.
    assert_eq!(hub.get("/favicon.ico").await.0, 404);
    let right = basic("admin", "s3cret");
    let (status, page) = hub.get_with("/admin", &[("Authorization", &right)]).await;
    assert_eq!((status, page.contains("wskafka admin")), (200, true));

    let alice = hub.connect(&token("alice", &[], &[])).await;
    let mut bob = hub.connect(&token("bob", &[], &[])).await;
    assert_eq!(bob.call(json!({"type": "ping"})).await["type"], "pong");
    let listed = |body: String| -> Vec<String> {
        let list: Vec<Value> = serde_json::from_str(&body).unwrap();
        list.iter()
            .map(|c| c["sub"].as_str().unwrap().to_string())
            .collect()
    };
    let (status, body) = hub
        .get_with("/admin/connections", &[("Authorization", &right)])
        .await;
    assert_eq!(status, 200);
    assert_eq!(listed(body), ["alice", "bob"]);

    // A closed connection leaves the list once the hub has seen the close.
    drop(alice);
    eventually("alice is no longer listed", || async {
        let (_, body) = hub
            .get_with("/admin/connections", &[("Authorization", &right)])
            .await;
        listed(body) == ["bob"]
    })
    .await;
}

/// A hub with the admin view, its revocations on a control topic of its own (other tests'
/// hubs read the default one).
async fn admin_hub(extra: &[&str]) -> Hub {
    let control = unique("control");
    let args = [
        &["--admin-password", "s3cret", "--control-topic", &control],
        extra,
    ]
    .concat();
    Hub::start("admin.*", &args).await
}

/// `POST /admin/revocations` with the admin's password and `headers`.
async fn revoke(hub: &Hub, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let admin = basic("admin", "s3cret");
    let headers = [&[("Authorization", admin.as_str())], headers].concat();
    hub.request("POST", "/admin/revocations", &headers, body)
        .await
}

/// A `GET /admin/connections` from `source` with `Authorization: authorization`; its status.
async fn admin_get(hub: &Hub, source: IpAddr, authorization: &str) -> u16 {
    let headers = [("Authorization", authorization)];
    hub.request_from(source, "GET", "/admin/connections", &headers, "")
        .await
        .0
}

#[tokio::test]
async fn requests_another_site_could_send_revoke_nothing_and_tools_still_revoke() {
    let hub = admin_hub(&["--admin-origins", "https://admin.example"]).await;
    let tokens = ["alice", "bob", "carol"].map(|user| token(user, &[], &[]));
    let mut alice = hub.connect(&tokens[0]).await;
    let mut bob = hub.connect(&tokens[1]).await;
    let mut carol = hub.connect(&tokens[2]).await;
    const JSON: (&str, &str) = ("Content-Type", "application/json");
    let from_another_site: [&[(&str, &str)]; 5] = [
        // What `fetch(..., {mode: "no-cors", credentials: "include"})` from a page on
        // another site sends.
        &[
            ("Content-Type", "text/plain;charset=UTF-8"),
            ("Origin", "https://evil.example"),
        ],
        &[JSON, ("Sec-Fetch-Site", "cross-site")],
        &[JSON, ("Sec-Fetch-Site", "same-site")],
        &[JSON, ("Origin", "https://evil.example")],
        // no browser header, but a body any page can send
        &[("Content-Type", "text/plain")],
    ];
    for headers in from_another_site {
        let (status, reason) = revoke(&hub, headers, r#"{"sub":"alice"}"#).await;
        assert_eq!(status, 403, "{headers:?}: {reason}");
        assert!(
            reason.starts_with("refused: ") && !reason.contains('\n'),
            "one line saying why: {reason:?}"
        );
    }

    // The admin view's own requests, served by the hub or by a proxy under a listed name.
    let own = [
        JSON,
        ("Origin", "http://hub"),
        ("Sec-Fetch-Site", "same-origin"),
    ];
    assert_eq!(revoke(&hub, &own, r#"{"sub":"bob"}"#).await.0, 200);
    let listed = [
        JSON,
        ("Origin", "https://admin.example"),
        ("Sec-Fetch-Site", "same-origin"),
    ];
    assert_eq!(revoke(&hub, &listed, r#"{"sub":"carol"}"#).await.0, 200);
    for client in [&mut bob, &mut carol] {
        assert_eq!(client.closed().await.map(|c| u16::from(c.code)), Some(4403));
    }
    // The control topic is read in order: had a refused request sent alice's revocation,
    // it would have closed her socket before bob's and carol's. Nor was it stored.
    assert_eq!(alice.call(json!({"type": "ping"})).await["type"], "pong");
    assert_eq!(hub.handshake_status(&hub.url(&tokens[0])).await, 101);

    // curl -u admin:... -H 'Content-Type: application/json' -d '{"sub":"alice"}'
    assert_eq!(revoke(&hub, &[JSON], r#"{"sub":"alice"}"#).await.0, 200);
    assert_eq!(alice.closed().await.map(|c| u16::from(c.code)), Some(4403));
    assert_eq!(hub.handshake_status(&hub.url(&tokens[0])).await, 401);
}

#[tokio::test]
async fn every_response_carries_the_security_headers_and_no_page_may_be_framed() {
    let hub = admin_hub(&["--demo"]).await;
    let admin = basic("admin", "s3cret");
    let with_admin = [("Authorization", admin.as_str())];
    let answers = [
        ("/", &[][..], 200),
        ("/demo.js", &[], 200),
        ("/demo.css", &[], 200),
        ("/wskafka.js", &[], 200),
        ("/metrics", &[], 200),
        ("/no/such/path", &[], 404),
        ("/admin", &[], 401),
        ("/admin", &with_admin, 200),
        ("/admin/admin.js", &with_admin, 200),
        ("/admin/admin.css", &with_admin, 200),
        ("/admin/connections", &with_admin, 200),
    ];
    for (path, headers, status) in answers {
        let (got, head) = hub.response_headers(path, headers).await;
        assert_eq!(got, status, "{path}");
        let header = |name: &str| head.get(name).map(String::as_str);
        assert_eq!(header("x-content-type-options"), Some("nosniff"), "{path}");
        assert_eq!(header("referrer-policy"), Some("no-referrer"), "{path}");
        assert_eq!(header("x-frame-options"), Some("DENY"), "{path}");
        let policy = header("content-security-policy").unwrap_or_default();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(policy.contains(directive), "{path}: {policy}");
        }
        assert!(!policy.contains("unsafe"), "{path}: {policy}");
    }
    // What nosniff relies on: each file says what it is.
    let types = [
        ("/", "text/html"),
        ("/demo.js", "text/javascript"),
        ("/demo.css", "text/css"),
        ("/admin/admin.js", "text/javascript"),
        ("/admin/admin.css", "text/css"),
    ];
    for (path, content_type) in types {
        let (_, head) = hub.response_headers(path, &with_admin).await;
        assert!(
            head["content-type"].starts_with(content_type),
            "{path}: {head:?}"
        );
    }
}

#[tokio::test]
async fn wrong_admin_passwords_lock_out_their_source_only() {
    let hub = admin_hub(&[]).await;
    let guesser: IpAddr = "127.0.0.2".parse().unwrap();
    let (wrong, right) = (basic("admin", "guess"), basic("admin", "s3cret"));
    // A browser asks without credentials first: that is no wrong password.
    for _ in 0..10 {
        assert_eq!(
            hub.request_from(guesser, "GET", "/admin", &[], "").await.0,
            401
        );
    }
    for _ in 0..5 {
        assert_eq!(admin_get(&hub, guesser, &wrong).await, 401);
    }
    // Refused without a look at the password, the right one included.
    let started = std::time::Instant::now();
    assert_eq!(admin_get(&hub, guesser, &wrong).await, 429);
    assert_eq!(admin_get(&hub, guesser, &right).await, 429);
    eprintln!(
        "two locked-out attempts answered in {:?}",
        started.elapsed()
    );
    let another: IpAddr = "127.0.0.3".parse().unwrap();
    assert_eq!(admin_get(&hub, another, &right).await, 200);
    assert_eq!(admin_get(&hub, another, &wrong).await, 401);
    assert_eq!(admin_get(&hub, another, &right).await, 200);

    let counted = hub.metrics().await;
    let failures = |reason: &str| {
        counted
            .get(&format!(
                "wskafka_admin_login_failures_total{{reason=\"{reason}\"}}"
            ))
            .copied()
    };
    assert_eq!(failures("wrong_password"), Some(6.0));
    assert_eq!(failures("locked_out"), Some(2.0));

    // Logged once for the burst. A refused request from the other source logs after
    // everything above, so once its line is there, so are theirs.
    let refused = hub
        .request_from(
            another,
            "POST",
            "/admin/revocations",
            &[("Authorization", &right), ("Content-Type", "text/plain")],
            "{}",
        )
        .await;
    assert_eq!(refused.0, 403);
    eventually("the refusal is logged", || async {
        hub.log_lines()
            .iter()
            .any(|line| line.contains("refused an admin request"))
    })
    .await;
    let lockouts: Vec<String> = hub
        .log_lines()
        .into_iter()
        .filter(|line| line.contains("too many wrong admin passwords"))
        .collect();
    assert_eq!(lockouts.len(), 1, "{lockouts:#?}");
    assert!(lockouts[0].contains("127.0.0.2"), "{}", lockouts[0]);
}
