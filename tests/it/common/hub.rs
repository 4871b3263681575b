//! The hub: the real binary on a random port, its HTTP endpoints, signals and logs.

use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self};

use super::*;

/// The real binary serving `topics` on `listen`, with a test's defaults (the suite's broker,
/// a database and the test secret), each of which gives way to the same flag in `extra`;
/// it logs at debug level unless the test sets `RUST_LOG` on the command.
pub fn hub_command(listen: &str, topics: &str, extra: &[&str]) -> Command {
    hub_command_of(env!("CARGO_BIN_EXE_wskafka"), listen, topics, extra)
}

/// The same, for another build of the hub (a measurement comparing builds).
pub fn hub_command_of(binary: &str, listen: &str, topics: &str, extra: &[&str]) -> Command {
    let database = sqlite_url();
    let defaults = [
        ("--brokers", broker()),
        ("--jwt-leeway", "0s"),
        // The tests' clients read only when a test asks for a frame, so they answer no ping
        // meanwhile: heartbeats are off unless a test turns them on.
        ("--ping-interval", "0s"),
        // A database of its own unless the test shares one.
        ("--database-url", &database),
    ];
    let mut args = vec!["serve", "--listen", listen, "--topics", topics];
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    let keyed = ["--jwt-public-key", "--jwt-secret", "--auth-config"];
    if !keyed.iter().any(|flag| extra.contains(flag)) {
        args.extend(["--jwt-secret", SECRET]);
    }
    args.extend(extra);
    let mut command = Command::new(binary);
    command
        .args(&args)
        .env("RUST_LOG", "debug,librdkafka=warn,rdkafka=warn");
    command
}

