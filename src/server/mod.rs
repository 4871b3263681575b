//! The HTTP side: routes, authentication before the upgrade (when the request carries a
//! token), readiness, and the lifecycle from start to a graceful stop.

pub(crate) mod admin;
pub(crate) mod logins;
mod publish;
mod sse;
mod watch;
pub(crate) mod web;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder as ConnectionBuilder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rdkafka::error::KafkaError;
use serde::Deserialize;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::add_extension::AddExtension;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::auth::issuers::{Authenticator, KeyError};
use crate::config::ServeConfig;
use crate::fleet::Fleet;
use crate::history::HistoryReader;
use crate::hub::{Admission, Hub, Readiness, Sockets};
use crate::kafka::KafkaLog;
use crate::kafka::{Catalogue, Clients, Consumer, Publisher, Sinks};
use crate::kafka_settings::SettingsError;
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::presence::roster::{Follower, Roster};
use crate::presence::signal::{self, Signals};
use crate::push;
use crate::recent::{Bounds, Recent};
use crate::registry::{QueueBounds, Registry};
use crate::replay::Replayer;
use crate::retries::{self, Retries};
use crate::store::commits::Commits;
use crate::store::{Store, StoreError, display_url};
use crate::{connection, memory};

/// Per-socket buffers. axum's defaults (128 KiB each way) would cost gigabytes at tens of
/// thousands of sockets; frames here are small, and writes are flushed in batches anyway.
/// An idle socket keeps its read buffer: 512 bytes hold a typical request (a chat message's
/// publish, a subscribe) in one read, and a larger frame takes one read per 512 bytes into a
/// buffer grown to fit it. Pipelined publishes of 100-byte payloads cost the same core time
/// per publish with 512 as with 1,024 (BENCHMARKS.md, issue 37's third round).
pub const READ_BUFFER: usize = 512;
pub const WRITE_BUFFER: usize = 8 * 1024;

/// Why the hub could not start, or had to stop: one line naming the part, its address
/// (credentials masked) and the cause.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("JWT key: {0}")]
    Key(#[from] KeyError),
    #[error("metrics: {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
    /// `cause` is librdkafka's, with the values of secret settings masked.
    #[error("Kafka client for {brokers}: {cause}")]
    Kafka { brokers: String, cause: String },
    #[error("Kafka settings: {0}")]
    KafkaSettings(#[from] SettingsError),
    #[error("database {url}: {source}")]
    Database { url: String, source: StoreError },
    #[error("cannot listen on {addr} (WSKAFKA_LISTEN): {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "WSKAFKA_MAX_CONNECTIONS is {max_connections}, which needs about {needed} file \
         descriptors, but this process may open only {limit} (`ulimit -n`): raise the limit \
         or lower WSKAFKA_MAX_CONNECTIONS"
    )]
    Descriptors {
        max_connections: usize,
        needed: u64,
        limit: u64,
    },
    #[error("cannot read the file descriptor limit: {0}")]
    DescriptorLimit(std::io::Error),
    #[error("serving failed: {0}")]
    Serve(std::io::Error),
    #[error("Web Push: {0}")]
    Push(String),
}

/// The listening socket, with the longest accept queue the kernel allows (`somaxconn`)
/// rather than tokio's 1,024: when every socket of a hub reconnects at once, connections
/// past the queue have their SYN dropped and retry only after a second.
fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restart need not wait out TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    // Linux caps it at somaxconn.
    socket.listen(65_535)
}

/// Descriptors besides the sockets: Kafka connections (a few per broker for the producer,
/// the consumer, each running replay and admin request), the database pool, the listener,
/// the runtime's own.
const RESERVED_DESCRIPTORS: u64 = 256;

/// Raises the soft limit on open files as far as `max_connections` needs (and the hard
/// limit allows), or says why the cap cannot be kept: past the limit, accepts fail with no
/// answer at all, where the cap would have answered 503.
fn ensure_descriptors(config: &ServeConfig) -> Result<(), StartError> {
    let needed = config.limits.max_connections as u64
        + u64::from(config.database.database_max_connections)
        + RESERVED_DESCRIPTORS;
    let limit = rlimit::increase_nofile_limit(needed).map_err(StartError::DescriptorLimit)?;
    if limit < needed {
        return Err(StartError::Descriptors {
            max_connections: config.limits.max_connections,
            needed,
            limit,
        });
    }
    Ok(())
}

