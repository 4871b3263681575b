//! The HTTP side: routes, authentication before the upgrade (when the request carries a
//! token), readiness, and the lifecycle from start to a graceful stop.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use dashmap::DashMap;
use governor::clock::DefaultClock;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder as ConnectionBuilder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rdkafka::error::KafkaError;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::admin::{self, ConnectionInfo};
use crate::auth::{Authenticator, KeyError, Session, TokenId};
use crate::config::ServeConfig;
use crate::control::{ControlMessage, Revocation, Revocations};
use crate::kafka::{self, Consumer, LivePositions, Publisher};
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::registry::{ConnId, Registry};
use crate::replay::Replayer;
use crate::store::{Store, StoreError};
use crate::{connection, metrics, web};

/// Per-socket buffers. axum's defaults (128 KiB each way) would cost gigabytes at tens of
/// thousands of sockets; frames here are small, and writes are flushed in batches anyway.
/// An idle socket keeps its read buffer: 1 KiB holds a typical request in one read, and a
/// larger frame takes one read per KiB into a buffer grown to fit it.
pub const READ_BUFFER: usize = 1024;
pub const WRITE_BUFFER: usize = 8 * 1024;

/// Everything the handlers and connections share.
pub struct Hub {
    pub config: ServeConfig,
    pub auth: Authenticator,
    pub registry: Arc<Registry>,
    pub publisher: Publisher,
    pub live: LivePositions,
    pub metrics: Metrics,
    pub replayer: Replayer,
    pub store: Store,
    /// Revocations read from the control topic since start (see `control`).
    pub revocations: Revocations,
    pub presence: Option<Arc<Presence>>,
    /// Cancelled when the hub starts shutting down; every connection watches it.
    pub shutdown: CancellationToken,
    consumer_ready: Arc<AtomicBool>,
    /// A broker answered the last probe (see `watch_kafka`).
    kafka_reachable: AtomicBool,
    /// Connections, and the work they leave behind, which shutdown waits for.
    tasks: TaskTracker,
    next_conn: AtomicU64,
    /// Open sockets per user.
    seats: DashMap<String, usize>,
    /// Authenticated sockets, for the admin view.
    pub connection_list: DashMap<ConnId, ConnectionInfo>,
    /// Sockets opened without a token that have not sent their `auth` frame yet.
    pub awaiting_auth: Arc<Semaphore>,
    /// One permit per open socket, up to `max_connections`.
    open_sockets: Arc<Semaphore>,
    /// The clock of every socket's publish rate limiter. Made once: making one runs CPUID
    /// several times, each a trip to the hypervisor on a virtual machine.
    pub clock: DefaultClock,
}

/// Where a new socket stands with authentication.
pub enum Auth {
    Verified(Session, Seat),
    /// No token came with the upgrade; the permit is held until the `auth` frame arrives.
    Awaiting(OwnedSemaphorePermit),
}

impl Hub {
    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts a socket against its user's limit; `None` when the user is at the limit.
    pub fn take_seat(self: &Arc<Self>, sub: &str) -> Option<Seat> {
        let mut held = self.seats.entry(sub.to_string()).or_insert(0);
        if *held >= self.config.max_connections_per_user.get() {
            return None;
        }
        *held += 1;
        Some(Seat {
            hub: self.clone(),
            sub: sub.to_string(),
        })
    }

    /// Runs `work` to completion before the hub stops, up to the shutdown timeout.
    pub fn track(&self, work: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(work);
    }

    /// Whether the store or the control topic revoked this token.
    pub async fn is_revoked(&self, sub: &str, token: &TokenId) -> Result<bool, StoreError> {
        Ok(self.revocations.revokes(sub, token) || self.store.is_revoked(sub, token).await?)
    }

    /// Applies a revocation read from the control topic: sockets it covers close.
    fn apply(&self, revocation: &Revocation) {
        self.revocations.add(revocation);
        let mut closed = 0;
        for entry in self.connection_list.iter() {
            if revocation.covers(&entry.sub, &entry.token) {
                entry.stop.revoked();
                closed += 1;
            }
        }
        tracing::info!(?revocation, closed, "applied a revocation");
    }

    /// Starts the shutdown: every listed socket is told to close with 1001. A socket listed
    /// after this loop passed it sees the cancelled token itself (`connection::run`).
    fn going_away(&self) {
        self.shutdown.cancel();
        for entry in self.connection_list.iter() {
            entry.stop.going_away();
        }
    }

    fn is_ready(&self) -> bool {
        self.consumer_ready.load(Ordering::Acquire) && self.kafka_reachable.load(Ordering::Acquire)
    }
}

/// One socket's place in its user's count, given back when the connection ends (or when an
/// upgrade never completes).
pub struct Seat {
    hub: Arc<Hub>,
    sub: String,
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.hub.seats.remove_if_mut(&self.sub, |_, held| {
            *held -= 1;
            *held == 0
        });
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
    #[error("cannot create the Kafka client: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("serving failed: {0}")]
    Serve(std::io::Error),
}

