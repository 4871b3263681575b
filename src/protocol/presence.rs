//! `presence` and `online`: who is in a room, and which users are online anywhere.

use super::{BadRequest, Envelope, Request};

/// Most users one `online` request may name.
const MAX_USERS: usize = 1000;

pub(super) fn presence(mut e: Envelope<'_>) -> Result<Request<'_>, BadRequest> {
    Ok(Request::Presence {
        topic: e.required("topic", |e| e.topic.take())?,
        key: e.key,
        after: e.after,
        id: e.id,
    })
}

pub(super) fn online(mut e: Envelope<'_>) -> Result<Request<'_>, BadRequest> {
    let users = e.required("users", |e| e.users.take())?;
    if users.len() > MAX_USERS {
        return Err(e.bad(format!("`users` names more than {MAX_USERS} users")));
    }
    Ok(Request::Online {
        users,
        watch: e.watch.unwrap_or(false),
        id: e.id,
    })
}
