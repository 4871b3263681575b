//! Who is here, across hubs: rosters built from Kafka and the shared database, joins and
//! leaves pushed in the roster's order, a dead hub's members leaving once, online status,
//! and ephemeral signals. Three real hubs, real Kafka, real PostgreSQL.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

/// What every hub of one test shares: its topics, database and settings.
struct Cluster {
    glob: String,
    topic: String,
    args: Vec<String>,
    database: String,
}

const INSTANCE_TIMEOUT: Duration = Duration::from_secs(3);

impl Cluster {
    async fn new(prefix: &str) -> Cluster {
        Cluster::with_timeout(prefix, INSTANCE_TIMEOUT).await
    }

    async fn with_timeout(prefix: &str, timeout: Duration) -> Cluster {
        let (topic, glob) = fresh_topic(prefix, 2).await;
        let database = fresh_postgres().await;
        let mut args = vec![
            "--database-url".to_string(),
            database.clone(),
            "--keyed-topics".into(),
            glob.clone(),
            "--instance-timeout".into(),
            format!("{}ms", timeout.as_millis()),
        ];
        args.extend(own_presence_topics());
        Cluster {
            glob,
            topic,
            args,
            database,
        }
    }

    async fn hub(&self) -> Hub {
        self.hub_with(&[]).await
    }

    async fn hub_with(&self, extra: &[&str]) -> Hub {
        let mut args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        args.extend(extra);
        Hub::start(&self.glob, &args).await
    }

    async fn database(&self) -> sqlx::PgConnection {
        use sqlx::Connection as _;
        sqlx::PgConnection::connect(&self.database).await.unwrap()
    }

    /// A token that may follow, and signal in, the rooms `rooms` (every room for `*`).
    fn token(&self, user: &str, rooms: &[&str]) -> String {
        let grants: Vec<String> = rooms
            .iter()
            .map(|room| match *room {
                "*" => self.glob.clone(),
                room => format!("{}:{room}", self.topic),
            })
            .collect();
        let grants: Vec<&str> = grants.iter().map(String::as_str).collect();
        token(user, &grants, &grants)
    }
}

/// When the hub `instance` last wrote its heartbeat, in ms since the epoch.
async fn last_heartbeat(db: &mut sqlx::PgConnection, instance: &str) -> Option<i64> {
    sqlx::query_scalar("SELECT last_seen FROM instances WHERE id = $1")
        .bind(instance)
        .fetch_optional(db)
        .await
        .unwrap()
}

async fn enter(client: &mut Client, topic: &str, room: &str, extras: Value) {
    let mut request = json!({"type": "subscribe", "id": "s", "topic": topic, "key": room});
    for (name, value) in extras.as_object().unwrap() {
        request[name] = value.clone();
    }
    let reply = client.call(request).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
}

/// The members of `room` as `hub` lists them, asked as often as the socket's budget allows
/// (`until_members` asks every 20 ms).
async fn members(client: &mut Client, topic: &str, room: &str) -> BTreeSet<String> {
    let reply = loop {
        let reply = client
            .call(json!({"type": "presence", "topic": topic, "key": room}))
            .await;
        match reply["retry_after_ms"].as_u64() {
            Some(wait) => tokio::time::sleep(Duration::from_millis(wait)).await,
            None => break reply,
        }
    };
    assert_eq!(reply["type"], "presence", "{reply}");
    let listed: BTreeSet<String> = serde_json::from_value(reply["members"].clone()).unwrap();
    assert_eq!(reply["count"], listed.len(), "{reply}");
    listed
}

/// Waits until every client lists `expected` as the room's members.
async fn until_members(clients: &mut [&mut Client], topic: &str, room: &str, expected: &[&str]) {
    let expected: BTreeSet<String> = expected.iter().map(|u| u.to_string()).collect();
    for client in clients.iter_mut() {
        eventually(format!("{room} holds {expected:?}"), async || {
            members(client, topic, room).await == expected
        })
        .await;
    }
}