/// Runs the hub until `shutdown` completes, then stops gracefully: no new sockets, open
/// sockets closed with 1001 once their in-flight publishes are answered, the producer
/// flushed, the consumer group left.
pub async fn serve(
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    if config.demo {
        tracing::warn!(
            "demo mode: /dev/token mints a token for anyone who asks; never enable it in production"
        );
    }
    let instance_id = config
        .instance_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    // A group of its own per run: a restart after a crash need not wait for Kafka to
    // expire the dead run's membership (session.timeout.ms) before it gets partitions.
    let group_id = format!("wskafka-{instance_id}-{}", uuid::Uuid::new_v4().simple());
    let auth = Authenticator::new(&config.jwt)?;
    let metrics = Metrics::install()?;
    let store = Store::connect(&config.database_url, config.database_max_connections).await?;
    let registry = Arc::new(Registry::default());
    let publisher = Publisher::new(&config, &group_id)?;
    // Before the consumer looks, so that it reads the control topic from its end; when
    // Kafka is not there yet, the readiness check creates them later.
    if let Err(e) = kafka::ensure_topics(&config, &config.own_topics()).await {
        tracing::warn!(error = %e, "cannot create the hub's own topics yet");
    }
    let consumer_ready = Arc::new(AtomicBool::new(false));
    let (control, control_records) = mpsc::unbounded_channel();
    let consumer = Consumer::start(
        &config,
        &group_id,
        registry.clone(),
        consumer_ready.clone(),
        control,
    )?;
    let replayer = Replayer::new(&config, &group_id, store.clone());
    let presence = config.presence_topic.clone().map(|topic| {
        Arc::new(Presence::new(
            topic,
            instance_id.clone(),
            config.instance_timeout,
        ))
    });
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
    let hub = Arc::new(Hub {
        awaiting_auth: Arc::new(Semaphore::new(config.max_awaiting_auth)),
        open_sockets: Arc::new(Semaphore::new(config.max_connections)),
        clock: DefaultClock::default(),
        config,
        auth,
        registry,
        publisher,
        live: consumer.positions(),
        metrics,
        replayer,
        store,
        revocations: Revocations::default(),
        presence,
        shutdown: CancellationToken::new(),
        consumer_ready,
        kafka_reachable: AtomicBool::new(false),
        tasks: TaskTracker::new(),
        next_conn: AtomicU64::new(0),
        seats: DashMap::new(),
        connection_list: DashMap::new(),
    });
    tokio::spawn(watch_kafka(hub.clone()));
    tokio::spawn({
        let hub = hub.clone();
        async move { hub.metrics.upkeep(&hub.shutdown).await }
    });
    tokio::spawn(apply_control(hub.clone(), control_records));
    if let Some(presence) = hub.presence.clone() {
        // Before any socket: this instance's earlier sessions must be seen as ended first.
        if let Err(e) = presence.first_round(&hub).await {
            tracing::error!(error = %e, "presence: cannot account for earlier sessions");
        }
        tokio::spawn(presence.run(hub.clone()));
    }

    let addr = listener.local_addr().map_err(StartError::Serve)?;
    tracing::info!(instance = %instance_id, topics = ?hub.config.topics, "listening on http://{addr}");
    let stopping = hub.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down");
        stopping.going_away();
    });
    let header_timeout = hub.config.header_read_timeout;
    serve_http(listener, router(hub.clone()), header_timeout, &hub.shutdown).await;

    hub.tasks.close();
    let timeout = hub.config.shutdown_timeout;
    if tokio::time::timeout(timeout, hub.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = hub.tasks.len(),
            "sockets still open after the shutdown timeout"
        );
    }
    let flushing = hub.clone();
    let (flushed, ()) = tokio::join!(
        tokio::task::spawn_blocking(move || flushing.publisher.flush(timeout)),
        async {
            let _ = tokio::task::spawn_blocking(move || consumer.stop()).await;
        }
    );
    if let Ok(Err(e)) = flushed {
        tracing::error!(error = %e, "records left unflushed at shutdown");
    }
    hub.store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Serves HTTP until `stop` is cancelled, then waits for the requests in progress (upgraded
/// sockets are the connection tasks' business).
///
/// Not `axum::serve`: it builds hyper without a timer, so hyper's header-read timeout never
/// runs, and a client that trickles its request headers (slowloris) holds a connection for
/// as long as it likes.
async fn serve_http(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    stop: &CancellationToken,
) {
    let mut builder = ConnectionBuilder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    // WebSockets over HTTP/2 (RFC 8441), as axum::serve allows.
    builder.http2().enable_connect_protocol();
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, typically: give connections time to close.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Frames are small and written in flushed batches: no reason to wait for more.
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
}

/// How often readiness asks Kafka whether it is there, and how long it waits for the answer.
const KAFKA_PROBE: Duration = Duration::from_secs(2);

/// Readiness follows Kafka: a broker must answer the producer, checked every `KAFKA_PROBE`
/// for as long as the hub runs, and the hub's own topics must exist (created once).
async fn watch_kafka(hub: Arc<Hub>) {
    let mut topics_exist = false;
    loop {
        let probe = hub.clone();
        let reachable =
            tokio::task::spawn_blocking(move || probe.publisher.check_connection(KAFKA_PROBE))
                .await;
        let outcome = match reachable {
            Ok(Ok(())) if topics_exist => Ok(()),
            Ok(Ok(())) => kafka::ensure_topics(&hub.config, &hub.config.own_topics())
                .await
                .inspect(|()| topics_exist = true),
            Ok(Err(e)) => Err(e),
            Err(_) => return,
        };
        let was = hub.kafka_reachable.swap(outcome.is_ok(), Ordering::AcqRel);
        match outcome {
            Ok(()) if !was => tracing::info!("Kafka is reachable"),
            Err(e) if was => tracing::warn!(error = %e, "Kafka is not reachable: not ready"),
            Err(e) => tracing::debug!(error = %e, "Kafka is still not reachable"),
            Ok(()) => {}
        }
        tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            _ = tokio::time::sleep(KAFKA_PROBE) => {}
        }
    }
}

