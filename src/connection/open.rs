//! Opening a socket: who it is (a token at the upgrade, or the first frame's `auth`), its
//! listing in the hub (in reach of revocations and shutdown), presence's session, and the
//! connection's state, built once it is let in.

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message};
use futures_util::SinkExt;
use tokio::sync::Semaphore;

use crate::budget::Budgets;
use crate::clock::now_millis;
use crate::hub::{Admission, ConnectionInfo};
use crate::metrics;
use crate::presence::DisconnectReason;
use crate::protocol::close;
use crate::registry::{ConnId, Outbound, Queued};
use crate::stop::Stop;
use crate::subscription::Subscriptions;

use super::auth::first_frame_auth;
use super::presence::RosterWrites;
use super::{Connection, Opening, SHARE, Socket, closing};

impl Connection {
    /// Authenticates the socket, lists it and records its session; `None` once it is refused
    /// (and told why).
    pub(super) async fn open(
        opening: Box<Opening>,
        socket: &mut impl Socket,
        id: ConnId,
    ) -> Option<(Connection, flume::Receiver<Outbound>)> {
        let Opening {
            hub,
            admission,
            open,
            transport,
        } = *opening;
        let authenticated = match admission {
            Admission::Admitted(session, seat) => Ok((*session, seat)),
            // The permit is given back once the first frame is handled, whatever it was.
            Admission::Awaiting(_permit) => first_frame_auth(&hub, socket).await,
        };
        let (session, seat) = match authenticated {
            Ok(pair) => pair,
            Err(frame) => {
                tracing::debug!(frame.code, reason = %frame.reason, "refused the socket");
                refuse(socket, frame).await;
                return None;
            }
        };
        tracing::Span::current().record("sub", session.sub.as_str());
        let stop = Stop::default();
        let queued = Arc::<Queued>::default();
        let info = ConnectionInfo {
            sub: session.sub.clone(),
            since: now_millis(),
            transport,
            token: session.token.clone(),
            stop: stop.clone(),
            queued: queued.clone(),
        };
        // Registered before the last revocation check: see `control` for why. Shutdown is
        // checked after it too: see `Hub::going_away`.
        let registration = hub.register(id, info);
        if hub.shutdown.is_cancelled() {
            stop.going_away();
        }
        if hub.revoked_since_start(&session.sub, &session.token) {
            refuse(socket, closing(close::AUTH_FAILED, "token revoked")).await;
            return None;
        }
        let presence = match &hub.presence {
            None => None,
            Some(presence) => match presence.connected(&session.sub).await {
                Ok(open) => Some(open),
                Err(e) => {
                    tracing::error!(error = %e, "cannot record the session for presence");
                    refuse(socket, closing(close::INTERNAL, "try again shortly")).await;
                    return None;
                }
            },
        };
        metrics::connection_opened(metrics::Transport::of(transport));
        let (queue, frames) = flume::bounded(hub.config.limits.send_queue);
        let stash_bytes = hub.config.limits.memory_budget.send_queue();
        let connection = Connection {
            transport: metrics::Transport::of(transport),
            resumable: socket.resumable(),
            resume_len: 0,
            queue,
            queued,
            taken: 0,
            replayed: Vec::new(),
            subscriptions: Subscriptions::new(hub.config.limits.send_queue, stash_bytes),
            budgets: Budgets::new(&hub.sockets.request_rates, &hub.sockets.rate_clock),
            abusive: false,
            share: Arc::new(Semaphore::new(SHARE)),
            committed_any: false,
            roster: RosterWrites::default(),
            watching: Vec::new(),
            replays: None,
            out: Vec::new(),
            stop,
            presence,
            ended: DisconnectReason::Closed,
            held: None,
            positions_waited: false,
            abandon: None,
            hub,
            id,
            user: session.sub.as_str().into(),
            session,
            _seat: seat,
            _open: open,
            _registration: registration,
        };
        Some((connection, frames))
    }
}

/// Ends a socket before it is served.
async fn refuse(socket: &mut impl Socket, frame: CloseFrame) {
    let _ = socket.send(Message::Close(Some(frame))).await;
}
