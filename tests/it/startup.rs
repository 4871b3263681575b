//! Starting in any order, and stopping with a message a person can act on when a setting
//! cannot work: the real binary, a real Kafka node started (and killed) by the test, the
//! real PostgreSQL.

use crate::common::*;
use serde_json::{Value, json};
use tokio::process::Command;

#[test]
fn cluster_ids_are_kafkas_and_never_read_as_an_option() {
    use base64::Engine as _;
    for _ in 0..10_000 {
        let id = cluster_id();
        assert!(!id.starts_with('-'), "{id}");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&id)
            .unwrap();
        assert_eq!(bytes.len(), 16, "{id}");
    }
}

/// The steps `scripts/install-tools PURPOSE --plan` names, without their state.
fn install_steps(purpose: &str) -> Vec<String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install-tools");
    let plan = std::process::Command::new(script)
        .args([purpose, "--plan"])
        .output()
        .unwrap();
    assert!(plan.status.success(), "{plan:?}");
    String::from_utf8(plan.stdout)
        .unwrap()
        .lines()
        .map(|line| line.split(':').next().unwrap().to_string())
        .collect()
}

#[test]
fn running_the_hub_installs_only_what_running_takes() {
    let run = install_steps("run");
    assert_eq!(
        run,
        [
            "build-essential",
            "pkg-config",
            "libssl-dev",
            "openjdk-17-jre-headless",
            "maven",
            "kafka-jars"
        ]
    );
    let test = install_steps("test");
    for step in ["chromium", "nodejs", "web-packages", "cargo-fuzz", "clippy"] {
        assert!(test.contains(&step.to_string()), "{step}: {test:?}");
    }
    // And scripts/run asks for that plan.
    let run_script = include_str!("../../scripts/run");
    assert!(
        run_script
            .lines()
            .any(|line| line.trim() == "scripts/install-tools run"),
        "scripts/run installs more than running takes"
    );
}

/// The names `/readyz` gives for what the hub waits for.
async fn waiting_for(hub: &Hub) -> (u16, Vec<String>) {
    let (status, body) = hub.get("/readyz").await;
    let body: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let waiting = body["waiting_for"]
        .as_array()
        .unwrap_or_else(|| panic!("no waiting_for in {body}"))
        .iter()
        .map(|name| name.as_str().unwrap().to_string())
        .collect();
    (status, waiting)
}

