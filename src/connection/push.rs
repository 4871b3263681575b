//! `push_subscribe`, `push_unsubscribe`, `push_key`: the user's Web Push subscriptions.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::protocol::{ErrorCode, PushSubscription, Reply, RequestId};
use crate::push::{self, endpoint};
use crate::store::{AddError, StoredSubscription};

use super::{Answer, Answered, Connection, Handled, Refused};

impl Connection {
    /// The hub's push service, or the refusal when push is off.
    fn push_service(
        &self,
        id: &Option<RequestId>,
    ) -> Result<&std::sync::Arc<push::Service>, Refused> {
        self.hub.push.as_ref().ok_or_else(|| {
            Refused::new(
                id.clone(),
                ErrorCode::BadRequest,
                "this hub sends no pushes: Web Push is off (WSKAFKA_PUSH)",
            )
        })
    }

    /// Stores the subscription once its endpoint checked out, off the socket's task.
    pub(super) fn push_subscribe(
        &mut self,
        id: Option<RequestId>,
        subscription: PushSubscription,
    ) -> Handled {
        let service = self.push_service(&id)?;
        let allow_loopback = service.config.push_allow_loopback;
        let most = service.config.push_max_devices;
        let store = self.hub.store.clone();
        let sub = self.session.sub.clone();
        Ok(Answered::Later(Box::pin(async move {
            let PushSubscription {
                endpoint: url,
                p256dh,
                auth,
            } = subscription;
            if on_curve(&p256dh).is_err() {
                return Answer::Reply(Reply::error(
                    id,
                    ErrorCode::BadRequest,
                    "`subscription.keys.p256dh` is not a point of P-256",
                ));
            }
            if let Err(e) = endpoint::check(&url, allow_loopback).await {
                return Answer::Reply(Reply::error(id, ErrorCode::BadRequest, e.to_string()));
            }
            let stored = StoredSubscription {
                endpoint: url.to_string(),
                p256dh: URL_SAFE_NO_PAD.encode(p256dh),
                auth: URL_SAFE_NO_PAD.encode(auth),
            };
            Answer::Reply(
                match store.add_push_subscription(&sub, &stored, most).await {
                    Ok(()) => Reply::PushSubscribed {
                        id,
                        endpoint: stored.endpoint,
                    },
                    Err(e @ AddError::TooMany(_)) => {
                        Reply::error(id, ErrorCode::LimitExceeded, e.to_string())
                    }
                    Err(AddError::Store(e)) => {
                        tracing::warn!(error = %e, "storing a push subscription failed");
                        Reply::error(
                            id,
                            ErrorCode::Unavailable,
                            "cannot store the subscription now: try again",
                        )
                    }
                },
            )
        })))
    }

    pub(super) fn push_unsubscribe(&mut self, id: Option<RequestId>, endpoint: String) -> Handled {
        self.push_service(&id)?;
        let store = self.hub.store.clone();
        let sub = self.session.sub.clone();
        Ok(Answered::Later(Box::pin(async move {
            Answer::Reply(
                match store.remove_push_subscription(&sub, &endpoint).await {
                    Ok(removed) => Reply::PushUnsubscribed {
                        id,
                        endpoint,
                        removed,
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "removing a push subscription failed");
                        Reply::error(
                            id,
                            ErrorCode::Unavailable,
                            "cannot remove the subscription now: try again",
                        )
                    }
                },
            )
        })))
    }

    pub(super) fn push_key(&mut self, id: Option<RequestId>) -> Handled {
        let service = self.push_service(&id)?;
        match service.public_key() {
            Some(key) => Ok(Answered::Now(Reply::PushKey {
                id,
                key: key.to_string(),
            })),
            None => Err(Refused::new(
                id,
                ErrorCode::Unavailable,
                "the push key is not loaded yet: retry shortly",
            )),
        }
    }
}

/// Whether `point` lies on P-256: a key off the curve could never be encrypted to.
fn on_curve(point: &[u8]) -> Result<(), openssl::error::ErrorStack> {
    let group = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1)?;
    let mut ctx = openssl::bn::BigNumContext::new()?;
    openssl::ec::EcPoint::from_bytes(&group, point, &mut ctx).map(|_| ())
}
