//! Chat rooms as keys of one topic: a sender no client can forge, grants on keys that keep
//! a private room private, many rooms on one socket, and `history` paging back through a
//! room whose records are sparse among other rooms', some written by Kafka's own Java
//! client. Real Kafka, the real hub, an independent rdkafka consumer.

use std::collections::{BTreeMap, BTreeSet};

use crate::common::*;
use rdkafka::Message as _;
use rdkafka::message::Headers as _;
use rdkafka::producer::FutureRecord;
use serde_json::{Value, json};

/// A fresh topic of `partitions` and a hub that treats it as keyed by room.
async fn rooms(prefix: &str, partitions: i32, extra: &[&str]) -> (String, String, Hub) {
    let (topic, glob) = fresh_topic(prefix, partitions).await;
    let mut args = vec!["--keyed-topics", &glob, "--publish-rate", "100000"];
    args.extend(extra);
    let hub = Hub::start(&glob, &args).await;
    (topic, glob, hub)
}

#[tokio::test]
async fn the_sender_is_whoever_published_not_whoever_the_client_claims() {
    let (topic, glob, hub) = rooms("sender", 1, &[]).await;
    let mut bob = hub.connect(&token("bob", &[], &[&glob])).await;
    bob.send(json!({"type": "subscribe", "id": "s", "topic": topic, "key": "lobby"}))
        .await;
    assert_eq!(bob.recv().await["type"], "subscribed");
    let mut mallory = hub.connect(&token("mallory", &[&glob], &[])).await;

    // Every spelling of every `wskafka-` header is the hub's: a consumer that matches header
    // names without regard to case must not read a forged sender either.
    for name in [
        "wskafka-sender",
        "WSKAFKA-SENDER",
        "Wskafka-Sender",
        "wsKafka-anything",
    ] {
        let forged = mallory
            .call(
                json!({"type": "publish", "id": 1, "topic": topic, "key": "lobby",
                         "headers": {"x-trace": "1", name: "alice"}, "payload": {"text": "hi"}}),
            )
            .await;
        assert_eq!(
            forged,
            json!({"type": "error", "id": 1, "code": "bad_request",
                   "message": format!("the header {name:?} is reserved: header names beginning with \"wskafka-\", in any case, are the hub's")}),
            "{name}"
        );
    }
    // Naming someone else in the payload changes nothing about who sent it.
    let ack = mallory
        .call(
            json!({"type": "publish", "id": 2, "topic": topic, "key": "lobby",
                     "payload": {"user": "alice", "text": "it is me, alice"}}),
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let (_, message) = bob.message().await;
    assert_eq!(message["sender"], "mallory", "{message}");
    assert_eq!(message["payload"]["user"], "alice");
    assert!(message.get("headers").is_none(), "{message}");
    let stored = read_records(&topic, [position(&ack)]).await;
    let headers = stored[&position(&ack)].headers().unwrap();
    let sender: Vec<(&str, Option<&[u8]>)> = headers.iter().map(|h| (h.key, h.value)).collect();
    assert_eq!(sender, [("wskafka-sender", Some(b"mallory".as_slice()))]);

    // A backend behind Kafka is trusted to name its own sender; a record without one has
    // none.
    let producer = producer();
    let named = rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
        key: "wskafka-sender",
        value: Some("billing"),
    });
    producer
        .send(
            FutureRecord::to(&topic)
                .key("lobby")
                .payload("{}")
                .headers(named),
            PATIENCE,
        )
        .await
        .unwrap();
    produce(&producer, &topic, "lobby", b"{}").await;
    assert_eq!(bob.message().await.1["sender"], "billing");
    let anonymous = bob.message().await.1;
    assert!(anonymous.get("sender").is_none(), "{anonymous}");
}

