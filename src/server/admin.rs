//! The admin view and API, behind HTTP Basic authentication as `admin` with
//! `WSKAFKA_ADMIN_PASSWORD`; without that password the routes do not exist:
//! - `/admin`, a page (its script, styles and charting library under `/admin/` too) polling
//!   the endpoints below;
//! - `/admin/connections`: this hub's live connections;
//! - `/admin/fleet`: every hub heard from lately, with its latest sample, connections and
//!   Web Push figures;
//! - `/admin/charts`: this hub's samples, every 5 s for the last hour and every minute for
//!   the last day (see `fleet`);
//! - `/admin/topics`: the topics this hub reads, with their subscriptions and each
//!   partition's consumer lag, the hub's own topics marked `internal`;
//! - `POST /admin/revocations` with `{"jti": "..."}` or `{"sub": "..."}`, which revokes one
//!   token or every token of a user issued until now, on every hub (see `control`).
//!
//! Every hub samples itself every 5 s and writes a report to the fleet topic, which every
//! hub reads ([`sample_and_report`]): that is how one hub's page shows the whole fleet.
//!
//! A browser that was given the password sends it with every later request to the hub,
//! including those another site's page makes, so a request that changes state must show
//! that it comes from the admin view itself or from a tool ([`refusal`]). Wrong passwords
//! are limited per source ([`Logins`]).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;

use crate::clock::now_secs;
use crate::control::{ControlMessage, Revocation};
use crate::fleet::{self, Gauges, Listed, Report, ReportMessage};
use crate::hub::Hub;
use crate::metrics;
use crate::registry::ConnId;
use crate::server::logins::{Logins, Source};

const PAGE: &str = include_str!("../../web/admin.html");
const SCRIPT: &str = include_str!("../../web/admin.js");
const STYLE: &str = include_str!("../../web/admin.css");
/// uPlot 1.6.32 (MIT), from npm's `uplot` package: `dist/uPlot.iife.min.js` and
/// `dist/uPlot.min.css`, with its licence beside them.
const CHARTS_SCRIPT: &str = include_str!("../../web/vendor/uplot/uPlot.iife.min.js");
const CHARTS_STYLE: &str = include_str!("../../web/vendor/uplot/uPlot.min.css");

pub fn routes(hub: &Arc<Hub>) -> Router<Arc<Hub>> {
    let Some(password) = &hub.config.server.admin_password else {
        return Router::new();
    };
    let gate = Gate {
        expected: format!("Basic {}", BASE64.encode(format!("admin:{password}"))),
        logins: Logins::default(),
    };
    let file = |content_type: &'static str, body: &'static str| {
        get(move || async move { ([(header::CONTENT_TYPE, content_type)], body) })
    };
    Router::new()
        .route("/admin", file("text/html; charset=utf-8", PAGE))
        .route(
            "/admin/admin.js",
            file("text/javascript; charset=utf-8", SCRIPT),
        )
        .route("/admin/admin.css", file("text/css; charset=utf-8", STYLE))
        .route(
            "/admin/uPlot.iife.min.js",
            file("text/javascript; charset=utf-8", CHARTS_SCRIPT),
        )
        .route(
            "/admin/uPlot.min.css",
            file("text/css; charset=utf-8", CHARTS_STYLE),
        )
        .route("/admin/connections", get(connections))
        .route("/admin/fleet", get(fleet))
        .route("/admin/charts", get(charts))
        .route("/admin/topics", get(topics))
        .route("/admin/revocations", post(revoke))
        // Matched routes only: `layer` would also wrap the fallback, answering 401 for every
        // unknown path. The last added runs first: the password, then where it came from.
        .route_layer(middleware::from_fn_with_state(
            Arc::new(hub.config.server.admin_origins.clone()),
            refuse_cross_site,
        ))
        .route_layer(middleware::from_fn_with_state(
            Arc::new(gate),
            require_admin,
        ))
}

/// The admin's credential, and the wrong ones seen lately.
struct Gate {
    /// The whole `Authorization` header the password gives.
    expected: String,
    logins: Logins,
}