#[tokio::test]
async fn every_hub_lists_the_same_members_and_a_user_on_two_hubs_is_one() {
    let cluster = Cluster::new("roster").await;
    let (a, b) = tokio::join!(cluster.hub(), cluster.hub());
    let topic = cluster.topic.clone();
    let mut watcher_a = a.connect(&cluster.token("watcher", &["*"])).await;
    let mut watcher_b = b.connect(&cluster.token("watcher", &["*"])).await;

    let alice = cluster.token("alice", &["lobby"]);
    let mut alice_laptop = a.connect(&alice).await;
    let mut alice_phone = b.connect(&alice).await;
    let mut bob = b.connect(&cluster.token("bob", &["lobby", "staff"])).await;
    enter(&mut alice_laptop, &topic, "lobby", json!({})).await;
    enter(&mut alice_phone, &topic, "lobby", json!({})).await;
    enter(&mut bob, &topic, "staff", json!({})).await;
    until_members(
        &mut [&mut watcher_a, &mut watcher_b],
        &topic,
        "lobby",
        &["alice"],
    )
    .await;
    until_members(
        &mut [&mut watcher_a, &mut watcher_b],
        &topic,
        "staff",
        &["bob"],
    )
    .await;

    // A hub started now lists them at once: it read the roster before turning ready.
    let c = cluster.hub().await;
    let mut watcher_c = c.connect(&cluster.token("watcher", &["*"])).await;
    assert_eq!(
        members(&mut watcher_c, &topic, "lobby").await,
        BTreeSet::from(["alice".to_string()])
    );
    let whole = watcher_c
        .call(json!({"type": "presence", "topic": topic}))
        .await;
    assert_eq!(whole["members"], json!(["alice", "bob"]), "{whole}");

    // Alice leaves only when her last socket closes.
    drop(alice_laptop);
    let all = &mut [&mut watcher_a, &mut watcher_b, &mut watcher_c];
    until_members(all, &topic, "lobby", &["alice"]).await;
    drop(alice_phone);
    until_members(all, &topic, "lobby", &[]).await;
}

#[tokio::test]
async fn joins_and_leaves_follow_the_roster_once_across_hubs_and_a_killed_hub_leaves_once() {
    let cluster = Cluster::new("joins").await;
    let (a, b, doomed) = tokio::join!(cluster.hub(), cluster.hub(), cluster.hub());
    let topic = cluster.topic.clone();
    let mut observer = a.connect(&cluster.token("observer", &["*"])).await;
    enter(&mut observer, &topic, "lobby", json!({"presence": true})).await;
    let mut next = async || observer.presence_diff().await;
    // The observer's own join comes first.
    assert_eq!(next().await, joined(&["observer"]));

    let carol = cluster.token("carol", &["lobby"]);
    let mut carol_b = b.connect(&carol).await;
    enter(&mut carol_b, &topic, "lobby", json!({})).await;
    assert_eq!(next().await, joined(&["carol"]));
    // Her second socket, on the hub that will die: no second join.
    let mut carol_doomed = doomed.connect(&carol).await;
    enter(&mut carol_doomed, &topic, "lobby", json!({})).await;
    let mut dave = doomed.connect(&cluster.token("dave", &["lobby"])).await;
    enter(&mut dave, &topic, "lobby", json!({})).await;
    assert_eq!(next().await, joined(&["dave"]));

    // SIGKILL: no socket of the dead hub says goodbye. Within the instance timeout another
    // hub writes them off: dave leaves, once; carol stays, on hub b.
    doomed.kill().await;
    assert_eq!(next().await, left(&["dave"]));
    drop(carol_b);
    assert_eq!(next().await, left(&["carol"]));
    // Nothing else came: a ping answered now is the next frame.
    let pong = observer.call(json!({"type": "ping", "id": "p"})).await;
    assert_eq!(pong["type"], "pong", "{pong}");
    assert_eq!(
        members(&mut observer, &topic, "lobby").await,
        BTreeSet::from(["observer".to_string()])
    );
}

