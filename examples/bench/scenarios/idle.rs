//! Idle: how much of a core each server takes with no socket, how much memory it holds per
//! authenticated, subscribed socket, and the hub's refusal past its cap.

use std::time::Duration;

use tokio_tungstenite::tungstenite;

use crate::report::{Usage, report_client};
use crate::servers::{Server, Servers};

pub async fn idle(servers: &Servers, count: usize) {
    let (hub, centrifugo) = (&servers.hub, servers.centrifugo());
    let per_socket = async |server: &Server| {
        // The Kafka clients' threads and the server's own timers.
        let empty = cpu_with_no_socket(server).await;
        let before = server.usage();
        let client = Usage::of_self();
        let sockets = server.subscribers("bench.idle", count).await;
        let after = server.usage();
        let per_socket = (after.rss_kib - before.rss_kib) as f64 / count as f64;
        println!(
            "{}: {count} sockets open and subscribed: RSS {} -> {} KiB, {per_socket:.1} KiB per socket",
            server.label(),
            before.rss_kib,
            after.rss_kib
        );
        report_client(&client);
        (per_socket, empty, sockets)
    };
    let (hub_kib, hub_empty, sockets) = per_socket(hub).await;
    let over = match hub.try_open(&hub.ws_url("idle")).await {
        Ok(_) => "ACCEPTED (the cap did not hold)".to_string(),
        Err(tungstenite::Error::Http(response)) => format!("HTTP {}", response.status()),
        Err(e) => format!("failed without an answer: {e}"),
    };
    println!("hub socket {} (over the cap): {over}", count + 1);
    drop(sockets);
    hub.wait_idle().await;
    let (centrifugo_kib, centrifugo_empty, sockets) = per_socket(centrifugo).await;
    drop(sockets);
    println!(
        "idle: memory per socket hub / Centrifugo = {:.2} (target: <= 0.5)",
        hub_kib / centrifugo_kib
    );
    println!(
        "idle: CPU with no socket, hub / Centrifugo = {:.2}",
        hub_empty / centrifugo_empty
    );
}

/// Several statistics reports of each Kafka client (every 5 s) and metadata refreshes.
/// (Measured before any socket opens: the bench's sockets do not answer heartbeats, so with
/// them open a longer wait would measure sockets being closed as unresponsive.)
const WINDOW: Duration = Duration::from_secs(30);

/// The share of a core `server` takes over `WINDOW`, left alone with no socket.
async fn cpu_with_no_socket(server: &Server) -> f64 {
    let start = server.usage();
    tokio::time::sleep(WINDOW).await;
    let share = server.usage().cpu_since(&start);
    println!(
        "{}: no socket for {} s: {:.2}% of a core",
        server.label(),
        WINDOW.as_secs(),
        share * 100.0
    );
    share
}
