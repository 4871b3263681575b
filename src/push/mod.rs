//! Web Push: records of the pushed topics (per-user topics, keyed by user id) for users with
//! no socket open on any hub, sent to each of the user's browsers (RFC 8030 delivery,
//! RFC 8291 encryption, RFC 8292 VAPID).
//!
//! The hubs share the work through one Kafka consumer group of their own
//! (`WSKAFKA_PUSH_GROUP`): each record is handled by one hub, and a hub that stops or dies
//! hands its partitions to the others. A partition's position is stored only once every
//! record before it has been pushed or given up, and committed every second and when
//! partitions move; so a hub that dies leaves at most the records since its last commit to
//! the hub that takes over.
//!
//! Once per device, with hubs that die: before sending, a hub claims (endpoint, record) in
//! the database, and marks the claim done once the push service answered or the push was
//! given up. The hub that handles a record again (after a crash, or a partition moved while
//! its pushes were in flight) skips what is done and sends again what was claimed and left
//! undone: at most `WSKAFKA_PUSH_MAX_IN_FLIGHT` pushes per hub that died. Each push carries
//! a `Topic` header made from the record's position, the same on every hub, with which a
//! push service replaces a push it still holds for the device rather than adding one; and a
//! page's service worker shows a record's notification under one `tag` (the demo's does).
//! Exactly once on the wire cannot be had over HTTP with a third party that keeps no
//! request ids: a push whose answer was lost with its hub may or may not have been taken.
//! This keeps the choice on the side that loses nothing. A hub that stops gracefully gives
//! back the claims of pushes it did not send.
//!
//! Who is online is the roster's (presence must be on): a user with a socket open on any
//! hub gets the record over that socket and no push. The roster lags a connect or a close
//! by the time a roster record takes through Kafka (milliseconds): a record handled in that
//! moment for a user who just connected is pushed as well as delivered (a notification
//! beside the open page, never two pushes); one for a user whose last page just closed is
//! not pushed, and waits in Kafka as unread, as it did before Web Push.
//!
//! Encryption is the `ece` crate's (Mozilla's, behind Firefox's own Web Push): RFC 8291's
//! `aes128gcm`, one ephemeral key per push. A notification is the record as JSON (topic,
//! partition, offset, key, timestamp, payload); one whose payload would not fit a push
//! (`MAX_NOTIFICATION` bytes before encryption, for the 4096-byte bodies push services
//! take) goes without its payload, marked `"cut": true`, and the page reads the record
//! from its position.

pub mod endpoint;
mod send;
mod vapid;

pub use send::Outcome;
pub use vapid::Vapid;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use std::collections::HashSet;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesOrdered;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rdkafka::Message as _;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::message::OwnedMessage;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::PushConfig;
use crate::kafka::Clients;
use crate::kafka_settings::Side;
use crate::metrics;
use crate::presence::roster::Roster;
use crate::store::{Claim, Store, StoredSubscription};
use crate::topic::TopicPattern;

/// Largest notification before encryption: a push body is at most 4096 bytes, of which the
/// `aes128gcm` header takes 86 and the tag 16, and `ece` pads the rest to 128-byte blocks
/// (hiding the length) with at least one byte.
pub const MAX_NOTIFICATION: usize = 3967;

/// How long a push client waits for a push service's answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The wait before asking the database or Kafka again.
const RETRY: Duration = Duration::from_secs(1);

/// What the sockets' handlers need of push: its settings and the public key, once loaded.
pub struct Service {
    pub config: PushConfig,
    vapid: OnceLock<Arc<Vapid>>,
}

impl Service {
    pub fn new(config: PushConfig) -> Service {
        Service {
            config,
            vapid: OnceLock::new(),
        }
    }

    /// The VAPID public key, once the hub has loaded or made it.
    pub fn public_key(&self) -> Option<&str> {
        self.vapid.get().map(|v| v.public_key())
    }
}

/// What the push worker stands on.
pub struct Worker {
    pub service: Arc<Service>,
    pub clients: Clients,
    pub topics: Vec<TopicPattern>,
    pub store: Store,
    pub roster: Roster,
    /// The key from `WSKAFKA_PUSH_KEY_FILE`, read at start.
    pub key: Option<Vapid>,
}

