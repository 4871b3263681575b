//! The fallback transport: frames over a Server-Sent Events stream, requests over `POST`,
//! against the real broker, with an SSE client that reads the stream as `EventSource` does.

use std::collections::BTreeMap;

use crate::browser::{Demo, restart_mid_conversation, say_from_kafka};
use crate::common::*;
use serde_json::{Value, json};

/// A stream carries the socket's frames: a subscription, a publish's ack and its record, a
/// ping's pong; its headers keep proxies from buffering or caching it, the admin view
/// lists it as `sse`, and the metrics count it under its transport.
#[tokio::test]
async fn a_stream_subscribes_publishes_and_receives_like_a_socket() {
    let (topic, glob) = fresh_topic("sse-basic", 2).await;
    let hub = Hub::start(&glob, &["--admin-password", "admin-secret"]).await;
    let alice = token("alice", &[&glob], &[&glob]);
    let mut sse = hub.sse(&alice, None).await;
    assert_eq!(sse.headers["content-type"], "text/event-stream");
    assert_eq!(sse.headers["cache-control"], "no-cache");
    assert_eq!(sse.headers["x-accel-buffering"], "no");
    assert!(sse.headers.get("content-encoding").is_none());

    sse.subscribe_from(&topic, json!("latest")).await;
    sse.send(
        json!({"type": "publish", "id": 1, "topic": topic, "key": "k", "payload": {"text": "hi"}}),
    )
    .await;
    let (first, second) = (sse.recv().await, sse.recv().await);
    let (ack, message) = match first["type"].as_str() {
        Some("ack") => (first, second),
        _ => (second, first),
    };
    assert_eq!(
        (&ack["type"], &ack["id"]),
        (&json!("ack"), &json!(1)),
        "{ack}"
    );
    assert_eq!(message["type"], "message", "{message}");
    assert_eq!(message["payload"], json!({"text": "hi"}));
    assert_eq!(message["sender"], "alice");
    assert_eq!(
        (&message["partition"], &message["offset"]),
        (&ack["partition"], &ack["offset"])
    );
    assert_eq!(
        sse.call(json!({"type": "ping", "id": "p"})).await,
        json!({"type": "pong", "id": "p"})
    );
    // Several requests in one POST are taken in order.
    let (status, body) = sse
        .post_as(
            &alice,
            &sse.stream,
            &json!([{"type": "ping", "id": 1}, {"type": "ping", "id": 2}]).to_string(),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(sse.recv().await["id"], 1);
    assert_eq!(sse.recv().await["id"], 2);

    let basic = basic("admin", "admin-secret");
    let (status, listing) = hub
        .get_with("/admin/connections", &[("Authorization", &basic)])
        .await;
    assert_eq!(status, 200, "{listing}");
    assert!(listing.contains(r#""transport":"sse""#), "{listing}");
    hub.until_metric(r#"wskafka_connections_by_transport{transport="sse"}"#, 1.0)
        .await;
    drop(sse);
    hub.until_metric(r#"wskafka_connections_by_transport{transport="sse"}"#, 0.0)
        .await;
}

/// Reads a resumed stream's records until, with those of the first stream, they are all of
/// `produced`; none may come twice, and each partition's come in order.
async fn read_rest(
    sse: &mut Sse,
    mut received: BTreeMap<(i32, i64), i64>,
    produced: &BTreeMap<(i32, i64), i64>,
) {
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    while received.len() < produced.len() {
        let frame = sse.recv().await;
        match frame["type"].as_str() {
            Some("message") => {}
            Some("subscribed") => continue,
            _ => panic!("unexpected {frame}"),
        }
        let at = position(&frame);
        assert!(
            next.get(&at.0).is_none_or(|n| at.1 >= *n),
            "out of order: {frame}"
        );
        next.insert(at.0, at.1 + 1);
        let seq = frame["payload"]["seq"].as_i64().unwrap();
        assert!(received.insert(at, seq).is_none(), "{at:?} delivered twice");
    }
    assert_eq!(&received, produced);
}

/// A stream dropped midway, reopened on another hub with its last event id, takes up its
/// subscription where the browser's copy stopped: thousands of records produced in
/// batches of many, before and while it was away, each delivered exactly once.
#[tokio::test]
async fn a_dropped_stream_resumes_on_another_hub_by_its_last_event_id_exactly_once() {
    let (topic, glob) = fresh_topic("sse-resume", 3).await;
    let (a, b) = tokio::join!(Hub::start(&glob, &[]), Hub::start(&glob, &[]));
    let reader = token("reader", &[], &[&glob]);
    let mut first = a.sse(&reader, None).await;
    first.subscribe_from(&topic, json!("latest")).await;
    let mut produced = produce_many(&topic, 3000).await;

    let mut received = BTreeMap::new();
    // Stopped between events, as a browser is.
    while received.len() < 1200 || !first.between_events {
        let frame = first.recv().await;
        assert_eq!(frame["type"], "message", "{frame}");
        received.insert(position(&frame), frame["payload"]["seq"].as_i64().unwrap());
    }
    // The id says exactly what the client took: one past the last record of each partition.
    let last_id = first.last_id.clone().expect("an event id");
    let cursor: Value = serde_json::from_str(&last_id).unwrap();
    let mut taken = json!({});
    for (partition, offset) in received.keys() {
        taken[partition.to_string()] = json!(offset + 1);
    }
    // A partition nothing was taken from yet may be named at its start (the topic was
    // empty), as the subscription knew it: a resume from there repeats nothing.
    if let Some(offsets) = cursor[0]["o"].as_object() {
        for (partition, offset) in offsets {
            if taken.get(partition).is_none() {
                assert_eq!(offset, 0, "{cursor}");
                taken[partition] = json!(0);
            }
        }
    }
    assert_eq!(cursor, json!([{"t": topic, "o": taken}]));
    drop(first);
    // Records keep coming while it is away; the first stream's unread ones count too.
    produced.extend(produce_many(&topic, 2000).await);

    let mut second = b.sse(&reader, Some(&last_id)).await;
    read_rest(&mut second, received, &produced).await;
}

/// A stream whose client stops reading is ended with `lagged` and 4429, like a socket; the
/// id of the event that carried `lagged` says the same positions, and resumes losslessly.
#[tokio::test]
async fn a_stream_that_does_not_read_gets_lagged_and_resumes_from_its_id() {
    let (topic, glob) = fresh_topic("sse-slow", 1).await;
    let hub = Hub::start(&glob, &["--send-queue", "64"]).await;
    let reader = token("r", &[], &[&glob]);
    let mut slow = hub.sse(&reader, None).await;
    slow.subscribe_from(&topic, json!("latest")).await;
    let producer = producer();
    let body = json!({"seq": 0, "pad": "x".repeat(50_000)}).to_string();
    let mut produced = BTreeMap::new();
    for seq in 0..600 {
        let at = produce(&producer, &topic, "k", body.as_bytes()).await;
        produced.insert(at, seq);
    }
    let mut received = BTreeMap::new();
    let lagged = loop {
        let frame = slow.recv().await;
        match frame["type"].as_str() {
            Some("message") => {
                received.insert(position(&frame), produced[&position(&frame)]);
            }
            Some("lagged") => break frame,
            _ => panic!("unexpected {frame}"),
        }
    };
    assert!(received.len() < 600, "the stream lagged");
    let last_id = slow.last_id.clone().expect("an id");
    assert_eq!(slow.closed().await, (4429, "lagged".to_string()));
    let cursor: Value = serde_json::from_str(&last_id).unwrap();
    assert_eq!(
        cursor[0]["o"], lagged["topics"][&topic],
        "{cursor} {lagged}"
    );

    let mut again = hub.sse(&reader, Some(&last_id)).await;
    let mut next = *received.keys().map(|(_, o)| o).max().unwrap() + 1;
    while received.len() < produced.len() {
        let frame = again.recv().await;
        if frame["type"] != "message" {
            continue;
        }
        assert_eq!(position(&frame), (0, next), "{frame}");
        received.insert(position(&frame), produced[&position(&frame)]);
        next += 1;
    }
    assert_eq!(received, produced);
}

/// On a per-user topic, a stream gets its user's records only, however it subscribes, and a
/// resumed stream as well; nobody else may post to it.
#[tokio::test]
async fn per_user_topics_never_leak_over_a_stream() {
    let (notes, glob) = fresh_topic("sse-notes", 2).await;
    let hub = Hub::start(&glob, &["--user-topics", &glob]).await;
    let (alice, bob) = (token("alice", &[], &[&glob]), token("bob", &[], &[&glob]));
    let mut sse = hub.sse(&alice, None).await;
    sse.subscribe_from(&notes, json!("earliest")).await;
    let producer = producer();
    for (seq, user) in ["bob", "alice", "bob", "alice", "bob"].iter().enumerate() {
        let body = json!({"seq": seq, "for": user}).to_string();
        produce(&producer, &notes, user, body.as_bytes()).await;
    }
    for _ in 0..2 {
        let message = sse.recv().await;
        assert_eq!(message["key"], "alice", "{message}");
    }
    let forbidden = sse
        .call(json!({"type": "subscribe", "id": 2, "topic": notes, "key": "bob"}))
        .await;
    assert_eq!(forbidden["code"], "forbidden", "{forbidden}");
    let (status, body) = sse
        .post_as(
            &bob,
            &sse.stream,
            &json!({"type": "subscribe", "topic": notes}).to_string(),
        )
        .await;
    assert_eq!(
        (status, body.as_str()),
        (403, "the stream is another user's")
    );

    let last_id = sse.last_id.clone().unwrap();
    drop(sse);
    let mut again = hub.sse(&alice, Some(&last_id)).await;
    assert_eq!(again.recv().await["type"], "subscribed");
    produce(&producer, &notes, "bob", b"{\"seq\":5}").await;
    produce(&producer, &notes, "alice", b"{\"seq\":6}").await;
    let message = again.recv().await;
    assert_eq!(
        (&message["key"], &message["payload"]["seq"]),
        (&json!("alice"), &json!(6))
    );
}

/// A token that runs out ends its stream with 4401, after `expiring`; a revoked one with
/// 4403; each time the stream ends, and its requests are refused 404 from then on.
#[tokio::test]
async fn expiry_and_revocation_end_the_stream() {
    let (_, glob) = fresh_topic("sse-end", 1).await;
    // A control topic of its own: a revocation on the shared one reaches every hub of the
    // suite that reads it, and closed another test's bob.
    let control = unique("control");
    let hub = Hub::start(
        &glob,
        &[
            "--expiry-warning",
            "1s",
            "--admin-password",
            "admin-secret",
            "--control-topic",
            &control,
        ],
    )
    .await;
    let short = wskafka::mint(
        SECRET,
        "alice",
        grants(&[], &[&glob]),
        std::time::Duration::from_secs(2),
    );
    let mut expiring = hub.sse(&short, None).await;
    assert_eq!(expiring.recv().await["type"], "expiring");
    assert_eq!(expiring.closed().await, (4401, "token expired".into()));

    let bob = token("bob", &[], &[&glob]);
    let mut revoked = hub.sse(&bob, None).await;
    assert_eq!(revoked.call(json!({"type": "ping"})).await["type"], "pong");
    let basic = basic("admin", "admin-secret");
    let headers = [
        ("Authorization", basic.as_str()),
        ("Content-Type", "application/json"),
    ];
    let (status, _) = hub
        .request("POST", "/admin/revocations", &headers, r#"{"sub":"bob"}"#)
        .await;
    assert_eq!(status, 200);
    assert_eq!(revoked.closed().await, (4403, "token revoked".into()));
    // Bob's tokens of this second are revoked too: another user asks.
    let carol = token("carol", &[], &[&glob]);
    let (status, body) = revoked
        .post_as(&carol, &revoked.stream, r#"{"type":"ping"}"#)
        .await;
    assert_eq!(status, 404, "{body}");
}

/// Tickets are single-use and need a token; requests need the stream's user's token and a
/// stream this hub holds; an id the hub did not give is refused. Each with a reason.
#[tokio::test]
async fn bad_tickets_tokens_stream_ids_and_event_ids_are_refused_clearly() {
    let (_, glob) = fresh_topic("sse-bad", 1).await;
    let hub = Hub::start(&glob, &[]).await;
    let alice = token("alice", &[], &[&glob]);

    let (status, _) = hub.request("POST", "/sse/ticket", &[], "").await;
    assert_eq!(status, 401);
    assert_eq!(hub.sse_ticket("e30.e30.e30").await.0, 401);
    let unknown = hub.sse_with_ticket(&alice, "nope", None).await.err();
    assert!(
        matches!(&unknown, Some((401, reason)) if reason.contains("unknown, used or expired ticket")),
        "{unknown:?}"
    );
    let (_, body) = hub.sse_ticket(&alice).await;
    let ticket: Value = serde_json::from_str(&body).unwrap();
    let ticket = ticket["ticket"].as_str().unwrap();
    let sse = hub.sse_with_ticket(&alice, ticket, None).await.unwrap();
    let again = hub.sse_with_ticket(&alice, ticket, None).await.err();
    assert!(matches!(again, Some((401, _))), "a ticket opens one stream");

    let (status, body) = sse
        .post_as(&alice, "not-a-stream", r#"{"type":"ping"}"#)
        .await;
    assert_eq!(status, 404);
    assert!(body.contains("no such stream on this hub"), "{body}");
    let (status, _) = sse
        .post_as("e30.e30.e30", &sse.stream, r#"{"type":"ping"}"#)
        .await;
    assert_eq!(status, 401);
    let (status, body) = sse.post_as(&alice, &sse.stream, "[1,").await;
    assert_eq!(status, 400, "{body}");

    let refused = hub.try_sse(&alice, Some("not an id")).await.err();
    assert!(
        matches!(&refused, Some((400, reason)) if reason.contains("Last-Event-ID")),
        "{refused:?}"
    );
}

/// Behind nginx with its defaults (responses buffered), each event reaches the client as
/// the hub writes it: the hub sends `X-Accel-Buffering: no`. Pings are off, so nothing but
/// what the test asks for is ever written: an event that arrives did not wait for a later
/// write to push it through nginx's buffer.
#[tokio::test]
async fn behind_nginx_with_its_default_buffering_each_event_arrives_as_it_is_written() {
    let (topic, glob) = fresh_topic("sse-nginx", 1).await;
    let hub = Hub::start(&glob, &["--ping-interval", "0s"]).await;
    let nginx = Nginx::start(hub.addr).await;
    let alice = token("alice", &[&glob], &[&glob]);
    // The stream's first event, then each reply, is the last thing written so far.
    let mut sse = Sse::via(&nginx.base(), &alice).await;
    let producer = producer();
    sse.subscribe_from(&topic, json!("latest")).await;
    for seq in 0..3 {
        let body = json!({"seq": seq}).to_string();
        let at = produce(&producer, &topic, "k", body.as_bytes()).await;
        let message = sse.recv().await;
        assert_eq!(position(&message), at, "{message}");
        assert_eq!(message["payload"]["seq"], seq);
    }
    assert_eq!(
        sse.call(json!({"type": "ping", "id": "p"})).await,
        json!({"type": "pong", "id": "p"})
    );
}

/// Run before the demo's scripts: the page's WebSocket constructor throws, as where a
/// network refuses upgrades, and the page counts the refusals and the streams it opens.
const NO_WEBSOCKET: &str = r#"
window.webSocketsRefused = 0;
window.streamsOpened = 0;
window.WebSocket = function () {
  window.webSocketsRefused += 1;
  throw new Error("this network refuses WebSocket upgrades");
};
const NativeEventSource = window.EventSource;
window.EventSource = class extends NativeEventSource {
  constructor(...args) {
    super(...args);
    window.streamsOpened += 1;
  }
};
"#;

async fn page_count(browser: &mut Browser, user: &str, counter: &str) -> u64 {
    let script = format!("window.{counter}");
    let value = browser
        .run(json!({"cmd": "evaluate", "name": user, "script": script}))
        .await;
    value.as_u64().unwrap()
}

/// Where WebSocket cannot be used, the demo works unchanged over SSE and POST: a room's
/// history, who is in it, chat both ways; and after the hub restarts, the pages reconnect
/// over SSE again and lose nothing, repeat nothing.
#[tokio::test]
async fn where_websocket_fails_the_demo_chats_shows_presence_and_history_and_resumes_over_sse() {
    let demo = Demo::start().await;
    say_from_kafka(&demo.rooms, "lobby", "kafka", "before anyone came").await;
    let mut browser = Browser::start().await;
    for user in ["alice", "bob"] {
        let url = demo.page(user);
        browser
            .run(json!({"cmd": "open", "name": user, "url": url, "init": NO_WEBSOCKET}))
            .await;
        browser.wait_text(user, "#status", "open").await;
        browser
            .wait_text(user, "#messages", "before anyone came")
            .await;
    }
    browser.wait_text("alice", "#members", "bob").await;
    browser.wait_text("bob", "#members", "alice").await;
    browser.say("alice", "hello over sse").await;
    browser
        .wait_text("bob", "#messages", "hello over sse")
        .await;
    browser.say("bob", "hi back").await;
    browser.wait_text("alice", "#messages", "hi back").await;
    for user in ["alice", "bob"] {
        assert!(page_count(&mut browser, user, "webSocketsRefused").await >= 1);
        assert_eq!(page_count(&mut browser, user, "streamsOpened").await, 1);
    }
    let basic = basic("admin", "pw");
    let (status, listing) = demo
        .hub
        .get_with("/admin/connections", &[("Authorization", &basic)])
        .await;
    assert_eq!(status, 200, "{listing}");
    assert_eq!(
        listing.matches(r#""transport":"sse""#).count(),
        2,
        "{listing}"
    );

    let before = [
        "kafkabefore anyone came",
        "alicehello over sse",
        "bobhi back",
    ];
    let _demo = restart_mid_conversation(demo, &mut browser, &before).await;
    for user in ["alice", "bob"] {
        assert!(page_count(&mut browser, user, "streamsOpened").await >= 2);
    }
    browser.wait_text("alice", "#members", "bob").await;
}
