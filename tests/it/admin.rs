//! The admin view as an operator uses it, in a real Chromium against real hubs and the
//! broker: charts of real traffic, lag for every partition read, the fleet of two hubs with
//! a revocation from the page closing a user's sockets on both, each hub's Web Push figures,
//! and `/metrics` on a listener of its own.

use crate::common::*;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Flags for a hub with the admin view (password `pw`), presence, and its own topics named
/// after `prefix`, so that other tests' hubs are not in its fleet.
fn admin_flags(prefix: &str, instance: &str) -> Vec<String> {
    [
        ("--admin-password", "pw".to_string()),
        ("--instance-id", instance.to_string()),
        ("--control-topic", format!("{prefix}.control")),
        ("--fleet-topic", format!("{prefix}.fleet")),
        ("--signal-topic", format!("{prefix}.signals")),
        ("--presence-topic", format!("{prefix}.presence")),
        ("--roster-topic", format!("{prefix}.roster")),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_string(), value])
    .collect()
}

async fn admin_hub(topics: &str, prefix: &str, instance: &str) -> Hub {
    let flags = admin_flags(prefix, instance);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Hub::start(topics, &flags).await
}

/// Where screenshots go: `$CARGO_TARGET_DIR/screenshots/`.
fn screenshot_path(name: &str) -> String {
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target").to_string());
    let dir = format!("{target}/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    format!("{dir}/{name}.png")
}

/// A number the page's script evaluates to.
async fn number(browser: &mut Browser, page: &str, script: &str) -> f64 {
    let value = browser
        .run(json!({"cmd": "evaluate", "name": page, "script": script}))
        .await;
    value.as_f64().unwrap_or(0.0)
}

#[tokio::test]
async fn the_admin_page_charts_real_traffic_and_every_partitions_lag() {
    let prefix = unique("admin");
    let topic = format!("{prefix}.events");
    create_topic(&topic, 3).await;
    let hub = admin_hub(&topic, &prefix, &format!("{prefix}-hub")).await;

    // Alice publishes to one key, so one partition of three gets records, and reads them
    // back, until the charts have drawn it.
    let alice = token("alice", &[&topic], &[&topic]);
    let mut client = hub.connect(&alice).await;
    client.subscribe(&topic).await;
    let done = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn({
        let (done, topic) = (done.clone(), topic.clone());
        async move {
            let mut sent = 0u64;
            while !done.load(Ordering::Relaxed) {
                for _ in 0..10 {
                    client
                        .send(
                            json!({"type": "publish", "id": sent.to_string(), "topic": topic,
                                     "key": "k0", "payload": {"seq": sent}}),
                        )
                        .await;
                    sent += 1;
                }
                // Ten acks and ten records.
                for _ in 0..20 {
                    client.recv().await;
                }
                // Pacing, so that the traffic spans several samples.
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            (client, sent)
        }
    });

    let mut browser = Browser::start().await;
    let admin = format!("http://{}/admin", hub.addr);
    browser.open_as("admin", &admin, "admin", "pw").await;
    browser
        .wait_text("admin", "#this-hub", &format!("{prefix}-hub"))
        .await;
    // Every chart drew real traffic: frames both ways, acks, delivery latencies.
    for chart in ["frames", "publishes", "latency", "sockets"] {
        let script =
            format!("Number(document.querySelector('[data-chart={chart}]')?.dataset.peak ?? 0)");
        eventually(format!("the {chart} chart draws the traffic"), async || {
            number(&mut browser, "admin", &script).await > 0.0
        })
        .await;
    }
    eventually("the frames chart has three samples", async || {
        number(
            &mut browser,
            "admin",
            "Number(document.querySelector('[data-chart=frames]').dataset.points)",
        )
        .await
            >= 3.0
    })
    .await;
    let canvases = number(
        &mut browser,
        "admin",
        "document.querySelectorAll('#charts canvas').length",
    )
    .await;
    assert_eq!(canvases, 5.0);
    // Lag for each of the three partitions read, two of which never had a record since
    // the hub started; the hub's own topics apart.
    browser.wait_count("admin", "#topics tr", 3).await;
    let rows = browser.texts("admin", "#topics tr").await;
    for partition in 0..3 {
        assert!(
            rows.iter()
                .any(|row| row.starts_with(&topic) && row.contains(&format!("\t{partition}\t"))),
            "partition {partition}: {rows:?}"
        );
    }
    for own in ["control", "fleet", "signals", "roster"] {
        browser
            .wait_text("admin", "#internal-topics", &format!("{prefix}.{own}"))
            .await;
    }
    assert!(
        !browser
            .texts("admin", "#topics")
            .await
            .concat()
            .contains(".control")
    );
    // The connection, with what it subscribed to and since when (a date unless today).
    browser.wait_text("admin", "#list", "alice").await;
    let listed = browser.texts("admin", "#list tr").await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed[0].contains("WebSocket over HTTP/1.1"), "{listed:?}");
    assert!(listed[0].contains(&topic), "{listed:?}");

    let path = screenshot_path("admin-charts");
    browser
        .run(json!({"cmd": "screenshot", "name": "admin", "path": path, "full_page": true}))
        .await;
    println!("screenshot of the admin view: {path}");
    done.store(true, Ordering::Relaxed);
    let (_client, sent) = traffic.await.unwrap();
    assert!(sent > 0);
    assert_eq!(browser.complaints("admin").await, Vec::<String>::new());
}

#[tokio::test]
async fn the_fleet_view_shows_both_hubs_and_revoking_from_it_closes_the_user_on_both() {
    let prefix = unique("fleet");
    let topic = format!("{prefix}.events");
    create_topic(&topic, 1).await;
    let (a, b) = (format!("{prefix}-a"), format!("{prefix}-b"));
    let hub_a = admin_hub(&topic, &prefix, &a).await;
    let hub_b = admin_hub(&topic, &prefix, &b).await;
    let alice = token_with("alice", "alice-1", now_secs(), &[&topic]);
    let mut alice_a = hub_a.connect(&alice).await;
    let mut alice_b = hub_b.connect(&alice).await;
    let mut bob_b = hub_b.connect(&token("bob", &[], &[&topic])).await;
    bob_b.subscribe(&topic).await;

    let mut browser = Browser::start().await;
    browser
        .open_as(
            "admin",
            &format!("http://{}/admin", hub_a.addr),
            "admin",
            "pw",
        )
        .await;
    browser.wait_text("admin", "#this-hub", &a).await;
    browser.wait_count("admin", "#fleet tr", 2).await;
    browser.wait_text("admin", "#fleet-sockets", "3").await;
    let fleet = browser.texts("admin", "#fleet tr").await;
    assert!(
        fleet[0].starts_with(&format!("{a} (this hub)")),
        "{fleet:?}"
    );
    assert!(fleet[1].starts_with(&b), "{fleet:?}");
    // Hub B's row: two sockets of two users.
    assert!(fleet[1].contains("\t2\t2\t"), "{fleet:?}");
    // Every connection of the fleet, with its hub: hub B's from its report.
    browser.wait_count("admin", "#list tr", 3).await;
    let listed = browser.texts("admin", "#list tr").await;
    for (user, hub) in [("alice", &a), ("alice", &b), ("bob", &b)] {
        assert!(
            listed
                .iter()
                .any(|row| row.starts_with(&format!("{user}\t{hub}\t"))),
            "{user} on {hub}: {listed:?}"
        );
    }
    assert!(
        listed
            .iter()
            .any(|row| row.starts_with("bob") && row.contains(&topic)),
        "{listed:?}"
    );

    let path = screenshot_path("admin-fleet");
    browser
        .run(json!({"cmd": "screenshot", "name": "admin", "path": path, "full_page": true}))
        .await;
    println!("screenshot of the fleet view: {path}");

    // Revoking Alice from hub A's page asks first, then closes her sockets on both hubs.
    browser
        .run(json!({"cmd": "accept_dialogs", "name": "admin"}))
        .await;
    browser
        .click("admin", "#list button.revoke[data-sub=alice]")
        .await;
    for client in [&mut alice_a, &mut alice_b] {
        assert_eq!(client.closed().await.map(|c| u16::from(c.code)), Some(4403));
    }
    let asked = browser
        .run(json!({"cmd": "dialogs", "name": "admin"}))
        .await;
    let asked = asked.as_array().unwrap();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(
        asked[0].as_str().unwrap().contains("\"alice\""),
        "{asked:?}"
    );
    browser.wait_text("admin", "#notice", "Revoked alice").await;
    assert_eq!(bob_b.call(json!({"type": "ping"})).await["type"], "pong");
    for hub in [&hub_a, &hub_b] {
        assert_eq!(hub.handshake_status(&hub.url(&alice)).await, 401);
    }
    // Once hub B reports again, only Bob is listed.
    browser.wait_count("admin", "#list tr", 1).await;
    assert_eq!(browser.complaints("admin").await, Vec::<String>::new());
}

#[tokio::test]
async fn the_admin_page_shows_pushes_sent_given_up_and_subscriptions_removed() {
    use crate::push::{Cluster, Device, PushService, register, until_offline};
    let cluster = Cluster::new("admin-push", true).await;
    let service = PushService::default();
    let origin = service.start().await;
    // Of Ann's three devices, one is gone (410, removed) and one refused (400, given up).
    service.answer("/device/old", &[(410, None)]);
    service.answer("/device/broken", &[(400, None)]);
    let prefix = unique("admin-push");
    let instance = format!("{prefix}-hub");
    let mut args = cluster.args.clone();
    for (flag, value) in [
        ("--admin-password", "pw".to_string()),
        ("--instance-id", instance.clone()),
        ("--control-topic", format!("{prefix}.control")),
        ("--fleet-topic", format!("{prefix}.fleet")),
    ] {
        args.extend([flag.to_string(), value]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let hub = Hub::start(&cluster.glob, &args).await;
    let devices = ["phone", "old", "broken"].map(|d| Device::new(format!("{origin}/device/{d}")));
    register(&hub, &cluster.token("ann"), &devices.each_ref()).await;
    until_offline(&hub, "ann").await;
    produce(&producer(), &cluster.topic, "ann", br#"{"text":"hi"}"#).await;
    eventually("a push to each device", async || {
        service.received().len() >= 3
    })
    .await;

    let mut browser = Browser::start().await;
    let admin = format!("http://{}/admin", hub.addr);
    browser.open_as("admin", &admin, "admin", "pw").await;
    browser.wait_text("admin", "#this-hub", &instance).await;
    // The hub's row, once it reported after the pushes: one sent, one given up for its
    // 400, one subscription removed, nothing queued.
    let expected = format!("{instance} (this hub)\t1\t1\t400: 1\t1\t0");
    eventually("the push figures", async || {
        browser.texts("admin", "#push tr").await == [expected.clone()]
    })
    .await;
    assert_eq!(browser.complaints("admin").await, Vec::<String>::new());
}

#[tokio::test]
async fn metrics_on_a_listener_of_their_own_are_not_on_the_public_one() {
    let topic = unique("metrics");
    create_topic(&topic, 1).await;
    let hub = Hub::start(&topic, &["--metrics-listen", "127.0.0.1:0"]).await;
    assert_eq!(hub.get("/metrics").await.0, 404);
    let line = hub
        .log_lines()
        .into_iter()
        .find(|line| line.contains("serving /metrics at http://"))
        .expect("the hub names where it serves /metrics");
    let addr: String = line
        .split("serving /metrics at http://")
        .nth(1)
        .unwrap()
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | ':'))
        .collect();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("wskafka_frames_received_total"),
        "{response}"
    );
    // Nothing else is served there.
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
}
