//! The React hooks of `wskafka/react` in a real headless Chromium, against the real hub and
//! broker: a page (web/test/react/page.jsx, bundled by esbuild with React's development
//! build) renders in strict mode a room, its members and typists, a notification bell and a
//! contact's online status. It subscribes once however often strict mode mounts, shows each
//! message once across a hub restart, pages back through history to meet the live stream,
//! counts unread notifications from the stored read position, and ends its subscription
//! when the room unmounts.

use std::path::PathBuf;

use crate::common::*;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde_json::json;

/// The hub for the page: rooms as a keyed topic with presence and signals, and a per-user
/// notifications topic.
async fn hub(listen: &str, rooms: &str, notes: &str) -> Hub {
    let (presence, roster, signals, control) = (
        format!("{rooms}.presence"),
        format!("{rooms}.roster"),
        format!("{rooms}.signals"),
        format!("{rooms}.control"),
    );
    let topics = format!("{rooms},{notes}");
    let extra = [
        "--keyed-topics",
        rooms,
        "--user-topics",
        notes,
        "--presence-topic",
        &presence,
        "--roster-topic",
        &roster,
        "--signal-topic",
        &signals,
        "--control-topic",
        &control,
    ];
    Hub::start_at(listen, &topics, &extra).await
}

/// The page, bundled into a folder of its own.
fn build_page() -> PathBuf {
    let dir = std::env::temp_dir().join(unique("wskafka-react"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/web/test/react/build.mjs");
    let status = std::process::Command::new("node")
        .arg(script)
        .arg(&dir)
        .status()
        .expect("starting node: run scripts/test, which installs it");
    assert!(status.success(), "bundling the React page");
    dir
}

/// A token for `user`: rooms and their own notifications, and everyone's online status.
fn token_for(user: &str, rooms: &str, notes: &str) -> String {
    let mut grants = grants(&[rooms, notes], &[rooms, notes]);
    grants.online = vec!["*".parse().unwrap()];
    wskafka::mint(SECRET, user, grants, std::time::Duration::from_secs(3600))
}

/// What the page sent so far, by frame type.
async fn sent(browser: &mut Browser, frame_type: &str) -> u64 {
    let script = format!("window.sent[{}] ?? 0", json!(frame_type));
    browser
        .run(json!({"cmd": "evaluate", "name": "alice", "script": script}))
        .await
        .as_u64()
        .unwrap()
}

async fn say(bob: &mut Client, rooms: &str, text: &str) {
    bob.send(
        json!({"type": "publish", "id": text, "topic": rooms, "key": "lobby",
                    "payload": {"text": text}}),
    )
    .await;
    loop {
        let frame = bob.recv().await;
        if frame["type"] == "ack" && frame["id"] == text {
            return;
        }
        assert_ne!(frame["type"], "error", "{frame}");
    }
}

#[tokio::test]
async fn a_strict_mode_react_page_subscribes_once_shows_each_message_once_and_cleans_up() {
    let prefix = unique("react");
    let (rooms, notes) = (format!("{prefix}.rooms"), format!("{prefix}.notes"));
    create_topic(&rooms, 1).await;
    create_topic(&notes, 1).await;
    let hub = hub("127.0.0.1:0", &rooms, &notes).await;
    let addr = hub.addr.to_string();
    let page = build_page();

    let mut bob = hub.connect(&token_for("bob", &rooms, &notes)).await;
    for text in ["old 1", "old 2", "old 3"] {
        say(&mut bob, &rooms, text).await;
    }

    let url = format!(
        "file://{}/index.html?hub=ws://{addr}/ws&token={}&topic={rooms}&room=lobby&notes={notes}",
        page.display(),
        token_for("alice", &rooms, &notes)
    );
    let mut browser = Browser::start().await;
    browser.open("alice", &url).await;
    browser.wait_text("alice", "#state", "open").await;
    browser.wait_text("alice", "#members", "alice").await;
    let gauge = format!("wskafka_subscriptions{{topic=\"{rooms}\"}}");
    hub.until_metric(&gauge, 1.0).await;
    // Strict mode mounted the room twice; the hooks share one subscription and keep it.
    assert_eq!(
        sent(&mut browser, "subscribe").await,
        2,
        "the room and the bell, once each"
    );
    assert_eq!(sent(&mut browser, "unsubscribe").await, 0);

    // Bob joins the room (with presence), shows up, types, and speaks.
    bob.send(
        json!({"type": "subscribe", "id": "s", "topic": rooms, "key": "lobby",
                    "presence": true, "signals": true}),
    )
    .await;
    browser.wait_text("alice", "#members", "alice,bob").await;
    bob.send(
        json!({"type": "signal", "topic": rooms, "key": "lobby", "payload": {"typing": true}}),
    )
    .await;
    browser.wait_text("alice", "#typing", "bob").await;
    browser.wait_text("alice", "#online", "bob online").await;
    say(&mut bob, &rooms, "live 1").await;
    browser.wait_text("alice", "#messages", "bob: live 1").await;

    // "Load older" meets the live stream: the records before it, each once, in order.
    browser.click("alice", "#older").await;
    browser.wait_count("alice", "#messages li", 3).await;
    browser.click("alice", "#older").await;
    browser.wait_count("alice", "#messages li", 4).await;
    browser.wait_text("alice", "#oldest", "no older").await;
    assert_eq!(
        browser.texts("alice", "#messages li").await,
        ["bob: old 1", "bob: old 2", "bob: old 3", "bob: live 1"]
    );

    // A hub restart in the middle: what was written while it was down arrives once.
    assert_eq!(hub.terminate().await, Some(0));
    browser.wait_text("alice", "#state", "reconnecting").await;
    let headers = OwnedHeaders::new().insert(Header {
        key: "wskafka-sender",
        value: Some("kafka"),
    });
    let body = json!({"text": "while down"}).to_string();
    producer()
        .send(
            FutureRecord::to(&rooms)
                .key("lobby")
                .payload(&body)
                .headers(headers),
            PATIENCE,
        )
        .await
        .unwrap();
    let hub = self::hub(&addr, &rooms, &notes).await;
    let mut bob = hub.connect(&token_for("bob", &rooms, &notes)).await;
    say(&mut bob, &rooms, "after restart").await;
    browser.wait_text("alice", "#state", "open").await;
    browser
        .wait_text("alice", "#messages", "bob: after restart")
        .await;
    assert_eq!(
        browser.texts("alice", "#messages li").await,
        [
            "bob: old 1",
            "bob: old 2",
            "bob: old 3",
            "bob: live 1",
            "kafka: while down",
            "bob: after restart"
        ]
    );

    // Notifications: two unread, marked read; the stored position holds on a fresh page.
    let kafka = producer();
    for text in ["note 1", "note 2"] {
        produce(
            &kafka,
            &notes,
            "alice",
            json!({"text": text}).to_string().as_bytes(),
        )
        .await;
    }
    browser.wait_text("alice", "#unread", "unread: 2").await;
    browser.click("alice", "#read").await;
    browser.wait_text("alice", "#unread", "unread: 0").await;

    // The room unmounts: its subscription ends at the hub.
    browser.click("alice", "#toggle").await;
    hub.until_metric(&gauge, 0.0).await;
    assert_eq!(sent(&mut browser, "unsubscribe").await, 1);

    // A note while no page is open; a fresh page counts it alone as unread, from the read
    // position the hub stored.
    browser.run(json!({"cmd": "close", "name": "alice"})).await;
    produce(&kafka, &notes, "alice", br#"{"text": "note 3"}"#).await;
    browser.open("alice", &url).await;
    browser.wait_text("alice", "#notes", "note 3").await;
    assert_eq!(browser.texts("alice", "#notes li").await, ["note 3"]);
    browser.wait_text("alice", "#unread", "unread: 1").await;
    let _ = std::fs::remove_dir_all(page);
}
