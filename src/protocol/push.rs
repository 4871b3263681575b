//! `push_subscribe`, `push_unsubscribe`, `push_key`: a browser's Web Push subscription, as
//! `PushSubscription.toJSON()` gives it, checked for shape and sizes here (no I/O); where
//! its endpoint points is checked by the handler, which resolves it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{BadRequest, Envelope, Request};

/// Longest endpoint accepted, in bytes: the push services' own are under 300.
pub const MAX_ENDPOINT: usize = 1024;
/// An uncompressed P-256 point (RFC 8291's `p256dh`): 0x04, then x and y.
const P256DH_BYTES: usize = 65;
/// RFC 8291's authentication secret.
const AUTH_BYTES: usize = 16;

/// A browser's push subscription, checked for shape: an `http(s)` URL of bounded length and
/// keys of the sizes RFC 8291 gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushSubscription {
    pub endpoint: url::Url,
    pub p256dh: Vec<u8>,
    pub auth: Vec<u8>,
}

pub(super) fn subscribe(mut e: Envelope<'_>) -> Result<Request<'_>, BadRequest> {
    let value = e.required("subscription", |e| e.subscription.take())?;
    let subscription = read_subscription(&value).map_err(|message| e.bad(message))?;
    Ok(Request::PushSubscribe {
        id: e.id,
        subscription,
    })
}

pub(super) fn unsubscribe(mut e: Envelope<'_>) -> Result<Request<'_>, BadRequest> {
    let endpoint = e.required("endpoint", |e| e.endpoint.take())?;
    if endpoint.len() > MAX_ENDPOINT {
        return Err(e.bad(format!("`endpoint` is longer than {MAX_ENDPOINT} bytes")));
    }
    Ok(Request::PushUnsubscribe { id: e.id, endpoint })
}

pub(super) fn key(e: Envelope<'_>) -> Result<Request<'_>, BadRequest> {
    Ok(Request::PushKey { id: e.id })
}

/// `{"endpoint": "...", "keys": {"p256dh": "...", "auth": "..."}}`; other fields
/// (`expirationTime`) are ignored.
fn read_subscription(value: &serde_json::Value) -> Result<PushSubscription, String> {
    let text = |field: &str, v: Option<&serde_json::Value>| -> Result<String, String> {
        match v {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(format!("`subscription.{field}` must be a string")),
            None => Err(format!("missing field `subscription.{field}`")),
        }
    };
    if !value.is_object() {
        return Err("`subscription` must be an object: PushSubscription.toJSON()".into());
    }
    let endpoint = text("endpoint", value.get("endpoint"))?;
    let keys = value.get("keys");
    let p256dh = text("keys.p256dh", keys.and_then(|k| k.get("p256dh")))?;
    let auth = text("keys.auth", keys.and_then(|k| k.get("auth")))?;
    Ok(PushSubscription {
        endpoint: read_endpoint(&endpoint)?,
        p256dh: read_key("p256dh", &p256dh, P256DH_BYTES).and_then(|k| match k.first() {
            Some(4) => Ok(k),
            _ => Err(
                "`subscription.keys.p256dh` must be an uncompressed P-256 point (starting 0x04)"
                    .into(),
            ),
        })?,
        auth: read_key("auth", &auth, AUTH_BYTES)?,
    })
}

fn read_endpoint(endpoint: &str) -> Result<url::Url, String> {
    if endpoint.len() > MAX_ENDPOINT {
        return Err(format!(
            "`subscription.endpoint` is longer than {MAX_ENDPOINT} bytes"
        ));
    }
    let url = url::Url::parse(endpoint)
        .map_err(|e| format!("`subscription.endpoint` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "https" | "http") || url.host().is_none() {
        return Err("`subscription.endpoint` must be an https:// URL".into());
    }
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err("`subscription.endpoint` must have no user name, password or fragment".into());
    }
    Ok(url)
}

/// A key in base64url, padded or not, of exactly `bytes` bytes.
fn read_key(name: &str, text: &str, bytes: usize) -> Result<Vec<u8>, String> {
    let wrong = || format!("`subscription.keys.{name}` must be {bytes} bytes in base64url");
    // Checked before decoding: an oversized key costs nothing.
    if text.len() > bytes.div_ceil(3) * 4 {
        return Err(wrong());
    }
    let key = URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| wrong())?;
    if key.len() != bytes {
        return Err(wrong());
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn keys() -> (String, String) {
        let mut point = vec![4u8];
        point.extend([7u8; 64]);
        (
            URL_SAFE_NO_PAD.encode(point),
            URL_SAFE_NO_PAD.encode([9u8; 16]),
        )
    }

    #[test]
    fn a_browser_subscription_is_read() {
        let (p256dh, auth) = keys();
        let value = json!({"endpoint": "https://push.example.net/s/abc?x=1", "expirationTime": null,
            "keys": {"p256dh": p256dh, "auth": format!("{auth}==")}});
        let s = read_subscription(&value).unwrap();
        assert_eq!(s.endpoint.as_str(), "https://push.example.net/s/abc?x=1");
        assert_eq!(s.p256dh.len(), 65);
        assert_eq!(s.auth, vec![9u8; 16]);
    }

    #[test]
    fn malformed_subscriptions_are_refused_with_the_field_named() {
        let (p256dh, auth) = keys();
        let long = format!("https://push.example.net/{}", "a".repeat(MAX_ENDPOINT));
        let mut compressed = vec![2u8];
        compressed.extend([7u8; 64]);
        let compressed = URL_SAFE_NO_PAD.encode(compressed);
        for (value, expected) in [
            (json!("x"), "must be an object"),
            (
                json!({"keys": {"p256dh": p256dh, "auth": auth}}),
                "missing field `subscription.endpoint`",
            ),
            (
                json!({"endpoint": 5, "keys": {"p256dh": p256dh, "auth": auth}}),
                "`subscription.endpoint` must be a string",
            ),
            (
                json!({"endpoint": "not a url", "keys": {"p256dh": p256dh, "auth": auth}}),
                "is not a URL",
            ),
            (
                json!({"endpoint": "ftp://push.example.net/", "keys": {"p256dh": p256dh, "auth": auth}}),
                "must be an https:// URL",
            ),
            (
                json!({"endpoint": "https://u:p@push.example.net/", "keys": {"p256dh": p256dh, "auth": auth}}),
                "no user name",
            ),
            (
                json!({"endpoint": long, "keys": {"p256dh": p256dh, "auth": auth}}),
                "longer than 1024",
            ),
            (
                json!({"endpoint": "https://push.example.net/", "keys": {"auth": auth}}),
                "missing field `subscription.keys.p256dh`",
            ),
            (
                json!({"endpoint": "https://push.example.net/", "keys": {"p256dh": p256dh}}),
                "missing field `subscription.keys.auth`",
            ),
            (
                json!({"endpoint": "https://push.example.net/", "keys": {"p256dh": p256dh, "auth": "a".repeat(5000)}}),
                "`subscription.keys.auth` must be 16 bytes",
            ),
            (
                json!({"endpoint": "https://push.example.net/", "keys": {"p256dh": p256dh, "auth": URL_SAFE_NO_PAD.encode([1u8; 15])}}),
                "`subscription.keys.auth` must be 16 bytes",
            ),
            (
                json!({"endpoint": "https://push.example.net/", "keys": {"p256dh": "!!", "auth": auth}}),
                "`subscription.keys.p256dh` must be 65 bytes",
            ),
            (
                json!({"endpoint": "https://push.example.net/", "keys": {"p256dh": compressed, "auth": auth}}),
                "uncompressed P-256 point",
            ),
        ] {
            let e = read_subscription(&value).unwrap_err();
            assert!(e.contains(expected), "{value}: {e}");
        }
    }
}