/// Applies the control topic's records as the consumer reads them.
async fn apply_control(hub: Arc<Hub>, mut records: mpsc::UnboundedReceiver<Vec<u8>>) {
    while let Some(record) = records.recv().await {
        match serde_json::from_slice::<ControlMessage>(&record) {
            Ok(message) => hub.apply(&message.revoke),
            Err(e) => tracing::warn!(error = %e, "ignored a malformed control record"),
        }
    }
}

fn router(hub: Arc<Hub>) -> Router {
    Router::new()
        .route("/ws", get(websocket))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(|State(hub): State<Arc<Hub>>| async move { hub.metrics.render() }),
        )
        .merge(web::routes(hub.config.demo))
        .merge(admin::routes(&hub))
        // The default span records the URI, query string and all: tokens travel there.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request<_>| {
                    tracing::info_span!("http", method = %request.method(), path = request.uri().path())
                })
                // A 503 from /readyz while starting is an answer, not a failure.
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .with_state(hub)
}

async fn readyz(State(hub): State<Arc<Hub>>) -> Response {
    if hub.is_ready() && !hub.shutdown.is_cancelled() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

async fn websocket(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    // A page on another site must not reach the hub with a token it obtained.
    if let Some(origin) = headers.get(header::ORIGIN) {
        let allowed = &hub.config.allowed_origins;
        if !allowed.is_empty() && !allowed.iter().any(|a| a.as_bytes() == origin.as_bytes()) {
            tracing::info!(origin = ?origin, "refused a connection from a disallowed origin");
            return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
        }
    }
    let Ok(socket_permit) = hub.open_sockets.clone().try_acquire_owned() else {
        tracing::info!("refused a connection: the hub holds its maximum of sockets");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "this hub is full",
        )
            .into_response();
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or(query.token.as_deref());
    // Without a token the socket opens, and its first frame must authenticate it. Such
    // sockets belong to nobody yet, so a hub-wide cap bounds what strangers can hold open.
    let authenticated = match token.map(|t| hub.auth.verify(t)) {
        None => match hub.awaiting_auth.clone().try_acquire_owned() {
            Ok(permit) => Auth::Awaiting(permit),
            Err(_) => {
                tracing::info!("refused a connection: too many sockets awaiting their auth frame");
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many sockets awaiting authentication",
                )
                    .into_response();
            }
        },
        Some(Ok(session)) => {
            match hub.is_revoked(&session.sub, &session.token).await {
                Ok(false) => {}
                Ok(true) => {
                    tracing::info!(reason = "revoked", "refused a connection");
                    metrics::auth_failed("revoked");
                    return (
                        StatusCode::UNAUTHORIZED,
                        [(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")],
                        "token revoked",
                    )
                        .into_response();
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot check revocations");
                    return (StatusCode::SERVICE_UNAVAILABLE, "try again shortly").into_response();
                }
            }
            let Some(seat) = hub.take_seat(&session.sub) else {
                tracing::info!(sub = %session.sub, "refused a connection over the per-user limit");
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many connections for this user",
                )
                    .into_response();
            };
            Auth::Verified(session, seat)
        }
        Some(Err(e)) => {
            tracing::info!(reason = e.reason(), "refused a connection");
            metrics::auth_failed(e.reason());
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")],
                e.to_string(),
            )
                .into_response();
        }
    };
    if hub.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let hard_limit = hub.config.max_frame_bytes.saturating_mul(4);
    let tracker = hub.tasks.clone();
    upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .on_upgrade(move |socket| {
            tracker.track_future(connection::run(hub, socket, authenticated, socket_permit))
        })
}