/// A `presence_diff` of joins only.
fn joined(users: &[&str]) -> (Vec<String>, Vec<String>) {
    (users.iter().map(|u| u.to_string()).collect(), Vec::new())
}

/// A `presence_diff` of leaves only.
fn left(users: &[&str]) -> (Vec<String>, Vec<String>) {
    (Vec::new(), users.iter().map(|u| u.to_string()).collect())
}

/// Time the roster takes from one hub's tombstone to another hub's `leave`: a Kafka round
/// trip, allowed generously for a loaded test machine.
const PROPAGATION: Duration = Duration::from_secs(1);

#[tokio::test]
async fn hubs_killed_at_any_point_of_their_heartbeat_leave_everywhere_within_the_timeout() {
    // Long enough that a third of it (how late a fixed reaping cycle could be) is far
    // beyond the propagation allowed.
    let timeout = Duration::from_secs(9);
    let cluster = Cluster::with_timeout("deadline", timeout).await;
    let topic = cluster.topic.clone();
    let (a, b) = tokio::join!(cluster.hub(), cluster.hub());
    let mut observers = Vec::new();
    for hub in [&a, &b] {
        let mut observer = hub.connect(&cluster.token("observer", &["*"])).await;
        enter(&mut observer, &topic, "lobby", json!({"presence": true})).await;
        observers.push(observer);
    }
    let ids: Vec<String> = (0..3).map(|i| unique(&format!("doomed{i}"))).collect();
    let mut doomed = Vec::new();
    for id in &ids {
        let hub = cluster.hub_with(&["--instance-id", id]).await;
        let mut user = hub.connect(&cluster.token(id, &["lobby"])).await;
        enter(&mut user, &topic, "lobby", json!({})).await;
        doomed.push((hub, user));
    }
    for observer in &mut observers {
        let mut joined = BTreeSet::new();
        while joined.len() < ids.len() {
            let (joins, leaves) = observer.presence_diff().await;
            assert!(leaves.is_empty(), "{leaves:?}");
            for user in joins.into_iter().filter(|u| u != "observer") {
                assert!(joined.insert(user));
            }
        }
    }

    // Each is killed right after a heartbeat, the worst moment: it is taken for dead a full
    // timeout later. Their heartbeats fall at different points of the survivors' cycles.
    let mut last_seen = BTreeMap::new();
    let mut db = cluster.database().await;
    for ((hub, user), id) in doomed.into_iter().zip(&ids) {
        let before = last_heartbeat(&mut db, id).await;
        let beat = loop {
            let now = last_heartbeat(&mut db, id).await;
            if now != before {
                break now.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        hub.kill().await;
        drop(user);
        last_seen.insert(id.clone(), beat);
    }

    // Every hub's observer is read at once, so that each leave is timed as it comes.
    let bound = (timeout + PROPAGATION).as_millis() as i64;
    let watch = async |observer: &mut Client| {
        let mut left = BTreeMap::new();
        while left.len() < ids.len() {
            let (joins, leaves) = observer.presence_diff().await;
            assert!(joins.is_empty(), "{joins:?}");
            for user in leaves {
                let late = now_millis() - last_seen[&user];
                assert!(left.insert(user, late).is_none(), "a second leave");
            }
        }
        // Told once: a ping answered now is the next frame.
        let pong = observer.call(json!({"type": "ping", "id": "p"})).await;
        assert_eq!(pong["type"], "pong", "{pong}");
        left
    };
    let [on_a, on_b] = &mut observers[..] else {
        unreachable!()
    };
    let (on_a, on_b) = tokio::join!(watch(on_a), watch(on_b));
    for left in [on_a, on_b] {
        eprintln!("left this long after their last heartbeat, in ms: {left:?}");
        assert!(
            left.values().all(|late| *late <= bound),
            "left after {left:?} ms, beyond {bound} ms"
        );
    }
}

#[tokio::test]
async fn a_user_whose_network_stalls_leaves_the_room_on_every_hub() {
    let cluster = Cluster::new("stall").await;
    let topic = cluster.topic.clone();
    let heartbeat = ["--ping-interval", "1s", "--pong-timeout", "1s"];
    let (a, b) = tokio::join!(cluster.hub_with(&heartbeat), cluster.hub());
    let mut observer = b.connect(&cluster.token("observer", &["*"])).await;
    enter(&mut observer, &topic, "lobby", json!({"presence": true})).await;
    assert_eq!(observer.presence_diff().await, joined(&["observer"]));

    // Alice's phone reaches hub a through a network that will stop passing packets.
    let network = StallingProxy::start(a.addr).await;
    let (ws, _) =
        tokio_tungstenite::connect_async(network.url(&cluster.token("alice", &["lobby"])))
            .await
            .unwrap();
    let mut alice = Client { ws };
    enter(&mut alice, &topic, "lobby", json!({})).await;
    assert_eq!(observer.presence_diff().await, joined(&["alice"]));

    // Nothing closes: only the missing pong tells hub a, which lets her go everywhere.
    network.stall();
    assert_eq!(observer.presence_diff().await, left(&["alice"]));
    assert_eq!(a.metrics().await["wskafka_unresponsive_closes_total"], 1.0);
    network.resume();
    // What reaches her once the network is back is the end of that socket.
    let closed = alice.closed().await;
    let code = closed.map(|frame| u16::from(frame.code));
    assert!(code.is_none_or(|code| code == 4408), "{code:?}");
}

#[tokio::test]
async fn subscription_churn_costs_the_roster_and_the_room_a_bounded_amount() {
    let cluster = Cluster::new("churn").await;
    let topic = cluster.topic.clone();
    let roster = cluster.args[cluster
        .args
        .iter()
        .position(|a| a == "--roster-topic")
        .unwrap()
        + 1]
    .clone();
    // Past the subscribe budget, to see what the coalescing alone bounds.
    let (a, b) = tokio::join!(
        cluster.hub_with(&["--request-rates", "subscribe=1000000"]),
        cluster.hub()
    );
    let mut observer = b.connect(&cluster.token("observer", &["*"])).await;
    enter(&mut observer, &topic, "lobby", json!({"presence": true})).await;
    assert_eq!(observer.presence_diff().await, joined(&["observer"]));
    // Asks who is there, and hears no joins or leaves.
    let mut watcher = b.connect(&cluster.token("watcher", &["*"])).await;
    let before = read_all(broker(), &roster).await.len();

    let mut churner = a.connect(&cluster.token("churner", &["lobby"])).await;
    let started = std::time::Instant::now();
    let pairs = 1000;
    for _ in 0..pairs {
        churner
            .send(json!({"type": "subscribe", "topic": topic, "key": "lobby"}))
            .await;
        churner
            .send(json!({"type": "unsubscribe", "topic": topic, "key": "lobby"}))
            .await;
    }
    // It ends in the room.
    enter(&mut churner, &topic, "lobby", json!({})).await;
    for _ in 0..2 * pairs {
        churner.recv().await;
    }
    let seconds = started.elapsed().as_secs_f64();
    until_members(
        &mut [&mut watcher],
        &topic,
        "lobby",
        &["churner", "observer"],
    )
    .await;
    // One roster record per second at most, against two thousand uncoalesced.
    let written = read_all(broker(), &roster).await.len() - before;
    let bound = seconds.ceil() as usize + 2;
    assert!(
        written <= bound,
        "{written} roster records in {seconds:.1} s"
    );
    // The observer heard of it at most once per record.
    let pong = observer.call(json!({"type": "ping", "id": "p"})).await;
    let mut told = 0;
    let mut frame = pong;
    while frame["type"] != "pong" {
        told += 1;
        frame = observer.recv().await;
    }
    assert!(told <= bound, "{told} joins and leaves");
}

/// The hub's documented interval between two `presence_diff` frames of a room.
const DIFF_INTERVAL: Duration = Duration::from_millis(250);

/// Sends `request` (with `id`) until it is served, waiting as long as each `rate_limited`
/// answer says: as fast as the socket's budget allows. Other frames (joins and leaves of
/// the room) are skipped.
async fn as_budget_allows(client: &mut Client, mut request: Value, id: u64) {
    request["id"] = json!(id);
    loop {
        client.send(request.clone()).await;
        let reply = loop {
            let frame = client.recv().await;
            if frame["id"] == id {
                break frame;
            }
        };
        if reply["code"] != "rate_limited" {
            assert!(reply["type"] != "error", "{reply}");
            return;
        }
        let wait = reply["retry_after_ms"].as_u64().unwrap();
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}

/// Applies a `presence_diff` to a member's view of the room.
fn apply(view: &mut BTreeSet<String>, (joins, leaves): (Vec<String>, Vec<String>)) {
    for user in leaves {
        view.remove(&user);
    }
    view.extend(joins);
}

#[tokio::test]
async fn users_churning_a_room_as_fast_as_their_budgets_allow_cost_each_member_a_diff_per_interval()
{
    let cluster = Cluster::new("diffs").await;
    let topic = cluster.topic.clone();
    let (a, b) = tokio::join!(cluster.hub(), cluster.hub());
    let mut observer = b.connect(&cluster.token("observer", &["*"])).await;
    enter(&mut observer, &topic, "lobby", json!({"presence": true})).await;
    assert_eq!(observer.presence_diff().await, joined(&["observer"]));
    let mut view = BTreeSet::from(["observer".to_string()]);

    // Sixteen users, a socket each on hub a with the default budgets, subscribe to the room
    // and unsubscribe from it as fast as those allow, forty times; the even ones end in it.
    let churners = 16;
    let started = std::time::Instant::now();
    let mut churning = tokio::task::JoinSet::new();
    for n in 0..churners {
        let mut client = a
            .connect(&cluster.token(&format!("churner-{n:02}"), &["lobby"]))
            .await;
        let topic = topic.clone();
        churning.spawn(async move {
            let subscribe =
                json!({"type": "subscribe", "topic": topic, "key": "lobby", "presence": true});
            let unsubscribe = json!({"type": "unsubscribe", "topic": topic, "key": "lobby"});
            let mut id = 0;
            for _ in 0..40 {
                as_budget_allows(&mut client, subscribe.clone(), id).await;
                as_budget_allows(&mut client, unsubscribe.clone(), id + 1).await;
                id += 2;
            }
            if n % 2 == 0 {
                as_budget_allows(&mut client, subscribe, id).await;
            }
            client
        });
    }
    // A member who comes in the middle of it (a second in: the churn takes three or more):
    // the list it asks for and the diffs that follow add up to the room.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut late = b.connect(&cluster.token("late", &["*"])).await;
    enter(&mut late, &topic, "lobby", json!({"presence": true})).await;
    let mut late_view = BTreeSet::new();
    late.send(json!({"type": "presence", "id": "p", "topic": topic, "key": "lobby"}))
        .await;
    loop {
        let frame = late.recv().await;
        if frame["type"] == "presence" {
            let listed: Vec<String> = serde_json::from_value(frame["members"].clone()).unwrap();
            assert!(frame["next"].is_null(), "{frame}");
            late_view.extend(listed);
            break;
        }
        assert_eq!(frame["type"], "presence_diff", "{frame}");
        let users = |field: &str| serde_json::from_value(frame[field].clone()).unwrap();
        apply(&mut late_view, (users("joins"), users("leaves")));
    }

    // What the observer hears until the churn is over and its view is the room's.
    let mut truth: BTreeSet<String> = (0..churners)
        .step_by(2)
        .map(|n| format!("churner-{n:02}"))
        .collect();
    truth.extend(["observer".to_string(), "late".to_string()]);
    let (mut diffs, mut changes) = (0, 0);
    let mut clients = Vec::new();
    let heard = async {
        while !churning.is_empty() || view != truth {
            tokio::select! {
                Some(done) = churning.join_next(), if !churning.is_empty() => clients.push(done.unwrap()),
                diff = observer.presence_diff() => {
                    diffs += 1;
                    changes += diff.0.len() + diff.1.len();
                    apply(&mut view, diff);
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), heard)
        .await
        .unwrap_or_else(|_| panic!("the observer's view stayed {view:?}, not {truth:?}"));
    let seconds = started.elapsed().as_secs_f64();
    let bound = (seconds / DIFF_INTERVAL.as_secs_f64()).ceil() as usize + 1;
    eprintln!("{diffs} diffs carrying {changes} joins and leaves in {seconds:.1} s");
    assert!(
        diffs <= bound,
        "{diffs} presence_diff frames in {seconds:.1} s: more than one per {DIFF_INTERVAL:?}"
    );

    // The late member's view ends in the same state, as does every hub's list.
    let last = async {
        while late_view != truth {
            apply(&mut late_view, late.presence_diff().await);
        }
    };
    tokio::time::timeout(PATIENCE, last)
        .await
        .unwrap_or_else(|_| panic!("the late member's view stayed {late_view:?}, not {truth:?}"));
    let truth: Vec<&str> = truth.iter().map(String::as_str).collect();
    let mut watcher = a.connect(&cluster.token("watcher", &["*"])).await;
    until_members(&mut [&mut watcher, &mut observer], &topic, "lobby", &truth).await;
    drop(clients);
}

#[tokio::test]
async fn a_private_rooms_roster_and_signals_are_closed_to_a_token_without_its_key() {
    let cluster = Cluster::new("closed").await;
    let hub = cluster.hub().await;
    let topic = cluster.topic.clone();
    let mut member = hub
        .connect(&cluster.token("alice", &["staff", "lobby"]))
        .await;
    enter(&mut member, &topic, "staff", json!({"signals": true})).await;
    let mut eve = hub.connect(&cluster.token("eve", &["lobby"])).await;
    for request in [
        json!({"type": "presence", "topic": topic, "key": "staff"}),
        json!({"type": "presence", "topic": topic}),
        json!({"type": "subscribe", "topic": topic, "key": "staff", "signals": true}),
        json!({"type": "signal", "topic": topic, "key": "staff", "payload": {"typing": true}}),
    ] {
        assert_eq!(eve.call(request).await["code"], "forbidden");
    }
    // Eve's own room's signals reach her; the staff room's never do.
    enter(&mut eve, &topic, "lobby", json!({"signals": true})).await;
    member
        .send(
            json!({"type": "signal", "topic": topic, "key": "staff", "payload": {"typing": true}}),
        )
        .await;
    member
        .send(json!({"type": "signal", "topic": topic, "key": "lobby", "payload": {"n": 2}}))
        .await;
    let signal = eve.recv().await;
    assert_eq!(
        (
            signal["type"].as_str(),
            signal["key"].as_str(),
            &signal["payload"]
        ),
        (Some("signal"), Some("lobby"), &json!({"n": 2})),
        "{signal}"
    );
    // Online status only for the users the token may see.
    let refused = eve
        .call(json!({"type": "online", "users": ["alice"]}))
        .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
}

#[tokio::test]
async fn signals_cross_hubs_and_are_never_replayed_nor_counted() {
    let cluster = Cluster::new("signals").await;
    let (a, b) = tokio::join!(cluster.hub(), cluster.hub());
    let topic = cluster.topic.clone();
    let mut bob = b.connect(&cluster.token("bob", &["lobby"])).await;
    enter(&mut bob, &topic, "lobby", json!({"signals": true})).await;
    let mut quiet = b.connect(&cluster.token("quiet", &["lobby"])).await;
    enter(&mut quiet, &topic, "lobby", json!({})).await;
    let mut alice = a.connect(&cluster.token("alice", &["lobby"])).await;
    alice
        .send(
            json!({"type": "signal", "topic": topic, "key": "lobby", "payload": {"typing": true}}),
        )
        .await;
    let signal = bob.recv().await;
    assert_eq!(
        signal,
        json!({"type": "signal", "topic": topic, "key": "lobby", "sender": "alice", "payload": {"typing": true}})
    );
    // A subscriber that did not ask gets none; the next frame it sees is a record.
    let ack = alice
        .call(json!({"type": "publish", "topic": topic, "key": "lobby", "payload": "after"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(quiet.message().await.1["payload"], "after");

    // A late joiner replaying the room gets the record, not the signal; nothing waits
    // unread but the record.
    let mut late = b.connect(&cluster.token("late", &["lobby"])).await;
    let subscribed = late
        .call(json!({"type": "subscribe", "id": "l", "topic": topic, "key": "lobby", "from": "earliest", "signals": true}))
        .await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    assert_eq!(late.message().await.1["payload"], "after");
    let pong = late.call(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong", "{pong}");
    let mut counter = b.connect(&cluster.token("alice", &["lobby"])).await;
    let committed = counter
        .call(json!({"type": "subscribe", "id": "c", "topic": topic, "key": "lobby", "from": "committed"}))
        .await;
    assert_eq!(committed["type"], "subscribed", "{committed}");
    let history = counter
        .call(json!({"type": "history", "topic": topic, "key": "lobby"}))
        .await;
    assert_eq!(
        history["messages"].as_array().unwrap().len(),
        1,
        "{history}"
    );

    // Signals have a rate of their own.
    let mut refused = 0;
    for n in 0..30 {
        alice
            .send(json!({"type": "signal", "id": n, "topic": topic, "key": "lobby", "payload": n}))
            .await;
    }
    let pong = loop {
        let frame = alice.call(json!({"type": "ping", "id": "end"})).await;
        if frame["type"] == "pong" {
            break frame;
        }
        assert_eq!(frame["code"], "rate_limited", "{frame}");
        refused += 1;
    };
    assert_eq!(pong["id"], "end");
    assert!(refused >= 15, "{refused} signals refused of 30");
}

#[tokio::test]
async fn online_status_of_chosen_users_is_told_as_it_changes() {
    let cluster = Cluster::new("online").await;
    let (a, b) = tokio::join!(cluster.hub(), cluster.hub());
    let mut grants = grants(&[], &[&cluster.glob]);
    grants.online = vec!["friend-*".parse().unwrap()];
    let watcher = wskafka::mint(SECRET, "me", grants, std::time::Duration::from_secs(600));
    let mut me = a.connect(&watcher).await;
    let status = me
        .call(json!({"type": "online", "id": 1, "users": ["friend-1", "friend-2"], "watch": true}))
        .await;
    assert_eq!(
        status,
        json!({"type": "online", "id": 1, "users": {"friend-1": false, "friend-2": false}})
    );
    let friend = b.connect(&cluster.token("friend-1", &[])).await;
    assert_eq!(
        me.recv().await,
        json!({"type": "status", "user": "friend-1", "online": true})
    );
    let mut again = b.connect(&cluster.token("friend-1", &[])).await;
    // Served: its socket is on the roster before the first one leaves it.
    assert_eq!(again.call(json!({"type": "ping"})).await["type"], "pong");
    drop(friend);
    drop(again);
    // One socket more and one less: only the last close is a change.
    assert_eq!(
        me.recv().await,
        json!({"type": "status", "user": "friend-1", "online": false})
    );
    let refused = me.call(json!({"type": "online", "users": ["boss"]})).await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
}
