//! One push to one device: the request RFC 8030 describes, retried on 429 and 5xx after the
//! push service's `Retry-After` or an exponential backoff, and what came of it.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use tokio_util::sync::CancellationToken;

use super::vapid::Vapid;

/// Attempts per push before it is given up.
const MAX_ATTEMPTS: u32 = 5;
/// The first backoff, doubled after each attempt, and its bound.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A `Retry-After` longer than this gives the push up: the record would be stale.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// What came of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    /// 404 or 410: the subscription expired or was withdrawn; the hub forgets it.
    Gone,
    /// Given up: the last status, or none when the push service was not reached.
    Failed(Option<StatusCode>),
    /// The hub is stopping: not sent, and not given up either.
    Stopped,
}

/// What every push of a record shares.
pub struct Request<'a> {
    pub endpoint: &'a url::Url,
    pub body: Vec<u8>,
    /// Collapses pushes of the same record at the push service (see `push`).
    pub topic: &'a str,
    pub ttl: Duration,
    pub urgency: &'a str,
    pub contact: &'a str,
}

/// Sends `request`, retrying what a retry may mend.
pub async fn send(
    client: &reqwest::Client,
    vapid: &Vapid,
    request: &Request<'_>,
    stop: &CancellationToken,
) -> Outcome {
    let mut last = None;
    for attempt in 0..MAX_ATTEMPTS {
        let sent = client
            .post(request.endpoint.clone())
            .header("TTL", request.ttl.as_secs().to_string())
            .header("Urgency", request.urgency)
            .header("Topic", request.topic)
            .header("Content-Encoding", "aes128gcm")
            .header("Content-Type", "application/octet-stream")
            .header(
                "Authorization",
                vapid.authorization(request.endpoint, request.contact),
            )
            .body(request.body.clone())
            .send()
            .await;
        let backoff = (FIRST_BACKOFF * 2u32.pow(attempt)).min(MAX_BACKOFF);
        let wait = match sent {
            Ok(response) => {
                let status = response.status();
                last = Some(status);
                if status.is_success() {
                    return Outcome::Sent;
                }
                if matches!(status, StatusCode::NOT_FOUND | StatusCode::GONE) {
                    return Outcome::Gone;
                }
                if status != StatusCode::TOO_MANY_REQUESTS && !status.is_server_error() {
                    tracing::debug!(%status, endpoint = %request.endpoint.origin().ascii_serialization(), "a push was refused");
                    return Outcome::Failed(last);
                }
                retry_after(response.headers()).unwrap_or(backoff)
            }
            Err(e) => {
                tracing::debug!(error = %e, "a push did not reach its push service");
                backoff
            }
        };
        if wait > MAX_RETRY_AFTER || attempt + 1 == MAX_ATTEMPTS {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return Outcome::Stopped,
        }
    }
    Outcome::Failed(last)
}

/// `Retry-After` in seconds (the push services' form); an HTTP date is left to the backoff.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn retry_after_is_read_in_seconds() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static(" 7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2026 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), None);
    }
}
