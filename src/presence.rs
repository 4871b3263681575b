//! Presence events: one Kafka record, keyed by user id, each time a socket connects,
//! subscribes, unsubscribes or disconnects, so backends can follow who is online.
//!
//! A `disconnect` must come even when the hub that held the socket dies. Each open socket
//! therefore has a row in the store from before its `connect` is written until its
//! `disconnect` is in Kafka. Hubs heartbeat in the store; rows of a hub silent for
//! `WSKAFKA_INSTANCE_TIMEOUT`, or of this hub's own previous run (same instance id), get
//! their `disconnect` (reason `instance_lost`) from whichever hub sees them first. Delivery
//! is at least once: consumers drop repeats by `connection`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::DeliveryFuture;
use serde::Serialize;

use crate::clock::now_millis;
use crate::kafka::{PublishError, Publisher};
use crate::server::Hub;
use crate::store::{OpenSession, Store, StoreError};

pub struct Presence {
    topic: String,
    instance: String,
    timeout: Duration,
}

#[derive(Serialize)]
struct Event<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    /// Unique per socket, across hubs and restarts.
    connection: &'a str,
    sub: &'a str,
    instance: &'a str,
    /// Milliseconds since the epoch.
    at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a str>,
    /// On `disconnect`, the topics the socket held; absent when its hub died with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    topics: Option<&'a [&'a str]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

impl Presence {
    pub fn new(topic: String, instance: String, timeout: Duration) -> Self {
        Presence {
            topic,
            instance,
            timeout,
        }
    }

    fn send(
        &self,
        publisher: &Publisher,
        session: &OpenSession,
        event: Event<'_>,
    ) -> Result<DeliveryFuture, PublishError> {
        let payload = serde_json::to_vec(&event).expect("presence events always serialise");
        publisher.send(&self.topic, Some(&session.sub), &HashMap::new(), &payload)
    }

    fn event<'a>(&'a self, kind: &'a str, session: &'a OpenSession) -> Event<'a> {
        Event {
            kind,
            connection: &session.id,
            sub: &session.sub,
            instance: &session.instance,
            at: now_millis(),
            topic: None,
            topics: None,
            reason: None,
        }
    }

    /// A new session for `sub` on this hub: stored first, so that a crash from here on still
    /// ends in a `disconnect`.
    pub async fn connected(&self, hub: &Hub, sub: &str) -> Result<OpenSession, StoreError> {
        let session = OpenSession {
            id: uuid::Uuid::new_v4().to_string(),
            instance: self.instance.clone(),
            sub: sub.to_string(),
            connected_at: now_millis(),
        };
        hub.store.open_session(&session).await?;
        let event = self.event("connect", &session);
        if let Err(e) = self.send(&hub.publisher, &session, event) {
            tracing::warn!(error = %e, "writing a connect presence event failed");
        }
        Ok(session)
    }

    pub fn topic_changed(&self, hub: &Hub, session: &OpenSession, kind: &str, topic: &str) {
        let event = Event {
            topic: Some(topic),
            ..self.event(kind, session)
        };
        if let Err(e) = self.send(&hub.publisher, session, event) {
            tracing::warn!(error = %e, "writing a {kind} presence event failed");
        }
    }

    /// Writes `disconnect`, and forgets the session once Kafka has it; until then a restart
    /// or another hub would write it again.
    pub fn disconnected(
        &self,
        hub: &Arc<Hub>,
        session: OpenSession,
        topics: &[&str],
        reason: &str,
    ) {
        let event = Event {
            topics: Some(topics),
            reason: Some(reason),
            ..self.event("disconnect", &session)
        };
        let sent = self.send(&hub.publisher, &session, event);
        let store = hub.store.clone();
        hub.track(async move { settle(&store, &session, sent).await });
    }

    /// Heartbeats for this hub and writes the `disconnect`s of dead ones, until shutdown.
    /// The first round runs before the hub takes sockets, so its own previous run's sockets
    /// are accounted for at once.
    pub async fn first_round(&self, hub: &Hub) -> Result<(), StoreError> {
        hub.store.forget_instance(&self.instance).await?;
        self.reap(hub).await?;
        hub.store.heartbeat(&self.instance).await
    }

    pub async fn run(self: Arc<Self>, hub: Arc<Hub>) {
        let mut interval = tokio::time::interval(self.timeout / 3);
        interval.tick().await;
        loop {
            tokio::select! {
                _ = hub.shutdown.cancelled() => return,
                _ = interval.tick() => {}
            }
            // The heartbeat first: a hub whose store was out of reach for a while must not
            // take itself for dead.
            let round = async {
                hub.store.heartbeat(&self.instance).await?;
                self.reap(&hub).await
            };
            if let Err(e) = round.await {
                tracing::warn!(error = %e, "presence heartbeat failed");
            }
        }
    }

    /// Writes the `disconnect`s of sessions no live instance holds.
    async fn reap(&self, hub: &Hub) -> Result<(), StoreError> {
        let cutoff = now_millis() - self.timeout.as_millis() as i64;
        for session in hub.store.orphaned_sessions(cutoff).await? {
            let event = Event {
                reason: Some("instance_lost"),
                ..self.event("disconnect", &session)
            };
            let sent = self.send(&hub.publisher, &session, event);
            settle(&hub.store, &session, sent).await;
        }
        Ok(())
    }
}

async fn settle(store: &Store, session: &OpenSession, sent: Result<DeliveryFuture, PublishError>) {
    let delivered = match sent {
        Ok(delivery) => Publisher::delivered(delivery).await.map(drop),
        Err(e) => Err(e),
    };
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
