//! What every socket of a hub shares, and admission: the one path from a token to a
//! verified session with a seat under its user's limit, for the HTTP upgrade and for a
//! socket's first frame alike.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::CloseFrame;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use dashmap::DashMap;
use governor::clock::DefaultClock;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::issuers::Authenticator;
use crate::auth::{AuthError, Session, TokenId};
use crate::budget::{Rates, UserBudgets};
use crate::config::ServeConfig;
use crate::control::{Revocation, Revocations};
use crate::fleet::Fleet;
use crate::history::HistoryReader;
use crate::kafka::Catalogue;
use crate::kafka::{LivePositions, Publisher};
use crate::metrics::{self, Metrics};
use crate::presence::Presence;
use crate::presence::roster::Roster;
use crate::presence::signal::Signals;
use crate::protocol::close;
use crate::push;
use crate::recent::Recent;
use crate::registry::{ConnId, Queued, Registry};
use crate::replay::Replayer;
use crate::retries::Retries;
use crate::stop::Stop;
use crate::store::commits::Commits;
use crate::store::{Store, StoreError};

/// Shared by the HTTP handlers and every connection, behind one `Arc`. `serve` builds it
/// from its parts; what only this module touches lives in `Sockets` and `Readiness`.
pub struct Hub {
    pub config: ServeConfig,
    pub auth: Authenticator,
    pub registry: Arc<Registry>,
    pub publisher: Publisher,
    /// Which topics exist, checked before each publish, subscribe and history.
    pub topics: Catalogue,
    pub live_positions: LivePositions,
    pub metrics: Metrics,
    pub replayer: Replayer,
    pub history: HistoryReader,
    /// Finds resent publishes' earlier attempts (see `retries`).
    pub retries: Retries,
    pub store: Store,
    /// Read positions taken and not yet written (see `commits`).
    pub commits: Arc<Commits>,
    pub presence: Option<Presence>,
    /// Who is in which room, with presence on.
    pub roster: Option<Roster>,
    pub signals: Signals,
    /// This hub's samples for the admin view's charts, and the other hubs' reports.
    pub fleet: Arc<Fleet>,
    /// Web Push, when on: its settings and key, for the `push_*` requests.
    pub push: Option<Arc<push::Service>>,
    /// Cancelled when the hub starts shutting down; every connection watches it.
    pub shutdown: CancellationToken,
    /// Connections, the work they leave behind and the background tasks, which shutdown
    /// waits for.
    pub tasks: TaskTracker,
    pub sockets: Sockets,
    pub readiness: Readiness,
}

/// The hub's sockets: the caps on them, each user's seats and budgets, the listing that
/// revocations and shutdown reach, and the revocations seen since start.
pub struct Sockets {
    /// The clock of every socket's request budgets. Made once: making one runs CPUID
    /// several times, each a trip to the hypervisor on a virtual machine.
    pub rate_clock: DefaultClock,
    /// What each socket may ask per request type (see `budget`).
    pub request_rates: Rates,
    /// What all the sockets of one user may ask together.
    pub user_rates: Rates,
    /// Revocations read from the control topic since start (see `control`).
    revocations: Revocations,
    next_conn: AtomicU64,
    /// Open sockets per user, and their budgets. Users with no socket are forgotten.
    seats: DashMap<String, UserSeats>,
    /// Authenticated sockets, for the admin view and for revocations and shutdown to reach.
    connections: DashMap<ConnId, ConnectionInfo>,
    /// Sockets opened without a token that have not sent their `auth` frame yet.
    awaiting_auth: Arc<Semaphore>,
    /// One permit per open socket, up to `max_connections`.
    open_sockets: Arc<Semaphore>,
}