/// One record's pushes share these.
struct Pushing {
    service: Arc<Service>,
    vapid: Arc<Vapid>,
    store: Store,
    roster: Roster,
    client: reqwest::Client,
    in_flight: Semaphore,
    per_user: DefaultKeyedRateLimiter<String>,
    stop: CancellationToken,
}

/// The notification a push carries.
#[derive(Serialize)]
struct Notification<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<Payload<'a>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    cut: bool,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Payload<'a> {
    Json(&'a RawValue),
    Text(std::borrow::Cow<'a, str>),
}

/// The notification for a record: with its payload (as JSON when it is JSON), or without
/// when it would not fit.
pub fn notification(
    topic: &str,
    partition: i32,
    offset: i64,
    key: &str,
    timestamp: Option<i64>,
    value: Option<&[u8]>,
) -> Vec<u8> {
    let payload = value.map(|v| match serde_json::from_slice::<&RawValue>(v) {
        Ok(json) => Payload::Json(json),
        Err(_) => Payload::Text(String::from_utf8_lossy(v)),
    });
    let mut notification = Notification {
        topic,
        partition,
        offset,
        key,
        timestamp,
        payload,
        cut: false,
    };
    let whole = serde_json::to_vec(&notification).expect("a notification serialises");
    if whole.len() <= MAX_NOTIFICATION {
        return whole;
    }
    notification.payload = None;
    notification.cut = true;
    serde_json::to_vec(&notification).expect("a notification serialises")
}

/// The push's `Topic` header: at most 32 characters of base64url, the same for the same
/// record whichever hub pushes it.
fn collapse_topic(record: &str) -> String {
    use base64::Engine as _;
    let digest = openssl::sha::sha256(record.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..24])
}

impl Worker {
    /// Loads the key, then pushes records until `stop`, and commits what was handled.
    pub async fn run(self, stop: CancellationToken) {
        let vapid = match self.key {
            Some(key) => Arc::new(key),
            None => loop {
                match self.store.push_key(vapid::generate).await {
                    Ok(pem) => match Vapid::from_pem(&pem) {
                        Ok(vapid) => break Arc::new(vapid),
                        Err(e) => {
                            tracing::error!(error = %e, "the VAPID key in the database is unusable: no pushes");
                            return;
                        }
                    },
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot read the VAPID key yet");
                        tokio::select! {
                            () = tokio::time::sleep(RETRY) => {}
                            () = stop.cancelled() => return,
                        }
                    }
                }
            },
        };
        let _ = self.service.vapid.set(vapid.clone());
        let config = &self.service.config;
        let consumer: StreamConsumer = match self
            .clients
            .config(
                &[
                    ("client.id", format!("{}-push", self.clients.group_id())),
                    ("group.id", config.push_group.clone()),
                    // A position is stored once its record is handled, and committed with
                    // the ones stored since, every second and when partitions move.
                    ("enable.auto.commit", "true".into()),
                    ("auto.commit.interval.ms", "1000".into()),
                    ("enable.auto.offset.store", "false".into()),
                    // A new group pushes what the topics hold; records older than the push
                    // TTL are skipped (see `handle`).
                    ("auto.offset.reset", "earliest".into()),
                    ("isolation.level", "read_committed".into()),
                    ("topic.metadata.refresh.interval.ms", "5000".into()),
                    ("partition.assignment.strategy", "cooperative-sticky".into()),
                    // A hub that dies hands its partitions over within 10 s, not librdkafka's
                    // default 45.
                    ("session.timeout.ms", "10000".into()),
                    ("heartbeat.interval.ms", "2000".into()),
                ],
                Side::Consumer,
            )
            .create()
        {
            Ok(consumer) => consumer,
            Err(e) => {
                tracing::error!(error = %e, "cannot make the push consumer: no pushes");
                return;
            }
        };
        let subscriptions: Vec<String> = self
            .topics
            .iter()
            .map(TopicPattern::kafka_subscription)
            .collect();
        let subscriptions: Vec<&str> = subscriptions.iter().map(String::as_str).collect();
        if let Err(e) = consumer.subscribe(&subscriptions) {
            tracing::error!(error = %e, "subscribing to the pushed topics failed: no pushes");
            return;
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(REQUEST_TIMEOUT)
            .dns_resolver(Arc::new(endpoint::Guarded {
                allow_loopback: config.push_allow_loopback,
            }))
            .build()
            .expect("the push client builds");
        let per_minute = config.push_user_rate;
        let pushing = Arc::new(Pushing {
            vapid,
            store: self.store.clone(),
            roster: self.roster.clone(),
            client,
            in_flight: Semaphore::new(config.push_max_in_flight.get()),
            per_user: RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(per_minute)),
            stop: stop.clone(),
            service: self.service.clone(),
        });
        tracing::info!(group = %config.push_group, topics = ?subscriptions, "pushing to offline users");
        let upkeep = tokio::spawn(upkeep(pushing.clone()));
        // In order: a position is stored only when every record before it is handled.
        let max = config.push_max_in_flight.get();
        let mut pending: FuturesOrdered<_> = FuturesOrdered::new();
        let mut blocked = HashSet::new();
        let mut stopping = false;
        loop {
            tokio::select! {
                biased;
                Some(handled) = pending.next(), if !pending.is_empty() => {
                    let (message, done): (OwnedMessage, bool) = handled;
                    let partition = (message.topic().to_string(), message.partition());
                    if !done {
                        blocked.insert(partition);
                    } else if !blocked.contains(&partition) {
                        // librdkafka stores the offset after the one given: the next to read.
                        if let Err(e) = consumer.store_offset(message.topic(), message.partition(), message.offset()) {
                            // The partition moved to another hub meanwhile.
                            tracing::debug!(error = %e, "storing a push position");
                        }
                    }
                }
                () = stop.cancelled(), if !stopping => stopping = true,
                received = consumer.recv(), if !stopping && pending.len() < max => match received {
                    Ok(message) => pending.push_back(handle(pushing.clone(), message.detach())),
                    Err(e) => tracing::debug!(error = %e, "the push consumer"),
                },
                else => break,
            }
        }
        upkeep.abort();
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %e, "committing the push positions at stop");
        }
    }
}