/// Compares the whole `Authorization` header in constant time, after refusing at once a
/// source that sent too many wrong ones lately.
async fn require_admin(
    State(gate): State<Arc<Gate>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let (source, now) = (Source::from(peer.ip()), Instant::now());
    if let Err(left) = gate.logins.check(source, now) {
        metrics::admin_login_failed("locked_out");
        let seconds = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, seconds.to_string())],
            "too many wrong admin passwords from this address: try again later",
        )
            .into_response();
    }
    let challenge = (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"wskafka admin\"")],
        "admin credentials required",
    );
    // Browsers ask without credentials first, and send them once challenged: that first
    // request is no wrong password.
    let Some(given) = request.headers().get(header::AUTHORIZATION) else {
        return challenge.into_response();
    };
    if bool::from(given.as_bytes().ct_eq(gate.expected.as_bytes())) {
        gate.logins.succeeded(source);
        return next.run(request).await;
    }
    metrics::admin_login_failed("wrong_password");
    if let Some(lockout) = gate.logins.failed(source, now) {
        tracing::warn!(
            %source,
            lockout = %humantime::format_duration(lockout),
            "too many wrong admin passwords: this source is refused for a while"
        );
    }
    challenge.into_response()
}

/// Lets through requests that cannot change state, and refuses the others when they may
/// come from another site's page (see `refusal`).
async fn refuse_cross_site(
    State(trusted): State<Arc<Vec<String>>>,
    request: Request,
    next: Next,
) -> Response {
    if request.method().is_safe() {
        return next.run(request).await;
    }
    let headers = request.headers();
    // HTTP/2 names the host in the request's URI instead.
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    if let Some(reason) = refusal(headers, host, &trusted) {
        tracing::warn!(
            reason,
            origin = ?headers.get(header::ORIGIN),
            sec_fetch_site = ?headers.get("sec-fetch-site"),
            "refused an admin request that may come from another site"
        );
        return (StatusCode::FORBIDDEN, reason).into_response();
    }
    next.run(request).await
}

/// Why a request that changes state is refused, if it is. A page on another site can make
/// the browser send one with the admin's credentials, but not hide where it comes from:
/// browsers name the page's site in `Sec-Fetch-Site` and its origin in `Origin`, and cannot
/// send `Content-Type: application/json` across origins without asking first (a CORS
/// preflight, which the hub never grants). The hub's own origin is the one its `Host`
/// names, whatever the scheme (TLS may end at a proxy); `trusted` adds others, for a proxy
/// that serves the admin view under another name. Tools send neither header, and pass with
/// JSON.
fn refusal(headers: &HeaderMap, host: Option<&str>, trusted: &[String]) -> Option<&'static str> {
    if let Some(site) = headers.get("sec-fetch-site")
        && !matches!(site.as_bytes(), b"same-origin" | b"none")
    {
        return Some("refused: sent by a page of another site (Sec-Fetch-Site)");
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let own = origin
            .to_str()
            .ok()
            .and_then(|origin| origin.split_once("://"))
            .is_some_and(|(scheme, authority)| {
                matches!(scheme, "http" | "https")
                    && host.is_some_and(|host| host.eq_ignore_ascii_case(authority))
            });
        if !own && !trusted.iter().any(|t| t.as_bytes() == origin.as_bytes()) {
            return Some(
                "refused: the request's Origin is neither this hub's nor one of WSKAFKA_ADMIN_ORIGINS",
            );
        }
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Some("refused: send the body as Content-Type: application/json");
    }
    None
}

/// This hub's oldest `most` connections, oldest first.
fn listed(hub: &Hub, most: usize) -> Vec<Listed> {
    let connections = hub.connections(most);
    let ids: HashSet<ConnId> = connections.iter().map(|(id, _)| *id).collect();
    let mut subscriptions = hub.registry.subscriptions(|id| ids.contains(&id));
    connections
        .into_iter()
        .map(|(id, info)| {
            let mut subscribed = subscriptions.remove(&id).unwrap_or_default();
            subscribed.sort();
            Listed {
                id,
                sub: info.sub,
                hub: hub.fleet.instance.clone(),
                transport: info.transport.to_string(),
                subscriptions: subscribed,
                since: info.since,
            }
        })
        .collect()
}