impl Sockets {
    pub fn new(config: &ServeConfig) -> Sockets {
        let request_rates = Rates::new(
            config.limits.publish_rate,
            config.presence.signal_rate,
            &config.limits.request_rates,
        );
        Sockets {
            rate_clock: DefaultClock::default(),
            user_rates: Rates::of_users(&request_rates, &config.limits.user_request_rates),
            request_rates,
            revocations: Revocations::default(),
            next_conn: AtomicU64::new(0),
            seats: DashMap::new(),
            connections: DashMap::new(),
            awaiting_auth: Arc::new(Semaphore::new(config.limits.max_awaiting_auth)),
            open_sockets: Arc::new(Semaphore::new(config.limits.max_connections)),
        }
    }
}

/// What `/readyz` reads besides the keys, the roster and shutdown.
pub struct Readiness {
    /// The consumer has its start positions.
    consumer: Arc<AtomicBool>,
    /// A broker answered the last probe.
    kafka_reachable: AtomicBool,
    /// The database is migrated and answered the last probe.
    database: AtomicBool,
}

impl Readiness {
    pub fn new(consumer: Arc<AtomicBool>) -> Readiness {
        Readiness {
            consumer,
            kafka_reachable: AtomicBool::new(false),
            database: AtomicBool::new(false),
        }
    }
}

/// What `/readyz` waits for, by the names it gives them; the README and the protocol list
/// them too, which a test checks.
pub const READY_CHECKS: [&str; 6] = [
    "kafka",
    "start_positions",
    "database",
    "keys",
    "roster",
    "shutting_down",
];

/// A live connection as the admin page lists it.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionInfo {
    pub sub: String,
    /// Milliseconds since the epoch.
    pub since: i64,
    /// How the socket came: a WebSocket over HTTP/1.1 or over HTTP/2.
    pub transport: &'static str,
    #[serde(skip)]
    pub token: TokenId,
    /// Told when a revocation covers the socket's token, or the hub shuts down.
    #[serde(skip)]
    pub stop: Stop,
    /// The bytes queued for it, for the largest queue in /metrics.
    #[serde(skip)]
    pub queued: Arc<Queued>,
}

/// Where a new socket stands with authentication.
pub enum Admission {
    /// Boxed: a socket's task keeps room for its admission as long as it lives.
    Admitted(Box<Session>, Seat),
    /// No token came with the upgrade; the permit is held until the `auth` frame arrives.
    Awaiting(OwnedSemaphorePermit),
}

/// Why a token does not get a socket: an HTTP answer at the upgrade, a close frame at the
/// first frame.
#[derive(Debug)]
pub enum Refusal {
    Token(AuthError),
    Revoked,
    /// The revocations could not be checked.
    Unavailable,
    TooManyForUser,
}

