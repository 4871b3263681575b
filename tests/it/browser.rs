//! The demo page and the client library in a real headless Chromium, against the real hub
//! and broker: two people chatting under their verified names, a late joiner paging back
//! through a room, a private room, notifications for one user only with read positions
//! shared by her devices, a hub restart in the middle of a conversation, and the admin view
//! against a page of another site that the signed-in admin opens.

use crate::common::*;
use rdkafka::producer::FutureRecord;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A hub in demo mode with a topic of rooms (keys) and a per-user notifications topic of
/// its own.
pub(crate) struct Demo {
    pub(crate) hub: Hub,
    pub(crate) topics: String,
    pub(crate) rooms: String,
    pub(crate) notes: String,
}

impl Demo {
    pub(crate) async fn start() -> Demo {
        let prefix = unique("demo");
        let (rooms, notes) = (format!("{prefix}.rooms"), format!("{prefix}.notes"));
        create_topic(&rooms, 1).await;
        create_topic(&notes, 1).await;
        let topics = format!("{rooms},{notes}");
        let hub = Demo::hub("127.0.0.1:0", &topics, &rooms, &notes).await;
        Demo {
            hub,
            topics,
            rooms,
            notes,
        }
    }

    pub(crate) async fn hub(listen: &str, topics: &str, rooms: &str, notes: &str) -> Hub {
        // Presence and signals on topics of this hub's own: rosters of other tests' rooms
        // would not disturb it, but reading them would cost time.
        let (presence, roster, signals, control) = (
            format!("{rooms}.presence"),
            format!("{rooms}.roster"),
            format!("{rooms}.signals"),
            format!("{rooms}.control"),
        );
        let demo = [
            "--demo",
            "--keyed-topics",
            rooms,
            "--user-topics",
            notes,
            "--admin-password",
            "pw",
            "--presence-topic",
            &presence,
            "--roster-topic",
            &roster,
            "--signal-topic",
            &signals,
            // Revocations stay on this hub.
            "--control-topic",
            &control,
        ];
        Hub::start_at(listen, topics, &demo).await
    }

    pub(crate) fn page(&self, user: &str) -> String {
        format!(
            "http://{}/?user={user}&topic={}&notifications={}",
            self.hub.addr, self.rooms, self.notes
        )
    }

    /// Opens the demo as `user`, once its notifications are subscribed: a notification
    /// written before that reply is before where a user with nothing read starts.
    async fn open(&self, browser: &mut Browser, user: &str) {
        self.open_window(browser, user, user).await;
    }

    /// Opens another window (a device) of `user`, named `window`, as `open` does.
    async fn open_window(&self, browser: &mut Browser, window: &str, user: &str) {
        browser.open(window, &self.page(user)).await;
        browser.wait_text(window, "#status", "open").await;
        browser
            .wait_count(window, "#notifications[aria-busy=false]", 1)
            .await;
    }
}

/// Writes a record into a room straight into Kafka, as a backend that names itself as its
/// sender.
pub(crate) async fn say_from_kafka(room_topic: &str, room: &str, sender: &str, text: &str) {
    let headers = rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
        key: "wskafka-sender",
        value: Some(sender),
    });
    let body = json!({"user": "someone else", "text": text}).to_string();
    murmur2_producer()
        .send(
            FutureRecord::to(room_topic)
                .key(room)
                .payload(&body)
                .headers(headers),
            PATIENCE,
        )
        .await
        .unwrap();
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

    // The page names the verified sender, never what the payload claims.
    say_from_kafka(&demo.rooms, "lobby", "kafka", "straight from Kafka").await;
    for user in ["alice", "bob"] {
        browser
            .wait_text(user, "#messages", "straight from Kafka")
            .await;
        assert_eq!(
            browser.texts(user, "#messages li .body").await,
            ["alicehello bob", "bobhi alice", "kafkastraight from Kafka"],
            "{user}"
        );
        let times = browser.texts(user, "#messages li time").await;
        assert_eq!(times.len(), 3, "every message shows its time: {times:?}");
        assert!(times.iter().all(|t| t.contains(':')), "{times:?}");
        // Under the hub's Content-Security-Policy: nothing refused, nothing failed.
        assert_eq!(
            browser.complaints(user).await,
            Vec::<String>::new(),
            "{user}"
        );
    }
    // A new user signs in with the form; the page loads cleanly: no invalid pattern, no
    // missing file.
    let page = demo.page("x").replace("user=x&", "");
    browser.open("dave", &page).await;
    browser
        .run(json!({"cmd": "type", "name": "dave", "selector": "#user", "text": "dave"}))
        .await;
    browser.wait_text("dave", "#status", "open").await;
    browser.wait_text("dave", "#me", "as dave").await;
    assert_eq!(browser.complaints("dave").await, Vec::<String>::new());
}

#[tokio::test]
async fn a_late_joiner_sees_the_last_messages_at_once_and_older_ones_on_scroll() {
    let demo = Demo::start().await;
    for n in 0..120 {
        say_from_kafka(&demo.rooms, "lobby", "kafka", &format!("message {n:03}")).await;
    }
    let mut browser = Browser::start().await;
    demo.open(&mut browser, "carol").await;
    browser.wait_text("carol", "#messages", "message 119").await;
    browser.wait_count("carol", "#messages li", 50).await;
    let shown = browser.texts("carol", "#messages li .body").await;
    assert_eq!(shown.first().map(String::as_str), Some("kafkamessage 070"));

    browser.scroll_top("carol", "#messages").await;
    browser.wait_count("carol", "#messages li", 100).await;
    browser.scroll_top("carol", "#messages").await;
    browser.wait_count("carol", "#messages li", 120).await;
    browser.wait_text("carol", "#messages", "message 000").await;
    let shown = browser.texts("carol", "#messages li .body").await;
    let expected: Vec<String> = (0..120).map(|n| format!("kafkamessage {n:03}")).collect();
    assert_eq!(shown, expected, "every message once, oldest first");
}

