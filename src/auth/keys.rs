//! Where the keys that verify tokens come from: files the operator names (static keys, by
//! `kid`, read again on SIGHUP), or an identity provider's JWKS URL, fetched at start and
//! again as its caching headers say (within configured bounds), so keys rotate without a
//! restart.
//!
//! Each key verifies only the algorithms of its own type (an RSA key RS*/PS*, a P-256 key
//! ES256, an Ed25519 key EdDSA, a secret HS256), so a token can never have a public key used
//! as an HMAC secret, and a JWKS never contributes a symmetric key. Nothing in a token's
//! header (`jku`, `x5u`, `jwk`) is ever fetched or trusted: its `kid` only picks among the
//! keys the hub already holds.
//!
//! A token naming a `kid` the set lacks makes the hub fetch the set once more (a provider
//! rotates in a new key before it signs with it), at most once per `unknown_kid_refetch`,
//! so that forged kids cannot make the hub hammer the provider. While the provider cannot be
//! reached or serves something unusable, the last good set stays in force.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio_util::sync::CancellationToken;

use crate::metrics;

/// A key and the algorithms it may verify.
pub struct VerifyingKey {
    pub key: DecodingKey,
    pub algorithms: Vec<Algorithm>,
}

/// Keys by `kid`; `None` files a key without one.
pub type KeyMap = HashMap<Option<String>, Arc<VerifyingKey>>;

/// Why no key was found for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// No key set has been fetched yet.
    NoKeys,
    /// The token names no `kid` and the set holds several keys.
    NoKid,
    /// The set has no key with the token's `kid`.
    UnknownKid,
}

/// The key among `keys` for a token's `kid`. A single key without a `kid` of its own
/// verifies any token (an operator's one key): its `kid`, if any, selects nothing.
pub fn pick(keys: &KeyMap, kid: Option<&str>) -> Result<Arc<VerifyingKey>, Missing> {
    if keys.len() == 1
        && let Some(key) = keys.get(&None)
    {
        return Ok(key.clone());
    }
    match kid {
        Some(kid) => keys
            .get(&Some(kid.to_string()))
            .cloned()
            .ok_or(Missing::UnknownKid),
        None if keys.len() == 1 => Ok(keys.values().next().expect("one key").clone()),
        None => Err(Missing::NoKid),
    }
}

