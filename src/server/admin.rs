//! The admin view and API, behind HTTP Basic authentication as `admin` with
//! `WSKAFKA_ADMIN_PASSWORD`; without that password the routes do not exist:
//! - `/admin`, a page (its script and styles under `/admin/` too) polling `/metrics` and
//!   `/admin/connections`;
//! - `POST /admin/revocations` with `{"jti": "..."}` or `{"sub": "..."}`, which revokes one
//!   token or every token of a user issued until now, on every hub (see `control`).
//!
//! Topics, rates and lag come from `/metrics`, which the page reads too; only the list of
//! live connections needs an endpoint of its own.
//!
//! A browser that was given the password sends it with every later request to the hub,
//! including those another site's page makes, so a request that changes state must show
//! that it comes from the admin view itself or from a tool ([`refusal`]). Wrong passwords
//! are limited per source ([`Logins`]).

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
use crate::hub::{ConnectionInfo, Hub};
use crate::metrics;
use crate::registry::ConnId;
use crate::server::logins::{Logins, Source};

const PAGE: &str = include_str!("../../web/admin.html");
const SCRIPT: &str = include_str!("../../web/admin.js");
const STYLE: &str = include_str!("../../web/admin.css");

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
        .route("/admin/connections", get(connections))
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

#[derive(Serialize)]
struct Listed {
    id: ConnId,
    #[serde(flatten)]
    info: ConnectionInfo,
}

async fn connections(State(hub): State<Arc<Hub>>) -> Response {
    let listed: Vec<Listed> = hub
        .connections()
        .into_iter()
        .map(|(id, info)| Listed { id, info })
        .collect();
    axum::Json(listed).into_response()
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
