//! Idle: how much memory each server holds per authenticated, subscribed socket, and the
//! hub's refusal past its cap.

use tokio_tungstenite::tungstenite;

use crate::report::{Usage, report_client};
use crate::servers::{Server, Servers};

pub async fn idle(servers: &Servers, count: usize) {
    let (hub, centrifugo) = (&servers.hub, servers.centrifugo());
    let per_socket = async |server: &Server| {
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
        (per_socket, sockets)
    };
    let (hub_kib, sockets) = per_socket(hub).await;
    let over = match hub.try_open(&hub.ws_url("idle")).await {
        Ok(_) => "ACCEPTED (the cap did not hold)".to_string(),
        Err(tungstenite::Error::Http(response)) => format!("HTTP {}", response.status()),
        Err(e) => format!("failed without an answer: {e}"),
    };
    println!("hub socket {} (over the cap): {over}", count + 1);
    drop(sockets);
    hub.wait_idle().await;
    let (centrifugo_kib, sockets) = per_socket(centrifugo).await;
    drop(sockets);
    println!(
        "idle: memory per socket hub / Centrifugo = {:.2} (target: <= 0.5)",
        hub_kib / centrifugo_kib
    );
}
