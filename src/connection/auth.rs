//! Who the socket is: the first frame's `auth` on a socket opened without a token, and
//! `auth` again to refresh the token of a live one.

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message};
use futures_util::{SinkExt, StreamExt};

use crate::auth::Session;
use crate::auth::policy;
use crate::clock::unix_millis;
use crate::hub::{Hub, Seat};
use crate::metrics;
use crate::protocol::{self, ErrorCode, Reply, Request, RequestId, close};

use super::{Answer, Answered, Connection, Socket};

/// Waits for the `auth` frame of a socket opened without a token.
pub(super) async fn first_frame_auth(
    hub: &Arc<Hub>,
    socket: &mut impl Socket,
) -> Result<(Session, Seat), CloseFrame> {
    let refused = |reason: &'static str| CloseFrame {
        code: close::AUTH_FAILED,
        reason: reason.into(),
    };
    let first = tokio::select! {
        _ = hub.shutdown.cancelled() => {
            return Err(CloseFrame { code: close::GOING_AWAY, reason: "going away".into() });
        }
        first = tokio::time::timeout(hub.config.server.auth_timeout, socket.next()) => first,
    };
    let text = match first {
        Err(_) => {
            metrics::auth_failed("timeout");
            return Err(refused("no auth frame in time"));
        }
        Ok(Some(Ok(Message::Text(text)))) => text,
        Ok(_) => {
            metrics::auth_failed("no_auth_frame");
            return Err(refused("expected an auth frame"));
        }
    };
    let (id, token) = match protocol::parse(&text) {
        Ok(Request::Auth { id, token }) => (id, token),
        _ => {
            metrics::auth_failed("no_auth_frame");
            return Err(refused("expected an auth frame"));
        }
    };
    let (session, seat) = hub
        .admit(&token)
        .await
        .map_err(|refusal| refusal.close_frame())?;
    let reply = authenticated(id, &session);
    socket
        .send(Message::Text(reply.to_json().into()))
        .await
        .map_err(|_| refused("socket closed"))?;
    Ok((session, seat))
}

pub(super) fn authenticated(id: Option<RequestId>, session: &Session) -> Reply {
    Reply::Authenticated {
        id,
        sub: session.sub.clone(),
        expires_at: unix_millis(session.expires_at),
    }
}

impl Connection {
    /// A new token for the same user: it moves the expiry, and subscriptions it no longer
    /// allows end. A token that does not verify, or is revoked, changes nothing.
    pub(super) fn refresh(&mut self, id: Option<RequestId>, token: &str) -> Answered {
        let hub = self.hub.clone();
        let (token, user) = (token.to_string(), self.session.sub.clone());
        Answered::Later(Box::pin(async move {
            let session = match hub.auth.verify(&token).await {
                Ok(session) => session,
                Err(e) => {
                    return Answer::Reply(Reply::error(
                        id,
                        ErrorCode::Unauthorized,
                        format!("{e}: the current token stays in force"),
                    ));
                }
            };
            if session.sub != user {
                return Answer::Reply(Reply::error(
                    id,
                    ErrorCode::Forbidden,
                    "a refreshed token must be for the same user (`sub`)",
                ));
            }
            match hub.is_revoked(&session.sub, &session.token).await {
                Ok(false) => Answer::Refreshed(id, Box::new(session)),
                Ok(true) => Answer::Reply(Reply::error(
                    id,
                    ErrorCode::Unauthorized,
                    "token revoked: the current token stays in force",
                )),
                Err(e) => {
                    tracing::error!(error = %e, "cannot check revocations");
                    Answer::Reply(Reply::error(
                        id,
                        ErrorCode::Unavailable,
                        "cannot check the token now: the current token stays in force",
                    ))
                }
            }
        }))
    }

    pub(super) fn refreshed(&mut self, id: Option<RequestId>, session: Session) {
        self.hub.update_token(self.id, session.token.clone());
        // Registered before checking, as at connect.
        if self.hub.revoked_since_start(&session.sub, &session.token) {
            self.stop.revoked();
        }
        self.session = session;
        let config = &self.hub.config;
        let disallowed: Vec<(String, Option<String>)> = self
            .subscriptions
            .iter()
            .filter(|(topic, key, _)| !policy::still_allows(config, &self.session, topic, *key))
            .map(|(topic, key, _)| (topic.to_string(), key.map(str::to_string)))
            .collect();
        for (topic, key) in disallowed {
            self.end_subscription(&topic, key.as_deref());
            self.reply(Reply::ended(
                None,
                &topic,
                key.as_deref(),
                ErrorCode::Forbidden,
                format!("subscription to {topic:?} ended: the new token does not allow it"),
            ));
        }
        self.reply(authenticated(id, &self.session));
    }
}