#[tokio::test]
async fn a_private_room_is_closed_to_a_token_without_its_key() {
    let (topic, _, hub) = rooms("private", 2, &[]).await;
    let (lobby, staff) = (format!("{topic}:lobby"), format!("{topic}:staff"));
    let member = token("alice", &[&lobby, &staff], &[&lobby, &staff]);
    let outsider = token("eve", &[&lobby], &[&lobby]);
    let mut alice = hub.connect(&member).await;
    let mut eve = hub.connect(&outsider).await;

    for (request, what) in [
        (
            json!({"type": "subscribe", "topic": topic, "key": "staff"}),
            "subscribe",
        ),
        (
            json!({"type": "subscribe", "topic": topic}),
            "subscribe to every room",
        ),
        (
            json!({"type": "publish", "topic": topic, "key": "staff", "payload": 1}),
            "publish",
        ),
        (
            json!({"type": "history", "topic": topic, "key": "staff"}),
            "history",
        ),
        (
            json!({"type": "history", "topic": topic}),
            "every room's history",
        ),
        (
            json!({"type": "commit", "topic": topic, "key": "staff", "offsets": {"0": 1}}),
            "commit",
        ),
    ] {
        let reply = eve.call(request).await;
        assert_eq!(reply["code"], "forbidden", "{what}: {reply}");
    }
    let unkeyed = eve
        .call(json!({"type": "publish", "topic": topic, "payload": 1}))
        .await;
    assert_eq!(unkeyed["code"], "bad_request", "{unkeyed}");

    // What the staff say reaches neither eve's live subscription nor her replay.
    eve.send(json!({"type": "subscribe", "id": "s", "topic": topic, "key": "lobby"}))
        .await;
    assert_eq!(eve.recv().await["type"], "subscribed");
    for (n, room) in ["staff", "lobby", "staff", "lobby"].into_iter().enumerate() {
        let ack = alice
            .call(json!({"type": "publish", "topic": topic, "key": room, "payload": {"n": n}}))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    for n in [1, 3] {
        let (_, message) = eve.message().await;
        assert_eq!(
            (message["key"].as_str(), message["payload"]["n"].as_i64()),
            (Some("lobby"), Some(n))
        );
    }
    let mut later = hub.connect(&outsider).await;
    later
        .send(json!({"type": "subscribe", "id": "s", "topic": topic, "key": "lobby", "from": "earliest"}))
        .await;
    assert_eq!(later.recv().await["type"], "subscribed");
    for n in [1, 3] {
        let (_, message) = later.message().await;
        assert_eq!(message["payload"]["n"], n, "{message}");
    }
    let page = later
        .call(json!({"type": "history", "topic": topic, "key": "lobby"}))
        .await;
    let keys: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["lobby", "lobby"], "{page}");
}

