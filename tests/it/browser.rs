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
struct Demo {
    hub: Hub,
    topics: String,
    rooms: String,
    notes: String,
}

impl Demo {
    async fn start() -> Demo {
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

    async fn hub(listen: &str, topics: &str, rooms: &str, notes: &str) -> Hub {
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

    fn page(&self, user: &str) -> String {
        format!(
            "http://{}/?user={user}&topic={}&notifications={}",
            self.hub.addr, self.rooms, self.notes
        )
    }

    async fn open(&self, browser: &mut Browser, user: &str) {
        browser.open(user, &self.page(user)).await;
        browser.wait_text(user, "#status", "open").await;
    }
}

/// Writes a record into a room straight into Kafka, as a backend that names itself as its
/// sender.
async fn say_from_kafka(room_topic: &str, room: &str, sender: &str, text: &str) {
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
        topics,
        rooms,
        notes,
    } = demo;
    assert_eq!(hub.terminate().await, Some(0));
    for user in ["alice", "bob"] {
        browser.wait_text(user, "#status", "reconnecting").await;
    }
    // While no hub runs: a record reaches Kafka directly, and alice sends a message that
    // her page holds until it can publish it.
    say_from_kafka(&rooms, "lobby", "kafka", "while down").await;
    browser.say("alice", "sent while down").await;

    let demo = Demo {
        hub: Demo::hub(&addr, &topics, &rooms, &notes).await,
        topics,
        rooms,
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
        let texts = browser.texts(user, "#messages li .body").await;
        let mut sorted = texts.clone();
        sorted.sort();
        let mut wanted = expected.map(String::from).to_vec();
        wanted.sort();
        assert_eq!(sorted, wanted, "{user}: each message exactly once");
        assert_eq!(&texts[..3], &expected[..3], "{user}: in order");
    }
    drop(demo);
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
