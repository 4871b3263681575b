//! The admin view and API, behind HTTP Basic authentication as `admin` with
//! `WSKAFKA_ADMIN_PASSWORD`; without that password the routes do not exist:
//! - `/admin`, a page (its script and styles under `/admin/` too) polling `/metrics` and
//!   `/admin/connections`;
//! - `POST /admin/revocations` with `{"jti": "..."}` or `{"sub": "..."}`, which revokes one
//!   token or every token of a user issued until now, on every hub (see `control`).
//!
//! Topics, rates and lag come from `/metrics`, which the page reads too; only the list of
//! live connections needs an endpoint of its own.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
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
use crate::registry::ConnId;

const PAGE: &str = include_str!("../web/admin.html");
const SCRIPT: &str = include_str!("../web/admin.js");
const STYLE: &str = include_str!("../web/admin.css");

pub fn routes(hub: &Arc<Hub>) -> Router<Arc<Hub>> {
    let Some(password) = &hub.config.admin_password else {
        return Router::new();
    };
    let expected = format!("Basic {}", BASE64.encode(format!("admin:{password}")));
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
        // unknown path.
        .route_layer(middleware::from_fn_with_state(
            Arc::new(expected),
            require_admin,
        ))
}

/// Compares the whole `Authorization` header in constant time.
async fn require_admin(
    State(expected): State<Arc<String>>,
    request: Request,
    next: Next,
) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .map_or(&[][..], HeaderValue::as_bytes);
    if bool::from(given.ct_eq(expected.as_bytes())) {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"wskafka admin\"")],
        "admin credentials required",
    )
        .into_response()
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
    let topic = &hub.config.control_topic;
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
