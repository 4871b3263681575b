//! Per-connection and per-user limits, each answered with a clear error or HTTP status.

use crate::common::*;
use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

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

#[tokio::test]
async fn a_flooding_socket_is_told_when_to_retry_then_closed_and_others_carry_on() {
    let hub = Hub::start("limits.*", &[]).await;
    let mut flood = hub.connect(&token("mallory", &[], &[])).await;
    let mut bystander = hub.connect(&token("alice", &[], &[])).await;
    // As fast as it can, without reading: pings, and frames that are no request at all.
    for n in 0..400 {
        if n % 2 == 0 {
            flood.send(json!({"type": "ping", "id": n})).await;
        } else {
            flood.send_text("{not json").await;
        }
    }
    let (mut served, mut limited) = (0, 0);
    let close = loop {
        let next = tokio::time::timeout(PATIENCE, flood.ws.next()).await;
        match next.expect("the flooding socket was never closed") {
            Some(Ok(Message::Text(text))) => {
                let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
                if frame["code"] == "rate_limited" {
                    assert!(frame["retry_after_ms"].as_u64().unwrap() > 0, "{frame}");
                    limited += 1;
                } else {
                    served += 1;
                }
            }
            Some(Ok(Message::Close(frame))) => break frame.expect("a close frame"),
            Some(Ok(_)) => {}
            other => panic!("the socket ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (1008, "too many requests")
    );
    // The budgets' bursts (10 pings, 10 invalid frames), give or take refills; then the
    // refusals' burst before the close.
    assert!((20..=30).contains(&served), "{served} served");
    assert!((95..=110).contains(&limited), "{limited} refused");
    assert_eq!(
        bystander.call(json!({"type": "ping", "id": "p"})).await,
        json!({"type": "pong", "id": "p"})
    );
    let metrics = hub.metrics().await;
    assert_eq!(metrics["wskafka_abusive_closes_total"], 1.0);
    let refused: f64 = metrics
        .iter()
        .filter(|(name, _)| name.starts_with("wskafka_requests_refused_total"))
        .map(|(_, value)| value)
        .sum();
    assert!(refused >= 100.0, "{metrics:?}");
}

#[tokio::test]
async fn a_users_sockets_flooding_together_are_refused_at_the_users_budget_and_others_are_served() {
    let hub = Hub::start("limits.*", &[]).await;
    let mallory = token("mallory", &[], &[]);
    let mut sockets = Vec::new();
    for _ in 0..8 {
        sockets.push(hub.connect(&mallory).await);
    }
    let mut bob = hub.connect(&token("bob", &[], &[])).await;
    // Ten pings from each of mallory's eight sockets, each within its own budget of ten:
    // eighty against the forty (four sockets' worth) her sockets have together. Bob's ten
    // come meanwhile.
    for socket in &mut sockets {
        for n in 0..10 {
            socket.send(json!({"type": "ping", "id": n})).await;
        }
    }
    for n in 0..10 {
        bob.send(json!({"type": "ping", "id": n})).await;
    }
    for n in 0..10 {
        assert_eq!(bob.recv().await, json!({"type": "pong", "id": n}));
    }
    let (mut served, mut limited) = (0, 0);
    for socket in &mut sockets {
        for _ in 0..10 {
            let reply = socket.recv().await;
            if reply["type"] == "pong" {
                served += 1;
                continue;
            }
            assert_eq!(reply["code"], "rate_limited", "{reply}");
            let message = reply["message"].as_str().unwrap();
            assert!(
                message
                    .contains("more than 40 ping requests per second across this user's sockets"),
                "{message}"
            );
            limited += 1;
        }
    }
    // Her burst, give or take what refills while the pings are sent.
    assert!((40..=48).contains(&served), "{served} of 80 served");
    assert_eq!(served + limited, 80);
    let metrics = hub.metrics().await;
    assert_eq!(
        metrics[r#"wskafka_requests_refused_total{type="ping"}"#],
        f64::from(limited)
    );
}

#[tokio::test]
async fn commits_are_written_behind_and_a_clean_shutdown_keeps_the_last_ones() {
    let (topic, glob) = fresh_topic("commits", 1).await;
    let database = fresh_postgres().await;
    let hub = Hub::start(
        &glob,
        &[
            "--database-url",
            &database,
            "--request-rates",
            "commit=1000000",
        ],
    )
    .await;
    let mut client = hub.connect(&token("alice", &[], &[&glob])).await;
    let started = std::time::Instant::now();
    let commit_all = async |client: &mut Client, offsets: std::ops::RangeInclusive<i64>| {
        for offset in offsets.clone() {
            client
                .send(json!({"type": "commit", "topic": topic, "offsets": {"0": offset}}))
                .await;
        }
        for _ in offsets {
            assert_eq!(client.recv().await["type"], "committed");
        }
    };
    commit_all(&mut client, 1..=1000).await;
    hub.until_metric("wskafka_commits_total", 1000.0).await;
    let metrics = hub.metrics().await;
    let writes = metrics
        .get("wskafka_commit_writes_total")
        .copied()
        .unwrap_or(0.0);
    // One transaction a second at most, where one a commit would have been a thousand.
    let seconds = started.elapsed().as_secs_f64();
    assert!(
        writes <= seconds.ceil() + 1.0,
        "{writes} writes in {seconds:.1} s"
    );

    // Acknowledged, and at once the hub is stopped: they are in the database all the same.
    commit_all(&mut client, 1001..=1200).await;
    assert_eq!(hub.terminate().await, Some(0));
    let store = wskafka::Store::connect(&database, 1).await.unwrap();
    let stored = store.committed("alice", &topic, "").await.unwrap();
    assert_eq!(stored, std::collections::BTreeMap::from([(0, 1200)]));
}

/// Sends `count` requests (`request(n)`, ids `n`) without reading, then reads until the hub
/// closes the socket: how many were served and how many refused `rate_limited`, and the
/// close frame's code.
async fn flood(
    client: &mut Client,
    count: u64,
    request: impl Fn(u64) -> serde_json::Value,
) -> (Vec<serde_json::Value>, usize, u16) {
    for n in 0..count {
        let mut frame = request(n);
        frame["id"] = json!(n);
        client.send(frame).await;
    }
    let (mut served, mut limited) = (Vec::new(), 0);
    loop {
        let next = tokio::time::timeout(PATIENCE, client.ws.next()).await;
        match next.expect("the flooding socket was never closed") {
            Some(Ok(Message::Text(text))) => {
                let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
                if frame["code"] == "rate_limited" {
                    limited += 1;
                } else {
                    assert!(frame["type"] != "error", "{frame}");
                    served.push(frame);
                }
            }
            Some(Ok(Message::Close(frame))) => {
                break (
                    served,
                    limited,
                    u16::from(frame.expect("a close frame").code),
                );
            }
            Some(Ok(_)) => {}
            other => panic!("the socket ended without a close frame: {other:?}"),
        }
    }
}

/// The issue's table, each row with the default budgets: a socket that sends subscribes
/// and unsubscribes, commits or history pages as fast as it can is served its burst, told
/// to wait, then closed; what it cost the roster and the database is bounded; another user
/// is served meanwhile.
#[tokio::test]
async fn floods_of_subscribes_commits_and_history_are_refused_then_closed_at_a_bounded_cost() {
    let (topic, glob) = fresh_topic("floods", 1).await;
    produce_many(&topic, 500).await;
    let (roster, database) = (unique("roster"), sqlite_url());
    let presence = unique("presence");
    let hub = Hub::start(
        &glob,
        &[
            "--keyed-topics",
            &glob,
            "--presence-topic",
            &presence,
            "--roster-topic",
            &roster,
            "--database-url",
            &database,
        ],
    )
    .await;
    let grant = |user: &str| token(user, &[], &[&glob]);
    let started = std::time::Instant::now();

    // Subscribe and unsubscribe: 200 pairs.
    let mut churner = hub.connect(&grant("churner")).await;
    let (served, limited, code) = flood(&mut churner, 400, |n| {
        let kind = if n % 2 == 0 {
            "subscribe"
        } else {
            "unsubscribe"
        };
        json!({"type": kind, "topic": topic, "key": "lobby"})
    })
    .await;
    assert_eq!(code, 1008);
    assert!((20..=30).contains(&served.len()), "{} served", served.len());
    assert!((95..=110).contains(&limited), "{limited} refused");
    // Its roster record is written at most once a second: when it connected, its first
    // subscribe, once a second after, and its tombstone.
    let seconds = started.elapsed().as_secs_f64();
    let written = read_all(broker(), &roster).await.len();
    assert!(
        written <= seconds.ceil() as usize + 3,
        "{written} roster records in {seconds:.1} s"
    );

    // Commits: each acknowledged position is stored, in a bounded number of transactions.
    let mut committer = hub.connect(&grant("committer")).await;
    let (served, limited, code) = flood(
        &mut committer,
        400,
        |n| json!({"type": "commit", "topic": topic, "offsets": {"0": n + 1}}),
    )
    .await;
    assert_eq!(code, 1008);
    assert!((10..=15).contains(&served.len()), "{} served", served.len());
    assert!((95..=110).contains(&limited), "{limited} refused");
    let last = served
        .iter()
        .map(|c| c["id"].as_u64().unwrap() + 1)
        .max()
        .unwrap();
    let store = wskafka::Store::connect(&database, 1).await.unwrap();
    eventually("the last acknowledged position is stored", async || {
        store.committed("committer", &topic, "").await.unwrap()
            == std::collections::BTreeMap::from([(0, last as i64)])
    })
    .await;
    let writes = hub.metrics().await["wskafka_commit_writes_total"];
    let seconds = started.elapsed().as_secs_f64();
    assert!(
        writes <= seconds.ceil() + 1.0,
        "{writes} transactions in {seconds:.1} s"
    );

    // History pages: another user's page is served meanwhile. How long it took, quiet and
    // during the flood, is printed, not judged.
    let mut other = hub.connect(&grant("other")).await;
    let page = json!({"type": "history", "id": "o", "topic": topic, "limit": 50});
    let quiet = std::time::Instant::now();
    assert_eq!(other.call(page.clone()).await["type"], "history");
    let quiet = quiet.elapsed();
    let mut reader = hub.connect(&grant("reader")).await;
    let flooding = flood(
        &mut reader,
        400,
        |_| json!({"type": "history", "topic": topic, "limit": 50}),
    );
    let meanwhile = async {
        let asked = std::time::Instant::now();
        assert_eq!(other.call(page.clone()).await["type"], "history");
        asked.elapsed()
    };
    let ((served, limited, code), meanwhile) = tokio::join!(flooding, meanwhile);
    assert_eq!(code, 1008);
    assert!((5..=10).contains(&served.len()), "{} served", served.len());
    assert!((95..=110).contains(&limited), "{limited} refused");
    eprintln!("another user's history page: {quiet:?} quiet, {meanwhile:?} during the flood");
    let metrics = hub.metrics().await;
    assert_eq!(metrics["wskafka_abusive_closes_total"], 3.0);
}