#[tokio::test]
async fn a_hub_started_before_kafka_answers_health_at_once_and_serves_once_a_broker_arrives() {
    // An id beginning with `-`, as one in 64 random ones did: scripts/kafka passes it to
    // Kafka's storage tool whole, not as an option.
    let spec = KafkaNode::single();
    let spec = NodeSpec {
        cluster_id: format!("-{}", &spec.cluster_id[1..]),
        ..spec
    };
    let brokers = format!("127.0.0.1:{}", spec.port);
    let prefix = unique("early");
    let hub = Hub::launch(hub_command(
        "127.0.0.1:0",
        &format!("{prefix}.*"),
        &["--brokers", &brokers],
    ))
    .await;
    assert_eq!(hub.get("/healthz").await, (200, "ok".into()));
    let (status, waiting) = waiting_for(&hub).await;
    assert_eq!(status, 503);
    assert!(waiting.contains(&"kafka".to_string()), "{waiting:?}");
    // A socket is served meanwhile: admission needs the database (ready in a moment), not
    // Kafka.
    eventually("the database is ready", || async {
        !waiting_for(&hub).await.1.contains(&"database".to_string())
    })
    .await;
    let alice = token("alice", &[&format!("{prefix}.*")], &[]);
    let mut early = hub.connect(&alice).await;
    assert_eq!(early.call(json!({"type": "ping"})).await["type"], "pong");

    let node = KafkaNode::start(&spec).await;
    hub.wait_readyz(200).await;
    assert_eq!(waiting_for(&hub).await, (200, vec![]));
    // Its own topics were created once Kafka came.
    let metadata = tokio::task::spawn_blocking({
        let brokers = brokers.clone();
        move || {
            use rdkafka::consumer::Consumer as _;
            let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .create()
                .unwrap();
            let metadata = consumer.fetch_metadata(None, PATIENCE).unwrap();
            metadata
                .topics()
                .iter()
                .map(|t| t.name().to_string())
                .collect::<Vec<_>>()
        }
    })
    .await
    .unwrap();
    assert!(
        metadata.contains(&"wskafka.control".to_string()),
        "{metadata:?}"
    );

    let topic = format!("{prefix}.room");
    create_topic_with(&node.addr(), &topic, 1, 1, &[]).await;
    let ack = early
        .call(json!({"type": "publish", "id": 1, "topic": topic, "payload": "first"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
}

/// The outage's length is what is tested: the hub must stay nearly silent through it, so
/// the test waits it out.
#[tokio::test]
async fn a_thirty_second_broker_outage_is_told_in_a_handful_of_lines() {
    let mut node = KafkaNode::start(&KafkaNode::single()).await;
    let (topic, glob) = {
        let prefix = unique("outage");
        (format!("{prefix}.room"), format!("{prefix}.*"))
    };
    create_topic_with(&node.addr(), &topic, 2, 1, &[]).await;
    let mut command = hub_command("127.0.0.1:0", &glob, &["--brokers", &node.addr()]);
    // What an operator sees by default.
    command.env("RUST_LOG", "info");
    let hub = Hub::launch(command).await;
    hub.wait_readyz(200).await;
    let mut client = hub.connect(&token("alice", &[&glob], &[&glob])).await;
    client.subscribe(&topic).await;

    let before = hub.log_lines().len();
    node.kill();
    hub.wait_readyz(503).await;
    tokio::time::sleep(std::time::Duration::from_secs(30)).await;
    node.restart().await;
    hub.wait_readyz(200).await;
    // librdkafka's statistics, every 5 s, show the broker up again.
    eventually("the hub says the broker is back", || async {
        hub.log_lines()[before..]
            .iter()
            .any(|line| line.contains("Kafka broker reachable again"))
    })
    .await;

    let outage = hub.log_lines()[before..].to_vec();
    let count = |text: &str| outage.iter().filter(|line| line.contains(text)).count();
    assert_eq!(count("Kafka broker unreachable"), 1, "{outage:#?}");
    assert_eq!(count("Kafka broker reachable again"), 1, "{outage:#?}");
    let back = outage
        .iter()
        .find(|line| line.contains("reachable again"))
        .unwrap();
    assert!(
        back.contains("after=") && back.contains("failures="),
        "{back}"
    );
    assert!(
        outage.len() <= 15,
        "{} lines for one outage: {outage:#?}",
        outage.len()
    );
    eprintln!("{} log lines for a 30 s outage", outage.len());
}

#[tokio::test]
async fn a_database_that_refuses_stops_the_hub_after_its_wait_naming_it_without_the_password() {
    let url = format!(
        "postgres://wskafka:hunter2@127.0.0.1:{}/wskafka",
        free_port()
    );
    let (code, stderr) = run_to_exit(hub_command(
        "127.0.0.1:0",
        "any.*",
        &["--database-url", &url, "--database-wait", "1s"],
    ))
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    let masked = url.replace("hunter2", "***");
    let line = stderr
        .lines()
        .find(|line| line.contains("cannot run"))
        .unwrap_or_else(|| panic!("no error line in {stderr}"));
    assert!(
        line.contains(&format!("database {masked}")) && line.contains("Connection refused"),
        "{line}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[tokio::test]
async fn a_database_that_answers_with_a_lasting_error_stops_the_hub_at_once() {
    let url = format!("{}/no_such_database", postgres_server());
    // Were it waited for, the test would give up long before.
    let (code, stderr) = run_to_exit(hub_command(
        "127.0.0.1:0",
        "any.*",
        &["--database-url", &url, "--database-wait", "1h"],
    ))
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("database \"no_such_database\" does not exist"),
        "{stderr}"
    );
}

#[tokio::test]
async fn settings_that_cannot_work_stop_the_hub_with_what_to_do() {
    let short = run_to_exit(hub_command(
        "127.0.0.1:0",
        "any.*",
        &["--jwt-secret", "short"],
    ))
    .await;
    assert_eq!(short.0, Some(1), "{}", short.1);
    assert!(
        short
            .1
            .contains("WSKAFKA_JWT_SECRET is 5 bytes long: HS256 needs at least 32"),
        "{}",
        short.1
    );

    let mut keyless = Command::new(env!("CARGO_BIN_EXE_wskafka"));
    keyless
        .args(["serve", "--topics", "any.*", "--listen", "127.0.0.1:0"])
        .env_remove("WSKAFKA_JWT_SECRET")
        .env_remove("WSKAFKA_JWT_PUBLIC_KEY");
    let (code, stderr) = run_to_exit(keyless).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        [
            "WSKAFKA_JWT_SECRET",
            "WSKAFKA_JWT_PUBLIC_KEY",
            "WSKAFKA_AUTH_CONFIG"
        ]
        .iter()
        .all(|way| stderr.contains(way)),
        "{stderr}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = run_to_exit(hub_command(&addr, "any.*", &[])).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")) && stderr.contains("in use"),
        "{stderr}"
    );

    // A cap on sockets above what the process may open: accepts would fail unanswered.
    let command = hub_command("127.0.0.1:0", "any.*", &["--max-connections", "10000"]);
    let program = command.as_std().get_program().to_owned();
    let args: Vec<_> = command.as_std().get_args().map(|a| a.to_owned()).collect();
    let mut limited = Command::new("bash");
    limited
        .args(["-c", "ulimit -n 512 && exec \"$0\" \"$@\""])
        .arg(program)
        .args(args);
    let (code, stderr) = run_to_exit(limited).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("WSKAFKA_MAX_CONNECTIONS is 10000") && stderr.contains("may open only 512"),
        "{stderr}"
    );
}

