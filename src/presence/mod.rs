//! Presence events: one Kafka record, keyed by user id, each time a socket connects,
//! subscribes, unsubscribes or disconnects, so backends can follow who is online.
//!
//! A `disconnect` must come even when the hub that held the socket dies. Each open socket
//! therefore has a row in the store from before its `connect` is written until its
//! `disconnect` is in Kafka. Hubs heartbeat in the store; rows of a hub silent for
//! `WSKAFKA_INSTANCE_TIMEOUT`, or of this hub's own previous run (same instance id), get
//! their `disconnect` (reason `instance_lost`) from whichever hub sees them first. Delivery
//! is at least once: consumers drop repeats by `connection`.

pub(crate) mod roster;
pub(crate) mod signal;

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::now_millis;
use crate::kafka::{PublishError, Publisher};
use crate::presence::roster::SocketState;
use crate::store::{OpenSession, Store, StoreError};

pub struct Presence {
    topic: String,
    /// Where the roster is kept: each socket's rooms, by session id (see `roster`).
    roster_topic: String,
    instance: String,
    timeout: Duration,
    store: Store,
    publisher: Publisher,
    /// Where the `disconnect`s still on their way to Kafka run, so shutdown waits for them.
    tasks: TaskTracker,
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Connect,
    Subscribe,
    Unsubscribe,
    Disconnect,
}

/// Why a socket's session ended, as its `disconnect` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DisconnectReason {
    Closed,
    Broken,
    GoingAway,
    TokenExpired,
    Revoked,
    Lagged,
    /// It did not answer the hub's heartbeat: its network is gone.
    Unresponsive,
    /// It went on sending requests past its budget.
    PolicyViolation,
    /// Its hub died with it.
    InstanceLost,
}

#[derive(Serialize)]
struct Event<'a> {
    #[serde(rename = "type")]
    kind: Kind,
    /// Unique per socket, across hubs and restarts.
    connection: &'a str,
    sub: &'a str,
    instance: &'a str,
    /// Milliseconds since the epoch.
    at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a str>,
    /// With `topic`, the key (room) subscribed to.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    /// On `disconnect`, the topics the socket held; absent when its hub died with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    topics: Option<&'a [&'a str]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<DisconnectReason>,
}

impl Event<'_> {
    fn of(kind: Kind, session: &OpenSession) -> Event<'_> {
        Event {
            kind,
            connection: &session.id,
            sub: &session.sub,
            instance: &session.instance,
            at: now_millis(),
            topic: None,
            key: None,
            topics: None,
            reason: None,
        }
    }
}

impl Presence {
    pub fn new(
        topic: String,
        roster_topic: String,
        instance: String,
        timeout: Duration,
        store: Store,
        publisher: Publisher,
        tasks: TaskTracker,
    ) -> Self {
        Presence {
            topic,
            roster_topic,
            instance,
            timeout,
            store,
            publisher,
            tasks,
        }
    }

    fn send(
        &self,
        session: &OpenSession,
        event: Event<'_>,
    ) -> Result<rdkafka::producer::DeliveryFuture, PublishError> {
        let payload = serde_json::to_vec(&event).expect("presence events always serialise");
        let headers = std::iter::empty();
        self.publisher.send(
            &self.topic,
            Some(&session.sub),
            None,
            headers,
            &[],
            &payload,
        )
    }

    /// A new session for `sub` on this hub: stored first, so that a crash from here on still
    /// ends in a `disconnect`.
    pub async fn connected(&self, sub: &str) -> Result<OpenSession, StoreError> {
        let session = OpenSession {
            id: uuid::Uuid::new_v4().to_string(),
            instance: self.instance.clone(),
            sub: sub.to_string(),
            connected_at: now_millis(),
        };
        self.store.open_session(&session).await?;
        if let Err(e) = self.send(&session, Event::of(Kind::Connect, &session)) {
            tracing::warn!(error = %e, "writing a connect presence event failed");
        }
        self.rooms_changed(&session, Vec::new());
        Ok(session)
    }

    /// Writes the rooms the socket follows now to the roster topic: `(topic, key)`, the
    /// key none for a whole topic.
    pub fn rooms_changed(&self, session: &OpenSession, rooms: Vec<(String, Option<String>)>) {
        let state = SocketState {
            user: session.sub.clone(),
            instance: session.instance.clone(),
            rooms,
        };
        let value = serde_json::to_vec(&state).expect("roster states always serialise");
        let headers = std::iter::empty();
        let sent = self.publisher.send(
            &self.roster_topic,
            Some(&session.id),
            None,
            headers,
            &[],
            &value,
        );
        if let Err(e) = sent {
            tracing::warn!(error = %e, "writing a socket's rooms to the roster failed");
        }
    }