#[tokio::test]
async fn two_users_in_a_room_see_each_other_listed_and_see_typing() {
    let demo = Demo::start().await;
    let mut browser = Browser::start().await;
    demo.open(&mut browser, "alice").await;
    demo.open(&mut browser, "bob").await;
    browser.wait_text("alice", "#members", "bob").await;
    browser.wait_text("bob", "#members", "alice").await;

    browser
        .run(json!({"cmd": "fill", "name": "bob", "selector": "#text", "text": "hel"}))
        .await;
    browser.wait_text("alice", "#typing", "bob is typing").await;
    // Bob goes quiet: the state ends by itself.
    browser
        .run(json!({"cmd": "wait_gone", "name": "alice", "selector": "#typing", "text": "bob"}))
        .await;

    browser.run(json!({"cmd": "close", "name": "bob"})).await;
    browser
        .run(json!({"cmd": "wait_gone", "name": "alice", "selector": "#members", "text": "bob"}))
        .await;
    assert_eq!(browser.texts("alice", "#members li").await, ["alice"]);
}

#[tokio::test]
async fn a_private_room_is_listed_and_read_by_its_members_only() {
    let demo = Demo::start().await;
    let mut browser = Browser::start().await;
    demo.open(&mut browser, "alice").await;
    demo.open(&mut browser, "bob").await;
    demo.open(&mut browser, "eve").await;
    assert_eq!(
        browser.texts("eve", "#rooms button").await,
        ["# lobby", "# random"]
    );
    assert_eq!(
        browser.texts("bob", "#rooms button").await,
        ["# lobby", "# random", "# staff"]
    );
    browser
        .click("alice", "#rooms button[data-room=staff]")
        .await;
    browser.say("alice", "staff only").await;
    browser.click("bob", "#rooms button[data-room=staff]").await;
    browser.wait_text("bob", "#messages", "staff only").await;
    // Eve can reach the room neither live nor by asking: what she gets is her own room's.
    browser.say("alice", "not this one").await;
    browser
        .click("alice", "#rooms button[data-room=lobby]")
        .await;
    browser.say("alice", "for everyone").await;
    browser.wait_text("eve", "#messages", "for everyone").await;
    assert_eq!(
        browser.texts("eve", "#messages li .body").await,
        ["alicefor everyone"]
    );
    let refused = browser
        .run(json!({"cmd": "evaluate", "name": "eve", "script":
            format!("wskafka.history({:?}, {{key: 'staff'}}).then(() => 'read', e => e.code)", demo.rooms)}))
        .await;
    assert_eq!(refused, "forbidden");
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
    assert_eq!(
        browser.texts("bob", "#notifications li .body").await,
        ["for bob"]
    );
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
        browser.texts("alice", "#notifications li .body").await,
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
        browser
            .texts("alice-phone", "#notifications li .body")
            .await,
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

    restart_mid_conversation(demo, &mut browser, &["alicebefore 1", "bobbefore 2"]).await;
}

/// Stops the demo's hub mid-conversation and starts it again at the same address: while no
/// hub runs, a record reaches Kafka directly and Alice sends a message that her page holds
/// until it can publish it; Bob speaks once the hub is back. Then each page shows what it
/// showed `before`, in order, and the three new messages, each exactly once.
pub(crate) async fn restart_mid_conversation(
    demo: Demo,
    browser: &mut Browser,
    before: &[&str],
) -> Demo {
    let addr = demo.hub.addr.to_string();
    let Demo {
        hub,
        topics,
        rooms,
        notes,
    } = demo;
    assert_eq!(hub.terminate().await, Some(0));
    for user in ["alice", "bob"] {
        browser.wait_text(user, "#status", "reconnecting").await;
    }
    say_from_kafka(&rooms, "lobby", "kafka", "while down").await;
    browser.say("alice", "sent while down").await;

    let demo = Demo {
        hub: Demo::hub(&addr, &topics, &rooms, &notes).await,
        topics,
        rooms,
        notes,
    };
    browser.say("bob", "after").await;
    let mut expected: Vec<String> = before.iter().map(|t| t.to_string()).collect();
    expected.extend(["kafkawhile down", "alicesent while down", "bobafter"].map(String::from));
    for user in ["alice", "bob"] {
        browser.wait_text(user, "#status", "open").await;
        // Alice's held message and Bob's new one go out in either order.
        for text in ["kafkawhile down", "alicesent while down", "bobafter"] {
            browser.wait_text(user, "#messages", text).await;
        }
        let texts = browser.texts(user, "#messages li .body").await;
        let mut sorted = texts.clone();
        sorted.sort();
        let mut wanted = expected.clone();
        wanted.sort();
        assert_eq!(sorted, wanted, "{user}: each message exactly once");
        let ordered = before.len() + 1;
        assert_eq!(&texts[..ordered], &expected[..ordered], "{user}: in order");
    }
    demo
}

/// Counts, in a page, the frames its sockets receive and those that are `rate_limited`
/// errors, whatever request they answer: run before the page's own scripts.
const COUNT_REFUSALS: &str = r#"
window.framesSeen = 0;
window.refusals = [];
const Native = window.WebSocket;
window.WebSocket = class extends Native {
  constructor(...args) {
    super(...args);
    this.addEventListener("message", (event) => {
      window.framesSeen += 1;
      const frame = JSON.parse(event.data);
      if (frame.code === "rate_limited") window.refusals.push(frame);
    });
  }
};
"#;

