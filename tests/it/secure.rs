//! Managed Kafka as the hub meets it there: a `SASL_SSL` listener with SCRAM-SHA-512 and a
//! certificate from a private CA, made by the test. Two real hubs against a real broker, the
//! settings in a properties file or per side, a wrong password, and what the logs show.

use std::path::{Path, PathBuf};

use crate::common::*;
use serde_json::json;

/// A password as managed services hand out, with what a comma-separated setting cannot hold.
const PASSWORD: &str = "pa,ss w=rd";

/// A Kafka node that clients reach over TLS and SCRAM only, besides the plaintext listener the
/// test itself uses to create topics.
struct SecureKafka {
    node: KafkaNode,
    secure_port: u16,
    dir: PathBuf,
}

impl SecureKafka {
    async fn start(users: &[(&str, &str)]) -> SecureKafka {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("secure"));
        std::fs::create_dir_all(&dir).unwrap();
        make_certificates(&dir);
        let secure_port = node_port();
        let mut spec = KafkaNode::single();
        spec.options = vec![
            "--secure-port".into(),
            secure_port.to_string(),
            "--tls".into(),
            dir.join("broker.pem").display().to_string(),
        ];
        for (user, password) in users {
            spec.options
                .extend(["--scram".into(), format!("{user}={password}")]);
        }
        let node = KafkaNode::start(&spec).await;
        SecureKafka {
            node,
            secure_port,
            dir,
        }
    }

    fn secure_addr(&self) -> String {
        format!("127.0.0.1:{}", self.secure_port)
    }

    /// The client settings of `user`, one `key=value` each.
    fn settings(&self, user: &str, password: &str) -> Vec<String> {
        vec![
            "security.protocol=SASL_SSL".into(),
            "sasl.mechanism=SCRAM-SHA-512".into(),
            format!("sasl.username={user}"),
            format!("sasl.password={password}"),
            format!("ssl.ca.location={}", self.dir.join("ca.pem").display()),
        ]
    }

    /// The same settings in a properties file in Kafka's format; returns its path.
    fn properties_file(&self, user: &str, password: &str) -> String {
        let path = self.dir.join(format!("{}.properties", unique(user)));
        let lines = self.settings(user, password).join("\n");
        std::fs::write(
            &path,
            format!("# as a secret store would mount it\n{lines}\n"),
        )
        .unwrap();
        path.display().to_string()
    }

    async fn topic(&self, prefix: &str) -> (String, String) {
        let prefix = unique(prefix);
        let topic = format!("{prefix}.room");
        create_topic_with(&self.node.addr(), &topic, 1, 1, &[]).await;
        (topic, format!("{prefix}.*"))
    }
}

/// A throwaway CA, and a certificate it signs for 127.0.0.1, with its key, in the PEM file
/// the broker reads (`ssl.keystore.type=PEM`).
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let output = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("running openssl");
        assert!(output.status.success(), "openssl {args:?}: {output:?}");
    };
    let new_key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let ca = ["req", "-x509", "-days", "2", "-subj", "/CN=wskafka test CA"];
    let ca_out = ["-keyout", "ca.key", "-out", "ca.pem"];
    openssl(&[&ca[..], &new_key, &ca_out].concat());
    let request = [
        "req",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "broker.key",
        "-out",
        "broker.csr",
    ];
    openssl(&[&request[..], &new_key].concat());
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "broker.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "broker.crt",
    ]);
    openssl(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        "broker.key",
        "-out",
        "broker.p8",
    ]);
    let key = std::fs::read_to_string(dir.join("broker.p8")).unwrap();
    let chain = std::fs::read_to_string(dir.join("broker.crt")).unwrap();
    std::fs::write(dir.join("broker.pem"), key + &chain).unwrap();
}

const ADMIN_PASSWORD: &str = "admin-secret";

async fn revoke(hub: &Hub, body: &str) -> u16 {
    let basic = basic("admin", ADMIN_PASSWORD);
    hub.request(
        "POST",
        "/admin/revocations",
        &[
            ("Authorization", &basic),
            ("Content-Type", "application/json"),
        ],
        body,
    )
    .await
    .0
}

