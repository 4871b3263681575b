//! What runs beside the sockets until shutdown: readiness following Kafka (and the hub's own
//! topics created once it answers) and the database, keys reloaded on SIGHUP, and
//! revocations read from the control topic applied to this hub's sockets.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::control::ControlMessage;
use crate::hub::Hub;
use crate::kafka::{self, Clients};
use crate::store::{StoreError, display_url};

/// How often readiness asks Kafka and the database whether they are there, and how long it
/// waits for the answer.
const PROBE: Duration = Duration::from_secs(2);

/// Readiness follows Kafka: a broker must answer the producer, checked every `PROBE` for as
/// long as the hub runs, and the hub's own topics must exist (created once Kafka answers).
/// Creating them is bounded in time, told once per cause at WARN, and given up at shutdown.
pub(super) async fn kafka(hub: Arc<Hub>, clients: Clients) {
    let mut topics_exist = false;
    let mut told = None;
    loop {
        let probe = hub.clone();
        let reachable =
            tokio::task::spawn_blocking(move || probe.publisher.check_connection(PROBE)).await;
        let outcome = match reachable {
            Ok(Ok(())) if topics_exist => Ok(()),
            Ok(Ok(())) => {
                let own = hub.config.own_topics();
                let created = tokio::select! {
                    _ = hub.shutdown.cancelled() => return,
                    created = kafka::ensure_topics(&clients, &hub.config.topics, &hub.config.presence, &own) => created,
                };
                match created {
                    Ok(()) => {
                        topics_exist = true;
                        Ok(())
                    }
                    Err(e) => {
                        let cause = hub.config.kafka.kafka_settings.redact(&e.to_string());
                        if told.as_ref() != Some(&cause) {
                            tracing::warn!(
                                error = %cause,
                                topics = ?own,
                                "cannot create the hub's own topics: not ready"
                            );
                            told = Some(cause);
                        }
                        Err(e)
                    }
                }
            }
            Ok(Err(e)) => Err(e),
            Err(_) => return,
        };
        let was = hub.set_kafka_reachable(outcome.is_ok());
        match outcome {
            Ok(()) if !was => {
                tracing::info!(brokers = %hub.config.kafka.brokers, "Kafka is reachable")
            }
            // Which broker does not answer, and why, `KafkaLog` says once.
            Err(e) if was => tracing::warn!(error = %e, "Kafka is not reachable: not ready"),
            Err(e) => tracing::debug!(error = %e, "Kafka is still not reachable"),
            Ok(()) => {}
        }
        tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            _ = tokio::time::sleep(PROBE) => {}
        }
    }
}

/// Prepares the database (the hub serves meanwhile, unready, and refuses sockets), starts
/// what needs it, then keeps readiness following it. A database that does not come within
/// `WSKAFKA_DATABASE_WAIT`, or answers with an error that waiting cannot mend, stops the
/// hub: the error goes to `fatal`.
pub(super) async fn database(hub: Arc<Hub>, fatal: oneshot::Sender<StoreError>) {
    let url = display_url(&hub.config.database.database_url);
    let wait = hub.config.database.database_wait;
    let started = tokio::time::Instant::now();
    let mut waited = false;
    loop {
        match hub.store.prepare().await {
            Ok(()) => break,
            Err(e) if e.is_transient() && started.elapsed() < wait => {
                if !waited {
                    tracing::warn!(database = %url, cause = %e, wait = %humantime::format_duration(wait), "the database is not reachable yet: waiting for it");
                    waited = true;
                }
                tokio::select! {
                    _ = hub.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            Err(e) => {
                let _ = fatal.send(e);
                hub.going_away();
                return;
            }
        }
    }
    if let Some(presence) = &hub.presence {
        // Before any socket: this instance's earlier sessions must be seen as ended first.
        if let Err(e) = presence.first_round().await {
            tracing::error!(error = %e, "presence: cannot account for earlier sessions");
        }
        let hub = hub.clone();
        hub.clone().track(async move {
            if let Some(presence) = &hub.presence {
                presence.run(hub.shutdown.clone()).await;
            }
        });
    }
    hub.set_database_ready(true);
    tracing::info!(database = %url, "the database is ready");
    loop {
        tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            _ = tokio::time::sleep(PROBE) => {}
        }
        let answered = tokio::time::timeout(PROBE, hub.store.ping()).await;
        let outcome = answered.unwrap_or_else(|_| Err(sqlx::Error::PoolTimedOut.into()));
        let was = hub.set_database_ready(outcome.is_ok());
        match outcome {
            Ok(()) if !was => tracing::info!(database = %url, "the database is reachable again"),
            Err(e) if was => {
                tracing::warn!(database = %url, cause = %e, "the database is not reachable: not ready");
            }
            _ => {}
        }
    }
}

/// On SIGHUP, reads the token settings again (`WSKAFKA_AUTH_CONFIG` and the key files), so
/// keys rotate without a restart; settings that do not load leave those in force.
pub(super) async fn reload_keys_on_sighup(hub: Arc<Hub>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: token settings are read at start only");
        return;
    };
    loop {
        tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            _ = hangups.recv() => {}
        }
        match hub.auth.reload(&hub.tasks, &hub.shutdown) {
            Ok(()) => tracing::info!("token settings read again (SIGHUP)"),
            Err(e) => {
                tracing::error!(error = %e, "token settings not reloaded; the previous ones stay in force")
            }
        }
    }
}

/// Applies the control topic's records as the consumer reads them, until shutdown.
pub(super) async fn apply_control(hub: Arc<Hub>, mut records: mpsc::UnboundedReceiver<Vec<u8>>) {
    loop {
        let record = tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            record = records.recv() => match record {
                Some(record) => record,
                None => return,
            },
        };
        match serde_json::from_slice::<ControlMessage>(&record) {
            Ok(message) => hub.apply_revocation(&message.revoke),
            Err(e) => tracing::warn!(error = %e, "ignored a malformed control record"),
        }
    }
}
