//! What the hub serves to browsers: the client library at `/wskafka.js`, and with `--demo`
//! the demo page at `/` (with `/demo.js`, `/demo.css` and its service worker `/sw.js`) and the development token endpoint
//! it signs in with.
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
use crate::grant::Grant;

const CLIENT: &str = include_str!("../../web/wskafka.js");
const DEMO_PAGE: &str = include_str!("../../web/index.html");
const DEMO_SCRIPT: &str = include_str!("../../web/demo.js");
const DEMO_STYLE: &str = include_str!("../../web/demo.css");
const DEMO_WORKER: &str = include_str!("../../web/sw.js");

/// Demo tokens live briefly, so the demo exercises refreshing.
const DEMO_TOKEN_TTL: Duration = Duration::from_secs(600);

/// The demo's rooms: keys of each keyed topic the hub exposes. Everyone may use the public
/// ones; the private one only its members.
const PUBLIC_ROOMS: [&str; 2] = ["lobby", "random"];
const PRIVATE_ROOM: &str = "staff";
const PRIVATE_ROOM_MEMBERS: [&str; 2] = ["alice", "bob"];

/// What `/dev/token` signs its tokens with, and what they grant: on keyed topics (named
/// literally in `WSKAFKA_TOPICS`) only the demo's rooms, on per-user topics reading, and
/// every key of the other exposed topics. A glob is granted only when no topic is keyed: it
/// could cover a keyed topic, and grants cannot take a room away.
struct DemoTokens {
    secret: Option<String>,
    everyone: Grants,
    members: Grants,
    keyed: bool,
}

impl DemoTokens {
    fn new(config: &ServeConfig) -> DemoTokens {
        let keyed = !config.topics.keyed_topics.is_empty();
        let grants = |rooms: &[&str]| {
            let mut publish = Vec::new();
            let mut subscribe = Vec::new();
            for topic in &config.topics.topics {
                let name = topic.as_str();
                if !topic.is_literal() {
                    if !keyed {
                        publish.push(Grant::topic(topic.clone()));
                        subscribe.push(Grant::topic(topic.clone()));
                    }
                } else if config.is_user_topic(name) {
                    subscribe.push(Grant::topic(topic.clone()));
                } else if config.is_keyed_topic(name) {
                    for room in rooms {
                        let grant: Grant = format!("{name}:{room}").parse().expect("a valid grant");
                        publish.push(grant.clone());
                        subscribe.push(grant);
                    }
                } else {
                    publish.push(Grant::topic(topic.clone()));
                    subscribe.push(Grant::topic(topic.clone()));
                }
            }
            Grants {
                publish,
                subscribe,
                history: Vec::new(),
                // The demo shows whoever is online.
                online: vec!["*".parse().expect("a valid pattern")],
            }
        };
        let members: Vec<&str> = PUBLIC_ROOMS.into_iter().chain([PRIVATE_ROOM]).collect();
        DemoTokens {
            secret: config.jwt.jwt_secret.clone(),
            everyone: grants(&PUBLIC_ROOMS),
            members: grants(&members),
            keyed,
        }
    }
}

pub fn routes<S: Clone + Send + Sync + 'static>(config: &ServeConfig) -> Router<S> {
    let router = Router::new().route("/wskafka.js", get(|| async { javascript(CLIENT) }));
    if !config.server.demo {
        return router;
    }
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
        // At the root, so that its scope is the whole demo.
        .route("/sw.js", get(|| async { javascript(DEMO_WORKER) }))
        .route(
            "/demo.css",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
                    DEMO_STYLE,
                )
            }),
        )
        .route(
            "/dev/token",
            get(dev_token).with_state(Arc::new(DemoTokens::new(config))),
        )
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
    let member = PRIVATE_ROOM_MEMBERS.contains(&user);
    let grants = if member {
        &tokens.members
    } else {
        &tokens.everyone
    };
    let token = mint(secret, user, grants.clone(), DEMO_TOKEN_TTL);
    let mut rooms: Vec<&str> = Vec::new();
    if tokens.keyed {
        rooms.extend(PUBLIC_ROOMS);
        if member {
            rooms.push(PRIVATE_ROOM);
        }
    }
    axum::Json(serde_json::json!({ "token": token, "rooms": rooms })).into_response()
}