impl Refusal {
    /// How a socket that authenticates with its first frame is closed for it.
    pub fn close_frame(&self) -> CloseFrame {
        let (code, reason) = match self {
            Refusal::Token(e) => (close::AUTH_FAILED, e.to_string()),
            Refusal::Revoked => (close::AUTH_FAILED, "token revoked".into()),
            Refusal::Unavailable => (close::INTERNAL, "try again shortly".into()),
            Refusal::TooManyForUser => (
                close::TOO_MANY_CONNECTIONS,
                "too many connections for this user".into(),
            ),
        };
        CloseFrame {
            code,
            reason: reason.into(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let invalid_token = [(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")];
        match self {
            Refusal::Token(e) => (StatusCode::UNAUTHORIZED, invalid_token, e.to_string()),
            Refusal::Revoked => (
                StatusCode::UNAUTHORIZED,
                invalid_token,
                "token revoked".into(),
            ),
            Refusal::Unavailable => {
                return (StatusCode::SERVICE_UNAVAILABLE, "try again shortly").into_response();
            }
            Refusal::TooManyForUser => {
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many connections for this user",
                )
                    .into_response();
            }
        }
        .into_response()
    }
}

impl Hub {
    /// Refreshes the bytes each part of the memory budget holds in /metrics, until the hub
    /// stops.
    pub async fn report_memory(self: Arc<Self>, recent: Recent) {
        let mut every = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            let largest = self
                .sockets
                .connections
                .iter()
                .map(|c| c.queued.bytes())
                .max();
            metrics::held(&metrics::Held {
                recent: recent.bytes(),
                send_queues: self.registry.queued_bytes(),
                largest_send_queue: largest.unwrap_or(0),
                replays: self.replayer.held(),
                history: self.history.held(),
            });
        }
    }

    /// Verifies the token, checks that it is not revoked and takes a seat under its user's
    /// limit.
    pub async fn admit(self: &Arc<Self>, token: &str) -> Result<(Session, Seat), Refusal> {
        let session = self.verify(token).await?;
        let Some(seat) = self.take_seat(&session.sub) else {
            tracing::info!(sub = %session.sub, "refused a connection over the per-user limit");
            return Err(Refusal::TooManyForUser);
        };
        Ok((session, seat))
    }

    /// Verifies the token and checks that it is not revoked: a request over plain HTTP.
    pub async fn verify(&self, token: &str) -> Result<Session, Refusal> {
        let refused = |refusal: Refusal| {
            let reason = match &refusal {
                Refusal::Token(e) => Some(e.reason()),
                Refusal::Revoked => Some("revoked"),
                Refusal::Unavailable | Refusal::TooManyForUser => None,
            };
            if let Some(reason) = reason {
                metrics::auth_failed(reason);
                tracing::info!(reason, "refused a token");
            }
            refusal
        };
        let session = match self.auth.verify(token).await {
            Ok(session) => session,
            // Not the token's fault: its issuer's keys have not been fetched yet.
            Err(AuthError::NoKeys) => return Err(Refusal::Unavailable),
            Err(e) => return Err(refused(Refusal::Token(e))),
        };
        // Revocations live there: without it, no token can be told apart from a revoked one.
        if !self.readiness.database.load(Ordering::Acquire) {
            return Err(Refusal::Unavailable);
        }
        match self.is_revoked(&session.sub, &session.token).await {
            Ok(false) => {}
            Ok(true) => return Err(refused(Refusal::Revoked)),
            Err(e) => {
                tracing::error!(error = %e, "cannot check revocations");
                return Err(Refusal::Unavailable);
            }
        }
        Ok(session)
    }

    /// A place under the hub's cap on open sockets, if there is one.
    pub fn open_socket(&self) -> Option<OwnedSemaphorePermit> {
        self.sockets.open_sockets.clone().try_acquire_owned().ok()
    }

    /// A place among the sockets that may await their `auth` frame, if there is one.
    pub fn await_auth(&self) -> Option<OwnedSemaphorePermit> {
        self.sockets.awaiting_auth.clone().try_acquire_owned().ok()
    }

    pub fn next_conn_id(&self) -> ConnId {
        self.sockets.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts a socket against its user's limit; `None` when the user is at the limit.
    fn take_seat(self: &Arc<Self>, sub: &str) -> Option<Seat> {
        let mut held = self.sockets.seats.entry(sub.to_string()).or_default();
        if held.sockets >= self.config.limits.max_connections_per_user.get() {
            return None;
        }
        held.sockets += 1;
        // One socket never goes past its user's budget: made with the second.
        if held.sockets == 2 && held.budgets.is_none() {
            held.budgets = Some(Arc::new(UserBudgets::new(
                &self.sockets.user_rates,
                &self.sockets.rate_clock,
            )));
        }
        Some(Seat {
            hub: self.clone(),
            sub: sub.to_string(),
        })
    }

    /// The budgets `sub`'s sockets share, once the user has more than one socket here.
    pub fn user_budgets(&self, sub: &str) -> Option<Arc<UserBudgets>> {
        self.sockets.seats.get(sub)?.budgets.clone()
    }

    /// Runs `work` to completion before the hub stops, up to the shutdown timeout.
    pub fn track(&self, work: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(work);
    }

    /// `work`, which shutdown waits for like any tracked task, for axum to run.
    pub fn tracked<F: Future>(&self, work: F) -> tokio_util::task::task_tracker::TrackedFuture<F> {
        self.tasks.track_future(work)
    }

    /// Whether the store or the control topic revoked this token.
    pub async fn is_revoked(&self, sub: &str, token: &TokenId) -> Result<bool, StoreError> {
        Ok(self.sockets.revocations.revokes(sub, token)
            || self.store.is_revoked(sub, token).await?)
    }

    /// Whether a revocation read from the control topic covers this token; see `control`
    /// for why sockets check it after registering.
    pub fn revoked_since_start(&self, sub: &str, token: &TokenId) -> bool {
        self.sockets.revocations.revokes(sub, token)
    }

    /// Lists an authenticated socket until the returned guard drops, in reach of
    /// revocations and shutdown.
    pub fn register(self: &Arc<Self>, id: ConnId, info: ConnectionInfo) -> Registration {
        self.sockets.connections.insert(id, info);
        Registration {
            hub: self.clone(),
            id,
        }
    }

    /// A refreshed token for a listed socket, which later revocations are checked against.
    pub fn update_token(&self, id: ConnId, token: TokenId) {
        if let Some(mut info) = self.sockets.connections.get_mut(&id) {
            info.token = token;
        }
    }

    /// How many users have a socket here.
    pub fn users(&self) -> usize {
        self.sockets.seats.len()
    }

    /// The oldest `most` listed sockets, by id: only their entries are copied, since the
    /// fleet report lists a few of many thousands every few seconds.
    pub fn connections(&self, most: usize) -> Vec<(ConnId, ConnectionInfo)> {
        let mut ids: Vec<ConnId> = self.sockets.connections.iter().map(|e| *e.key()).collect();
        ids.sort_unstable();
        ids.truncate(most);
        ids.into_iter()
            .filter_map(|id| {
                let info = self.sockets.connections.get(&id)?;
                Some((id, info.clone()))
            })
            .collect()
    }

    /// How many sockets are listed.
    pub fn connection_count(&self) -> usize {
        self.sockets.connections.len()
    }

    /// Applies a revocation read from the control topic: sockets it covers close.
    pub fn apply_revocation(&self, revocation: &Revocation) {
        self.sockets.revocations.add(revocation);
        let mut closed = 0;
        for entry in self.sockets.connections.iter() {
            if revocation.covers(&entry.sub, &entry.token) {
                entry.stop.revoked();
                closed += 1;
            }
        }
        tracing::info!(?revocation, closed, "applied a revocation");
    }

    /// Starts the shutdown: every listed socket is told to close with 1001. A socket listed
    /// after this loop passed it sees the cancelled token itself (`connection::run`).
    pub fn going_away(&self) {
        self.shutdown.cancel();
        for entry in self.sockets.connections.iter() {
            entry.stop.going_away();
        }
    }

    /// Records whether a broker answered; returns whether one did before.
    pub fn set_kafka_reachable(&self, reachable: bool) -> bool {
        self.readiness
            .kafka_reachable
            .swap(reachable, Ordering::AcqRel)
    }

    /// Records whether the database is migrated and answers; returns whether it was before.
    pub fn set_database_ready(&self, ready: bool) -> bool {
        self.readiness.database.swap(ready, Ordering::AcqRel)
    }

    /// What the hub still waits for before it is ready, by the names `/readyz` gives; empty
    /// when ready.
    pub fn not_ready(&self) -> Vec<&'static str> {
        let checks = [
            self.readiness.kafka_reachable.load(Ordering::Acquire),
            self.readiness.consumer.load(Ordering::Acquire),
            self.readiness.database.load(Ordering::Acquire),
            self.auth.missing_keys().is_empty(),
            self.roster.as_ref().is_none_or(Roster::is_caught_up),
            !self.shutdown.is_cancelled(),
        ];
        READY_CHECKS
            .into_iter()
            .zip(checks)
            .filter(|(_, ok)| !ok)
            .map(|(name, _)| name)
            .collect()
    }

    /// Waits for the tracked work, up to `timeout`; false when some was still running.
    pub async fn finish_tasks(&self, timeout: std::time::Duration) -> bool {
        self.tasks.close();
        if tokio::time::timeout(timeout, self.tasks.wait())
            .await
            .is_ok()
        {
            return true;
        }
        tracing::warn!(
            open = self.tasks.len(),
            "tasks still running after the shutdown timeout"
        );
        false
    }
}

/// Keeps a socket listed until it ends.
pub struct Registration {
    hub: Arc<Hub>,
    id: ConnId,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.sockets.connections.remove(&self.id);
    }
}

/// A user's sockets on this hub.
#[derive(Default)]
struct UserSeats {
    sockets: usize,
    /// What they may ask together (see `budget`).
    budgets: Option<Arc<UserBudgets>>,
}

/// One socket's place in its user's count, given back when the connection ends (or when an
/// upgrade never completes).
pub struct Seat {
    hub: Arc<Hub>,
    sub: String,
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.hub.sockets.seats.remove_if_mut(&self.sub, |_, held| {
            held.sockets -= 1;
            held.sockets == 0
        });
    }
}