/// The algorithms a public key may verify, by its type; `alg` pins one when the key names it.
pub fn algorithms_of(jwk: &Jwk) -> Option<Vec<Algorithm>> {
    use Algorithm::*;
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![ES256],
            EllipticCurve::P384 => vec![ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            vec![EdDSA]
        }
        // Symmetric keys have no place in a published set; anything else is unsupported.
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(by_type),
        Some(named) => {
            let named = match named {
                KeyAlgorithm::RS256 => RS256,
                KeyAlgorithm::RS384 => RS384,
                KeyAlgorithm::RS512 => RS512,
                KeyAlgorithm::PS256 => PS256,
                KeyAlgorithm::PS384 => PS384,
                KeyAlgorithm::PS512 => PS512,
                KeyAlgorithm::ES256 => ES256,
                KeyAlgorithm::ES384 => ES384,
                KeyAlgorithm::EdDSA => EdDSA,
                _ => return None,
            };
            by_type.contains(&named).then(|| vec![named])
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot fetch it: {0}")]
    Fetch(#[from] reqwest::Error),
    #[error("it answered HTTP {0}")]
    Status(u16),
    #[error("it is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("it is not a JSON Web Key Set: {0}")]
    Malformed(String),
    #[error("it holds no key the hub can verify with (RSA, P-256, P-384 or Ed25519)")]
    NoUsableKey,
}

/// A key set larger than this is refused: sets hold a few keys.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// How often a JWKS is fetched, and how it is asked for.
#[derive(Debug, Clone)]
pub struct JwksSettings {
    /// Bounds on the refresh interval the provider's `Cache-Control: max-age` asks for; a
    /// response without one is refreshed after `max_refresh`.
    pub min_refresh: Duration,
    pub max_refresh: Duration,
    /// At most one fetch for tokens with unknown kids per this interval.
    pub unknown_kid_refetch: Duration,
    /// Bound on one fetch.
    pub timeout: Duration,
}

impl Default for JwksSettings {
    fn default() -> Self {
        JwksSettings {
            min_refresh: Duration::from_secs(60),
            max_refresh: Duration::from_secs(3600),
            unknown_kid_refetch: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
        }
    }
}

/// One provider's published key set.
pub struct Jwks {
    pub url: String,
    client: reqwest::Client,
    settings: JwksSettings,
    /// `None` until the first good fetch.
    keys: RwLock<Option<Arc<KeyMap>>>,
    /// When a token with an unknown kid last made the hub fetch.
    last_refetch: Mutex<Option<Instant>>,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
    /// When the set in force goes stale, as its last fetch said.
    fresh_until: Mutex<Instant>,
    /// Told when a fetch for an unknown kid moved `fresh_until`.
    refetched: tokio::sync::Notify,
}

impl Jwks {
    pub fn new(url: String, settings: JwksSettings) -> Result<Jwks, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            // A key set is never worth following a provider's redirect off its host for.
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()?;
        Ok(Jwks {
            url,
            client,
            settings,
            keys: RwLock::new(None),
            last_refetch: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            fresh_until: Mutex::new(Instant::now()),
            refetched: tokio::sync::Notify::new(),
        })
    }

    pub fn keys(&self) -> Option<Arc<KeyMap>> {
        self.keys.read().expect("jwks lock").clone()
    }

    pub fn is_loaded(&self) -> bool {
        self.keys().is_some()
    }

    /// Fetches the set and, when it is usable, puts it in force; returns how long the
    /// provider says it stays fresh.
    async fn fetch(&self) -> Result<Duration, JwksError> {
        let _one = self.fetching.lock().await;
        let fetched = self.fetch_once().await;
        metrics::jwks_fetched(&self.url, fetched.is_ok());
        fetched
    }

    async fn fetch_once(&self) -> Result<Duration, JwksError> {
        let response = self.client.get(&self.url).send().await?;
        if !response.status().is_success() {
            return Err(JwksError::Status(response.status().as_u16()));
        }
        let fresh_for = fresh_for(response.headers(), &self.settings);
        if response
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(JwksError::TooLarge);
        }
        let body = response.bytes().await?;
        if body.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge);
        }
        let keys = parse_set(&body)?;
        let kids: Vec<String> = keys.keys().map(|k| format!("{k:?}")).collect();
        tracing::debug!(url = %self.url, ?kids, "JWKS fetched");
        *self.keys.write().expect("jwks lock") = Some(Arc::new(keys));
        Ok(fresh_for)
    }

    /// Fetches the set at start and whenever it goes stale, until `stop`. A failed fetch is
    /// retried sooner, backing off up to `min_refresh`; the last good set stays in force.
    pub async fn run(&self, stop: CancellationToken) {
        let mut retry = Duration::from_millis(500);
        let mut failing: Option<String> = None;
        loop {
            let wait = match self.fetch().await {
                Ok(fresh_for) => {
                    if failing.take().is_some() {
                        tracing::info!(url = %self.url, "JWKS fetched again");
                    }
                    retry = Duration::from_millis(500);
                    fresh_for
                }
                Err(e) => {
                    let kept = if self.is_loaded() {
                        "keeping the last good key set"
                    } else {
                        "no key set yet: tokens of this issuer are refused, and the hub is not ready"
                    };
                    // Once per streak of the same failure: a provider that stays down is
                    // not worth a line per retry.
                    let error = e.to_string();
                    if failing.as_ref() == Some(&error) {
                        tracing::debug!(url = %self.url, %error, "JWKS still unusable");
                    } else {
                        tracing::warn!(url = %self.url, %error, "JWKS unusable; {kept}");
                    }
                    failing = Some(error);
                    let wait = retry;
                    retry = (retry * 2).min(self.settings.min_refresh);
                    wait
                }
            };
            *self.fresh_until.lock().expect("jwks lock") = Instant::now() + wait;
            // Until the set goes stale: a fetch for an unknown kid in between moves that.
            loop {
                let until = *self.fresh_until.lock().expect("jwks lock");
                if Instant::now() >= until {
                    break;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep_until(until.into()) => {}
                    _ = self.refetched.notified() => {}
                }
            }
        }
    }

    /// The key for a token's `kid`. A kid the set lacks makes the hub fetch the set again,
    /// unless a token did so within `unknown_kid_refetch`.
    pub async fn key(&self, kid: Option<&str>) -> Result<Arc<VerifyingKey>, Missing> {
        let missing = match self.keys() {
            None => Missing::NoKeys,
            Some(keys) => match pick(&keys, kid) {
                Ok(key) => return Ok(key),
                Err(missing) => missing,
            },
        };
        if missing != Missing::UnknownKid && missing != Missing::NoKeys {
            return Err(missing);
        }
        {
            let mut last = self.last_refetch.lock().expect("jwks lock");
            if last.is_some_and(|at| at.elapsed() < self.settings.unknown_kid_refetch) {
                return Err(missing);
            }
            *last = Some(Instant::now());
        }
        match self.fetch().await {
            Ok(fresh_for) => {
                *self.fresh_until.lock().expect("jwks lock") = Instant::now() + fresh_for;
                self.refetched.notify_one();
            }
            Err(e) => {
                tracing::warn!(url = %self.url, error = %e, "JWKS refetch for an unknown kid failed");
            }
        }
        let keys = self.keys().ok_or(Missing::NoKeys)?;
        pick(&keys, kid)
    }
}

/// The usable keys of a JWKS document. A key this hub cannot use (an encryption key, a
/// symmetric one, an unknown type) is skipped, not fatal: providers publish such keys too.
fn parse_set(body: &[u8]) -> Result<KeyMap, JwksError> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body).map_err(|e| JwksError::Malformed(e.to_string()))?;
    let mut keys = KeyMap::new();
    for value in set.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let (Some(algorithms), Ok(key)) = (algorithms_of(&jwk), DecodingKey::from_jwk(&jwk)) else {
            continue;
        };
        keys.insert(
            jwk.common.key_id.clone(),
            Arc::new(VerifyingKey { key, algorithms }),
        );
    }
    if keys.is_empty() {
        return Err(JwksError::NoUsableKey);
    }
    Ok(keys)
}

