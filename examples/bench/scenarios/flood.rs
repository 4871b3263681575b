//! One socket flooding the hub (issue 42): each request type sent as fast as one client can,
//! and what it cost Kafka, PostgreSQL and the other users: the roster records and the join
//! and leave frames a member of the room receives under subscribe/unsubscribe churn, the
//! database transactions under a commit flood, another user's `history` latency under a
//! history flood, and the pongs and error frames under pings and malformed frames. Each
//! build given with `--builds` (`label=binary`, the hub of this tree by default) gets a hub
//! of its own, one after the other in the same run.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rdkafka::producer::FutureRecord;
use sqlx::Connection as _;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::clients::next_text;
use crate::kafka::Broker;
use crate::records::payload;
use crate::report::{Usage, histogram, print_latency, wait_quiet};
use crate::scenarios::history::HISTORY_TOPIC;
use crate::servers::Server;
use crate::{Args, now_us};

/// The rooms' topic: churn, and commits.
pub const FLOOD_TOPIC: &str = "bench.flood";
/// A keyed topic for the history flood, `FLOOD_RECORDS` records over `FLOOD_ROOMS` rooms.
pub const FLOOD_HISTORY_TOPIC: &str = "bench.flood-history";
const FLOOD_RECORDS: usize = 20_000;
const FLOOD_ROOMS: usize = 100;

/// How long each flood lasts, as in issue 42's table.
const CHURN: Duration = Duration::from_secs(5);
const COMMITS: Duration = Duration::from_secs(4);
const HISTORY: Duration = Duration::from_secs(12);
const PINGS: Duration = Duration::from_secs(4);
/// Another user's history latency before the flood, for the quiet figure.
const QUIET: Duration = Duration::from_secs(5);
/// How often that user asks for a page: within the default history budget (5 a second).
const PAGE_EVERY: Duration = Duration::from_millis(250);
/// How long the flooder waits for replies still due once its time is up.
const DRAIN: Duration = Duration::from_secs(2);

pub async fn flood(builds: &[(String, PathBuf)], kafka: &Broker, work: &Path, args: &Args) {
    fill_history(kafka).await;
    println!(
        "one socket, as fast as it can with {} requests awaiting their reply; PostgreSQL: {}",
        args.flood_window, args.postgres
    );
    let mut columns = Vec::new();
    for (label, binary) in builds {
        println!("-- {label}: {}", binary.display());
        columns.push((
            label.clone(),
            flood_one(label, binary, kafka, work, args).await,
        ));
    }
    // The table, as issue 42 has it, one column per build.
    println!();
    let labels: Vec<&str> = columns.iter().map(|(label, _)| label.as_str()).collect();
    println!("| one socket, as fast as it can | {} |", labels.join(" | "));
    println!("|---|{}", "---|".repeat(labels.len()));
    let rows = columns.first().map_or(0, |(_, rows)| rows.len());
    for row in 0..rows {
        let cells: Vec<&str> = columns
            .iter()
            .map(|(_, rows)| rows[row].1.as_str())
            .collect();
        println!("| {} | {} |", columns[0].1[row].0, cells.join(" | "));
    }
}