/// Runs the hub until `shutdown` completes, then stops gracefully: no new sockets, open
/// sockets closed with 1001 once their in-flight publishes are answered, the producer
/// flushed, the consumer group left.
///
/// It listens at once, whatever is down: what cannot work (a key, the listen address, the
/// descriptor limit, the Kafka client's settings) is refused before anything starts, while
/// Kafka and the database are waited for with `/readyz` naming what is missing. Kafka is
/// waited for as long as it takes; a database that refuses connections for longer than
/// `WSKAFKA_DATABASE_WAIT`, or answers with an error that waiting cannot mend, stops the
/// hub with that error.
pub async fn serve(
    mut config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    config.load_kafka_settings()?;
    if config.server.demo {
        tracing::warn!(
            "demo mode: /dev/token mints a token for anyone who asks; never enable it in production"
        );
    }
    let auth = Authenticator::new(&config.jwt)?;
    ensure_descriptors(&config)?;
    memory::check(config.limits.memory_budget);
    let listener = listen(config.server.listen).map_err(|source| StartError::Listen {
        addr: config.server.listen,
        source,
    })?;
    let metrics_listener = config
        .server
        .metrics_listen
        .map(|addr| listen(addr).map_err(|source| StartError::Listen { addr, source }))
        .transpose()?;
    let instance_id = config
        .presence
        .instance_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    // A group of its own per run: a restart after a crash need not wait for Kafka to
    // expire the dead run's membership (session.timeout.ms) before it gets partitions.
    let group_id = format!("wskafka-{instance_id}-{}", uuid::Uuid::new_v4().simple());
    let metrics = Metrics::install()?;
    let database_url = display_url(&config.database.database_url);
    let database = |source| StartError::Database {
        url: database_url.clone(),
        source,
    };
    let store = Store::open(
        &config.database.database_url,
        config.database.database_max_connections,
        config.database.database_timeout,
    )
    .map_err(database)?;
    let kafka_client = |source: KafkaError| StartError::Kafka {
        brokers: config.kafka.brokers.clone(),
        cause: config.kafka.kafka_settings.redact(&source.to_string()),
    };
    let kafka_log = KafkaLog::default();
    let registry = Arc::new(Registry::new(QueueBounds {
        socket: config.limits.memory_budget.send_queue(),
        total: config.limits.memory_budget.send_queues(),
    }));
    let clients = Clients::new(&config, &group_id, &kafka_log);
    let publisher = Publisher::new(&clients, &config.kafka).map_err(kafka_client)?;
    let consumer_ready = Arc::new(AtomicBool::new(false));
    let (control, control_records) = mpsc::unbounded_channel();
    let recent = Recent::new(Bounds::new(
        config.limits.recent_records,
        config.limits.memory_budget,
    ));
    let fleet = Arc::new(Fleet::new(instance_id.clone()));
    let sinks = Sinks {
        registry: registry.clone(),
        recent: recent.clone(),
        control,
        fleet: fleet.clone(),
        signals: {
            let registry = registry.clone();
            let origin = group_id.clone();
            move |value: &[u8]| signal::deliver(&registry, &origin, value)
        },
    };
    let consumer =
        Consumer::start(&clients, &config, sinks, consumer_ready.clone()).map_err(kafka_client)?;
    // Sockets, what they leave behind and the background tasks: shutdown waits for all.
    let tasks = TaskTracker::new();
    let commits = Arc::new(Commits::new(store.clone()));
    let replayer = Replayer::new(
        &clients,
        &config.limits,
        commits.clone(),
        recent.clone(),
        tasks.clone(),
    );
    let history = HistoryReader::new(&clients, &config.limits);
    let retries = Retries::new(
        &clients,
        retries::landing(&config),
        config.kafka.publish_retry_window,
    );
    let signals = Signals::new(&clients, &config.presence).map_err(kafka_client)?;
    let roster = config.presence.presence_topic.is_some().then(|| {
        Roster::new(
            config.presence.roster_limit,
            config.presence.join_leave_limit,
        )
    });
    let follower = match &roster {
        Some(roster) => Some(
            Follower::start(&clients, &config.presence, roster.clone(), registry.clone())
                .map_err(kafka_client)?,
        ),
        None => None,
    };
    let presence = config.presence.presence_topic.clone().map(|topic| {
        Presence::new(
            topic,
            config.presence.roster_topic.clone(),
            instance_id.clone(),
            config.presence.instance_timeout,
            store.clone(),
            publisher.clone(),
            tasks.clone(),
        )
    });
    let (push, push_worker) = push_service(&config, &clients, &store, &roster)?;
    let topics = Catalogue::new(&config.topics, publisher.clone());
    let stopping = CancellationToken::new();
    tasks.spawn(topics.clone().keep_fresh(stopping.clone()));
    let hub = Arc::new(Hub {
        sockets: Sockets::new(&config),
        readiness: Readiness::new(consumer_ready),
        config,
        auth,
        registry,
        publisher,
        topics,
        live_positions: consumer.positions(),
        metrics,
        replayer,
        history,
        retries,
        store,
        commits,
        presence,
        roster,
        signals,
        fleet,
        push,
        tasks,
        shutdown: stopping,
    });
    if let Some(worker) = push_worker {
        hub.track(worker.run(hub.shutdown.clone()));
    }
    hub.auth.start(&hub.tasks, &hub.shutdown);
    hub.track(watch::reload_keys_on_sighup(hub.clone()));
    hub.track(watch::kafka(hub.clone(), clients));
    hub.track({
        let hub = hub.clone();
        async move { hub.metrics.upkeep(&hub.shutdown).await }
    });
    hub.track(hub.clone().report_memory(recent));
    hub.track(watch::apply_control(hub.clone(), control_records));
    hub.track(admin::sample_and_report(hub.clone()));
    hub.track({
        let hub = hub.clone();
        async move {
            let interval = hub.config.database.commit_interval;
            hub.commits.run(interval, hub.shutdown.clone()).await
        }
    });
    let (fatal, mut fatal_error) = oneshot::channel();
    hub.track(watch::database(hub.clone(), fatal));

    let addr = listener.local_addr().map_err(StartError::Serve)?;
    tracing::info!(instance = %instance_id, topics = ?hub.config.topics.topics, "listening on http://{addr}");
    let stopping = hub.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down");
        stopping.going_away();
    });
    let header_timeout = hub.config.server.header_read_timeout;
    if let Some(listener) = metrics_listener {
        let addr = listener.local_addr().map_err(StartError::Serve)?;
        tracing::info!("serving /metrics at http://{addr}/metrics");
        let app = Router::new()
            .route("/metrics", get(render_metrics))
            .with_state(hub.clone());
        let stop = hub.shutdown.clone();
        hub.track(async move { serve_http(listener, app, header_timeout, &stop).await });
    }
    serve_http(listener, router(hub.clone()), header_timeout, &hub.shutdown).await;

    let timeout = hub.config.server.shutdown_timeout;
    hub.finish_tasks(timeout).await;
    // The sockets are closed: the last positions they committed go in before the store
    // closes.
    if let Err(e) = hub.commits.write().await {
        tracing::error!(error = %e, "read positions left unwritten at shutdown");
    }
    let flushing = hub.clone();
    let (flushed, ()) = tokio::join!(
        tokio::task::spawn_blocking(move || flushing.publisher.flush(timeout)),
        async {
            let _ = tokio::task::spawn_blocking(move || {
                consumer.stop();
                if let Some(follower) = follower {
                    follower.stop();
                }
            })
            .await;
        }
    );
    if let Ok(Err(e)) = flushed {
        tracing::error!(error = %e, "records left unflushed at shutdown");
    }
    hub.store.close().await;
    if let Ok(source) = fatal_error.try_recv() {
        return Err(database(source));
    }
    tracing::info!("stopped");
    Ok(())
}