/// How long a response stays fresh: its `Cache-Control: max-age`, within the configured
/// bounds; `no-cache` and `no-store` ask for the shortest.
fn fresh_for(headers: &reqwest::header::HeaderMap, settings: &JwksSettings) -> Duration {
    let directives = headers
        .get_all(reqwest::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_ascii_lowercase())
        .collect::<Vec<_>>();
    let asked = if directives
        .iter()
        .any(|d| d == "no-cache" || d == "no-store")
    {
        Duration::ZERO
    } else {
        directives
            .iter()
            .filter_map(|d| d.strip_prefix("max-age="))
            .filter_map(|s| s.trim_matches('"').parse::<u64>().ok())
            .map(Duration::from_secs)
            .next()
            .unwrap_or(settings.max_refresh)
    };
    asked.clamp(settings.min_refresh, settings.max_refresh)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(keys: serde_json::Value) -> Result<KeyMap, JwksError> {
        parse_set(serde_json::json!({ "keys": keys }).to_string().as_bytes())
    }

    const N: &str = "u1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0_IzW7yWR7QkrmBL7jTKEn5u-qKhbwKfBstIs-bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW_VDL5AaWTg0nLVkjRo9z-40RQzuVaE8AkAFmxZzow3x-VJYKdjykkJ0iT9wCS0DRTXu269V264Vf_3jvredZiKRkgwlL9xNAwxXFg0x_XFw005UWVRIkdgcKWTjpBP2dPwVZ4WWC-9aGVd-Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbcmw";

    #[test]
    fn each_key_verifies_its_own_type_of_algorithm_only() {
        let keys = set(serde_json::json!([
            {"kty": "RSA", "kid": "r", "n": N, "e": "AQAB"},
            {"kty": "RSA", "kid": "pinned", "alg": "PS256", "n": N, "e": "AQAB"},
            // Symmetric, mislabelled, or for encryption: skipped.
            {"kty": "oct", "kid": "secret", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "lying", "alg": "HS256", "n": N, "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": N, "e": "AQAB"},
            {"kty": "XYZ", "kid": "unknown"},
        ]))
        .unwrap();
        let mut kids: Vec<_> = keys.keys().cloned().collect();
        kids.sort();
        assert_eq!(kids, [Some("pinned".into()), Some("r".into())]);
        assert_eq!(keys[&Some("pinned".into())].algorithms, [Algorithm::PS256]);
        let rsa = &keys[&Some("r".into())].algorithms;
        assert!(rsa.contains(&Algorithm::RS256) && !rsa.contains(&Algorithm::HS256));
    }

    #[test]
    fn unusable_documents_are_refused_whole() {
        assert!(matches!(
            parse_set(b"<html>maintenance</html>"),
            Err(JwksError::Malformed(_))
        ));
        assert!(matches!(
            set(serde_json::json!([{"kty": "oct", "k": "c2VjcmV0"}])),
            Err(JwksError::NoUsableKey)
        ));
    }

    #[test]
    fn kids_pick_keys_and_a_lone_unnamed_key_takes_any_token() {
        let key = || {
            Arc::new(VerifyingKey {
                key: DecodingKey::from_secret(b"k"),
                algorithms: vec![Algorithm::HS256],
            })
        };
        let one = KeyMap::from([(None, key())]);
        assert!(pick(&one, Some("anything")).is_ok());
        assert!(pick(&one, None).is_ok());
        let two = KeyMap::from([(Some("a".into()), key()), (Some("b".into()), key())]);
        assert!(pick(&two, Some("a")).is_ok());
        assert_eq!(pick(&two, Some("c")).err(), Some(Missing::UnknownKid));
        assert_eq!(pick(&two, None).err(), Some(Missing::NoKid));
        let named = KeyMap::from([(Some("a".into()), key())]);
        assert!(pick(&named, None).is_ok());
        assert_eq!(pick(&named, Some("b")).err(), Some(Missing::UnknownKid));
    }

    #[test]
    fn max_age_is_honoured_within_the_bounds() {
        let settings = JwksSettings {
            min_refresh: Duration::from_secs(60),
            max_refresh: Duration::from_secs(3600),
            ..JwksSettings::default()
        };
        let with = |value: &str| {
            let mut headers = reqwest::header::HeaderMap::new();
            if !value.is_empty() {
                headers.insert(reqwest::header::CACHE_CONTROL, value.parse().unwrap());
            }
            fresh_for(&headers, &settings).as_secs()
        };
        assert_eq!(with("public, max-age=600"), 600);
        assert_eq!(with("max-age=5"), 60);
        assert_eq!(with("max-age=99999"), 3600);
        assert_eq!(with("no-cache"), 60);
        assert_eq!(with(""), 3600);
    }
}
