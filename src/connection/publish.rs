//! `publish` and `signal`: records to Kafka (see `ingest`), answered once Kafka has them;
//! signals to the room's subscribers on every hub.

use serde_json::value::RawValue;

use crate::auth::policy::Action;
use crate::ingest;
use crate::presence::signal::Signal;
use crate::protocol::{ErrorCode, Publish, RequestId};

use super::requests::Known;
use super::{Answer, Answered, Connection, Handled, Refused};

impl Connection {
    pub(super) fn publish(&mut self, publish: Publish<'_>, text: &str, may_wait: bool) -> Handled {
        self.authorize(
            &publish.id,
            &publish.topic,
            publish.key.as_deref(),
            Action::Publish,
        )?;
        if let Known::Held = self.exists(&publish.id, &publish.topic, text, may_wait)? {
            return Ok(Answered::Nothing);
        }
        // A resend waiting for its earlier attempts is dropped unwritten if the socket ends
        // first: the client then sends it again elsewhere.
        let abandon = &mut self.abandon;
        let abandoned = || abandon.get_or_insert_default().clone();
        Ok(
            match ingest::send(&self.hub, &self.session.sub, publish, abandoned) {
                Ok(acked) => Answered::Later(Box::pin(async { Answer::Reply(acked.await) })),
                Err(refused) => return Err(refused),
            },
        )
    }

    /// Hands a signal to the hubs; nothing answers it unless it is refused.
    pub(super) fn signal(
        &mut self,
        id: Option<RequestId>,
        topic: &str,
        key: Option<&str>,
        payload: &RawValue,
    ) -> Handled {
        self.authorize(&id, topic, key, Action::Publish)?;
        let max = self.hub.config.presence.max_signal_bytes;
        if payload.get().len() > max {
            return Err(Refused::new(
                id,
                ErrorCode::TooLarge,
                format!("a signal's payload is at most {max} bytes"),
            ));
        }
        let signal = Signal {
            topic,
            key,
            sender: &self.session.sub,
            payload,
        };
        self.hub
            .signals
            .send(&signal)
            .map_err(|e| Refused::new(id, e.code(), e.to_string()))?;
        Ok(Answered::Nothing)
    }
}
