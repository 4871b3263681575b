//! The admin view: `/admin` (a page polling the two endpoints below) and
//! `/admin/connections`, behind HTTP Basic authentication as `admin` with
//! `WSKAFKA_ADMIN_PASSWORD`. Without that password the routes do not exist.
//!
//! Topics, rates and lag come from `/metrics`, which the page reads too; only the list of
//! live connections needs an endpoint of its own.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Serialize;
use subtle::ConstantTimeEq as _;

use crate::registry::ConnId;
use crate::server::Hub;

const PAGE: &str = include_str!("../web/admin.html");

/// A live connection as the admin page lists it.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionInfo {
    pub sub: String,
    /// Milliseconds since the epoch.
    pub since: u64,
}

pub fn routes(hub: &Arc<Hub>) -> Router<Arc<Hub>> {
    let Some(password) = &hub.config.admin_password else {
        return Router::new();
    };
    let expected = format!("Basic {}", BASE64.encode(format!("admin:{password}")));
    Router::new()
        .route(
            "/admin",
            get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE) }),
        )
        .route("/admin/connections", get(connections))
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
    let mut listed: Vec<Listed> = hub
        .connection_list
        .iter()
        .map(|entry| Listed {
            id: *entry.key(),
            info: entry.value().clone(),
        })
        .collect();
    listed.sort_by_key(|l| l.id);
    axum::Json(listed).into_response()
}