#[tokio::test]
async fn kafka_settings_are_refused_by_their_key_and_no_secret_is_ever_shown() {
    let secret = "zz-s3cr3t";
    let refused = async |extra: &[&str]| {
        let (code, stderr) = run_to_exit(hub_command("127.0.0.1:0", "any.*", extra)).await;
        assert_eq!(code, Some(1), "{stderr}");
        assert!(!stderr.contains(secret), "the secret was shown: {stderr}");
        stderr
    };
    // A password cut at its comma by the comma-separated setting.
    let cut = format!("sasl.password={secret},part2");
    let stderr = refused(&["-X", &cut]).await;
    assert!(
        stderr.contains("after `sasl.password`") && stderr.contains("WSKAFKA_KAFKA_CONFIG"),
        "{stderr}"
    );
    assert!(!stderr.contains("part2"), "{stderr}");
    // SASL settings on a connection that is not SASL.
    let password = format!("sasl.password={secret}");
    let stderr = refused(&["-X", "security.protocol=SSL", "-X", &password]).await;
    assert!(stderr.contains("`sasl.password`"), "{stderr}");
    // A property librdkafka does not know (Java's JAAS line), which it names.
    let jaas = format!("sasl.jaas.config=ScramLoginModule required password=\"{secret}\";");
    let stderr = refused(&["-X", "security.protocol=SASL_SSL", "-X", &jaas]).await;
    assert!(stderr.contains("sasl.jaas.config"), "{stderr}");
    // A properties file that is not there.
    let stderr = refused(&["--kafka-config", "/nonexistent/client.properties"]).await;
    assert!(
        stderr.contains("WSKAFKA_KAFKA_CONFIG: cannot read /nonexistent/client.properties"),
        "{stderr}"
    );

    // Help shows which variables are set, never their values.
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_wskafka"))
        .args(["serve", "--help"])
        .env("WSKAFKA_KAFKA", format!("sasl.password={secret}"))
        .env("WSKAFKA_KAFKA_PRODUCER", format!("sasl.password={secret}"))
        .env("WSKAFKA_KAFKA_CONSUMER", format!("sasl.password={secret}"))
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("WSKAFKA_KAFKA_CONFIG"), "{help}");
    assert!(!help.contains(secret), "{help}");
}
