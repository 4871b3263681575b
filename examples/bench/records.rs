//! What the load sends: payloads stamped with their intended send time and index, frames
//! shaped like the hub's, and reading the stamps back out of what arrives.

use crate::PAYLOAD_BYTES;

/// A JSON payload of `PAYLOAD_BYTES` carrying its send time and index.
pub fn payload(sent_us: u64, i: usize) -> String {
    let head = format!(r#"{{"t":{sent_us},"i":{i},"pad":""#);
    let pad = PAYLOAD_BYTES.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad))
}

/// What the bare server relays: a frame shaped and sized like the hub's `message`.
pub fn message_frame(topic: &str, offset: usize, payload: String) -> String {
    format!(
        r#"{{"type":"message","topic":"{topic}","partition":0,"offset":{offset},"timestamp":1764480000000,"payload":{payload}}}"#
    )
}

/// The send time and index of each record in a frame: Centrifugo may batch several, one
/// per line.
pub fn stamps(frame: &str) -> impl Iterator<Item = (u64, usize)> {
    frame.split('\n').filter_map(stamp)
}

/// Reads the send time and index back out of a frame carrying `payload`.
pub fn stamp(frame: &str) -> Option<(u64, usize)> {
    Some((
        number_after(frame, r#"{"t":"#)?,
        number_after(frame, r#","i":"#)? as usize,
    ))
}

/// The number right after the first `key` in `text`.
pub fn number_after(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let digits = text[at..].split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}