async fn connections(State(hub): State<Arc<Hub>>) -> Response {
    axum::Json(listed(&hub, usize::MAX)).into_response()
}

#[derive(Serialize)]
struct FleetView {
    /// The hub that answers.
    this: String,
    hubs: Vec<Report>,
}

async fn fleet(State(hub): State<Arc<Hub>>) -> Response {
    axum::Json(FleetView {
        this: hub.fleet.instance.clone(),
        hubs: hub.fleet.hubs(),
    })
    .into_response()
}

async fn charts(State(hub): State<Arc<Hub>>) -> Response {
    axum::Json(hub.fleet.charts()).into_response()
}

#[derive(Serialize)]
struct TopicView {
    topic: String,
    /// The hub's own (control, signals, presence, roster), not the application's.
    internal: bool,
    subscriptions: u64,
    /// Records behind the end, per partition read; partitions librdkafka has not reported
    /// on yet are missing.
    lag: Vec<PartitionLag>,
    /// Partitions this hub's consumer does not fetch: no socket here follows the topic.
    paused: usize,
}

#[derive(Serialize)]
struct PartitionLag {
    partition: i32,
    lag: i64,
}

async fn topics(State(hub): State<Arc<Hub>>) -> Response {
    let topics: Vec<TopicView> = metrics::topics()
        .into_iter()
        .map(|figures| TopicView {
            internal: hub.config.is_internal_topic(&figures.topic),
            lag: figures
                .lag
                .into_iter()
                .map(|(partition, lag)| PartitionLag { partition, lag })
                .collect(),
            topic: figures.topic,
            subscriptions: figures.subscriptions,
            paused: figures.paused,
        })
        .collect();
    axum::Json(topics).into_response()
}