#[tokio::test]
async fn the_demo_at_its_busiest_never_meets_a_limit_with_the_default_budgets() {
    let demo = Demo::start().await;
    // Five pages of history in the lobby, two in the random room.
    for n in 0..250 {
        say_from_kafka(&demo.rooms, "lobby", "kafka", &format!("lobby {n:03}")).await;
    }
    for n in 0..100 {
        say_from_kafka(&demo.rooms, "random", "kafka", &format!("random {n:03}")).await;
    }
    let mut browser = Browser::start().await;
    // Alice on her laptop and her phone at once (one user: her budget is shared), and bob.
    let pages = ["alice", "alice-phone", "bob"];
    for name in pages {
        let user = name.split('-').next().unwrap();
        browser
            .run(json!({"cmd": "open", "name": name, "url": demo.page(user), "init": COUNT_REFUSALS}))
            .await;
    }
    for name in pages {
        browser.wait_text(name, "#status", "open").await;
        browser.wait_count(name, "#messages li", 50).await;
    }

    // Alice scrolls the lobby back to its first message as fast as pages come, on both
    // devices.
    for name in ["alice", "alice-phone"] {
        for shown in [100, 150, 200, 250] {
            browser.scroll_top(name, "#messages").await;
            browser.wait_count(name, "#messages li", shown).await;
        }
        browser.wait_text(name, "#messages", "lobby 000").await;
    }
    // She hops between her rooms, typing a little in each.
    for round in 0..4 {
        for room in ["random", "staff", "lobby"] {
            browser
                .click("alice", &format!("#rooms button[data-room={room}]"))
                .await;
            browser
                .run(json!({"cmd": "fill", "name": "alice", "selector": "#text", "text": format!("hm {round}")}))
                .await;
        }
    }
    browser.wait_text("bob", "#typing", "alice is typing").await;
    // The random room's older page, read on the way.
    browser
        .click("alice", "#rooms button[data-room=random]")
        .await;
    browser.scroll_top("alice", "#messages").await;
    browser.wait_count("alice", "#messages li", 100).await;
    // Back in the lobby, twenty messages as fast as she can type them.
    browser
        .click("alice", "#rooms button[data-room=lobby]")
        .await;
    for n in 0..20 {
        browser.say("alice", &format!("quick {n:02}")).await;
    }
    browser.wait_text("bob", "#messages", "quick 19").await;
    browser.wait_count("alice", "#outbox li", 0).await;
    browser.wait_count("alice", "#messages li", 270).await;
    // Notifications come in; she opens them again and again.
    let producer = producer();
    for n in 0..3 {
        let note = json!({"text": format!("note {n}")}).to_string();
        produce(&producer, &demo.notes, "alice", note.as_bytes()).await;
    }
    browser.wait_text("alice", "#unread", "3").await;
    for _ in 0..5 {
        browser.click("alice", "#bell").await;
    }
    browser.wait_text("alice", "#unread", "0").await;
    browser.wait_text("alice", "#members", "bob").await;
    browser.wait_text("bob", "#members", "alice").await;

    // Nothing it did met a limit, and everything succeeded.
    for name in pages {
        let seen = browser
            .run(json!({"cmd": "evaluate", "name": name, "script": "[window.framesSeen, window.refusals]"}))
            .await;
        assert!(
            seen[0].as_u64().unwrap() > 10,
            "{name} counted no frames: {seen}"
        );
        assert_eq!(seen[1], json!([]), "{name} was refused");
        assert_eq!(
            browser.complaints(name).await,
            Vec::<String>::new(),
            "{name}"
        );
        let problem = browser
            .run(json!({"cmd": "evaluate", "name": name, "script": "document.getElementById('problem').hidden"}))
            .await;
        assert_eq!(problem, true, "{name} shows a problem");
    }
    let metrics = demo.hub.metrics().await;
    let refused: Vec<_> = metrics
        .iter()
        .filter(|(name, value)| name.starts_with("wskafka_requests_refused_total") && **value > 0.0)
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
}

#[tokio::test]
async fn the_admin_page_shows_live_connections_and_topics() {
    let demo = Demo::start().await;
    let mut browser = Browser::start().await;
    demo.open(&mut browser, "alice").await;
    let admin = format!("http://{}/admin", demo.hub.addr);
    browser.open_as("admin", &admin, "admin", "pw").await;
    browser.wait_text("admin", "#list", "alice").await;
    browser.wait_text("admin", "#topics", &demo.rooms).await;
    browser.wait_text("admin", "#connections", "1").await;
    assert_eq!(browser.complaints("admin").await, Vec::<String>::new());
}