#[tokio::test]
async fn one_socket_follows_twenty_rooms_of_one_topic_and_gets_exactly_theirs() {
    // One partition: Kafka's order is then total, and a marker proves nothing else came.
    let (topic, glob, hub) = rooms("many", 1, &[]).await;
    let mut client = hub.connect(&token("alice", &[], &[&glob])).await;
    let followed: BTreeSet<String> = (0..20).map(|n| format!("room-{n}")).collect();
    for (n, room) in followed.iter().enumerate() {
        let reply = client
            .call(json!({"type": "subscribe", "id": n, "topic": topic, "key": room}))
            .await;
        assert_eq!(
            (reply["type"].as_str(), reply["key"].as_str()),
            (Some("subscribed"), Some(room.as_str()))
        );
    }
    let producer = murmur2_producer();
    let mut expected = Vec::new();
    for n in 0..200 {
        let room = format!("room-{}", n % 40);
        let at = produce(
            &producer,
            &topic,
            &room,
            json!({"n": n}).to_string().as_bytes(),
        )
        .await;
        if followed.contains(&room) {
            expected.push((at, room));
        }
    }
    produce(&producer, &topic, "room-0", br#""marker""#).await;
    let mut got = Vec::new();
    loop {
        let (at, message) = client.message().await;
        if message["payload"] == "marker" {
            break;
        }
        got.push((at, message["key"].as_str().unwrap().to_string()));
    }
    assert_eq!(got, expected);

    // Leaving one room leaves the others.
    let left = client
        .call(json!({"type": "unsubscribe", "topic": topic, "key": "room-3"}))
        .await;
    assert_eq!(
        left,
        json!({"type": "unsubscribed", "topic": topic, "key": "room-3"})
    );
    produce(&producer, &topic, "room-3", b"1").await;
    produce(&producer, &topic, "room-4", br#""after""#).await;
    let (_, message) = client.message().await;
    assert_eq!(
        (message["key"].as_str(), &message["payload"]),
        (Some("room-4"), &json!("after"))
    );
}

/// Pages back through `key` of `topic`, 50 at a time, until the oldest record; checks what
/// every page must hold and returns the pages' positions, newest page first, and how many
/// pages the hub's bound on reading cut short.
async fn page_back(
    client: &mut Client,
    topic: &str,
    key: Option<&str>,
) -> (Vec<Vec<(i32, i64)>>, usize) {
    let mut pages = Vec::new();
    let mut partial = 0;
    let mut before: Option<Value> = None;
    for n in 0.. {
        assert!(n < 10_000, "paging never reached the oldest record");
        let mut request = json!({"type": "history", "id": n, "topic": topic, "limit": 50});
        if let Some(key) = key {
            request["key"] = json!(key);
        }
        if let Some(before) = &before {
            request["before"] = before.clone();
        }
        let page = client.call(request).await;
        assert_eq!(
            (page["type"].as_str(), page["id"].as_i64()),
            (Some("history"), Some(n)),
            "{page}"
        );
        let messages = page["messages"].as_array().unwrap();
        assert!(messages.len() <= 50);
        if page["partial"] == true {
            partial += 1;
        } else if page["oldest"] == false {
            assert_eq!(
                messages.len(),
                50,
                "only a partial or the last page is short"
            );
        }
        for m in messages {
            assert_eq!(m["type"], "message");
            if let Some(key) = key {
                assert_eq!(m["key"], key, "{m}");
            }
        }
        pages.push(messages.iter().map(position).collect());
        if page["oldest"] == true {
            return (pages, partial);
        }
        before = Some(page["before"].clone());
    }
    unreachable!()
}

/// Every record once; within a page in offset order per partition; every page older than
/// the one before it.
fn assert_pages_cover(pages: &[Vec<(i32, i64)>], expected: &BTreeSet<(i32, i64)>) {
    let mut seen = BTreeSet::new();
    let mut newest_below: BTreeMap<i32, i64> = BTreeMap::new();
    for page in pages {
        let mut per_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        for &(p, o) in page {
            assert!(seen.insert((p, o)), "{:?} on two pages", (p, o));
            per_partition.entry(p).or_default().push(o);
        }
        for (p, offsets) in per_partition {
            assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
            if let Some(&below) = newest_below.get(&p) {
                assert!(
                    *offsets.last().unwrap() < below,
                    "a page newer than the one before"
                );
            }
            newest_below.insert(p, offsets[0]);
        }
    }
    assert_eq!(&seen, expected);
}

#[tokio::test]
async fn history_pages_back_through_a_sparse_room_to_its_oldest_record() {
    // Paged as fast as an export would, past a chat page's budget.
    let (topic, glob, hub) = rooms("history", 4, &["--request-rates", "history=1000"]).await;
    let room = "room-42";
    let other = |n: usize| format!("other-{}", n % 500);
    // 11,000 records, one in eleven the room's, from three producers: an rdkafka backend,
    // Kafka's own Java client, and clients of the hub.
    let producer = murmur2_producer();
    let mut sends = Vec::new();
    for n in 0..5_500 {
        let key = if n % 11 == 0 {
            room.to_string()
        } else {
            other(n)
        };
        sends.push((key, json!({"n": n}).to_string()));
    }
    let sent = futures_util::future::join_all(sends.iter().map(|(key, value)| {
        producer.send(FutureRecord::to(&topic).key(key).payload(value), PATIENCE)
    }))
    .await;
    assert!(sent.iter().all(Result::is_ok));
    let java: Vec<(String, String)> = (5_500..9_900)
        .map(|n| {
            let key = if n % 11 == 0 {
                room.to_string()
            } else {
                other(n)
            };
            (key, json!({"n": n}).to_string())
        })
        .collect();
    java_produce(&topic, &java).await;
    let mut writer = hub.connect(&token("writer", &[&glob], &[])).await;
    for n in 9_900..11_000 {
        let key = if n % 11 == 0 {
            room.to_string()
        } else {
            other(n)
        };
        writer
            .send(json!({"type": "publish", "id": n, "topic": topic, "key": key, "payload": {"n": n}}))
            .await;
    }
    let acks = writer.acks(1_100).await;
    assert!(acks.iter().all(|a| a["type"] == "ack"));

    let stored = read_all(broker(), &topic).await;
    assert_eq!(stored.len(), 11_000);
    let of_room: BTreeSet<(i32, i64)> = stored
        .iter()
        .filter(|(_, m)| m.key() == Some(room.as_bytes()))
        .map(|(&at, _)| at)
        .collect();
    assert_eq!(of_room.len(), 1_000);
    let partitions: BTreeSet<i32> = of_room.iter().map(|(p, _)| *p).collect();
    assert_eq!(
        partitions.len(),
        1,
        "every producer put the room in one partition"
    );

    let mut reader = hub.connect(&token("reader", &[], &[&glob])).await;
    let (pages, _) = page_back(&mut reader, &topic, Some(room)).await;
    assert_eq!(pages.len(), 20);
    assert_pages_cover(&pages, &of_room);

    // A hub that may read only 100 offsets per request cuts pages short, says so, and the
    // next request carries on: the same records, over more pages.
    let tight = Hub::start(
        &glob,
        &[
            "--keyed-topics",
            &glob,
            "--history-scan",
            "100",
            "--request-rates",
            "history=1000",
        ],
    )
    .await;
    let mut reader = tight.connect(&token("reader", &[], &[&glob])).await;
    let (pages, partial) = page_back(&mut reader, &topic, Some(room)).await;
    assert!(partial > 0, "no page was cut short");
    assert_pages_cover(&pages, &of_room);
    eprintln!(
        "room of 1,000 records among 11,000: 20 pages; with a bound of 100 offsets, {} pages, {partial} of them partial",
        pages.len()
    );
}

#[tokio::test]
async fn history_of_a_whole_topic_merges_its_partitions_newest_first() {
    let (topic, glob) = fresh_topic("whole", 3).await;
    let produced = produce_many(&topic, 400).await;
    let hub = Hub::start(&glob, &["--request-rates", "history=1000"]).await;
    let mut reader = hub.connect(&token("reader", &[], &[&glob])).await;
    let (pages, _) = page_back(&mut reader, &topic, None).await;
    let expected: BTreeSet<(i32, i64)> = produced.keys().copied().collect();
    assert_pages_cover(&pages, &expected);
    assert_eq!(pages.len(), 8);
}

#[tokio::test]
async fn history_before_a_subscription_meets_its_live_records_without_gap_or_repeat() {
    let (topic, glob, hub) = rooms("seam", 2, &[]).await;
    let producer = murmur2_producer();
    let say = async |numbers: std::ops::Range<i64>| {
        for n in numbers {
            let body = json!({"n": n}).to_string();
            produce(&producer, &topic, "lobby", body.as_bytes()).await;
        }
    };
    say(0..30).await;
    let mut client = hub.connect(&token("alice", &[], &[&glob])).await;
    let subscribed = client
        .call(json!({"type": "subscribe", "id": "s", "topic": topic, "key": "lobby"}))
        .await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    say(30..40).await;
    let mut live = Vec::new();
    for _ in 30..40 {
        live.push(client.message().await.1["payload"]["n"].as_i64().unwrap());
    }
    let page = client
        .call(json!({"type": "history", "topic": topic, "key": "lobby", "before": "subscribed", "limit": 100}))
        .await;
    let older: Vec<i64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["payload"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(page["oldest"], true, "{page}");
    let both: Vec<i64> = older.into_iter().chain(live).collect();
    assert_eq!(both, (0..40).collect::<Vec<_>>());

    // Without a subscription to page back from, the request says what is missing.
    let orphan = client
        .call(json!({"type": "history", "topic": topic, "key": "other", "before": "subscribed"}))
        .await;
    assert_eq!(orphan["code"], "bad_request", "{orphan}");
}

#[tokio::test]
async fn one_socket_paging_history_cannot_hold_the_hubs_readers_from_others() {
    let (topic, glob, hub) = rooms(
        "fair",
        1,
        &[
            "--max-concurrent-history",
            "3",
            "--request-rates",
            "history=1000",
        ],
    )
    .await;
    produce_many(&topic, 2000).await;
    let reader = token("reader", &[], &[&glob]);
    let (mut greedy, mut other) = (hub.connect(&reader).await, hub.connect(&reader).await);
    let page = |id: i64| json!({"type": "history", "id": id, "topic": topic, "limit": 50});
    let asked = 12;
    for id in 0..asked {
        greedy.send(page(id)).await;
    }
    // Once its pages are being read (the first is back), the other socket asks for one.
    assert_eq!(greedy.recv().await["type"], "history");
    other.send(page(-1)).await;
    // The greedy socket holds two of the three readers at a time, its pages waiting behind
    // its own: the other socket's page comes before half of the greedy one's, where one pool
    // served in order of asking would make it wait for the greedy one's other eleven.
    let greedy_done = async {
        let mut done = Vec::new();
        for _ in 1..asked {
            assert_eq!(greedy.recv().await["type"], "history");
            done.push(std::time::Instant::now());
        }
        done[asked as usize / 2]
    };
    let other_done = async {
        assert_eq!(other.recv().await["type"], "history");
        std::time::Instant::now()
    };
    let (greedy_done, other_done) = tokio::join!(greedy_done, other_done);
    assert!(
        other_done < greedy_done,
        "the other socket waited {:?} past half the greedy one's pages",
        other_done - greedy_done
    );
}
