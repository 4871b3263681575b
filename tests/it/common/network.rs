//! A network that stalls: a TCP proxy that stops passing bytes without closing.

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A TCP proxy in front of `target` that can stop forwarding, both ways, without closing
/// anything: what a phone leaving Wi-Fi, a NAT dropping a flow or a closed laptop lid look
/// like from either end.
pub struct StallingProxy {
    pub addr: SocketAddr,
    /// Client to server, and server to client.
    up: tokio::sync::watch::Sender<bool>,
    down: tokio::sync::watch::Sender<bool>,
}

impl StallingProxy {
    pub async fn start(target: SocketAddr) -> StallingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, up_watch) = tokio::sync::watch::channel(false);
        let (down, down_watch) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(forward(client_read, server_write, up_watch.clone()));
                tokio::spawn(forward(server_read, client_write, down_watch.clone()));
            }
        });
        StallingProxy { addr, up, down }
    }

    /// Stops passing bytes; what was sent meanwhile waits, as in a kernel's buffers.
    pub fn stall(&self) {
        self.up.send_replace(true);
        self.down.send_replace(true);
    }

    /// Stops passing bytes from the server only: requests arrive, their answers do not.
    pub fn stall_replies(&self) {
        self.down.send_replace(true);
    }

    pub fn resume(&self) {
        self.up.send_replace(false);
        self.down.send_replace(false);
    }

    pub fn url(&self, token: &str) -> String {
        format!("ws://{}/ws?token={token}", self.addr)
    }
}

async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: tokio::sync::watch::Receiver<bool>,
) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        // Neither read nor write while stalled: the sender's buffers fill, as on a dead link.
        if stalled.wait_for(|stalled| !stalled).await.is_err() {
            return;
        }
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if stalled.wait_for(|stalled| !stalled).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