/// With `WSKAFKA_PUSH`: the service the sockets ask, and the worker that pushes; refused
/// without presence (the roster says who is offline), a contact, or with an unusable key
/// file.
fn push_service(
    config: &ServeConfig,
    clients: &Clients,
    store: &Store,
    roster: &Option<Roster>,
) -> Result<(Option<Arc<push::Service>>, Option<push::Worker>), StartError> {
    let push = &config.push;
    if !push.push {
        return Ok((None, None));
    }
    let Some(roster) = roster else {
        return Err(StartError::Push(
            "needs presence (WSKAFKA_PRESENCE_TOPIC): the roster says who is offline".into(),
        ));
    };
    match push.push_contact.as_deref() {
        Some(c) if c.starts_with("mailto:") || c.starts_with("https:") => {}
        _ => {
            return Err(StartError::Push(
                "WSKAFKA_PUSH_CONTACT must be a mailto: or https: URL for push services to reach"
                    .into(),
            ));
        }
    }
    let topics = push.topics(&config.topics).to_vec();
    if topics.is_empty() {
        return Err(StartError::Push(
            "no topics to push: set WSKAFKA_USER_TOPICS or WSKAFKA_PUSH_TOPICS".into(),
        ));
    }
    let key = match &push.push_key_file {
        None => None,
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .map_err(|e| StartError::Push(format!("{}: {e}", path.display())))?;
            Some(
                push::Vapid::from_pem(&pem)
                    .map_err(|e| StartError::Push(format!("{}: {e}", path.display())))?,
            )
        }
    };
    let service = Arc::new(push::Service::new(push.clone()));
    let worker = push::Worker {
        service: service.clone(),
        clients: clients.clone(),
        topics,
        store: store.clone(),
        roster: roster.clone(),
        key,
    };
    Ok((Some(service), Some(worker)))
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
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
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
        // Whom a request comes from, for `ConnectInfo` (the admin's login limit).
        let service = TowerToHyperService::new(AddExtension::new(app.clone(), ConnectInfo(peer)));
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

