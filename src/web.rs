//! What the hub serves to browsers: the client library at `/wskafka.js`, and with `--demo`
//! the demo page at `/` and the development token endpoint it signs in with.
//!
//! The files are compiled into the binary, so a deployed hub needs nothing beside it.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::auth::{Grants, mint};
use crate::config::ServeConfig;

const CLIENT: &str = include_str!("../web/wskafka.js");
const DEMO_PAGE: &str = include_str!("../web/index.html");
const DEMO_SCRIPT: &str = include_str!("../web/demo.js");

/// Demo tokens live briefly, so the demo exercises refreshing.
const DEMO_TOKEN_TTL: Duration = Duration::from_secs(600);

/// What `/dev/token` signs its tokens with, and what they grant: everything the hub
/// exposes, except publishing to per-user topics.
struct DemoTokens {
    secret: Option<String>,
    grants: Grants,
}

pub fn routes<S: Clone + Send + Sync + 'static>(config: &ServeConfig) -> Router<S> {
    let router = Router::new().route("/wskafka.js", get(|| async { javascript(CLIENT) }));
    if !config.demo {
        return router;
    }
    let topics = &config.topics;
    let tokens = DemoTokens {
        secret: config.jwt.jwt_secret.clone(),
        grants: Grants {
            publish: topics
                .iter()
                .filter(|t| !(t.is_literal() && config.is_user_topic(t.as_str())))
                .cloned()
                .collect(),
            subscribe: topics.clone(),
        },
    };
    router
        .route(
            "/",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                    DEMO_PAGE,
                )
            }),
        )
        .route("/demo.js", get(|| async { javascript(DEMO_SCRIPT) }))
        .route("/dev/token", get(dev_token).with_state(Arc::new(tokens)))
}

fn javascript(body: &'static str) -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        body,
    )
        .into_response()
}

#[derive(Deserialize)]
struct TokenRequest {
    user: String,
}

/// Mints a token for whoever asks: development only.
async fn dev_token(
    State(tokens): State<Arc<DemoTokens>>,
    Query(request): Query<TokenRequest>,
) -> Response {
    let user = request.user.trim();
    let valid = !user.is_empty()
        && user.len() <= 64
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !valid {
        return (
            StatusCode::BAD_REQUEST,
            "user names are 1 to 64 characters of [A-Za-z0-9._-]",
        )
            .into_response();
    }
    let Some(secret) = &tokens.secret else {
        return (StatusCode::NOT_FOUND, "the demo needs WSKAFKA_JWT_SECRET").into_response();
    };
    let token = mint(secret, user, tokens.grants.clone(), DEMO_TOKEN_TTL);
    axum::Json(serde_json::json!({ "token": token })).into_response()
}