/// The rows of the table for one build.
async fn flood_one(
    label: &str,
    binary: &Path,
    kafka: &Broker,
    work: &Path,
    args: &Args,
) -> Vec<(String, String)> {
    let slug: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let (presence, roster, signals) = (
        format!("bench.flood-{slug}-presence"),
        format!("bench.flood-{slug}-roster"),
        format!("bench.flood-{slug}-signals"),
    );
    let database = Database::create(&args.postgres, &slug).await;
    let sqlite = format!(
        "sqlite://{}?mode=rwc",
        work.join(format!("flood-{slug}.db")).display()
    );
    let url = database.as_ref().map_or(sqlite.clone(), |d| d.url.clone());
    let keyed = format!("{HISTORY_TOPIC},{FLOOD_HISTORY_TOPIC}");
    let settings = [
        "--presence-topic",
        &presence,
        "--roster-topic",
        &roster,
        "--signal-topic",
        &signals,
        "--keyed-topics",
        &keyed,
        "--database-url",
        &url,
    ];
    let name = format!("flood-{slug}");
    let hub = Server::hub(binary, &kafka.addr, work, 1000, &name, &settings).await;
    let mut rows = Vec::new();

    // Churn of a room with presence, one member watching.
    let member = Member::join(&hub).await;
    for reconnect in [false, true] {
        wait_quiet(&hub.pid, 0.05).await;
        let (roster_before, presence_before) = (
            kafka.end_offsets(&roster).await,
            kafka.end_offsets(&presence).await,
        );
        member.take();
        let churn = Flooder::run(&hub, CHURN, reconnect, args.flood_window, |n| {
            let kind = if n % 2 == 0 { "subscribe" } else { "unsubscribe" };
            format!(
                r#"{{"type":"{kind}","id":{n},"topic":"{FLOOD_TOPIC}","key":"churn","presence":true}}"#
            )
        })
        .await;
        // The last roster write (coalesced for a second at most) and its way through Kafka.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let roster_records = kafka.end_offsets(&roster).await - roster_before;
        let presence_records = kafka.end_offsets(&presence).await - presence_before;
        let frames = member.take();
        let what = if reconnect {
            "subscribe/unsubscribe churn, 5 s, reconnecting each time it is closed"
        } else {
            "subscribe/unsubscribe churn, 5 s"
        };
        churn.print(&format!("{label}: {what}"));
        println!(
            "  roster records {roster_records}, presence-topic records {presence_records}; the member received {}",
            counts(&frames)
        );
        rows.push((
            format!("{what}: requests answered (refused)"),
            churn.answered(),
        ));
        rows.push((
            format!("{what}: roster records"),
            roster_records.to_string(),
        ));
        rows.push((
            format!("{what}: frames each member receives"),
            counts(&frames),
        ));
    }
    drop(member);

    // History: another user's pages, quiet, then beside a socket flooding history.
    wait_quiet(&hub.pid, 0.05).await;
    let (quiet, quiet_refused) = pages_of_another_user(&hub, QUIET).await;
    print_latency(
        &format!("{label}: another user's history page, quiet"),
        &quiet,
    );
    let (flood, (loaded, loaded_refused)) = tokio::join!(
        Flooder::run(&hub, HISTORY, false, args.flood_window, |n| {
            let room = n % FLOOD_ROOMS;
            format!(
                r#"{{"type":"history","id":{n},"topic":"{FLOOD_HISTORY_TOPIC}","key":"room-{room}","limit":50}}"#
            )
        }),
        pages_of_another_user(&hub, HISTORY)
    );
    flood.print(&format!("{label}: history, limit 50, 12 s"));
    print_latency(
        &format!("{label}: another user's history page, during the flood"),
        &loaded,
    );
    let median = |h: &hdrhistogram::Histogram<u64>| h.value_at_quantile(0.5) as f64 / 1e3;
    println!(
        "  another user's median {:.1} -> {:.1} ms ({:.2}x); that user refused {} times",
        median(&quiet),
        median(&loaded),
        median(&loaded) / median(&quiet),
        quiet_refused + loaded_refused
    );
    rows.push((
        "history, limit 50, 12 s: requests answered (refused)".into(),
        flood.answered(),
    ));
    rows.push((
        "history, limit 50, 12 s: another user's history, median".into(),
        format!(
            "{:.0} → {:.0} ms ({:.1}×)",
            median(&quiet),
            median(&loaded),
            median(&loaded) / median(&quiet)
        ),
    ));

    // Pings and frames that are no request.
    wait_quiet(&hub.pid, 0.05).await;
    let pings = Flooder::run(&hub, PINGS, false, args.flood_window, |n| {
        if n % 2 == 0 {
            format!(r#"{{"type":"ping","id":{n}}}"#)
        } else {
            "{not json".to_string()
        }
    })
    .await;
    pings.print(&format!("{label}: ping and malformed frames, 4 s"));
    rows.push((
        "ping and malformed frames, 4 s: pongs, error frames".into(),
        format!(
            "{} pongs, {} error frames",
            pings.replies.get("pong").unwrap_or(&0),
            pings
                .replies
                .iter()
                .filter(|(kind, _)| kind.starts_with("error"))
                .map(|(_, n)| n)
                .sum::<usize>()
        ),
    ));

    // Commits, last: PostgreSQL reports a backend's transactions within 10 s of its going
    // idle, so the count is read that long after. The hub writes to the database besides
    // (its instance heartbeat, a session per socket): the same span without a flood, just
    // before, is the baseline.
    wait_quiet(&hub.pid, 0.05).await;
    let span = COMMITS + Duration::from_secs(11);
    let (idle_xact, xact_before) = match &database {
        Some(database) => {
            let start = database.transactions().await;
            tokio::time::sleep(span).await;
            let end = database.transactions().await;
            (end - start, end)
        }
        None => (0, 0),
    };
    let writes_before = hub.metric("wskafka_commit_writes_total").await;
    let commits = Flooder::run(&hub, COMMITS, false, args.flood_window, |n| {
        format!(
            r#"{{"type":"commit","id":{n},"topic":"{FLOOD_TOPIC}","offsets":{{"0":{}}}}}"#,
            n + 1
        )
    })
    .await;
    commits.print(&format!("{label}: commit, 4 s"));
    let transactions = match &database {
        Some(database) => {
            tokio::time::sleep(span - COMMITS).await;
            let flooded = database.transactions().await - xact_before;
            println!(
                "  PostgreSQL transactions in the hub's database over {} s from the flood's start: {flooded}; over as long just before, without it: {idle_xact}",
                span.as_secs()
            );
            format!("{} ({flooded} − {idle_xact} without)", flooded - idle_xact)
        }
        None => "no PostgreSQL".into(),
    };
    println!(
        "  the hub's commit writes (its metric, where it has it): {}",
        hub.metric("wskafka_commit_writes_total").await - writes_before
    );
    rows.push((
        "commit, 4 s: commits answered (refused)".into(),
        commits.answered(),
    ));
    rows.push(("commit, 4 s: PostgreSQL transactions".into(), transactions));
    drop(hub);
    if let Some(database) = database {
        database.drop().await;
    }
    rows
}

/// What a flooding socket (or, reconnecting, sockets) sent and got back.
#[derive(Default)]
struct Flooder {
    sent: usize,
    /// Replies by type, errors by code (`error:rate_limited`).
    replies: BTreeMap<String, usize>,
    /// Close codes and when, after the flood's start.
    closes: Vec<(u16, Duration)>,
    connections: usize,
    /// The load generator's share of its core meanwhile.
    client_cpu: f64,
}

impl Flooder {
    /// Sends `frame(n)` for n = 0, 1, ... as fast as the socket takes them with `window`
    /// awaiting their reply, for `duration`, reading every reply; when the hub closes the
    /// socket, opens another if `reconnect`.
    async fn run(
        hub: &Server,
        duration: Duration,
        reconnect: bool,
        window: usize,
        frame: impl Fn(usize) -> String,
    ) -> Flooder {
        let started = Instant::now();
        let deadline = started + duration;
        let client = Usage::of_self();
        let mut flooder = Flooder::default();
        let next = Cell::new(0);
        while Instant::now() < deadline {
            let Ok(socket) = hub.try_open(&hub.ws_url("mallory")).await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            flooder.connections += 1;
            let (mut sink, mut stream) = socket.split();
            let permits = Semaphore::new(window);
            let closed = Cell::new(false);
            let stop = Notify::new();
            let writer = async {
                let mut sent = 0;
                while Instant::now() < deadline && !closed.get() {
                    match permits.try_acquire() {
                        Ok(permit) => permit.forget(),
                        Err(_) => {
                            if sink.flush().await.is_err() {
                                break;
                            }
                            tokio::select! {
                                permit = permits.acquire() => permit.unwrap().forget(),
                                () = stop.notified() => break,
                                () = tokio::time::sleep_until(deadline) => break,
                            }
                        }
                    }
                    if sink.feed(Message::text(frame(next.get()))).await.is_err() {
                        break;
                    }
                    next.set(next.get() + 1);
                    sent += 1;
                }
                let _ = sink.flush().await;
                sent
            };
            let reader = async {
                let (mut replies, mut close) = (BTreeMap::new(), None);
                loop {
                    if Instant::now() >= deadline && permits.available_permits() == window {
                        break;
                    }
                    match tokio::time::timeout_at(deadline + DRAIN, stream.next()).await {
                        Ok(Some(Ok(Message::Text(text)))) => {
                            let kind = kind(&text);
                            // Replies echo the request's id; an error may have none (a
                            // frame that is not JSON has no id to echo). The rest are
                            // pushes (joins and leaves of the room it churns).
                            if text.contains(r#""id":"#) || kind.starts_with("error") {
                                permits.add_permits(1);
                                *replies.entry(kind).or_insert(0) += 1;
                            } else {
                                *replies.entry(format!("pushed {kind}")).or_insert(0) += 1;
                            }
                        }
                        Ok(Some(Ok(Message::Close(frame)))) => {
                            let code = frame.map_or(0, |f| u16::from(f.code));
                            close = Some((code, started.elapsed()));
                            break;
                        }
                        Ok(Some(Ok(_))) => {}
                        _ => break,
                    }
                }
                closed.set(true);
                stop.notify_one();
                (replies, close)
            };
            let (sent, (replies, close)) = tokio::join!(writer, reader);
            flooder.sent += sent;
            for (kind, n) in replies {
                *flooder.replies.entry(kind).or_insert(0) += n;
            }
            flooder.closes.extend(close);
            if close.is_none() || !reconnect {
                break;
            }
        }
        flooder.client_cpu = Usage::of_self().cpu_since(&client);
        flooder
    }

    fn refused(&self) -> usize {
        *self.replies.get("error:rate_limited").unwrap_or(&0)
    }

    /// "answered (refused)": replies, not counting pushes.
    fn answered(&self) -> String {
        let replies: usize = self
            .replies
            .iter()
            .filter(|(kind, _)| !kind.starts_with("pushed"))
            .map(|(_, n)| n)
            .sum();
        format!("{} ({})", replies - self.refused(), self.refused())
    }

    fn print(&self, what: &str) {
        let closes = match self.closes.as_slice() {
            [] => "never closed".to_string(),
            [(code, at)] => format!("closed {code} after {:.2} s", at.as_secs_f64()),
            [(code, first), .., (_, last)] => format!(
                "closed {} times ({code} first), after {:.2} s first and {:.2} s last",
                self.closes.len(),
                first.as_secs_f64(),
                last.as_secs_f64()
            ),
        };
        println!(
            "{what}: {} requests sent over {} connection(s), {closes}; replies {}",
            self.sent,
            self.connections,
            counts(&self.replies)
        );
        let flag = if self.client_cpu > 0.9 {
            "  LOAD GENERATOR SATURATED: these figures are a floor"
        } else {
            ""
        };
        println!("  load generator CPU {:.0}%{flag}", self.client_cpu * 100.0);
    }
}

/// A reply's type, or `error:` and its code.
fn kind(frame: &str) -> String {
    let field = |name: &str| {
        let key = format!(r#""{name}":""#);
        let at = frame.find(&key)? + key.len();
        Some(frame[at..].split('"').next()?.to_string())
    };
    match field("code") {
        Some(code) => format!("error:{code}"),
        None => field("type").unwrap_or_else(|| "other".into()),
    }
}

fn counts(counts: &BTreeMap<String, usize>) -> String {
    if counts.is_empty() {
        return "nothing".into();
    }
    let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    parts.join(", ")
}

/// A member of the flooded room, subscribed with presence, counting the frames it gets by
/// type (joins and leaves, or whatever frame carries them).
struct Member {
    frames: Arc<Mutex<BTreeMap<String, usize>>>,
    task: JoinHandle<()>,
}

impl Member {
    async fn join(hub: &Server) -> Member {
        let mut socket = hub.open(&hub.ws_url("member")).await;
        let subscribe = format!(
            r#"{{"type":"subscribe","id":"m","topic":"{FLOOD_TOPIC}","key":"churn","presence":true}}"#
        );
        socket.send(Message::text(subscribe)).await.unwrap();
        let reply = next_text(&mut socket).await.expect("a reply to subscribe");
        assert!(reply.starts_with(r#"{"type":"subscribed""#), "{reply}");
        let frames = Arc::new(Mutex::new(BTreeMap::new()));
        let counting = frames.clone();
        let task = tokio::spawn(async move {
            while let Some(text) = next_text(&mut socket).await {
                *counting.lock().unwrap().entry(kind(&text)).or_insert(0) += 1;
            }
        });
        Member { frames, task }
    }

    /// The frames counted since the last call.
    fn take(&self) -> BTreeMap<String, usize> {
        std::mem::take(&mut *self.frames.lock().unwrap())
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Another user ("alice") asking for the newest page of a room every `PAGE_EVERY` for
/// `duration`: each request's time to its answer, and how many were refused.
async fn pages_of_another_user(
    hub: &Server,
    duration: Duration,
) -> (hdrhistogram::Histogram<u64>, usize) {
    let mut socket = hub.open(&hub.ws_url("alice")).await;
    let (mut times, mut refused) = (histogram(), 0);
    let deadline = Instant::now() + duration;
    let mut tick = tokio::time::interval(PAGE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < deadline {
        tick.tick().await;
        let request = format!(
            r#"{{"type":"history","id":"a","topic":"{FLOOD_HISTORY_TOPIC}","key":"room-7","limit":50}}"#
        );
        let sent = Instant::now();
        socket.send(Message::text(request)).await.unwrap();
        let reply = next_text(&mut socket).await.expect("a history page");
        if kind(&reply) == "history" {
            times.record(sent.elapsed().as_micros() as u64).unwrap();
        } else {
            refused += 1;
        }
    }
    (times, refused)
}

/// `FLOOD_RECORDS` records over `FLOOD_ROOMS` rooms (keys), once per run.
async fn fill_history(kafka: &Broker) {
    let producer = kafka.producer(&[("partitioner", "murmur2_random"), ("linger.ms", "5")]);
    let mut acks = Vec::with_capacity(FLOOD_RECORDS);
    for i in 0..FLOOD_RECORDS {
        let (room, value) = (format!("room-{}", i % FLOOD_ROOMS), payload(now_us(), i));
        let mut record = FutureRecord::to(FLOOD_HISTORY_TOPIC)
            .key(&room)
            .payload(&value);
        loop {
            match producer.send_result(record) {
                Ok(ack) => break acks.push(ack),
                Err((_, back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }
    for ack in acks {
        ack.await.unwrap().unwrap();
    }
    println!("{FLOOD_RECORDS} records over {FLOOD_ROOMS} rooms in {FLOOD_HISTORY_TOPIC}");
}

/// A database of its own on the PostgreSQL server, dropped at the end.
pub struct Database {
    server: String,
    name: String,
    pub url: String,
}

impl Database {
    /// None, with a word, when the server cannot be reached: commits then go to SQLite and
    /// their transactions are not counted.
    pub async fn create(server: &str, slug: &str) -> Option<Database> {
        let name = format!(
            "wskafka_bench_{}_{}",
            std::process::id(),
            slug.replace('-', "_").to_lowercase()
        );
        let mut admin = match sqlx::PgConnection::connect(&format!("{server}/postgres")).await {
            Ok(admin) => admin,
            Err(e) => {
                println!(
                    "PostgreSQL at {server} not reachable ({e}): commits go to SQLite, uncounted"
                );
                return None;
            }
        };
        // The name is ours: a prefix, a process id and a slug of letters, digits and _.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        Some(Database {
            url: format!("{server}/{name}"),
            server: server.to_string(),
            name,
        })
    }

    /// Transactions committed in the database so far, as PostgreSQL's statistics have them.
    async fn transactions(&self) -> i64 {
        let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", self.server))
            .await
            .unwrap();
        sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = $1")
            .bind(&self.name)
            .fetch_one(&mut admin)
            .await
            .unwrap()
    }

    pub async fn drop(self) {
        let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", self.server))
            .await
            .unwrap();
        let drop = format!("DROP DATABASE {} WITH (FORCE)", self.name);
        sqlx::query(sqlx::AssertSqlSafe(drop))
            .execute(&mut admin)
            .await
            .unwrap();
    }
}