/// Every `fleet::EVERY` until shutdown: samples this hub for its charts, and writes its
/// report to the fleet topic for every hub's fleet view (this one's too, at once).
/// Reports stop while Kafka is away; the other hubs forget this one after
/// `fleet::FORGET_AFTER`.
pub async fn sample_and_report(hub: Arc<Hub>) {
    let mut every = tokio::time::interval(fleet::EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let topic = hub.config.topics.fleet_topic.clone();
    loop {
        tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let (mut lag, mut internal_lag) = (0, 0);
        for figures in metrics::topics() {
            let behind: i64 = figures.lag.values().sum();
            if hub.config.is_internal_topic(&figures.topic) {
                internal_lag += behind;
            } else {
                lag += behind;
            }
        }
        // Counted, and only the oldest listed: a copy of every socket's entry every few
        // seconds would be a good share of an idle hub's memory and work.
        let connection_count = hub.connection_count();
        let connections = listed(&hub, fleet::LISTED);
        let gauges = Gauges {
            sockets: connection_count as u64,
            users: hub.users() as u64,
            lag,
            internal_lag,
        };
        // The first only starts the count: rates need an interval.
        let Some(latest) = hub.fleet.sample(gauges) else {
            continue;
        };
        let report = Report {
            instance: hub.fleet.instance.clone(),
            started: hub.fleet.started,
            latest,
            connections,
            connection_count,
            push: metrics::push_counts(),
        };
        hub.fleet.heard(report.clone());
        let message =
            serde_json::to_vec(&ReportMessage { hub: report }).expect("reports always serialise");
        // Waited for an interval at most: a Kafka that does not answer delays the next
        // sample no more than that.
        let sent =
            tokio::time::timeout(fleet::EVERY, hub.publisher.publish(&topic, None, &message)).await;
        match sent {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "cannot write this hub's report"),
            Err(_) => tracing::debug!("this hub's report was not acknowledged in time"),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    jti: Option<String>,
    sub: Option<String>,
}

/// Stores the revocation (new sockets are refused from here on), then tells every hub over
/// the control topic (open sockets close). Answers once both are done.
async fn revoke(State(hub): State<Arc<Hub>>, body: axum::body::Bytes) -> Response {
    let revocation = match serde_json::from_slice::<RevokeRequest>(&body) {
        Ok(RevokeRequest {
            jti: Some(jti),
            sub: None,
        }) if !jti.is_empty() => Revocation::Jti { jti },
        Ok(RevokeRequest {
            jti: None,
            sub: Some(sub),
        }) if !sub.is_empty() => Revocation::Sub {
            sub,
            before: now_secs(),
        },
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                r#"send {"jti": "<token id>"} or {"sub": "<user id>"}"#,
            )
                .into_response();
        }
    };
    if let Err(e) = hub.store.revoke(&revocation).await {
        tracing::error!(error = %e, "cannot store a revocation");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "cannot store the revocation",
        )
            .into_response();
    }
    let message = serde_json::to_vec(&ControlMessage {
        revoke: revocation.clone(),
    })
    .expect("control messages always serialise");
    let topic = &hub.config.topics.control_topic;
    if let Err(e) = hub.publisher.publish(topic, None, &message).await {
        tracing::error!(error = %e, "cannot tell the other hubs about a revocation");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "stored, so new connections are refused, but open sockets could not be told: retry",
        )
            .into_response();
    }
    tracing::info!(?revocation, "revoked");
    axum::Json(ControlMessage { revoke: revocation }).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    header::HeaderName::from_static(name),
                    value.parse().unwrap(),
                )
            })
            .collect()
    }

    const JSON: (&str, &str) = ("content-type", "application/json");

    #[test]
    fn tools_and_the_admin_view_itself_may_change_state_with_json() {
        let trusted = ["https://admin.example.com".to_string()];
        let host = Some("hub.example.com:8080");
        let allowed = [
            // curl, scripts
            vec![JSON],
            vec![("content-type", "Application/JSON; charset=utf-8")],
            // the admin page, served by the hub or by a proxy under another name
            vec![
                JSON,
                ("origin", "http://hub.example.com:8080"),
                ("sec-fetch-site", "same-origin"),
            ],
            vec![JSON, ("origin", "https://hub.example.com:8080")],
            vec![
                JSON,
                ("origin", "https://admin.example.com"),
                ("sec-fetch-site", "same-origin"),
            ],
        ];
        for pairs in allowed {
            assert_eq!(refusal(&headers(&pairs), host, &trusted), None, "{pairs:?}");
        }
    }

    #[test]
    fn another_site_or_a_simple_body_is_refused() {
        let trusted = ["https://admin.example.com".to_string()];
        let host = Some("hub.example.com:8080");
        let refused = [
            // the no-cors fetch and the form a page on another site sends
            vec![
                ("content-type", "text/plain;charset=UTF-8"),
                ("origin", "https://evil.example"),
                ("sec-fetch-site", "cross-site"),
            ],
            vec![JSON, ("sec-fetch-site", "cross-site")],
            vec![JSON, ("sec-fetch-site", "same-site")],
            vec![JSON, ("origin", "https://evil.example")],
            vec![JSON, ("origin", "null")],
            // the hub's host name on another port is another origin
            vec![JSON, ("origin", "http://hub.example.com")],
            vec![JSON, ("origin", "http://hub.example.com:8080.evil.example")],
            // no browser header, but a body any page may send
            vec![("content-type", "text/plain")],
            vec![("content-type", "application/x-www-form-urlencoded")],
            vec![],
        ];
        for pairs in refused {
            assert!(
                refusal(&headers(&pairs), host, &trusted).is_some(),
                "{pairs:?}"
            );
        }
        // Without a Host to compare with, only the listed origins are the admin's.
        let own = [JSON, ("origin", "http://hub.example.com:8080")];
        assert!(refusal(&headers(&own), None, &trusted).is_some());
    }
}