/// The secret of `for_tests` hubs.
#[cfg(test)]
pub(crate) const TEST_SECRET: &str = "a-secret-for-unit-tests-of-32-bytes";

/// A hub for unit tests: its settings from `serve`'s flags, an in-memory SQLite database, a
/// producer and a replayer pointed at a port where no broker listens (nothing in them
/// connects before it is used), no consumer, and one topic, `t.room`.
#[cfg(test)]
pub(crate) async fn for_tests(flags: &[&str]) -> Arc<Hub> {
    use clap::Parser as _;

    use crate::config::{Cli, Command};
    use crate::kafka::KafkaLog;
    use crate::recent::Bounds;

    static METRICS: std::sync::OnceLock<Metrics> = std::sync::OnceLock::new();
    let defaults = [
        "wskafka",
        "serve",
        "--jwt-secret",
        TEST_SECRET,
        "--jwt-leeway",
        "0s",
    ];
    let mut args: Vec<&str> = defaults.to_vec();
    args.extend(["--brokers", "127.0.0.1:9", "--topics", "t.*"]);
    args.extend(flags);
    let Command::Serve(config) = Cli::try_parse_from(args).unwrap().command else {
        unreachable!()
    };
    let config = *config;
    let store = Store::connect("sqlite::memory:", 1).await.unwrap();
    let commits = Arc::new(Commits::new(store.clone()));
    let tasks = TaskTracker::new();
    let clients = crate::kafka::Clients::new(&config, "test", &KafkaLog::default());
    let hub = Arc::new(Hub {
        auth: Authenticator::new(&config.jwt).unwrap(),
        registry: Arc::default(),
        publisher: Publisher::new(&clients, &config.kafka).unwrap(),
        topics: crate::kafka::Catalogue::fixed(&["t.room"]),
        live_positions: LivePositions::all_new(),
        metrics: METRICS.get_or_init(|| Metrics::install().unwrap()).clone(),
        replayer: Replayer::new(
            &clients,
            &config.limits,
            commits.clone(),
            Recent::new(Bounds::new(
                config.limits.recent_records,
                config.limits.memory_budget,
            )),
            tasks.clone(),
        ),
        history: HistoryReader::new(&clients, &config.limits),
        retries: Retries::new(
            &clients,
            crate::retries::landing(&config),
            config.kafka.publish_retry_window,
        ),
        roster: None,
        signals: Signals::new(&clients, &config.presence).unwrap(),
        fleet: Arc::new(Fleet::new("test".into())),
        push: None,
        store,
        commits,
        presence: None,
        tasks,
        shutdown: CancellationToken::new(),
        sockets: Sockets::new(&config),
        readiness: Readiness::new(Arc::default()),
        config,
    });
    hub.set_database_ready(true);
    hub
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documents_name_every_readiness_check() {
        let readme = include_str!("../README.md");
        let protocol = include_str!("../docs/protocol.md");
        for name in READY_CHECKS {
            let quoted = format!("`{name}`");
            assert!(readme.contains(&quoted), "README.md does not name {quoted}");
            assert!(
                protocol.contains(&quoted),
                "docs/protocol.md does not name {quoted}"
            );
        }
    }
}
