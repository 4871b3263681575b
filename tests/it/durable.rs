//! Durable state against real databases (SQLite files, PostgreSQL at 127.0.0.1:5432) and
//! the real broker: read positions, migrations, revocation across hubs, presence events.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::common::*;
use rdkafka::Message as _;
use serde_json::{Value, json};
use wskafka::{Claim, Store};

const ADMIN: &str = "Basic YWRtaW46YWRtaW4tc2VjcmV0"; // admin:admin-secret

async fn commit(client: &mut Client, topic: &str, offsets: Value) {
    let reply = client
        .call(json!({"type":"commit","id":"c","topic":topic,"offsets":offsets}))
        .await;
    assert_eq!(reply, json!({"type":"committed","id":"c","topic":topic}));
}

/// Subscribes from the stored positions; returns the `subscribed` frame.
async fn from_committed(client: &mut Client, topic: &str) -> Value {
    client.subscribe_from(topic, json!("committed")).await
}

/// Two hubs on one database and a restart: positions committed on one device are where
/// another resumes, on any hub, and a device that read less cannot move them back.
async fn read_positions_follow_the_user(database: &str) {
    let (topic, glob) = fresh_topic("positions", 1).await;
    produce_many(&topic, 5).await;
    let args = ["--database-url", database];
    let (a, b) = tokio::join!(Hub::start(&glob, &args), Hub::start(&glob, &args));
    let alice = token("alice", &[], &[&glob]);

    // Nothing committed yet: the live stream, nothing waiting.
    let mut phone = a.connect(&alice).await;
    let subscribed = from_committed(&mut phone, &topic).await;
    assert_eq!(subscribed["partitions"], json!({"0": 5}));
    assert_eq!(subscribed["waiting"], json!(0));
    commit(&mut phone, &topic, json!({"0": 2})).await;
    // Written behind, within a second: another hub reads it from the database.
    a.until_metric("wskafka_commit_writes_total", 1.0).await;

    let mut laptop = b.connect(&alice).await;
    let subscribed = from_committed(&mut laptop, &topic).await;
    assert_eq!(subscribed["partitions"], json!({"0": 2}));
    assert_eq!(subscribed["waiting"], json!(3));
    for offset in 2..5 {
        assert_eq!(laptop.message().await.0, (0, offset));
    }
    commit(&mut laptop, &topic, json!({"0": 5})).await;
    b.until_metric("wskafka_commit_writes_total", 1.0).await;
    let read = phone.recv().await;
    assert_eq!(
        read,
        json!({"type": "read", "topic": topic, "offsets": {"0": 5}})
    );
    // The phone is behind: its commit is stored as received, but cannot move back (a clean
    // shutdown writes it below).
    commit(&mut phone, &topic, json!({"0": 3})).await;

    // Another user's positions are their own.
    let mut bob = a.connect(&token("bob", &[], &[&glob])).await;
    assert_eq!(from_committed(&mut bob, &topic).await["waiting"], json!(0));

    drop((phone, laptop, bob));
    let listen = a.addr.to_string();
    a.terminate().await;
    let a = Hub::start_at(&listen, &glob, &args).await;
    let mut tablet = a.connect(&alice).await;
    let subscribed = from_committed(&mut tablet, &topic).await;
    assert_eq!(subscribed["partitions"], json!({"0": 5}));
    assert_eq!(subscribed["waiting"], json!(0));
    drop(b);
}

/// A commit on one device reaches the user's other devices at once, on any hub, as a `read`
/// frame: the notification count of a second window follows the first without a reload.
/// Notices travel in order per topic, so each socket's next frame shows what it was not
/// told before it: the committing socket is not told its own commit, and another user is
/// told nothing of alice's.
#[tokio::test]
async fn a_commit_tells_the_users_other_sockets_on_every_hub() {
    let (notes, glob) = fresh_topic("read-notices", 1).await;
    produce_many(&notes, 5).await;
    let args = ["--user-topics", &glob];
    let (a, b) = tokio::join!(Hub::start(&glob, &args), Hub::start(&glob, &args));
    let (alice, bob) = (token("alice", &[], &[&glob]), token("bob", &[], &[&glob]));
    let (mut phone, mut laptop) = (a.connect(&alice).await, b.connect(&alice).await);
    let (mut bob_phone, mut bob_laptop) = (a.connect(&bob).await, b.connect(&bob).await);
    for client in [&mut phone, &mut laptop, &mut bob_phone, &mut bob_laptop] {
        client.subscribe(&notes).await;
    }
    let read = |offsets: Value| json!({"type": "read", "topic": notes, "offsets": offsets});

    commit(&mut phone, &notes, json!({"0": 2})).await;
    assert_eq!(laptop.recv().await, read(json!({"0": 2})));
    commit(&mut laptop, &notes, json!({"0": 4})).await;
    assert_eq!(phone.recv().await, read(json!({"0": 4})));
    commit(&mut bob_laptop, &notes, json!({"0": 1})).await;
    assert_eq!(bob_phone.recv().await, read(json!({"0": 1})));
}