/// `Pushing::handle`, with the message it was for, counted in the queue while it runs.
async fn handle(pushing: Arc<Pushing>, message: OwnedMessage) -> (OwnedMessage, bool) {
    metrics::push_queue(1.0);
    let done = pushing.handle(&message).await;
    metrics::push_queue(-1.0);
    (message, done)
}

/// Prunes the per-user limiter and old claims, hourly.
async fn upkeep(pushing: Arc<Pushing>) {
    let mut every = tokio::time::interval(Duration::from_secs(3600));
    loop {
        every.tick().await;
        pushing.per_user.retain_recent();
        if let Err(e) = pushing.store.prune_push_claims().await {
            tracing::debug!(error = %e, "pruning push claims");
        }
    }
}

impl Pushing {
    /// Pushes one record to each of its user's devices, unless the user is online; whether
    /// it is done with (false: the hub is stopping, and another run handles it again).
    async fn handle(&self, message: &OwnedMessage) -> bool {
        let config = &self.service.config;
        let Some(user) = message.key().and_then(|k| std::str::from_utf8(k).ok()) else {
            return true;
        };
        let timestamp = message.timestamp().to_millis();
        if let Some(at) = timestamp {
            let age = crate::clock::now_millis() - at;
            if age > config.push_ttl.as_millis() as i64 {
                metrics::push_skipped("expired");
                return true;
            }
        }
        // Before the roster has read every hub's sockets, everyone looks offline.
        while !self.roster.is_caught_up() {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                () = self.stop.cancelled() => return false,
            }
        }
        if self.roster.online([user]).get(user) == Some(&true) {
            metrics::push_skipped("online");
            return true;
        }
        let devices = loop {
            match self.store.push_subscriptions(user).await {
                Ok(devices) => break devices,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read push subscriptions; trying again");
                    if !self.pause().await {
                        return false;
                    }
                }
            }
        };
        if devices.is_empty() {
            return true;
        }
        if self.per_user.check_key(&user.to_string()).is_err() {
            metrics::push_skipped("rate_limited");
            return true;
        }
        let record = format!(
            "{}/{}/{}",
            message.topic(),
            message.partition(),
            message.offset()
        );
        let body = notification(
            message.topic(),
            message.partition(),
            message.offset(),
            user,
            timestamp,
            message.payload(),
        );
        let topic = collapse_topic(&record);
        let pushes = devices
            .iter()
            .map(|device| self.push(device, &record, &body, &topic));
        futures_util::future::join_all(pushes)
            .await
            .into_iter()
            .all(|done| done)
    }

    /// Waits before trying the database again; false when the hub is stopping instead.
    async fn pause(&self) -> bool {
        tokio::select! {
            () = tokio::time::sleep(RETRY) => true,
            () = self.stop.cancelled() => false,
        }
    }

    /// One device's push: claimed, sent, and its outcome counted.
    async fn push(
        &self,
        device: &StoredSubscription,
        record: &str,
        body: &[u8],
        topic: &str,
    ) -> bool {
        let config = &self.service.config;
        let Ok(endpoint) = url::Url::parse(&device.endpoint) else {
            return true;
        };
        let keys = decode(&device.p256dh).zip(decode(&device.auth));
        let Some(body) = keys.and_then(|(p256dh, auth)| ece::encrypt(&p256dh, &auth, body).ok())
        else {
            metrics::push_failed("bad_keys");
            return true;
        };
        let Ok(_permit) = self.in_flight.acquire().await else {
            return false;
        };
        loop {
            match self.store.claim_push(&device.endpoint, record).await {
                Ok(Claim::New) => break,
                Ok(Claim::Unfinished) => {
                    metrics::push_resent();
                    break;
                }
                Ok(Claim::Done) => return true,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim a push; trying again");
                    if !self.pause().await {
                        return false;
                    }
                }
            }
        }
        let request = send::Request {
            endpoint: &endpoint,
            body,
            topic,
            ttl: config.push_ttl,
            urgency: &config.push_urgency,
            contact: config.push_contact.as_deref().unwrap_or_default(),
        };
        metrics::push_in_flight(1.0);
        let outcome = send::send(&self.client, &self.vapid, &request, &self.stop).await;
        metrics::push_in_flight(-1.0);
        match outcome {
            Outcome::Sent => metrics::push_sent(),
            Outcome::Gone => {
                metrics::push_subscription_removed();
                if let Err(e) = self.store.forget_push_endpoint(&device.endpoint).await {
                    tracing::warn!(error = %e, "cannot forget a push subscription that is gone");
                }
            }
            Outcome::Failed(status) => {
                let status = status.map(|s| s.as_u16().to_string());
                metrics::push_failed(status.as_deref().unwrap_or("unreachable"));
            }
            Outcome::Stopped => {
                if let Err(e) = self.store.unclaim_push(&device.endpoint, record).await {
                    tracing::warn!(error = %e, "cannot give back a push claim");
                }
                return false;
            }
        }
        // Left undone, the claim has the record pushed again by whichever hub handles it
        // next: a repeat the push service collapses, never a loss.
        while let Err(e) = self.store.push_done(&device.endpoint, record).await {
            tracing::warn!(error = %e, "cannot mark a push done; trying again");
            if !self.pause().await {
                break;
            }
        }
        true
    }
}

