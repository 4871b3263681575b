//! The servers under test and how they are started: the release hub, the bare axum
//! reference and Centrifugo, each on core 0, killed when dropped; what tells them apart
//! (where a record for their subscribers goes), and what each reports (`/metrics`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::SECRET;
use crate::report::{Usage, wait_quiet};
use crate::scenarios::history::HISTORY_TOPIC;
use crate::scenarios::storm::STORM_TOPIC;

/// The servers under test, all on core 0.
pub struct Servers {
    pub hub: Server,
    pub bare: Server,
    /// Started only when a scenario of the run compares with it.
    pub centrifugo: Option<Server>,
}

impl Servers {
    pub fn centrifugo(&self) -> &Server {
        self.centrifugo
            .as_ref()
            .expect("Centrifugo is started for the scenarios that compare with it")
    }
}

/// The scenarios that measure Centrifugo beside the hub.
pub const WITH_CENTRIFUGO: [&str; 6] = ["idle", "fanout", "latency", "room", "slow", "storm"];

pub fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wskafka-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn wait_port(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `program` on the given CPUs (`taskset`), killed when dropped.
pub struct Process(pub Child);

impl Process {
    pub fn spawn(cpus: &str, program: &Path, args: &[&str], log: Option<&Path>) -> Process {
        let out = match log {
            Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
            None => Stdio::null(),
        };
        let child = Command::new("taskset")
            .args(["-c", cpus])
            .arg(program)
            .args(args)
            .env("WSKAFKA_JWT_SECRET", SECRET)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        Process(child)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Which server a `Server` is: they differ in how a socket authenticates and subscribes,
/// and in where a record for their subscribers is produced.
#[derive(Clone, Copy, PartialEq)]
pub enum Kind {
    Hub,
    Bare,
    Centrifugo,
}

/// A WebSocket server under test: the hub, the bare reference or Centrifugo.
pub struct Server {
    pub addr: String,
    pub pid: String,
    pub kind: Kind,
    pub _process: Process,
}

/// The Kafka topics Centrifugo's consumer reads: one per scenario, beside the hub's
/// `bench.*`, so that each server is measured alone on the same broker.
pub const CENTRIFUGO_TOPICS: [&str; 6] = [
    "centrifugo.idle",
    "centrifugo.fanout",
    "centrifugo.latency",
    "centrifugo.room",
    "centrifugo.slow",
    "centrifugo.storm",
];

/// Where a record for the subscribers of a `bench.*` topic goes: for the hub, that topic;
/// for Centrifugo, its own topic, with the channel named in the header its consumer reads.
pub struct Route {
    pub topic: String,
    pub channel: Option<String>,
}

impl Route {
    pub fn plain(topic: &str) -> Route {
        Route {
            topic: topic.to_string(),
            channel: None,
        }
    }
}

impl Server {
    /// A hub named `name` (its database and log), with `extra` settings, each of which
    /// replaces the bench's own setting of the same flag.
    pub async fn hub(
        binary: &Path,
        brokers: &str,
        work: &Path,
        cap: usize,
        name: &str,
        extra: &[&str],
    ) -> Server {
        let addr = format!("127.0.0.1:{}", free_port());
        let database = format!(
            "sqlite://{}?mode=rwc",
            work.join(format!("{name}.db")).display()
        );
        let cap = cap.to_string();
        let defaults = [
            ("--listen", addr.as_str()),
            ("--brokers", brokers),
            ("--topics", "bench.*"),
            ("--database-url", &database),
            ("--max-connections", &cap),
            ("--max-connections-per-user", "1000000"),
            ("--publish-rate", "1000000"),
            ("--keyed-topics", HISTORY_TOPIC),
        ];
        let mut args = vec!["serve"];
        for (flag, value) in defaults {
            if !extra.contains(&flag) {
                args.extend([flag, value]);
            }
        }
        args.extend(extra);
        let log = work.join(format!("{name}.log"));
        let mut process = Process::spawn("0", binary, &args, Some(&log));
        while Server::get_from(&addr, "/readyz").await.0 != 200 {
            if let Ok(Some(status)) = process.0.try_wait() {
                panic!(
                    "the hub {name} ended at start ({status}); see {}",
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Server {
            pid: process.0.id().to_string(),
            addr,
            kind: Kind::Hub,
            _process: process,
        }
    }

    pub async fn bare(binary: &Path) -> Server {
        let addr = format!("127.0.0.1:{}", free_port());
        let process = Process::spawn("0", binary, &[&addr], None);
        wait_port(&addr).await;
        Server {
            pid: process.0.id().to_string(),
            addr,
            kind: Kind::Bare,
            _process: process,
        }
    }

    /// Centrifugo as its documentation has it for one node in production, with what the
    /// comparison needs and nothing else; BENCHMARKS.md gives each setting and why.
    pub async fn centrifugo(binary: &Path, brokers: &str, work: &Path) -> Server {
        let port = free_port();
        let config = serde_json::json!({
            "http_server": {"address": "127.0.0.1", "port": port},
            "log": {"level": "warn"},
            "usage_stats": {"disabled": true},
            "prometheus": {"enabled": true},
            "client": {"token": {"hmac_secret_key": SECRET}},
            "channel": {
                "without_namespace": {"allow_subscribe_for_client": true},
                "namespaces": [{
                    "name": "storm",
                    "allow_subscribe_for_client": true,
                    "history_size": 10_000,
                    "history_ttl": "300s",
                    "force_recovery": true
                }]
            },
            "consumers": [{
                "name": "kafka",
                "enabled": true,
                "type": "kafka",
                "kafka": {
                    "brokers": [brokers],
                    "topics": CENTRIFUGO_TOPICS,
                    "consumer_group": "bench-centrifugo",
                    "publication_data_mode": {
                        "enabled": true,
                        "channels_header": "centrifugo-channels"
                    }
                }
            }]
        });
        let path = work.join("centrifugo.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let path = path.to_str().unwrap();
        let process = Process::spawn(
            "0",
            binary,
            &["--config", path],
            Some(&work.join("centrifugo.log")),
        );
        let addr = format!("127.0.0.1:{port}");
        wait_port(&addr).await;
        Server {
            pid: process.0.id().to_string(),
            addr,
            kind: Kind::Centrifugo,
            _process: process,
        }
    }

    pub fn label(&self) -> &'static str {
        match self.kind {
            Kind::Hub => "hub",
            Kind::Bare => "bare axum",
            Kind::Centrifugo => "Centrifugo",
        }
    }

    pub fn usage(&self) -> Usage {
        Usage::of(&self.pid)
    }

    /// The channel Centrifugo's subscribers of `topic` follow: the storm's is in the
    /// namespace with history and recovery.
    pub fn channel(topic: &str) -> String {
        if topic == STORM_TOPIC {
            format!("storm:{topic}")
        } else {
            topic.to_string()
        }
    }

    pub fn route(&self, topic: &str) -> Route {
        match self.kind {
            Kind::Centrifugo => Route {
                topic: topic.replacen("bench.", "centrifugo.", 1),
                channel: Some(Server::channel(topic)),
            },
            Kind::Hub | Kind::Bare => Route::plain(topic),
        }
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        Server::get_from(&self.addr, path).await
    }

    /// An HTTP/1.0 GET of `path` from `addr`: (status, body), status 0 when nothing answered.
    async fn get_from(addr: &str, path: &str) -> (u16, String) {
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            return (0, String::new());
        };
        let request = format!("GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n");
        if stream.write_all(request.as_bytes()).await.is_err() {
            return (0, String::new());
        }
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response).await;
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (status, body.to_string())
    }

    /// The cumulative buckets of the hub's delivery-latency histogram: (upper bound, count).
    pub async fn delivery_buckets(&self) -> Vec<(String, f64)> {
        let (_, body) = self.get("/metrics").await;
        body.lines()
            .filter_map(|l| l.strip_prefix("wskafka_delivery_seconds_bucket{le=\""))
            .filter_map(|l| {
                let (le, rest) = l.split_once("\"} ")?;
                Some((le.to_string(), rest.parse().ok()?))
            })
            .collect()
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.get("/metrics").await;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Until the last scenario's sockets are gone and the server has caught up.
    pub async fn wait_idle(&self) {
        if self.kind == Kind::Hub {
            while self.metric("wskafka_connections").await > 0.0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        wait_quiet(&self.pid, 0.05).await;
    }
}
