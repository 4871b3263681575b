//! `history`: a page of past records.

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::{BadRequest, Envelope, Request, RequestId, parse_offsets};

/// A page of past records, newest last.
#[derive(Debug)]
pub struct History<'a> {
    pub id: Option<RequestId>,
    pub topic: Cow<'a, str>,
    pub key: Option<Cow<'a, str>>,
    pub before: Before,
    pub limit: Option<u32>,
}

/// Where a history page ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Before {
    /// At each partition's end.
    End,
    /// Per partition, before this offset (exclusive); unlisted partitions at their end.
    Offsets(BTreeMap<i32, i64>),
    /// Where the socket's subscription to the same topic and key started: the page holds
    /// what came before its first record, which makes history and live meet without a gap
    /// or a repeat.
    Subscribed,
}

pub(super) fn history(mut e: Envelope<'_>) -> Result<Request<'_>, BadRequest> {
    let before = match &e.before {
        None => Before::End,
        Some(serde_json::Value::String(s)) if s == "subscribed" => Before::Subscribed,
        Some(before) => Before::Offsets(
            parse_offsets("before", before)
                .map_err(|m| e.bad(format!("{m}, or \"subscribed\"")))?,
        ),
    };
    let limit = match &e.limit {
        None => None,
        Some(limit) => match limit.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) if n > 0 => Some(n),
            _ => return Err(e.bad("`limit` must be a whole number of 1 or more")),
        },
    };
    Ok(Request::History(History {
        topic: e.required("topic", |e| e.topic.take())?,
        key: e.key,
        before,
        limit,
        id: e.id,
    }))
}
