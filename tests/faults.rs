//! Faults: storms of sockets that come and go, and a broker that goes away under load.

mod common;

use common::*;
use serde_json::json;

/// Waits until `/metrics` shows `name` at `value`.
async fn until_metric(hub: &Hub, name: &str, value: f64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let seen = hub.metrics().await.get(name).copied().unwrap_or(0.0);
        if seen == value {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} stayed at {seen}, not {value}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn storms_of_sockets_that_come_and_go_leave_nothing_held() {
    let (topic, glob) = fresh_topic("storm", 1).await;
    let hub = Hub::start(
        &glob,
        &[
            "--max-connections-per-user",
            "4",
            "--max-awaiting-auth",
            "4",
            "--max-connections",
            "8",
        ],
    )
    .await;
    let alice = token("alice", &[&glob], &[&glob]);
    for round in 0..100 {
        // Closed politely, dropped mid-subscription, and opened without ever authenticating.
        let mut polite = hub.connect(&alice).await;
        polite.subscribe(&topic).await;
        polite.ws.close(None).await.unwrap();
        let mut rude = hub.connect(&alice).await;
        rude.send(json!({"type":"subscribe","topic":topic,"from":"earliest"}))
            .await;
        drop(rude);
        let mut stranger = hub.connect_bare().await;
        if round % 2 == 0 {
            stranger.send_text("not an auth frame").await;
        }
        drop(stranger);
        drop(polite);
    }
    until_metric(&hub, "wskafka_connections", 0.0).await;
    until_metric(
        &hub,
        &format!("wskafka_subscriptions{{topic=\"{topic}\"}}"),
        0.0,
    )
    .await;

    // Every seat, every pre-authentication slot and every socket permit came back: the
    // limits admit a full set again, and the sockets work.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut client = hub.connect(&alice).await;
        client.subscribe(&topic).await;
        held.push(client);
    }
    assert_eq!(hub.handshake_status(&hub.url(&alice)).await, 429);
    let mut waiting = Vec::new();
    for _ in 0..4 {
        waiting.push(hub.connect_bare().await);
    }
    let bob = hub.url(&token("bob", &[], &[]));
    assert_eq!(hub.handshake_status(&bob).await, 503, "the hub is full");
    let ack = held[0]
        .call(json!({"type":"publish","id":"p","topic":topic,"payload":"after the storm"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    for client in &mut held {
        assert_eq!(client.recv().await["payload"], "after the storm");
    }
}

/// A broker of the test's own, which it kills and starts again on the same port. Its log
/// lives in a file (SQLite through libsql), so a restart keeps every record, as Kafka's
/// disks would.
struct OwnBroker {
    addr: String,
    storage: String,
    process: Option<tokio::process::Child>,
}

impl OwnBroker {
    async fn start() -> OwnBroker {
        let mut broker = OwnBroker {
            addr: format!("127.0.0.1:{}", free_port()),
            // Tansu reads the path after sqlite:// as relative to its working directory.
            storage: format!("sqlite://{}.db", unique("broker")),
            process: None,
        };
        broker.restart().await;
        broker
    }

    async fn restart(&mut self) {
        let url = format!("tcp://{}", self.addr);
        let tansu = std::env::var("TANSU").unwrap_or_else(|_| "tansu".into());
        let process = tokio::process::Command::new(tansu)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", &self.storage])
            .current_dir(env!("CARGO_TARGET_TMPDIR"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting tansu");
        self.process = Some(process);
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while tokio::net::TcpStream::connect(&self.addr).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "tansu did not start"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    async fn kill(&mut self) {
        let mut process = self.process.take().expect("the broker is running");
        process.kill().await.unwrap();
    }
}

#[tokio::test]
async fn the_hub_rides_out_a_broker_restart_and_never_acks_falsely() {
    let mut kafka = OwnBroker::start().await;
    let prefix = unique("outage");
    let (topic, glob) = (format!("{prefix}.room"), format!("{prefix}.*"));
    create_topic_at(&kafka.addr, &topic, 1).await;
    // Tansu 0.6.0's SQLite storage fails the first produce of an idempotent producer that
    // outlived a broker restart (a panic in its idempotence check, lite.rs:503), so here
    // the hub's producer runs without idempotence; acks still wait for the broker.
    let hub = Hub::start(
        &glob,
        &[
            "--brokers",
            &kafka.addr,
            "--publish-timeout",
            "3s",
            "--kafka-producer",
            &format!("{PRODUCER_PROPS},enable.idempotence=false"),
        ],
    )
    .await;
    let grant = token("alice", &[&glob], &[&glob]);
    let mut reader = hub.connect(&grant).await;
    reader.subscribe(&topic).await;
    let mut writer = hub.connect(&grant).await;
    let mut acked = Vec::new();
    let frame = |n: usize| json!({"type":"publish","id":n,"topic":topic,"payload":{"n":n}});
    for n in 0..20 {
        let ack = writer.call(frame(n)).await;
        assert_eq!(ack["type"], "ack", "{ack}");
        acked.push((position(&ack), n));
    }

    kafka.kill().await;
    let unready = hub.wait_readyz(503).await;
    // Publishes while no broker answers: each gets an answer, and it is never an ack.
    let outage = std::time::Instant::now();
    for n in 20..25 {
        writer.send(frame(n)).await;
    }
    for _ in 20..25 {
        let reply = writer.recv().await;
        assert_eq!(reply["code"], "unavailable", "{reply}");
    }
    let answered = outage.elapsed();
    assert_eq!(
        writer.call(json!({"type":"ping","id":"p"})).await["type"],
        "pong"
    );

    kafka.restart().await;
    let ready = hub.wait_readyz(200).await;
    // The producer may still be reconnecting: a client retries on `unavailable`, as the
    // protocol tells it to, until Kafka takes its record again.
    let back = std::time::Instant::now();
    let (mut refused, mut first_ack) = (0, None);
    let mut n = 25;
    while acked.len() < 40 {
        let reply = writer.call(frame(n)).await;
        match reply["type"].as_str() {
            Some("ack") => {
                first_ack.get_or_insert_with(|| back.elapsed());
                acked.push((position(&reply), n));
            }
            _ if reply["code"] == "unavailable" && acked.len() == 20 => refused += 1,
            _ => {
                panic!("after the first ack following the restart, every publish is acked: {reply}")
            }
        }
        assert!(
            back.elapsed() < 10 * PATIENCE,
            "Kafka never took a record again"
        );
        n += 1;
    }
    let first_ack = first_ack.expect("publishes were acked after the restart");
    eprintln!(
        "broker down: /readyz 503 after {unready:?}; 5 publishes answered unavailable within {answered:?}; \
         broker back: /readyz 200 after {ready:?}, {refused} publishes unavailable, first ack {first_ack:?} after ready"
    );

    // The subscription carried on: every acknowledged record, in order, exactly once.
    for &(position, n) in &acked {
        let (at, message) = reader.message().await;
        assert_eq!(
            (at, message["payload"]["n"].as_u64()),
            (position, Some(n as u64))
        );
    }
    // And Kafka holds every acknowledged record.
    let stored = read_records_at(&kafka.addr, &topic, acked.iter().map(|(p, _)| *p)).await;
    for (position, n) in acked {
        let value: serde_json::Value =
            serde_json::from_slice(rdkafka::Message::payload(&stored[&position]).unwrap()).unwrap();
        assert_eq!(value, json!({"n": n}));
    }
}