/// Runs `command` until it exits by itself; returns its exit code and what it wrote to
/// stderr.
pub async fn run_to_exit(mut command: Command) -> (Option<i32>, String) {
    let output = tokio::time::timeout(
        PATIENCE,
        command.stderr(Stdio::piped()).kill_on_drop(true).output(),
    )
    .await
    .expect("the hub did not exit by itself")
    .expect("running wskafka");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

pub struct Hub {
    pub addr: SocketAddr,
    process: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Hub {
    /// Starts the real binary exposing `topics` and waits until `/readyz` says ready.
    /// A default set here gives way to the same flag in `extra`.
    pub async fn start(topics: &str, extra: &[&str]) -> Hub {
        Hub::start_at("127.0.0.1:0", topics, extra).await
    }

    /// The same, listening on `listen` (to restart a hub where its clients expect it).
    pub async fn start_at(listen: &str, topics: &str, extra: &[&str]) -> Hub {
        let hub = Hub::launch(hub_command(listen, topics, extra)).await;
        hub.wait_readyz(200).await;
        hub
    }

    /// Starts `command` (from `hub_command`) and returns once the hub listens, ready or not.
    pub async fn launch(mut command: Command) -> Hub {
        let mut process = command
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting wskafka");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let mut lines = BufReader::new(process.stderr.take().unwrap()).lines();
        tokio::spawn({
            let log = log.clone();
            async move {
                let mut addr_tx = Some(addr_tx);
                while let Ok(Some(line)) = lines.next_line().await {
                    eprintln!("hub: {line}");
                    if let Some(addr) = line.split("listening on http://").nth(1) {
                        let addr: String = addr
                            .chars()
                            .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | ':'))
                            .collect();
                        let addr = addr.parse().unwrap();
                        if let Some(tx) = addr_tx.take() {
                            let _ = tx.send(addr);
                        }
                    }
                    log.lock().unwrap().push(line);
                }
            }
        });
        let addr = tokio::time::timeout(PATIENCE, addr_rx)
            .await
            .expect("the hub did not start listening")
            .expect("the hub exited before listening");
        Hub { addr, process, log }
    }

    /// Waits until `/readyz` answers `status`; returns how long that took.
    pub async fn wait_readyz(&self, status: u16) -> Duration {
        let started = tokio::time::Instant::now();
        eventually(format!("/readyz answers {status}"), move || async move {
            self.get("/readyz").await.0 == status
        })
        .await;
        started.elapsed()
    }

    pub fn pid(&self) -> u32 {
        self.process.id().expect("the hub is running")
    }

    /// Waits until `/metrics` shows `name` at `value`.
    pub async fn until_metric(&self, name: &str, value: f64) {
        eventually(format!("{name} = {value}"), move || async move {
            self.metrics().await.get(name) == Some(&value)
        })
        .await;
    }

    /// `/metrics` as a map from `name{labels}` to value.
    pub async fn metrics(&self) -> BTreeMap<String, f64> {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200);
        body.lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .filter_map(|line| line.rsplit_once(' '))
            .map(|(name, value)| (name.to_string(), value.parse().unwrap()))
            .collect()
    }

    /// One series of `/metrics`; 0 while the hub has not reported it (a counter that never
    /// moved, a gauge never set).
    pub async fn metric(&self, series: &str) -> f64 {
        self.metrics().await.get(series).copied().unwrap_or(0.0)
    }

    /// A bare HTTP/1.1 GET; returns the status and the body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        self.get_with(path, &[]).await
    }

    /// The same, with extra request headers.
    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        self.request("GET", path, headers, "").await
    }

    /// A bare HTTP/1.1 request with a body; returns the status and the body.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        let (status, _, body) = self.exchange(None, method, path, headers, body).await;
        (status, body)
    }

    /// The same from `source`, a loopback address such as 127.0.0.2: another client, as
    /// far as the hub can tell.
    pub async fn request_from(
        &self,
        source: std::net::IpAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        let (status, _, body) = self
            .exchange(Some(source), method, path, headers, body)
            .await;
        (status, body)
    }

    /// A bare GET; returns the status and the response's headers, names in lower case.
    pub async fn response_headers(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, BTreeMap<String, String>) {
        let (status, head, _) = self.exchange(None, "GET", path, headers, "").await;
        (status, head)
    }

    /// Sends one request over a connection of its own (from `source` when given); returns
    /// the status (0 when the hub answered nothing), the headers and the body.
    async fn exchange(
        &self,
        source: Option<std::net::IpAddr>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, BTreeMap<String, String>, String) {
        let connected = match source {
            None => TcpStream::connect(self.addr).await,
            Some(source) => {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind(SocketAddr::new(source, 0)).unwrap();
                socket.connect(self.addr).await
            }
        };
        let Ok(mut stream) = connected else {
            return (0, BTreeMap::new(), String::new());
        };
        let headers: String = headers
            .iter()
            .map(|(name, value)| format!("{name}: {value}\r\n"))
            .collect();
        let length = body.len();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: hub\r\nConnection: close\r\nContent-Length: {length}\r\n{headers}\r\n{body}"
        );
        // A hub that refuses a request midway may close before reading all of it: what it
        // answered, if anything, is still there to read.
        let _ = stream.write_all(request.as_bytes()).await;
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response).await;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        let head = head
            .lines()
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_string()))
            .collect();
        (status, head, body.to_string())
    }

    pub fn url(&self, token: &str) -> String {
        format!("ws://{}/ws?token={token}", self.addr)
    }

    pub async fn connect(&self, token: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(self.url(token))
            .await
            .expect("connecting to the hub");
        Client { ws }
    }

    /// Connects without a token: the first frame must authenticate.
    pub async fn connect_bare(&self) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", self.addr))
            .await
            .expect("connecting to the hub");
        Client { ws }
    }

    /// Connects with `Authorization: Bearer` instead of the query string.
    pub async fn connect_with_header(&self, token: &str) -> Result<Client, tungstenite::Error> {
        let mut request = format!("ws://{}/ws", self.addr)
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(Client { ws })
    }

    /// An upgrade request carrying `token` in `Authorization: Bearer`, sent as plain HTTP:
    /// the status, or 0 when the hub closed the connection mid-request (as it may for a
    /// token too large to read).
    pub async fn bearer_upgrade_status(&self, token: &str) -> u16 {
        let bearer = format!("Bearer {token}");
        self.get_with(
            "/ws",
            &[("Authorization", &bearer), ("Upgrade", "websocket")],
        )
        .await
        .0
    }

    /// The HTTP status a WebSocket handshake with this URL gets.
    pub async fn handshake_status(&self, url: &str) -> u16 {
        self.handshake_status_with(url, &[]).await
    }

    /// The same, with extra request headers.
    pub async fn handshake_status_with(&self, url: &str, headers: &[(&'static str, &str)]) -> u16 {
        let mut request = url.into_client_request().unwrap();
        for (name, value) in headers {
            request.headers_mut().insert(*name, value.parse().unwrap());
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((_, response)) => response.status().as_u16(),
            Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
            Err(e) => panic!("handshake failed without an HTTP answer: {e}"),
        }
    }

    /// Asserts that `bad` is refused with `reason` on every path a token takes: the upgrade
    /// (401 with the reason as its body), the first frame of a socket opened without one
    /// (closed with 4403 and the reason), and a refresh on a socket opened with `good`
    /// (`unauthorized`, the socket carrying on).
    pub async fn refuses_on_every_path(&self, good: &str, bad: &str, reason: &str) {
        let refused = tokio_tungstenite::connect_async(self.url(bad)).await;
        let Err(tungstenite::Error::Http(response)) = refused else {
            panic!("the upgrade was not refused: {refused:?}");
        };
        let body = String::from_utf8(response.body().clone().unwrap_or_default()).unwrap();
        assert_eq!(
            (response.status().as_u16(), body.as_str()),
            (401, reason),
            "the upgrade"
        );

        let mut bare = self.connect_bare().await;
        bare.send(json!({"type": "auth", "token": bad})).await;
        let close = bare.closed().await.expect("a close frame");
        assert_eq!(
            (u16::from(close.code), close.reason.as_str()),
            (4403, reason),
            "the first frame"
        );

        let mut client = self.connect(good).await;
        let refused = client
            .call(json!({"type": "auth", "id": "r", "token": bad}))
            .await;
        assert_eq!(refused["code"], "unauthorized", "a refresh: {refused}");
        assert_eq!(
            refused["message"],
            format!("{reason}: the current token stays in force")
        );
        let pong = client.call(json!({"type": "ping", "id": "p"})).await;
        assert_eq!(pong["type"], "pong", "{pong}");
    }

    /// Sends SIGTERM and returns the exit code.
    pub async fn terminate(mut self) -> Option<i32> {
        let pid = self.process.id().expect("the hub is running").to_string();
        let killed = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(killed.success());
        let status = tokio::time::timeout(PATIENCE, self.process.wait())
            .await
            .expect("the hub did not stop after SIGTERM")
            .unwrap();
        status.code()
    }

    /// Sends the signal `name` (`HUP`, ...) to the hub.
    pub async fn signal(&self, name: &str) {
        let pid = self.process.id().expect("the hub is running").to_string();
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .await
            .unwrap();
        assert!(sent.success());
    }

    /// SIGKILL: no shutdown of any kind.
    pub async fn kill(mut self) {
        self.process.kill().await.expect("killing the hub");
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}
