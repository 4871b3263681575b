//! The demo page and the client library in a real headless Chromium, against the real hub
//! and broker: two people chatting, notifications for one user only with read positions
//! shared by her devices, and a hub restart in the middle of a conversation.

mod common;

use common::*;
use serde_json::json;

/// A hub in demo mode with a chat room and a per-user notifications topic of its own.
struct Demo {
    hub: Hub,
    glob: String,
    room: String,
    notes: String,
}

impl Demo {
    async fn start() -> Demo {
        let prefix = unique("demo");
        let (room, notes) = (format!("{prefix}.lobby"), format!("{prefix}.notes"));
        create_topic(&room, 1).await;
        create_topic(&notes, 1).await;
        let glob = format!("{prefix}.*");
        let hub = Demo::hub("127.0.0.1:0", &glob, &notes).await;
        Demo {
            hub,
            glob,
            room,
            notes,
        }
    }

    async fn hub(listen: &str, glob: &str, notes: &str) -> Hub {
        let demo = ["--demo", "--user-topics", notes, "--admin-password", "pw"];
        Hub::start_at(listen, glob, &demo).await
    }

    fn page(&self, user: &str) -> String {
        format!(
            "http://{}/?user={user}&rooms={}&notifications={}",
            self.hub.addr, self.room, self.notes
        )
    }

    async fn open(&self, browser: &mut Browser, user: &str) {
        browser.open(user, &self.page(user)).await;
        browser.wait_text(user, "#status", "open").await;
    }
}

#[tokio::test]
async fn two_browser_contexts_chat_through_the_hub_and_see_records_from_kafka() {
    let demo = Demo::start().await;
    let mut browser = Browser::start().await;
    demo.open(&mut browser, "alice").await;
    demo.open(&mut browser, "bob").await;

    browser.say("alice", "hello bob").await;
    browser.wait_text("bob", "#messages", "hello bob").await;
    browser.say("bob", "hi alice").await;
    browser.wait_text("alice", "#messages", "hi alice").await;

    let body = json!({"user": "kafka", "text": "straight from Kafka"}).to_string();
    produce(&producer(), &demo.room, "kafka", body.as_bytes()).await;
    for user in ["alice", "bob"] {
        browser
            .wait_text(user, "#messages", "straight from Kafka")
            .await;
        assert_eq!(
            browser.texts(user, "#messages li").await,
            ["alicehello bob", "bobhi alice", "kafkastraight from Kafka"],
            "{user}"
        );
    }

    // Someone joining later gets the room's history.
    demo.open(&mut browser, "carol").await;
    browser
        .wait_text("carol", "#messages", "straight from Kafka")
        .await;
    assert_eq!(browser.texts("carol", "#messages li").await.len(), 3);
}

#[tokio::test]
async fn notifications_reach_their_user_only_and_read_positions_follow_her_devices() {
    let demo = Demo::start().await;
    let mut browser = Browser::start().await;
    demo.open(&mut browser, "alice").await;
    demo.open(&mut browser, "bob").await;
    let producer = producer();
    let note = |text: &str| json!({"text": text}).to_string();

    produce(
        &producer,
        &demo.notes,
        "alice",
        note("for alice").as_bytes(),
    )
    .await;
    browser
        .wait_text("alice", "#notifications", "for alice")
        .await;
    browser.wait_text("alice", "#unread", "1").await;
    // One partition: bob's record comes after alice's, so had hers leaked he would have it.
    produce(&producer, &demo.notes, "bob", note("for bob").as_bytes()).await;
    browser.wait_text("bob", "#notifications", "for bob").await;
    assert_eq!(browser.texts("bob", "#notifications li").await, ["for bob"]);
    produce(
        &producer,
        &demo.notes,
        "alice",
        note("again for alice").as_bytes(),
    )
    .await;
    browser
        .wait_text("alice", "#notifications", "again for alice")
        .await;
    assert_eq!(
        browser.texts("alice", "#notifications li").await,
        ["again for alice", "for alice"]
    );
    browser.wait_text("alice", "#unread", "2").await;

    // Read on one device, unread everywhere else only from there: the bell commits.
    browser.click("alice", "#bell").await;
    browser.wait_text("alice", "#unread", "0").await;
    produce(
        &producer,
        &demo.notes,
        "alice",
        note("while away").as_bytes(),
    )
    .await;
    browser
        .wait_text("alice", "#notifications", "while away")
        .await;
    browser.open("alice-phone", &demo.page("alice")).await;
    browser
        .wait_text("alice-phone", "#notifications", "while away")
        .await;
    assert_eq!(
        browser.texts("alice-phone", "#notifications li").await,
        ["while away"]
    );
    browser.wait_text("alice-phone", "#unread", "1").await;
}

#[tokio::test]
async fn the_page_loses_no_message_when_the_hub_restarts_mid_conversation() {
    let demo = Demo::start().await;
    let mut browser = Browser::start().await;
    demo.open(&mut browser, "alice").await;
    demo.open(&mut browser, "bob").await;
    browser.say("alice", "before 1").await;
    browser.say("bob", "before 2").await;
    browser.wait_text("alice", "#messages", "before 2").await;

    let addr = demo.hub.addr.to_string();
    let Demo {
        hub,
        glob,
        room,
        notes,
    } = demo;
    assert_eq!(hub.terminate().await, Some(0));
    for user in ["alice", "bob"] {
        browser.wait_text(user, "#status", "reconnecting").await;
    }
    // While no hub runs: a record reaches Kafka directly, and alice sends a message that
    // her page holds until it can publish it.
    let body = json!({"user": "kafka", "text": "while down"}).to_string();
    produce(&producer(), &room, "kafka", body.as_bytes()).await;
    browser.say("alice", "sent while down").await;

    let demo = Demo {
        hub: Demo::hub(&addr, &glob, &notes).await,
        glob,
        room,
        notes,
    };
    browser.say("bob", "after").await;
    let expected = [
        "alicebefore 1",
        "bobbefore 2",
        "kafkawhile down",
        "alicesent while down",
        "bobafter",
    ];
    for user in ["alice", "bob"] {
        browser.wait_text(user, "#status", "open").await;
        // Alice's held message and Bob's new one go out in either order.
        for text in ["kafkawhile down", "alicesent while down", "bobafter"] {
            browser.wait_text(user, "#messages", text).await;
        }
        let texts = browser.texts(user, "#messages li").await;
        let mut sorted = texts.clone();
        sorted.sort();
        let mut wanted = expected.map(String::from).to_vec();
        wanted.sort();
        assert_eq!(sorted, wanted, "{user}: each message exactly once");
        assert_eq!(&texts[..3], &expected[..3], "{user}: in order");
    }
    drop(demo);
}

#[tokio::test]
async fn the_admin_page_shows_live_connections_and_topics() {
    let demo = Demo::start().await;
    let mut browser = Browser::start().await;
    demo.open(&mut browser, "alice").await;
    let admin = format!("http://{}/admin", demo.hub.addr);
    browser.open_as("admin", &admin, "admin", "pw").await;
    browser.wait_text("admin", "#list", "alice").await;
    browser.wait_text("admin", "#topics", &demo.room).await;
    browser.wait_text("admin", "#connections", "1").await;
}