/// A page elsewhere: a server on `host` (127.0.0.2 for another site, 127.0.0.1 for another
/// origin of the hub's site, as far as the browser can tell: sites of IP addresses are the
/// addresses) answering every request with an empty page.
async fn elsewhere(host: &str) -> String {
    let listener = tokio::net::TcpListener::bind((host, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                // The request's head: GETs without a body, which fit one read.
                let _ = stream.read(&mut [0; 8192]).await;
                let page = "<!doctype html><title>elsewhere</title><p>Nothing to see here.";
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{page}",
                    page.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/")
}

#[tokio::test]
async fn pages_elsewhere_can_neither_revoke_nor_frame_while_the_admin_is_signed_in() {
    let demo = Demo::start().await;
    let hub = format!("http://{}", demo.hub.addr);
    // Bob's token has an id that a form can write into a JSON body (name `{"jti":"bob`,
    // value `1"}`, sent as `{"jti":"bob=1"}`).
    let alice_token = token("alice", &[], &[]);
    let bob_token = token_with("bob", "bob=1", now_secs(), &[]);
    let mut alice = demo.hub.connect(&alice_token).await;
    let mut bob = demo.hub.connect(&bob_token).await;
    let mut carol = demo.hub.connect(&token("carol", &[], &[])).await;

    let mut browser = Browser::start().await;
    browser
        .open_as("admin", &format!("{hub}/admin"), "admin", "pw")
        .await;
    browser.wait_text("admin", "#list", "carol").await;
    // Other tabs of the same browser, which holds the admin's credentials: a page of
    // another site, and one of another origin of the hub's site (another port), to which
    // Chromium attaches them even for a no-cors fetch.
    for (name, host) in [("cross-site", "127.0.0.2"), ("same-site", "127.0.0.1")] {
        let url = elsewhere(host).await;
        browser
            .run(json!({"cmd": "open", "name": name, "url": url, "beside": "admin"}))
            .await;
        let sent = browser
            .run(json!({"cmd": "evaluate", "name": name, "script": format!(
                "fetch('{hub}/admin/revocations', {{method: 'POST', mode: 'no-cors', \
                 credentials: 'include', body: '{{\"sub\":\"alice\"}}'}}).then(() => 'sent')"
            )}))
            .await;
        assert_eq!(sent, "sent");
        browser
            .run(json!({"cmd": "evaluate", "name": name, "script": format!(
                "new Promise((loaded) => {{ const frame = document.createElement('iframe'); \
                 frame.onload = () => loaded(true); frame.src = '{hub}/admin'; \
                 document.body.append(frame); }})"
            )}))
            .await;
        let frames = browser.run(json!({"cmd": "frames", "name": name})).await;
        let frames = frames.as_array().unwrap();
        assert_eq!(frames.len(), 1, "{name}: {frames:?}");
        assert!(
            !frames[0]["text"]
                .as_str()
                .unwrap()
                .contains("wskafka admin"),
            "{name}: the admin view shows inside another page: {frames:?}"
        );
        let complaints = browser.complaints(name).await;
        assert!(
            complaints
                .iter()
                .any(|c| c.contains("frame-ancestors 'none'")),
            "{name}: {complaints:?}"
        );
    }
    // The same-site fetch reached the hub with the admin's credentials: refused for where
    // it came from, not for want of a password.
    eventually("the same-site fetch is refused", || async {
        demo.hub
            .log_lines()
            .iter()
            .any(|line| line.contains("refused an admin request") && line.contains("same-site"))
    })
    .await;
    // A form posts across sites as a navigation, which carries the credentials too; the
    // page becomes the hub's answer.
    browser
        .run(
            json!({"cmd": "evaluate", "name": "cross-site", "script": format!(
                "const form = document.createElement('form'); form.method = 'POST'; \
                 form.action = '{hub}/admin/revocations'; form.enctype = 'text/plain'; \
                 const field = document.createElement('input'); field.name = '{{\"jti\":\"bob'; \
                 field.value = '1\"}}'; form.append(field); document.body.append(form); \
                 form.submit(); 'submitted'"
            )}),
        )
        .await;
    browser
        .wait_text(
            "cross-site",
            "body",
            "refused: sent by a page of another site",
        )
        .await;

    // The admin page's own request works. Revocations apply in order: once carol's closes
    // her socket, any the pages elsewhere had sent would have closed alice's or bob's.
    let status = browser
        .run(json!({"cmd": "evaluate", "name": "admin", "script":
            "fetch('/admin/revocations', {method: 'POST', headers: {'Content-Type': \
             'application/json'}, body: JSON.stringify({sub: 'carol'})}).then((r) => r.status)"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(carol.closed().await.map(|c| u16::from(c.code)), Some(4403));
    for (client, token) in [(&mut alice, &alice_token), (&mut bob, &bob_token)] {
        assert_eq!(client.call(json!({"type": "ping"})).await["type"], "pong");
        assert_eq!(demo.hub.handshake_status(&demo.hub.url(token)).await, 101);
    }
    assert_eq!(browser.complaints("admin").await, Vec::<String>::new());
}

#[tokio::test]
async fn a_room_topic_that_does_not_exist_is_shown_to_the_user_and_not_asked_for_again() {
    let prefix = unique("demo");
    let (rooms, notes) = (format!("{prefix}.rooms"), format!("{prefix}.notes"));
    create_topic(&notes, 1).await;
    // The rooms' topic is exposed but nobody created it.
    let hub = Demo::hub("127.0.0.1:0", &format!("{rooms},{notes}"), &rooms, &notes).await;
    let mut browser = Browser::start().await;
    let page = format!(
        "http://{}/?user=erin&topic={rooms}&notifications={notes}",
        hub.addr
    );
    browser.open("erin", &page).await;
    browser.wait_text("erin", "#status", "open").await;
    browser
        .wait_text(
            "erin",
            "#problem",
            &format!("topic {rooms:?} does not exist"),
        )
        .await;
    browser
        .wait_text("erin", "#problem", "ask an operator to create it")
        .await;
    let shown = json!({"cmd": "evaluate", "name": "erin",
                       "script": "document.querySelector('#problem').checkVisibility()"});
    assert_eq!(browser.run(shown).await, json!(true));
    // The library gives up on each room at once: none is held to be asked for again.
    let held = json!({"cmd": "evaluate", "name": "erin",
                      "script": "[...window.wskafka.subscriptions.values()].map((s) => s.topic)"});
    eventually("only the notifications subscription is held", async || {
        browser.run(held.clone()).await == json!([notes])
    })
    .await;
}

/// The demo with Bob's page, and Alice's page whose page and socket go through a proxy
/// that can stall; her client pings after 1 s of silence and gives the socket up 1 s later
/// (15 s and 5 s by default).
async fn alice_behind_a_proxy() -> (Demo, StallingProxy, Browser) {
    let demo = Demo::start().await;
    let network = StallingProxy::start(demo.hub.addr).await;
    let mut browser = Browser::start().await;
    demo.open(&mut browser, "bob").await;
    let page = demo
        .page("alice")
        .replace(&demo.hub.addr.to_string(), &network.addr.to_string());
    browser
        .open("alice", &format!("{page}&heartbeat=1000,1000"))
        .await;
    browser.wait_text("alice", "#status", "open").await;
    (demo, network, browser)
}

#[tokio::test]
async fn messages_whose_acks_were_lost_are_shown_once_in_every_window_after_the_reconnect() {
    let (_demo, network, mut browser) = alice_behind_a_proxy().await;

    // Her messages reach the hub and Kafka, but nothing comes back: no ack, no echo. Her page
    // gives the socket up and, once the network is back, sends both again on a new one.
    network.stall_replies();
    browser.say("alice", "first of two").await;
    browser.say("alice", "second of two").await;
    browser.wait_text("bob", "#messages", "second of two").await;
    browser.wait_text("alice", "#status", "reconnecting").await;
    network.resume();
    browser.wait_text("alice", "#status", "open").await;
    for text in ["first of two", "second of two"] {
        browser
            .run(json!({"cmd": "wait_gone", "name": "alice", "selector": "#outbox", "text": text}))
            .await;
    }
    browser.say("bob", "after").await;
    for user in ["alice", "bob"] {
        browser.wait_text(user, "#messages", "after").await;
        assert_eq!(
            browser.texts(user, "#messages li .body").await,
            ["alicefirst of two", "alicesecond of two", "bobafter"],
            "{user}: each message exactly once"
        );
    }
}

#[tokio::test]
async fn a_page_behind_a_stalled_network_says_reconnecting_and_delivers_its_message_once() {
    let (_demo, network, mut browser) = alice_behind_a_proxy().await;
    browser.say("alice", "before").await;
    browser.wait_text("bob", "#messages", "before").await;

    // Packets stop, nothing closes: her page notices by itself and shows her message as
    // not yet sent.
    network.stall();
    browser.wait_text("alice", "#status", "reconnecting").await;
    browser.say("alice", "during the stall").await;
    browser.wait_text("alice", "#outbox", "sending…").await;
    network.resume();
    browser.wait_text("alice", "#status", "open").await;
    browser
        .wait_text("bob", "#messages", "during the stall")
        .await;
    browser
        .run(json!({"cmd": "wait_gone", "name": "alice", "selector": "#outbox", "text": "during the stall"}))
        .await;
    browser.say("bob", "after").await;
    for user in ["alice", "bob"] {
        browser.wait_text(user, "#messages", "after").await;
        assert_eq!(
            browser.texts(user, "#messages li .body").await,
            ["alicebefore", "aliceduring the stall", "bobafter"],
            "{user}: each message exactly once"
        );
    }

    // A message over the hub's frame limit is refused before sending; the text stays.
    let long = "x".repeat(70 * 1024);
    browser.say("alice", &long).await;
    browser
        .wait_text("alice", "#problem", "Not sent, too long")
        .await;
    let kept = browser
        .run(json!({"cmd": "evaluate", "name": "alice", "script": "document.querySelector('#text').value.length"}))
        .await;
    assert_eq!(kept, json!(70 * 1024));
    assert_eq!(
        browser.texts("alice", "#outbox li").await,
        Vec::<String>::new()
    );
}

/// Asserts that every selector's first match is rendered wholly inside a window of `width`
/// by `height`, and that the page does not scroll sideways.
async fn assert_on_screen(browser: &mut Browser, name: &str, selectors: &[&str], size: (u32, u32)) {
    let (width, height) = (f64::from(size.0), f64::from(size.1));
    for (selector, rect) in browser.boxes(name, selectors).await {
        let rect = rect.unwrap_or_else(|| panic!("{name} at {size:?}: {selector} is not shown"));
        assert!(
            rect.inside(width, height),
            "{name} at {size:?}: {selector} is off screen: {rect:?}"
        );
    }
    let (page, window) = browser.widths(name).await;
    assert!(
        page <= window,
        "{name} at {size:?}: the page is {page} px wide in a {window} px window"
    );
}

/// Asserts that nothing matches `selector` on screen (hidden, or in a closed drawer).
async fn assert_not_shown(browser: &mut Browser, name: &str, selector: &str) {
    let boxes = browser.boxes(name, &[selector]).await;
    assert!(boxes[0].1.is_none(), "{name}: {selector} shows: {boxes:?}");
}

#[tokio::test]
async fn on_a_phone_and_a_tablet_everything_the_user_needs_is_on_screen() {
    let demo = Demo::start().await;
    let mut browser = Browser::start().await;
    let phone = (390, 844);
    demo.open(&mut browser, "alice").await;
    demo.open(&mut browser, "bob").await;
    browser.viewport("alice", phone.0, phone.1).await;
    browser.say("bob", "hello from the desk").await;
    // A word without spaces wider than the phone wraps instead of widening the room.
    let long = "Supercalifragilisticexpialidocious".repeat(12);
    browser.say("bob", &long).await;
    browser.wait_text("alice", "#messages", &long).await;
    produce(
        &producer(),
        &demo.notes,
        "alice",
        json!({"text": "your order shipped"}).to_string().as_bytes(),
    )
    .await;
    browser.wait_text("alice", "#unread", "1").await;

    let chat = [
        "#status",
        "#bell",
        "#show-rooms",
        "#show-side",
        "#text",
        "#compose button",
        "#lines li:first-child time",
        "#lines li:last-child .body",
        "#lines li:last-child time",
    ];
    assert_on_screen(&mut browser, "alice", &chat, phone).await;
    browser.screenshot("alice", "phone-chat").await;
    // The rooms and the members are behind buttons.
    assert_not_shown(&mut browser, "alice", "#rooms button").await;
    assert_not_shown(&mut browser, "alice", "#members li").await;
    browser.click("alice", "#show-side").await;
    browser.wait_text("alice", "#members", "bob").await;
    assert_on_screen(&mut browser, "alice", &["#members li", "#show-side"], phone).await;
    // The bell shows the notifications.
    browser.click("alice", "#bell").await;
    browser.wait_text("alice", "#unread", "0").await;
    let notes = ["#read li .body", "#read li time", "#bell"];
    assert_on_screen(&mut browser, "alice", &notes, phone).await;
    browser.screenshot("alice", "phone-notifications").await;
    browser.click("alice", "#show-rooms").await;
    assert_not_shown(&mut browser, "alice", "#members li").await;
    let rooms = [
        "#rooms button[data-room=lobby]",
        "#rooms button[data-room=random]",
    ];
    assert_on_screen(&mut browser, "alice", &rooms, phone).await;
    browser.screenshot("alice", "phone-rooms").await;
    // Picking a room closes the drawer onto it.
    browser
        .click("alice", "#rooms button[data-room=random]")
        .await;
    assert_not_shown(&mut browser, "alice", "#rooms button").await;
    browser.say("alice", "from my phone").await;
    browser
        .wait_text("alice", "#messages", "from my phone")
        .await;
    assert_on_screen(&mut browser, "alice", &chat[..6], phone).await;

    // A tablet, upright: the rooms in a column, the members and notifications in a drawer.
    let tablet = (768, 1024);
    browser.viewport("bob", tablet.0, tablet.1).await;
    let chat = [
        "#status",
        "#bell",
        "#show-side",
        "#text",
        "#compose button",
        "#rooms button[data-room=random]",
        "#lines li:last-child .body",
        "#lines li:last-child time",
    ];
    assert_on_screen(&mut browser, "bob", &chat, tablet).await;
    assert_not_shown(&mut browser, "bob", "#show-rooms").await;
    assert_not_shown(&mut browser, "bob", "#members li").await;
    browser.screenshot("bob", "tablet-chat").await;
    browser.click("bob", "#show-side").await;
    assert_on_screen(&mut browser, "bob", &["#members li"], tablet).await;
    browser.screenshot("bob", "tablet-members").await;
    for user in ["alice", "bob"] {
        assert_eq!(
            browser.complaints(user).await,
            Vec::<String>::new(),
            "{user}"
        );
    }
}

#[tokio::test]
async fn the_unread_count_of_notifications_follows_the_bell_in_every_window_of_the_user() {
    let demo = Demo::start().await;
    let mut browser = Browser::start().await;
    let windows = ["alice", "alice-phone"];
    for window in windows {
        demo.open_window(&mut browser, window, "alice").await;
    }
    let producer = producer();
    for text in ["first", "second"] {
        let note = json!({"text": text}).to_string();
        produce(&producer, &demo.notes, "alice", note.as_bytes()).await;
    }
    for window in windows {
        browser.wait_text(window, "#unread", "2").await;
    }
    // Read in one window: the other one is told and follows without a reload.
    browser.click("alice", "#bell").await;
    for window in windows {
        browser.wait_count(window, "#notifications li", 0).await;
        browser.wait_text(window, "#unread", "0").await;
        assert_eq!(
            browser.texts(window, "#read li .body").await,
            ["second", "first"],
            "{window}"
        );
        let label = json!({"cmd": "evaluate", "name": window,
                           "script": "document.querySelector('#bell').getAttribute('aria-label')"});
        assert_eq!(
            browser.run(label).await,
            "Notifications, none unread",
            "{window}"
        );
    }
    // The next one counts from there, everywhere.
    let note = json!({"text": "third"}).to_string();
    produce(&producer, &demo.notes, "alice", note.as_bytes()).await;
    for window in windows {
        browser.wait_text(window, "#notifications", "third").await;
        browser.wait_text(window, "#unread", "1").await;
    }
    let label = json!({"cmd": "evaluate", "name": "alice-phone",
                       "script": "document.querySelector('#bell').getAttribute('aria-label')"});
    assert_eq!(browser.run(label).await, "Notifications, 1 unread");

    // A window opened later has the read ones too (from history), apart from the unread,
    // each with its time.
    browser.open("alice-tablet", &demo.page("alice")).await;
    browser
        .wait_text("alice-tablet", "#notifications", "third")
        .await;
    browser.wait_text("alice-tablet", "#read", "first").await;
    assert_eq!(
        browser
            .texts("alice-tablet", "#notifications li .body")
            .await,
        ["third"]
    );
    assert_eq!(
        browser.texts("alice-tablet", "#read li .body").await,
        ["second", "first"]
    );
    let times = browser.texts("alice-tablet", "#side li time").await;
    assert_eq!(times.len(), 3, "{times:?}");
    assert!(times.iter().all(|t| t.contains(':')), "{times:?}");
    browser.wait_text("alice-tablet", "#unread", "1").await;
}

/// The unread count on a room's button, or 0 when it shows none.
async fn room_count(browser: &mut Browser, name: &str, room: &str) -> u64 {
    let script = format!(
        "(() => {{ const c = document.querySelector('#rooms button[data-room={room}] .count'); \
         return c.hidden ? 0 : parseInt(c.textContent); }})()"
    );
    let count = browser
        .run(json!({"cmd": "evaluate", "name": name, "script": script}))
        .await;
    count.as_u64().unwrap()
}

/// Waits until `name`'s page shows `count` unread on `room`'s button.
async fn wait_room_count(browser: &mut Browser, name: &str, room: &str, count: u64) {
    let script = format!(
        "(() => {{ const c = document.querySelector('#rooms button[data-room={room}] .count'); \
         return Boolean(c) && (c.hidden ? 0 : parseInt(c.textContent)) === {count}; }})()"
    );
    browser
        .run(json!({"cmd": "wait_true", "name": name, "script": script}))
        .await;
}

#[tokio::test]
async fn rooms_count_what_the_user_has_not_read_on_any_of_her_devices() {
    let demo = Demo::start().await;
    let mut browser = Browser::start().await;
    demo.open(&mut browser, "bob").await;
    let windows = ["alice", "alice-phone"];
    for window in windows {
        demo.open_window(&mut browser, window, "alice").await;
        browser.wait_text(window, "#members", "bob").await;
    }
    browser
        .click("bob", "#rooms button[data-room=random]")
        .await;
    browser.say("bob", "one").await;
    browser.say("bob", "two").await;
    for window in windows {
        wait_room_count(&mut browser, window, "random", 2).await;
        assert_eq!(room_count(&mut browser, window, "lobby").await, 0);
        let label = json!({"cmd": "evaluate", "name": window, "script":
            "document.querySelector('#rooms button[data-room=random]').textContent"});
        assert_eq!(browser.run(label).await, "# random2 unread");
    }
    // Her own messages (here one a backend wrote as her) are not news to her.
    say_from_kafka(&demo.rooms, "random", "alice", "mine").await;
    browser.say("bob", "three").await;
    for window in windows {
        // The room's four records reached the page.
        let script = format!(
            "wskafka.subscriptions.get(JSON.stringify([{:?}, 'random'])).next.get(0) === 4",
            demo.rooms
        );
        browser
            .run(json!({"cmd": "wait_true", "name": window, "script": script}))
            .await;
        assert_eq!(room_count(&mut browser, window, "random").await, 3);
    }
    // Looking at the room in one window reads it in both.
    browser
        .click("alice", "#rooms button[data-room=random]")
        .await;
    browser.wait_text("alice", "#messages", "three").await;
    for window in windows {
        wait_room_count(&mut browser, window, "random", 0).await;
    }
    // What a window looks at, it reads as it comes: the other one follows.
    browser.say("bob", "four").await;
    browser.wait_text("alice", "#messages", "four").await;
    wait_room_count(&mut browser, "alice-phone", "random", 0).await;

    // Unread survives a reload, in a room she never opened.
    browser.click("bob", "#rooms button[data-room=staff]").await;
    browser.say("bob", "psst").await;
    for window in windows {
        wait_room_count(&mut browser, window, "staff", 1).await;
        browser.run(json!({"cmd": "close", "name": window})).await;
    }
    demo.open(&mut browser, "alice").await;
    wait_room_count(&mut browser, "alice", "staff", 1).await;
    assert_eq!(room_count(&mut browser, "alice", "random").await, 0);
    assert_eq!(room_count(&mut browser, "alice", "lobby").await, 0);
    // Read there, it is read after the next reload too.
    browser
        .click("alice", "#rooms button[data-room=staff]")
        .await;
    browser.wait_text("alice", "#messages", "psst").await;
    browser.open("alice-again", &demo.page("alice")).await;
    let started = format!(
        "window.wskafka?.subscriptions.get(JSON.stringify([{:?}, 'staff']))?.next != null",
        demo.rooms
    );
    browser
        .run(json!({"cmd": "wait_true", "name": "alice-again", "script": started}))
        .await;
    // Either it starts after her position, or it is told of it once it is stored.
    wait_room_count(&mut browser, "alice-again", "staff", 0).await;
}

/// Fails on axe-core's serious and critical violations in `name`'s page; prints the others.
async fn assert_accessible(browser: &mut Browser, name: &str, state: &str) {
    let violations = browser.axe(name).await;
    let (severe, minor): (Vec<_>, Vec<_>) = violations
        .into_iter()
        .partition(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")));
    for v in &minor {
        println!(
            "{name}, {state}: axe ({}): {} {}",
            v["impact"], v["id"], v["help"]
        );
    }
    assert!(
        severe.is_empty(),
        "{name}, {state}: {}",
        serde_json::to_string_pretty(&severe).unwrap()
    );
}

/// Whether the element the keyboard's focus is on lies inside the sign-in dialog.
const FOCUS_IN_DIALOG: &str = "Boolean(document.activeElement?.closest('#login'))";

#[tokio::test]
async fn the_demo_passes_an_accessibility_check_and_signs_in_through_a_modal_dialog() {
    let demo = Demo::start().await;
    let mut browser = Browser::start().await;
    demo.open(&mut browser, "bob").await;
    let page = demo.page("x").replace("user=x&", "");
    browser.open("alice", &page).await;
    assert_eq!(browser.focused("alice").await, "user");
    assert_accessible(&mut browser, "alice", "signing in").await;
    // Every field has a label of its own (axe takes a placeholder as a name; a placeholder
    // goes away as soon as one types).
    let unlabelled = json!({"cmd": "evaluate", "name": "alice", "script":
        "[...document.querySelectorAll('input')].filter((i) => i.labels.length === 0).map((i) => i.id)"});
    assert_eq!(browser.run(unlabelled).await, json!([]));
    browser.screenshot("alice", "sign-in").await;
    // The keyboard stays in the dialog, both ways round: the page behind is inert, and
    // Escape does not leave it unsigned.
    for key in [
        "Tab",
        "Tab",
        "Tab",
        "Shift+Tab",
        "Shift+Tab",
        "Shift+Tab",
        "Escape",
    ] {
        browser
            .run(json!({"cmd": "key", "name": "alice", "key": key}))
            .await;
        let inside = browser
            .run(json!({"cmd": "evaluate", "name": "alice", "script": FOCUS_IN_DIALOG}))
            .await;
        assert_eq!(inside, true, "focus left the dialog after {key}");
    }
    browser
        .run(json!({"cmd": "type", "name": "alice", "selector": "#user", "text": "alice"}))
        .await;
    browser.wait_text("alice", "#status", "open").await;
    // Signed in, the focus is where she writes.
    assert_eq!(browser.focused("alice").await, "text");

    // Everything a chat shows: messages with times, members, the outbox, notifications read
    // and unread, a room's unread count, a problem.
    browser.say("bob", "hello alice").await;
    browser.say("alice", "hi bob").await;
    browser.wait_text("alice", "#messages", "hello alice").await;
    let producer = producer();
    for text in ["one", "two"] {
        let note = json!({"text": text}).to_string();
        produce(&producer, &demo.notes, "alice", note.as_bytes()).await;
    }
    browser.wait_text("alice", "#unread", "2").await;
    browser.click("alice", "#bell").await;
    let note = json!({"text": "three"}).to_string();
    produce(&producer, &demo.notes, "alice", note.as_bytes()).await;
    browser.wait_text("alice", "#unread", "1").await;
    browser
        .click("bob", "#rooms button[data-room=random]")
        .await;
    browser.say("bob", "elsewhere").await;
    wait_room_count(&mut browser, "alice", "random", 1).await;
    browser.say("alice", &"x".repeat(70 * 1024)).await;
    browser.wait_text("alice", "#problem", "too long").await;
    assert_accessible(&mut browser, "alice", "chatting").await;
    browser.screenshot("alice", "accessible-desktop").await;
    // On a phone, with each drawer open.
    browser.viewport("alice", 390, 844).await;
    assert_accessible(&mut browser, "alice", "on a phone").await;
    for toggle in ["#show-rooms", "#show-side"] {
        browser.click("alice", toggle).await;
        assert_accessible(&mut browser, "alice", &format!("{toggle} open")).await;
    }
    // The connection's state is announced.
    let status = json!({"cmd": "evaluate", "name": "alice",
                        "script": "document.querySelector('#status').getAttribute('role')"});
    assert_eq!(browser.run(status).await, "status");
}

/// Holds the page's `history` requests while `window.holdHistory` is set, until
/// `window.release()`: run before the page's own scripts.
const HOLD_HISTORY: &str = r#"
window.holdHistory = false;
window.held = [];
const send = WebSocket.prototype.send;
WebSocket.prototype.send = function (data) {
  if (window.holdHistory && JSON.parse(data).type === "history") {
    window.held.push(() => send.call(this, data));
    return;
  }
  return send.call(this, data);
};
window.release = () => {
  window.holdHistory = false;
  window.held.splice(0).forEach((sendIt) => sendIt());
  return true;
};
"#;

#[tokio::test]
async fn a_room_shows_while_history_loads_where_it_starts_and_dates_past_days() {
    let demo = Demo::start().await;
    // Two days ago, then today.
    let old = now_millis() - 2 * 24 * 3600 * 1000;
    murmur2_producer()
        .send(
            FutureRecord::to(&demo.rooms)
                .key("lobby")
                .payload(&json!({"text": "long ago"}).to_string())
                .timestamp(old),
            PATIENCE,
        )
        .await
        .unwrap();
    for n in 0..59 {
        say_from_kafka(&demo.rooms, "lobby", "kafka", &format!("message {n:02}")).await;
    }
    let mut browser = Browser::start().await;
    browser
        .run(json!({"cmd": "open", "name": "carol", "url": demo.page("carol"), "init": HOLD_HISTORY}))
        .await;
    browser.wait_count("carol", "#messages li", 50).await;
    let hidden = |id: &str| {
        json!({"cmd": "evaluate", "name": "carol",
               "script": format!("document.getElementById('{id}').hidden")})
    };
    assert_eq!(browser.run(hidden("start")).await, true);
    assert_eq!(browser.run(hidden("loading")).await, true);

    browser
        .run(json!({"cmd": "evaluate", "name": "carol", "script": "window.holdHistory = true"}))
        .await;
    browser.scroll_top("carol", "#messages").await;
    browser
        .run(json!({"cmd": "wait_true", "name": "carol", "script": "!document.getElementById('loading').hidden"}))
        .await;
    browser.wait_text("carol", "#loading", "Loading").await;
    assert_eq!(browser.run(hidden("start")).await, true);
    browser.screenshot("carol", "history-loading").await;
    browser
        .run(json!({"cmd": "evaluate", "name": "carol", "script": "window.release()"}))
        .await;
    browser.wait_count("carol", "#messages li", 60).await;
    browser
        .run(json!({"cmd": "wait_true", "name": "carol", "script": "!document.getElementById('start').hidden"}))
        .await;
    browser
        .wait_text("carol", "#start", "start of the room")
        .await;
    assert_eq!(browser.run(hidden("loading")).await, true);

    // The old message's time has its date; today's have the time only.
    let times = browser.texts("carol", "#messages li time").await;
    let date = browser
        .run(
            json!({"cmd": "evaluate", "name": "carol", "script": format!(
                "new Date({old}).toLocaleDateString([], {{day: 'numeric', month: 'short'}})"
            )}),
        )
        .await;
    let date = date.as_str().unwrap();
    let today = browser
        .run(json!({"cmd": "evaluate", "name": "carol", "script":
            "new Date().toLocaleDateString([], {day: 'numeric', month: 'short'})"}))
        .await;
    let today = today.as_str().unwrap();
    assert!(
        times[0].contains(date) && times[0].contains(':'),
        "{times:?}"
    );
    assert!(
        times[1..]
            .iter()
            .all(|t| t.contains(':') && !t.contains(date) && !t.contains(today)),
        "{times:?}"
    );
    assert_eq!(
        browser.texts("carol", "#messages li .body").await[0],
        "unverifiedlong ago"
    );
    browser.scroll_top("carol", "#messages").await;
    browser.screenshot("carol", "history-start").await;
}
