//! The HTTP side: routes, authentication before the upgrade (when the request carries a
//! token), readiness, and the lifecycle from start to a graceful stop.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder as ConnectionBuilder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rdkafka::error::KafkaError;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::auth::{Authenticator, KeyError};
use crate::config::ServeConfig;
use crate::control::ControlMessage;
use crate::hub::{Admission, Hub, Parts};
use crate::kafka::{self, Consumer, Publisher};
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::registry::Registry;
use crate::replay::Replayer;
use crate::store::{Store, StoreError};
use crate::{admin, connection, web};

/// Per-socket buffers. axum's defaults (128 KiB each way) would cost gigabytes at tens of
/// thousands of sockets; frames here are small, and writes are flushed in batches anyway.
/// An idle socket keeps its read buffer: 1 KiB holds a typical request in one read, and a
/// larger frame takes one read per KiB into a buffer grown to fit it.
pub const READ_BUFFER: usize = 1024;
pub const WRITE_BUFFER: usize = 8 * 1024;

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
    // Sockets, what they leave behind and the background tasks: shutdown waits for all.
    let tasks = TaskTracker::new();
    let replayer = Replayer::new(&config, &group_id, store.clone(), tasks.clone());
    let presence = config.presence_topic.clone().map(|topic| {
        Presence::new(
            topic,
            instance_id.clone(),
            config.instance_timeout,
            store.clone(),
            publisher.clone(),
            tasks.clone(),
        )
    });
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
    let hub = Arc::new(Hub::new(Parts {
        config,
        auth,
        registry,
        publisher,
        live_positions: consumer.positions(),
        consumer_ready,
        metrics,
        replayer,
        store,
        presence,
        tasks,
        shutdown: CancellationToken::new(),
    }));
    hub.track(watch_kafka(hub.clone()));
    hub.track({
        let hub = hub.clone();
        async move { hub.metrics.upkeep(&hub.shutdown).await }
    });
    hub.track(apply_control(hub.clone(), control_records));
    if let Some(presence) = &hub.presence {
        // Before any socket: this instance's earlier sessions must be seen as ended first.
        if let Err(e) = presence.first_round().await {
            tracing::error!(error = %e, "presence: cannot account for earlier sessions");
        }
        let hub = hub.clone();
        hub.clone().track(async move {
            if let Some(presence) = &hub.presence {
                presence.run(hub.shutdown.clone()).await;
            }
        });
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

    let timeout = hub.config.shutdown_timeout;
    hub.finish_tasks(timeout).await;
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
        let was = hub.set_kafka_reachable(outcome.is_ok());
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

/// Applies the control topic's records as the consumer reads them, until shutdown.
async fn apply_control(hub: Arc<Hub>, mut records: mpsc::UnboundedReceiver<Vec<u8>>) {
    loop {
        let record = tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            record = records.recv() => match record {
                Some(record) => record,
                None => return,
            },
        };
        match serde_json::from_slice::<ControlMessage>(&record) {
            Ok(message) => hub.apply_revocation(&message.revoke),
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
        .merge(web::routes(&hub.config))
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
    if hub.is_ready() {
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
            Ok((session, seat)) => Admission::Admitted(session, seat),
            Err(refusal) => return refusal.into_response(),
        },
    };
    if hub.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let hard_limit = hub.config.max_frame_bytes.saturating_mul(4);

    upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .on_upgrade(move |socket| {
            let tracked = hub.clone();
            tracked.tracked(connection::run(hub, socket, admission, socket_permit))
        })
}