/// What the hub's pages (the admin view, the demo) may load: their own scripts and styles
/// (none inline, so that injected markup cannot run), the demo's `data:` icon, and requests
/// and WebSockets to the hub itself; nothing may frame them. Sent with every response: none
/// is meant to be shown inside another page (`X-Frame-Options` says so to older browsers).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src data:; connect-src 'self'; form-action 'self'; \
     base-uri 'none'; frame-ancestors 'none'";

async fn render_metrics(State(hub): State<Arc<Hub>>) -> String {
    hub.metrics.render()
}

fn router(hub: Arc<Hub>) -> Router {
    let mut router = Router::new()
        .route("/ws", get(websocket))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz));
    // On the public listener unless it has one of its own (`WSKAFKA_METRICS_LISTEN`).
    if hub.config.server.metrics_listen.is_none() {
        router = router.route("/metrics", get(render_metrics));
    }
    router
        .merge(web::routes(&hub.config))
        .merge(admin::routes(&hub))
        .merge(publish::routes(&hub))
        .merge(sse::routes(&hub))
        // On every response, the fallback's included.
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
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

/// `{"ready": true}`, or 503 with what the hub waits for: `kafka` (no broker answers),
/// `start_positions` (where the live stream starts is not known yet), `database`, `keys`
/// (an issuer has no keys to verify tokens with yet), `roster` (the roster topic is not
/// read up to its end yet), `shutting_down`.
async fn readyz(State(hub): State<Arc<Hub>>) -> Response {
    let waiting = hub.not_ready();
    let status = if waiting.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({"ready": waiting.is_empty(), "waiting_for": waiting});
    (status, axum::Json(body)).into_response()
}

/// A page on another site must not reach the hub with a token it obtained: a request with
/// an `Origin` not in `WSKAFKA_ALLOWED_ORIGINS` (when that is set) is refused.
fn origin_allowed(hub: &Hub, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let allowed = &hub.config.server.allowed_origins;
    if allowed.is_empty() || allowed.iter().any(|a| a.as_bytes() == origin.as_bytes()) {
        return true;
    }
    tracing::info!(origin = ?origin, "refused a connection from a disallowed origin");
    false
}

/// The token of an `Authorization: Bearer` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

async fn websocket(
    State(hub): State<Arc<Hub>>,
    version: axum::http::Version,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    if !origin_allowed(&hub, &headers) {
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    let Some(socket_permit) = hub.open_socket() else {
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
    let admission = match token {
        None => match hub.await_auth() {
            Some(permit) => Admission::Awaiting(permit),
            None => {
                tracing::info!("refused a connection: too many sockets awaiting their auth frame");
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many sockets awaiting authentication",
                )
                    .into_response();
            }
        },
        Some(token) => match hub.admit(token).await {
            Ok((session, seat)) => Admission::Admitted(Box::new(session), seat),
            Err(refusal) => return refusal.into_response(),
        },
    };
    if hub.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let hard_limit = hub.config.limits.max_frame_bytes.saturating_mul(4);
    let transport = if version == axum::http::Version::HTTP_2 {
        "WebSocket over HTTP/2"
    } else {
        "WebSocket over HTTP/1.1"
    };
    // Built before the callback, which then holds a pointer rather than all of it for as long
    // as the socket lives (see `connection::Opening`).
    let opening = Box::new(connection::Opening {
        hub,
        admission,
        open: socket_permit,
        transport,
    });
    upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .on_upgrade(move |socket| {
            let tracked = opening.hub.clone();
            tracked.tracked(connection::run(opening, socket))
        })
}
