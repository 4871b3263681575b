//! `history`: a page of past records, read off the socket's task.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::auth::policy::Action;
use crate::history;
use crate::protocol::{Before, ErrorCode, History, Reply};

use super::requests::Known;
use super::{Answer, Answered, Connection, Handled, Refused};

/// Records a `history` request gets when it names no `limit`.
const HISTORY_PAGE: u32 = 50;

impl Connection {
    /// Reads a page of past records, off the socket's task.
    pub(super) fn history(&mut self, request: History<'_>, text: &str, may_wait: bool) -> Handled {
        let History {
            id,
            topic,
            key,
            before,
            limit,
        } = request;
        let confined = self.authorize(&id, &topic, key.as_deref(), Action::History)?;
        if let Known::Held = self.exists(&id, &topic, text, may_wait)? {
            return Ok(Answered::Nothing);
        }
        let most = self.hub.config.limits.history_limit;
        let key = key.map(Cow::into_owned);
        let (before, unlisted) = match before {
            Before::End => (BTreeMap::new(), None),
            Before::Offsets(offsets) => (offsets, None),
            // What the subscription delivers from its first record has nothing before it.
            Before::Subscribed => match self.subscriptions.started_at(&topic, key.as_deref()) {
                Some(start) => (start, Some(0)),
                None => {
                    return Err(Refused::new(
                        id,
                        ErrorCode::BadRequest,
                        "`before: \"subscribed\"` needs a started subscription to the same topic and key",
                    ));
                }
            },
        };
        let query = history::Query {
            topic: topic.into_owned(),
            key: confined,
            before,
            unlisted,
            limit: limit.unwrap_or(HISTORY_PAGE).min(most) as usize,
        };
        let reader = self.hub.history.clone();
        let share = self.share.clone();
        Ok(Answered::Later(Box::pin(async move {
            // This socket's share first: one socket never holds the hub's whole pool.
            let _share = share.acquire_owned().await;
            let topic = query.topic.clone();
            Answer::Reply(match reader.page(query).await {
                Ok(page) => Reply::History {
                    id,
                    topic,
                    key,
                    messages: page.messages,
                    before: page.before,
                    oldest: page.oldest,
                    partial: page.partial,
                },
                Err(e) => {
                    tracing::warn!(%topic, error = %e, "a history read failed");
                    Reply::error(id, e.code(), e.to_string())
                }
            })
        })))
    }
}