#[tokio::test]
async fn read_positions_follow_the_user_on_sqlite() {
    read_positions_follow_the_user(&sqlite_url()).await;
}

#[tokio::test]
async fn read_positions_follow_the_user_on_postgres() {
    read_positions_follow_the_user(&fresh_postgres().await).await;
}

#[tokio::test]
async fn a_filtered_subscription_resumes_from_committed_without_a_count() {
    let (topic, glob) = fresh_topic("inbox", 1).await;
    let producer = producer();
    for user in ["alice", "bob", "alice", "bob"] {
        produce(
            &producer,
            &topic,
            user,
            json!({"for": user}).to_string().as_bytes(),
        )
        .await;
    }
    let hub = Hub::start(&glob, &["--user-topics", &glob]).await;
    let mut alice = hub.connect(&token("alice", &[], &[&glob])).await;
    commit(&mut alice, &topic, json!({"0": 1})).await;
    let subscribed = from_committed(&mut alice, &topic).await;
    assert_eq!(subscribed["partitions"], json!({"0": 1}));
    // Counting would mean reading every record to find hers.
    assert_eq!(subscribed.get("waiting"), None);
    let (position, message) = alice.message().await;
    assert_eq!(position, (0, 2));
    assert_eq!(message["key"], "alice");
}

#[tokio::test]
async fn commits_are_checked_like_subscribes() {
    let (topic, glob) = fresh_topic("commit-rights", 1).await;
    let hub = Hub::start(&glob, &[]).await;
    let mut reader = hub.connect(&token("reader", &[], &[&topic])).await;
    let other = format!("{glob}-other").replace('*', "x");
    let reply = reader
        .call(json!({"type":"commit","id":1,"topic":other,"offsets":{"0":1}}))
        .await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    let reply = reader
        .call(json!({"type":"commit","id":2,"topic":topic,"offsets":{"0":-1}}))
        .await;
    assert_eq!(reply["code"], "bad_request", "{reply}");
    // The connection is still usable.
    commit(&mut reader, &topic, json!({"0": 0})).await;
}

async fn migrating_twice_changes_nothing(database: &str) {
    let store = Store::connect(database, 2).await.unwrap();
    let offsets = BTreeMap::from([(0, 7), (3, 9)]);
    store.commit("alice", "t", "", &offsets).await.unwrap();
    let history = migrations(database).await;
    store.close().await;

    let again = Store::connect(database, 2).await.unwrap();
    assert_eq!(migrations(database).await, history);
    assert_eq!(again.committed("alice", "t", "").await.unwrap(), offsets);
    again.close().await;
}