    /// `kind` is `Subscribe` or `Unsubscribe`; `key` the room, for a subscription to one.
    pub fn topic_changed(&self, session: &OpenSession, kind: Kind, topic: &str, key: Option<&str>) {
        let event = Event {
            topic: Some(topic),
            key,
            ..Event::of(kind, session)
        };
        if let Err(e) = self.send(session, event) {
            tracing::warn!(error = %e, ?kind, "writing a presence event failed");
        }
    }

    /// Writes `disconnect`, and forgets the session once Kafka has it; until then a restart
    /// or another hub would write it again.
    pub fn disconnected(&self, session: OpenSession, topics: &[&str], reason: DisconnectReason) {
        let event = Event {
            topics: Some(topics),
            reason: Some(reason),
            ..Event::of(Kind::Disconnect, &session)
        };
        let sent = self.send(&session, event);
        let gone = self.publisher.tombstone(&self.roster_topic, &session.id);
        let store = self.store.clone();
        self.tasks
            .spawn(async move { settle(&store, &session, [sent, gone]).await });
    }

    /// The first round of `run`, before the hub takes sockets, so that the sockets of this
    /// hub's own previous run are accounted for at once.
    pub async fn first_round(&self) -> Result<(), StoreError> {
        self.store.forget_instance(&self.instance).await?;
        self.reap().await?;
        self.store.heartbeat(&self.instance).await
    }

    /// Heartbeats for this hub every third of the timeout, and writes the `disconnect`s of
    /// each other hub at its own deadline (its last heartbeat plus the timeout), until
    /// `stop`. Reaping only on this hub's heartbeat cycle would find a dead hub up to a
    /// third of the timeout late; waking at the earliest deadline removes its members
    /// within the timeout of its death.
    pub async fn run(&self, stop: CancellationToken) {
        let beat = self.timeout / 3;
        let mut next_beat = Instant::now() + beat;
        let mut next_deadline = None;
        loop {
            let wake = next_deadline.map_or(next_beat, |deadline: Instant| deadline.min(next_beat));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(wake) => {}
            }
            // The heartbeat first: a hub whose store was out of reach for a while must not
            // take itself for dead.
            let beats = Instant::now() >= next_beat;
            if beats {
                next_beat = Instant::now() + beat;
            }
            let round = async {
                if beats {
                    self.store.heartbeat(&self.instance).await?;
                }
                self.reap().await?;
                self.store.oldest_heartbeat(&self.instance).await
            };
            next_deadline = match round.await {
                Ok(oldest) => oldest.map(|last_seen| self.deadline(last_seen)),
                Err(e) => {
                    tracing::warn!(error = %e, "presence heartbeat failed");
                    None
                }
            };
        }
    }

    /// When a hub last seen at `last_seen` (ms since the epoch, its clock) is taken for dead.
    fn deadline(&self, last_seen: i64) -> Instant {
        // One millisecond past: `reap` takes for dead only hubs silent for more than the
        // timeout.
        let due = last_seen + self.timeout.as_millis() as i64 + 1;
        let wait = u64::try_from(due - now_millis()).unwrap_or(0);
        Instant::now() + Duration::from_millis(wait)
    }

    /// Writes the `disconnect`s of sessions no live instance holds.
    async fn reap(&self) -> Result<(), StoreError> {
        let cutoff = now_millis() - self.timeout.as_millis() as i64;
        for session in self.store.orphaned_sessions(cutoff).await? {
            let event = Event {
                reason: Some(DisconnectReason::InstanceLost),
                ..Event::of(Kind::Disconnect, &session)
            };
            let sent = self.send(&session, event);
            let gone = self.publisher.tombstone(&self.roster_topic, &session.id);
            settle(&self.store, &session, [sent, gone]).await;
        }
        Ok(())
    }
}

/// Forgets the session once Kafka has both its `disconnect` and its roster tombstone.
async fn settle(
    store: &Store,
    session: &OpenSession,
    sent: [Result<rdkafka::producer::DeliveryFuture, PublishError>; 2],
) {
    let mut delivered = Ok(());
    for sent in sent {
        let this = match sent {
            Ok(delivery) => Publisher::delivered(delivery).await.map(drop),
            Err(e) => Err(e),
        };
        delivered = delivered.and(this);
    }
    match delivered {
        Ok(()) => {
            if let Err(e) = store.close_session(&session.id).await {
                tracing::warn!(error = %e, "forgetting a closed session failed");
            }
        }
        Err(e) => tracing::warn!(
            error = %e,
            connection = session.id,
            "writing a disconnect presence event failed; it is written again when this hub restarts or is taken for dead"
        ),
    }
}