#[tokio::test]
async fn two_hubs_work_over_tls_and_scram_with_a_password_that_holds_a_comma_a_space_and_equals() {
    let kafka = SecureKafka::start(&[("hub", PASSWORD)]).await;
    let (topic, glob) = kafka.topic("secure").await;
    let file = kafka.properties_file("hub", PASSWORD);
    let database = fresh_postgres().await;
    let (presence, roster, signals, control) = (
        unique("presence"),
        unique("roster"),
        unique("signals"),
        unique("control"),
    );
    let brokers = kafka.secure_addr();
    let args = [
        "--brokers",
        &brokers,
        "--kafka-config",
        &file,
        "--database-url",
        &database,
        "--presence-topic",
        &presence,
        "--roster-topic",
        &roster,
        "--signal-topic",
        &signals,
        "--control-topic",
        &control,
        "--keyed-topics",
        &glob,
        "--admin-password",
        ADMIN_PASSWORD,
    ];
    let (a, b) = tokio::join!(Hub::start(&glob, &args), Hub::start(&glob, &args));
    let grant = |user: &str| token(user, &[&glob], &[&glob]);
    let room = |extra: serde_json::Value| {
        let mut request = json!({"type": "subscribe", "id": "s", "topic": topic, "key": "lobby"});
        for (name, value) in extra.as_object().unwrap() {
            request[name] = value.clone();
        }
        request
    };

    // Bob listens on hub b, with presence and signals; alice writes through hub a.
    let mut bob = b.connect(&grant("bob")).await;
    let subscribed = bob
        .call(room(json!({"presence": true, "signals": true})))
        .await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    assert_eq!(bob.presence_diff().await.0, ["bob"]);
    let mut alice = a.connect(&grant("alice")).await;
    let entered = alice.call(room(json!({}))).await;
    assert_eq!(entered["type"], "subscribed", "{entered}");
    assert_eq!(bob.presence_diff().await, (vec!["alice".into()], vec![]));

    // The first signal after a fresh start crosses hubs: the hub's own topics existed before
    // its consumer subscribed.
    alice
        .send(
            json!({"type": "signal", "topic": topic, "key": "lobby", "payload": {"typing": true}}),
        )
        .await;
    let signal = bob.recv().await;
    assert_eq!(
        (signal["type"].as_str(), signal["sender"].as_str()),
        (Some("signal"), Some("alice")),
        "{signal}"
    );

    // Alice is in the room too: her own record may come back before its ack.
    let (ack, own_copy) = alice
        .publish_to_self(
            json!({"type": "publish", "id": 1, "topic": topic, "key": "lobby", "payload": {"n": 1}}),
        )
        .await;
    assert_eq!(own_copy["payload"], json!({"n": 1}), "{own_copy}");
    let (position, live) = bob.message().await;
    assert_eq!(
        (position, live["sender"].as_str()),
        (crate::common::position(&ack), Some("alice"))
    );

    // Replay and history read over TLS too.
    let mut carol = b.connect(&grant("carol")).await;
    let replayed = carol.call(room(json!({"from": "earliest"}))).await;
    assert_eq!(replayed["type"], "subscribed", "{replayed}");
    assert_eq!(carol.message().await.0, crate::common::position(&ack));
    let history = alice
        .call(json!({"type": "history", "id": "h", "topic": topic, "key": "lobby", "limit": 10}))
        .await;
    assert_eq!(
        history["messages"][0]["payload"],
        json!({"n": 1}),
        "{history}"
    );
    // Carol's join reaches hub a's roster through Kafka: listed there soon, not at once.
    eventually("carol listed in the room by hub a", async || {
        let members = alice
            .call(json!({"type": "presence", "topic": topic, "key": "lobby"}))
            .await;
        if let Some(wait) = members["retry_after_ms"].as_u64() {
            tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
        }
        members["members"] == json!(["alice", "bob", "carol"])
    })
    .await;

    // A revocation on hub a closes bob's socket on hub b, through the control topic.
    assert_eq!(revoke(&a, r#"{"sub":"bob"}"#).await, 200);
    let closed = bob.closed().await.expect("a close frame");
    assert_eq!(u16::from(closed.code), 4403);

    // Hub b dies; carol comes back through a new hub b and gets exactly what she missed.
    b.kill().await;
    drop(carol);
    let mut missed = Vec::new();
    for n in 2..5 {
        alice
            .send(json!({"type": "publish", "id": n, "topic": topic, "key": "lobby", "payload": {"n": n}}))
            .await;
        // Her own records come back too, before or after their acks.
        let ack = loop {
            let frame = alice.recv().await;
            if frame["type"] != "message" {
                break frame;
            }
        };
        assert_eq!(
            (ack["type"].as_str(), ack["id"].as_i64()),
            (Some("ack"), Some(n)),
            "{ack}"
        );
        missed.push(crate::common::position(&ack));
    }
    let b = Hub::start(&glob, &args).await;
    let mut carol = b.connect(&grant("carol")).await;
    let (partition, offset) = crate::common::position(&live);
    let resumed = carol
        .call(room(
            json!({"from": {"offsets": {partition.to_string(): offset + 1}}}),
        ))
        .await;
    assert_eq!(resumed["type"], "subscribed", "{resumed}");
    let mut got = Vec::new();
    for _ in 0..missed.len() {
        got.push(carol.message().await.0);
    }
    assert_eq!(got, missed);
    let pong = carol.call(json!({"type": "ping", "id": "p"})).await;
    assert_eq!(pong["type"], "pong", "nothing more: {pong}");

    // The password is nowhere in what the hubs said.
    for hub in [&a, &b] {
        assert!(
            hub.log_lines().iter().all(|line| !line.contains(PASSWORD)),
            "the password reached the log"
        );
    }
}

#[tokio::test]
async fn settings_given_per_side_reach_every_client_the_admin_client_too() {
    let kafka = SecureKafka::start(&[
        ("producer", "producer-secret"),
        ("consumer", "consumer-secret"),
    ])
    .await;
    let (topic, glob) = kafka.topic("sides").await;
    let producer = kafka.settings("producer", "producer-secret").join(",");
    let consumer = kafka.settings("consumer", "consumer-secret").join(",");
    let (signals, control) = (unique("signals"), unique("control"));
    let brokers = kafka.secure_addr();
    // The hub's own topics are new: the admin client must reach the TLS listener to make them.
    let hub = Hub::start(
        &glob,
        &[
            "--brokers",
            &brokers,
            "--kafka-producer",
            &producer,
            "--kafka-consumer",
            &consumer,
            "--signal-topic",
            &signals,
            "--control-topic",
            &control,
        ],
    )
    .await;
    // Its consumer was assigned its own topics with the first assignment, not at a later
    // metadata refresh: the room's partition (paused: no socket follows the room yet), the
    // control topic, the fleet topic and the signal topic.
    let assigned: Vec<String> = hub
        .log_lines()
        .into_iter()
        .filter(|line| line.contains("Kafka partitions assigned"))
        .collect();
    assert!(
        assigned[0].ends_with("partitions=4 paused=1"),
        "{assigned:?}"
    );

    let mut alice = hub.connect(&token("alice", &[&glob], &[&glob])).await;
    alice.subscribe(&topic).await;
    let (ack, message) = alice
        .publish_to_self(json!({"type": "publish", "topic": topic, "payload": 1}))
        .await;
    assert_eq!(
        crate::common::position(&ack),
        crate::common::position(&message)
    );
}

#[tokio::test]
async fn a_wrong_password_keeps_the_hub_unready_says_so_once_and_never_shows_it() {
    let kafka = SecureKafka::start(&[("hub", PASSWORD)]).await;
    let (_, glob) = kafka.topic("wrong").await;
    let wrong = "not the, password=at all";
    let file = kafka.properties_file("hub", wrong);
    let brokers = kafka.secure_addr();
    let hub = Hub::launch(hub_command(
        "127.0.0.1:0",
        &glob,
        &["--brokers", &brokers, "--kafka-config", &file],
    ))
    .await;
    let warnings = || -> Vec<String> {
        hub.log_lines()
            .into_iter()
            .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
            .collect()
    };
    eventually("a warning naming the cause", async || {
        warnings()
            .iter()
            .any(|line| line.contains("Authentication failed"))
    })
    .await;
    let (status, body) = hub.get("/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("\"kafka\""), "{body}");
    // Several probe cycles later (one every 2 s), still the one line.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let warned = warnings();
    assert_eq!(warned.len(), 1, "{warned:#?}");
    for secret in [wrong, "not the", "password=at all"] {
        assert!(
            hub.log_lines().iter().all(|line| !line.contains(secret)),
            "{secret:?} reached the log"
        );
    }
}