fn decode(key: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(key.trim_end_matches('='))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_carries_its_payload_or_says_it_was_cut() {
        let small = notification("n", 1, 7, "ann", Some(5), Some(br#"{"text":"hi"}"#));
        let v: serde_json::Value = serde_json::from_slice(&small).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"topic":"n","partition":1,"offset":7,"key":"ann","timestamp":5,"payload":{"text":"hi"}})
        );
        let text = notification("n", 1, 7, "ann", None, Some(b"plain \xff"));
        let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(v["payload"], "plain \u{fffd}");
        let big = format!(r#"{{"text":"{}"}}"#, "x".repeat(MAX_NOTIFICATION));
        let cut = notification("n", 1, 7, "ann", None, Some(big.as_bytes()));
        let v: serde_json::Value = serde_json::from_slice(&cut).unwrap();
        assert_eq!(v["cut"], true);
        assert!(v.get("payload").is_none());
    }

    #[test]
    fn the_largest_notification_encrypts_within_a_push_body() {
        let (local, auth) = ece::generate_keypair_and_auth_secret().unwrap();
        let public = local.pub_as_raw().unwrap();
        let body = ece::encrypt(&public, &auth, &[b'x'; MAX_NOTIFICATION]).unwrap();
        assert!(body.len() <= 4096, "{}", body.len());
    }

    #[test]
    fn the_collapse_topic_is_short_urlsafe_and_stable() {
        let t = collapse_topic("notes/0/42");
        assert_eq!(t.len(), 32);
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(t, collapse_topic("notes/0/42"));
        assert_ne!(t, collapse_topic("notes/0/43"));
    }
}
