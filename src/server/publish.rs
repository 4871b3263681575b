//! `POST /publish`: records from backends over plain HTTP, for services that would rather
//! post than hold a socket. The token comes in `Authorization: Bearer`, as at the upgrade,
//! and is checked the same way (signature, expiry, revocation); each record is checked
//! like a socket's `publish` (grants, the topic's existence, reserved headers, the frame
//! size limit, `wskafka-sender` set to the token's user) and answered with the same `ack`
//! or `error` frame once Kafka has it (see `ingest`), `publish_id` resends included.
//!
//! The body is one record (a `publish` frame, its `type` may be left out), answered with
//! its frame and an HTTP status that matches it; or an array of up to `MAX_BATCH` records,
//! answered 200 with the array of their frames in the same order, each record standing on
//! its own. A user's records over HTTP share one budget per hub: what all of a user's
//! sockets may publish together (`WSKAFKA_USER_REQUEST_RATES`).

use std::num::NonZeroU32;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::future::{self, BoxFuture};
use governor::clock::{Clock as _, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use serde_json::value::RawValue;

use crate::auth::Session;
use crate::auth::policy::{self, Action};
use crate::budget::Kind;
use crate::hub::Hub;
use crate::ingest;
use crate::kafka::Lookup;
use crate::metrics;
use crate::protocol::{self, ErrorCode, Reply};

use super::bearer;

/// Most records one request may carry.
pub const MAX_BATCH: usize = 500;

/// The most a request's body may hold, unless one frame may be larger.
const MAX_BODY: usize = 1 << 20;

/// Users' HTTP publish budgets; users not seen for a while are forgotten past this many.
const KEPT_USERS: usize = 10_000;

type Budgets = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock>;

pub fn routes(hub: &Arc<Hub>) -> Router<Arc<Hub>> {
    let rate = hub.sockets.user_rates.get(Kind::Publish);
    let budgets: Arc<Budgets> = Arc::new(RateLimiter::hashmap_with_clock(
        Quota::per_second(rate).allow_burst(rate),
        hub.sockets.rate_clock.clone(),
    ));
    let limit = MAX_BODY.max(hub.config.limits.max_frame_bytes);
    Router::new()
        .route(
            "/publish",
            post(move |State(hub), headers, body| publish(hub, budgets, rate, headers, body)),
        )
        .layer(DefaultBodyLimit::max(limit))
}

async fn publish(
    hub: Arc<Hub>,
    budgets: Arc<Budgets>,
    rate: NonZeroU32,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(token) = bearer(&headers) else {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a token is needed: Authorization: Bearer <token>",
        )
            .into_response();
    };
    let session = match hub.verify(token).await {
        Ok(session) => session,
        Err(refusal) => return refusal.into_response(),
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        let reply = Reply::error(None, ErrorCode::BadRequest, "the body is not UTF-8");
        return answer(reply);
    };
    if text.trim_start().starts_with('[') {
        let records: Vec<&RawValue> = match serde_json::from_str(text) {
            Ok(records) => records,
            Err(e) => {
                let message = format!("malformed batch: {e}");
                return answer(Reply::error(None, ErrorCode::BadRequest, message));
            }
        };
        if records.len() > MAX_BATCH {
            let message = format!("a batch holds at most {MAX_BATCH} records");
            return answer(Reply::error(None, ErrorCode::TooLarge, message));
        }
        let acks = records
            .iter()
            .map(|record| one(&hub, &session, &budgets, rate, record.get()));
        let replies: Vec<Reply> = future::join_all(acks).await;
        let json = serde_json::to_string(&replies).expect("replies always serialise");
        return ([(header::CONTENT_TYPE, "application/json")], json).into_response();
    }
    answer(one(&hub, &session, &budgets, rate, text).await)
}

/// One record: checked, handed to Kafka, and answered once Kafka has it.
fn one<'a>(
    hub: &'a Arc<Hub>,
    session: &'a Session,
    budgets: &'a Budgets,
    rate: NonZeroU32,
    text: &'a str,
) -> BoxFuture<'a, Reply> {
    Box::pin(async move {
        let max = hub.config.limits.max_frame_bytes;
        if text.len() > max {
            let message = format!(
                "a record of {} bytes exceeds the limit of {max} bytes",
                text.len()
            );
            return Reply::error(protocol::peek_id(text), ErrorCode::TooLarge, message);
        }
        let publish = match protocol::parse_publish(text) {
            Ok(publish) => publish,
            Err(bad) => return bad.into(),
        };
        let id = publish.id.clone();
        if let Err(not_until) = budgets.check_key(&session.sub) {
            metrics::request_refused(Kind::Publish.name());
            let wait = not_until.wait_time_from(hub.sockets.rate_clock.now());
            let whose = " across this user's requests";
            return Reply::rate_limited(id, Kind::Publish.name(), rate.get(), whose, wait);
        }
        if budgets.len() > KEPT_USERS {
            budgets.retain_recent();
        }
        let topic = publish.topic.as_ref();
        let key = publish.key.as_deref();
        if let Err(denied) = policy::authorize(&hub.config, session, topic, key, Action::Publish) {
            return Reply::error(id, denied.code(), denied.to_string());
        }
        if let Err(refused) = exists(hub, topic).await {
            return Reply::error(id, refused.0, refused.1);
        }
        match ingest::send(hub, &session.sub, publish, || hub.shutdown.clone()) {
            Ok(acked) => acked.await,
            Err(refused) => refused.into(),
        }
    })
}

/// Whether `topic` exists, asking Kafka once when the hub's catalogue does not list it.
async fn exists(hub: &Hub, topic: &str) -> Result<(), (ErrorCode, String)> {
    let mut lookup = hub.topics.lookup(topic, true);
    if let Lookup::Refreshing(refreshed) = lookup {
        refreshed.await;
        lookup = hub.topics.lookup(topic, false);
    }
    match lookup {
        Lookup::Exists => Ok(()),
        Lookup::Missing => Err((
            ErrorCode::UnknownTopic,
            format!("topic {topic:?} does not exist (the hub creates no topics)"),
        )),
        Lookup::Unreachable | Lookup::Refreshing(_) => Err((
            ErrorCode::Unavailable,
            format!("cannot tell whether topic {topic:?} exists: Kafka does not answer"),
        )),
    }
}

/// One record's frame, with the HTTP status that matches it.
fn answer(reply: Reply) -> Response {
    let status = match &reply {
        Reply::Error { code, .. } => status_of(*code),
        _ => StatusCode::OK,
    };
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        reply.to_json(),
    )
        .into_response();
    if let Reply::Error {
        retry_after_ms: Some(ms),
        ..
    } = reply
    {
        let seconds = ms.div_ceil(1000).to_string();
        if let Ok(value) = HeaderValue::from_str(&seconds) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
    }
    response
}

fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::LimitExceeded | ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::IdConflict | ErrorCode::RetryExpired => StatusCode::CONFLICT,
        ErrorCode::UnknownTopic => StatusCode::NOT_FOUND,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
