//! Per-connection and per-user limits, each answered with a clear error or HTTP status.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn publishes_over_the_rate_are_refused_and_the_socket_carries_on() {
    let (topic, glob) = fresh_topic("rate", 1).await;
    let hub = Hub::start(&glob, &["--publish-rate", "1"]).await;
    let mut client = hub.connect(&token("alice", &[&glob], &[])).await;

    // Ten publishes in a few milliseconds against one a second (burst of one).
    client.publish_many(&topic, 10).await;
    let (mut acked, mut limited) = (0, 0);
    for _ in 0..10 {
        let reply = client.recv().await;
        match (reply["type"].as_str(), reply["code"].as_str()) {
            (Some("ack"), _) => acked += 1,
            (Some("error"), Some("rate_limited")) => limited += 1,
            _ => panic!("unexpected reply {reply}"),
        }
    }
    assert!(acked >= 1, "the first publish fits the burst");
    assert!(limited >= 8, "{limited} of 10 were refused");
    assert_eq!(
        client.call(json!({"type": "ping", "id": "p"})).await,
        json!({"type": "pong", "id": "p"})
    );
}

#[tokio::test]
async fn a_user_over_the_connection_limit_gets_429_and_others_are_unaffected() {
    let hub = Hub::start("limits.*", &["--max-connections-per-user", "2"]).await;
    let alice = token("alice", &[], &[]);
    let first = hub.connect(&alice).await;
    let _second = hub.connect(&alice).await;
    assert_eq!(hub.handshake_status(&hub.url(&alice)).await, 429);
    assert_eq!(
        hub.handshake_status(&hub.url(&token("bob", &[], &[])))
            .await,
        101
    );

    // Closing a socket gives its place back once the hub has seen it go.
    drop(first);
    admitted_again(&hub, &hub.url(&alice)).await;
}

#[tokio::test]
async fn a_full_hub_refuses_with_503_until_a_socket_leaves() {
    let hub = Hub::start("limits.*", &["--max-connections", "2"]).await;
    let alice = hub.connect(&token("alice", &[], &[])).await;
    // A socket still waiting for its auth frame holds its place too.
    let _stranger = hub.connect_bare().await;
    let carol = hub.url(&token("carol", &[], &[]));
    assert_eq!(hub.handshake_status(&carol).await, 503);

    drop(alice);
    admitted_again(&hub, &carol).await;
}

/// Waits until a handshake with `url` succeeds again: a closed socket gives its place back
/// once the hub has seen it go.
async fn admitted_again(hub: &Hub, url: &str) {
    eventually("the closed socket's place comes back", || async {
        hub.handshake_status(url).await == 101
    })
    .await;
}

#[tokio::test]
async fn only_allowed_browser_origins_may_connect() {
    let hub = Hub::start(
        "limits.*",
        &[
            "--allowed-origins",
            "https://app.example,https://admin.example",
        ],
    )
    .await;
    let url = hub.url(&token("alice", &[], &[]));
    for (origin, status) in [
        ("https://app.example", 101),
        ("https://admin.example", 101),
        ("https://evil.example", 403),
        ("https://app.example.evil.example", 403),
        ("null", 403),
    ] {
        assert_eq!(
            hub.handshake_status_with(&url, &[("origin", origin)]).await,
            status,
            "{origin}"
        );
    }
    assert_eq!(
        hub.handshake_status(&url).await,
        101,
        "clients without an Origin header"
    );
}

#[tokio::test]
async fn sockets_awaiting_their_auth_frame_are_capped_across_the_hub() {
    let hub = Hub::start("limits.*", &["--max-awaiting-auth", "1"]).await;
    let bare = format!("ws://{}/ws", hub.addr);
    let (ws, _) = tokio_tungstenite::connect_async(bare.as_str())
        .await
        .unwrap();
    let mut waiting = Client { ws };
    assert_eq!(hub.handshake_status(&bare).await, 503);
    // A token in the URL is not subject to the cap.
    assert_eq!(
        hub.handshake_status(&hub.url(&token("bob", &[], &[])))
            .await,
        101
    );

    let reply = waiting
        .call(json!({"type": "auth", "token": token("alice", &[], &[])}))
        .await;
    assert_eq!(reply["type"], "authenticated", "{reply}");
    // Served by the connection loop, which runs only once authentication is over.
    assert_eq!(waiting.call(json!({"type": "ping"})).await["type"], "pong");
    assert_eq!(hub.handshake_status(&bare).await, 101);
}

#[tokio::test]
async fn a_client_that_trickles_its_headers_is_dropped_and_others_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hub = Hub::start("limits.*", &["--header-read-timeout", "500ms"]).await;
    let mut slow = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    slow.write_all(b"GET /ws HTTP/1.1\r\nHost: hub\r\nUpgrade: websocket\r\n")
        .await
        .unwrap();
    let mut client = hub.connect(&token("alice", &[], &[])).await;
    assert_eq!(client.call(json!({"type": "ping"})).await["type"], "pong");

    // The rest of the headers never come: the hub hangs up (whatever it says first).
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, slow.read_to_end(&mut rest))
        .await
        .expect("the hub kept a half-sent request open")
        .unwrap();
    assert_eq!(client.call(json!({"type": "ping"})).await["type"], "pong");
}

#[tokio::test]
async fn a_client_that_answers_nothing_is_closed_and_its_seat_freed() {
    let hub = Hub::start(
        "limits.*",
        &[
            "--max-connections-per-user",
            "1",
            "--ping-interval",
            "500ms",
            "--pong-timeout",
            "500ms",
        ],
    )
    .await;
    let alice = token("alice", &[], &[]);
    // Never read from again: its WebSocket library answers no ping.
    let silent = hub.connect(&alice).await;
    assert_eq!(hub.handshake_status(&hub.url(&alice)).await, 429);
    // A client that reads answers the pings (its library does) and stays.
    let mut bob = hub.connect(&token("bob", &[], &[])).await;
    let alice_closed = async {
        hub.until_metric("wskafka_unresponsive_closes_total", 1.0)
            .await;
        eventually("alice's seat is free again", async || {
            hub.handshake_status(&hub.url(&alice)).await == 101
        })
        .await;
    };
    tokio::select! {
        () = alice_closed => {}
        frame = bob.recv() => panic!("bob was sent {frame}"),
    }
    assert_eq!(
        bob.call(json!({"type": "ping", "id": "p"})).await,
        json!({"type": "pong", "id": "p"})
    );
    let metrics = hub.metrics().await;
    assert_eq!(metrics["wskafka_unresponsive_closes_total"], 1.0);
    assert!(
        metrics["wskafka_ping_round_trip_seconds_count"] >= 1.0,
        "{metrics:?}"
    );
    drop(silent);
}