/// Positions stored before rooms had positions of their own are the whole topic's after.
async fn positions_from_before_keys_stay_the_topics(database: &str) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(database).await.unwrap();
    sqlx::migrate!()
        .run_to(20261125000000, &pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO read_positions (sub, topic, kafka_partition, next_offset, updated_at)
         VALUES ('alice', 't', 2, 40, 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let store = Store::connect(database, 2).await.unwrap();
    assert_eq!(
        store.committed("alice", "t", "").await.unwrap(),
        BTreeMap::from([(2, 40)])
    );
    store
        .commit("alice", "t", "lobby", &BTreeMap::from([(2, 7)]))
        .await
        .unwrap();
    assert_eq!(
        store.committed("alice", "t", "lobby").await.unwrap(),
        BTreeMap::from([(2, 7)])
    );
    assert_eq!(
        store.committed("alice", "t", "").await.unwrap(),
        BTreeMap::from([(2, 40)])
    );
    store.close().await;
}

#[tokio::test]
async fn positions_from_before_keys_stay_the_topics_on_sqlite() {
    positions_from_before_keys_stay_the_topics(&sqlite_url()).await;
}

#[tokio::test]
async fn positions_from_before_keys_stay_the_topics_on_postgres() {
    positions_from_before_keys_stay_the_topics(&fresh_postgres().await).await;
}

/// A push claim is new, unfinished (claimed, never said done: its hub died while sending)
/// or done; claims stored before claims could be unfinished read as done.
async fn push_claims_tell_new_unfinished_and_done(database: &str) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(database).await.unwrap();
    sqlx::migrate!()
        .run_to(20261207000000, &pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO push_sent (endpoint, record, sent_at) VALUES ('https://p/1', 't/0/1', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let store = Store::connect(database, 2).await.unwrap();
    assert_eq!(
        store.claim_push("https://p/1", "t/0/1").await.unwrap(),
        Claim::Done
    );
    assert_eq!(
        store.claim_push("https://p/1", "t/0/2").await.unwrap(),
        Claim::New
    );
    assert_eq!(
        store.claim_push("https://p/1", "t/0/2").await.unwrap(),
        Claim::Unfinished
    );
    store.push_done("https://p/1", "t/0/2").await.unwrap();
    assert_eq!(
        store.claim_push("https://p/1", "t/0/2").await.unwrap(),
        Claim::Done
    );
    assert_eq!(
        store.claim_push("https://p/2", "t/0/2").await.unwrap(),
        Claim::New
    );
    store.unclaim_push("https://p/2", "t/0/2").await.unwrap();
    assert_eq!(
        store.claim_push("https://p/2", "t/0/2").await.unwrap(),
        Claim::New
    );
    store.close().await;
}

#[tokio::test]
async fn push_claims_tell_new_unfinished_and_done_on_sqlite() {
    push_claims_tell_new_unfinished_and_done(&sqlite_url()).await;
}

#[tokio::test]
async fn push_claims_tell_new_unfinished_and_done_on_postgres() {
    push_claims_tell_new_unfinished_and_done(&fresh_postgres().await).await;
}

/// The applied migrations, as sqlx records them.
async fn migrations(database: &str) -> Vec<(i64, String)> {
    let pool = sqlx::AnyPool::connect(database).await.unwrap();
    let rows = sqlx::query_as("SELECT version, description FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    rows
}

#[tokio::test]
async fn migrating_twice_changes_nothing_on_sqlite() {
    migrating_twice_changes_nothing(&sqlite_url()).await;
}

#[tokio::test]
async fn migrating_twice_changes_nothing_on_postgres() {
    migrating_twice_changes_nothing(&fresh_postgres().await).await;
}

#[tokio::test]
async fn hubs_migrating_an_empty_postgres_together_both_start() {
    let database = fresh_postgres().await;
    let stores = futures_util::future::join_all((0..4).map(|_| Store::connect(&database, 1))).await;
    for store in stores {
        store.expect("every hub starts");
    }
    // Each migration applied once, whichever hub applied it.
    assert_eq!(
        migrations(&database).await.len(),
        sqlx::migrate!().iter().count()
    );
}

#[tokio::test]
async fn a_revocation_closes_sockets_on_every_hub_and_refuses_the_token() {
    let (topic, glob) = fresh_topic("revoke", 1).await;
    let database = fresh_postgres().await;
    let control = unique("control");
    let args = [
        "--database-url",
        &database,
        "--admin-password",
        "admin-secret",
        "--control-topic",
        &control,
    ];
    let (a, b) = tokio::join!(Hub::start(&glob, &args), Hub::start(&glob, &args));
    let before = now_secs();
    let stolen = token_with("alice", "stolen", before, &[&glob]);
    let other = token_with("alice", "other", before, &[&glob]);
    let mut victim = b.connect(&stolen).await;
    let mut bystander = b.connect(&other).await;
    victim.subscribe(&topic).await;

    let revoke = |body: &'static str| {
        a.request(
            "POST",
            "/admin/revocations",
            &[
                ("Authorization", ADMIN),
                ("Content-Type", "application/json"),
            ],
            body,
        )
    };
    let asked = Instant::now();
    assert_eq!(revoke(r#"{"jti":"stolen"}"#).await.0, 200);
    let frame = victim.closed().await.expect("a close frame");
    eprintln!(
        "revocation closed the socket on the other hub in {:?}",
        asked.elapsed()
    );
    assert_eq!(
        (u16::from(frame.code), frame.reason.as_str()),
        (4403, "token revoked")
    );
    // Only that token.
    assert_eq!(
        bystander.call(json!({"type":"ping","id":1})).await["type"],
        "pong"
    );
    for hub in [&a, &b] {
        assert_eq!(hub.handshake_status(&hub.url(&stolen)).await, 401);
        let mut first_frame = hub.connect_bare().await;
        first_frame
            .send(json!({"type":"auth","token":stolen}))
            .await;
        assert_eq!(u16::from(first_frame.closed().await.unwrap().code), 4403);
    }

    // A user's revocation covers every token issued until then, and no later one.
    assert_eq!(revoke(r#"{"sub":"alice"}"#).await.0, 200);
    assert_eq!(u16::from(bystander.closed().await.unwrap().code), 4403);
    assert_eq!(b.handshake_status(&b.url(&other)).await, 401);
    let fresh = token_with("alice", "fresh", now_secs() + 1, &[&glob]);
    let mut again = b.connect(&fresh).await;
    assert_eq!(
        again.call(json!({"type":"ping","id":2})).await["type"],
        "pong"
    );

    // A revoked token cannot replace a live one either.
    let mut carol = a
        .connect(&token_with("carol", "c1", before, &[&glob]))
        .await;
    assert_eq!(revoke(r#"{"jti":"c2"}"#).await.0, 200);
    let reply = carol
        .call(json!({"type":"auth","id":"r","token":token_with("carol", "c2", before, &[&glob])}))
        .await;
    assert_eq!(reply["code"], "unauthorized", "{reply}");

    // The API itself needs the admin credential and a well-formed body.
    let (status, _) = a
        .request("POST", "/admin/revocations", &[], r#"{"sub":"carol"}"#)
        .await;
    assert_eq!(status, 401);
    assert_eq!(revoke(r#"{"jti":"x","sub":"y"}"#).await.0, 400);
    assert_eq!(revoke("not json").await.0, 400);
}

/// Reads the presence topic's first `count` events.
async fn presence_events(topic: &str, count: i64) -> Vec<Value> {
    read_records(topic, (0..count).map(|offset| (0, offset)))
        .await
        .into_values()
        .map(|record| serde_json::from_slice(record.payload().unwrap()).unwrap())
        .collect()
}

#[tokio::test]
async fn presence_events_follow_a_socket_from_connect_to_disconnect() {
    let (topic, glob) = fresh_topic("presence", 1).await;
    let presence = unique("presence");
    let hub = Hub::start(
        &glob,
        &["--presence-topic", &presence, "--instance-id", "hub-p1"],
    )
    .await;
    let mut alice = hub.connect(&token("alice", &[], &[&glob])).await;
    alice.subscribe(&topic).await;
    let reply = alice
        .call(json!({"type":"unsubscribe","id":1,"topic":topic}))
        .await;
    assert_eq!(reply["type"], "unsubscribed");
    alice.subscribe(&topic).await;
    alice.ws.close(None).await.unwrap();

    let events = presence_events(&presence, 5).await;
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "connect",
            "subscribe",
            "unsubscribe",
            "subscribe",
            "disconnect"
        ]
    );
    for event in &events {
        assert_eq!(event["sub"], "alice");
        assert_eq!(event["instance"], "hub-p1");
        assert_eq!(event["connection"], events[0]["connection"]);
    }
    assert_eq!(events[1]["topic"], topic);
    assert_eq!(events[4]["topics"], json!([topic]));
    assert_eq!(events[4]["reason"], "closed");
}

#[tokio::test]
async fn sockets_of_a_killed_hub_get_their_disconnect() {
    let (topic, glob) = fresh_topic("presence-kill", 1).await;
    let presence = unique("presence");
    let database = sqlite_url();
    let args = |instance: &'static str| {
        [
            "--presence-topic".to_string(),
            presence.clone(),
            "--database-url".into(),
            database.clone(),
            "--instance-id".into(),
            instance.into(),
            "--instance-timeout".into(),
            "2s".into(),
        ]
    };
    let start = |instance: &'static str| {
        let args = args(instance);
        let glob = glob.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Hub::start(&glob, &args).await
        }
    };

    // Killed, and never back: another hub takes it for dead after the instance timeout.
    let lost = start("hub-lost").await;
    let mut bob = lost.connect(&token("bob", &[], &[&glob])).await;
    bob.subscribe(&topic).await;
    let events = presence_events(&presence, 2).await;
    assert_eq!(events[1]["type"], "subscribe");
    lost.kill().await;
    let survivor = start("hub-survivor").await;
    let events = presence_events(&presence, 3).await;
    assert_eq!(events[2]["type"], "disconnect");
    assert_eq!(events[2]["reason"], "instance_lost");
    assert_eq!(events[2]["connection"], events[0]["connection"]);
    assert_eq!(events[2]["instance"], "hub-lost");

    // Killed and restarted under the same instance id: accounted for as it starts.
    let mut carol = survivor.connect(&token("carol", &[], &[&glob])).await;
    carol.subscribe(&topic).await;
    let events = presence_events(&presence, 5).await;
    assert_eq!(events[4]["type"], "subscribe");
    survivor.kill().await;
    let restarted = start("hub-survivor").await;
    let events = presence_events(&presence, 6).await;
    assert_eq!(events[5]["type"], "disconnect");
    assert_eq!(events[5]["sub"], "carol");
    assert_eq!(events[5]["connection"], events[3]["connection"]);
    drop(restarted);
}
