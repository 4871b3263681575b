//! The vocabulary of authentication: what a token grants, the session it opens, why one is
//! refused, and the development tokens `wskafka token` mints. Which issuers and keys verify
//! tokens is `issuers`' business.

pub(crate) mod issuers;
pub(crate) mod keys;
pub(crate) mod policy;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use crate::grant::{Grant, UserPattern};

/// The claims of a development token, as `wskafka token` and the demo mint them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    /// Issued at: revoking a user refuses the tokens issued until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Token id: what revoking one token names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(default)]
    pub wskafka: Grants,
}

/// What a token allows, on top of the topics the hub exposes at all (see `grant`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Grants {
    #[serde(default)]
    pub publish: Vec<Grant>,
    #[serde(default)]
    pub subscribe: Vec<Grant>,
    /// Reading past records with `history`, beyond what `subscribe` grants (which covers
    /// history too: a subscription can start in the past anyway).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Grant>,
    /// Whose online status the token may ask for and watch: globs over user ids, `{sub}`
    /// for the token's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub online: Vec<UserPattern>,
}

impl Grants {
    /// Taken whole where there are none yet: extending an empty list would allocate room
    /// for four, held by every socket of the token.
    pub fn extend(&mut self, more: Grants) {
        fn join<T>(to: &mut Vec<T>, more: Vec<T>) {
            if to.is_empty() {
                *to = more;
            } else {
                to.extend(more);
            }
        }
        join(&mut self.publish, more.publish);
        join(&mut self.subscribe, more.subscribe);
        join(&mut self.history, more.history);
        join(&mut self.online, more.online);
    }
}

/// The verified identity behind one connection.
#[derive(Debug)]
pub struct Session {
    /// The user id: the token's `sub`, or the claim its issuer names instead.
    pub sub: String,
    pub grants: Grants,
    /// When the token stops being accepted (its `exp` plus the configured leeway).
    pub expires_at: SystemTime,
    pub token: TokenId,
}

/// What a revocation can name about a token besides its user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenId {
    pub jti: Option<String>,
    /// `iat`, seconds since the epoch.
    pub issued_at: Option<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("token expired")]
    Expired,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token algorithm not accepted")]
    WrongAlgorithm,
    #[error("token lacks the `{0}` claim")]
    MissingClaim(String),
    #[error("token audience or issuer not accepted")]
    WrongAudience,
    #[error("token issuer not accepted")]
    UnknownIssuer,
    #[error("token signed with a key the hub does not know (kid)")]
    UnknownKey,
    #[error("token names no key (kid) and its issuer has several")]
    NoKid,
    #[error("the keys of the token's issuer are not available yet")]
    NoKeys,
    #[error("malformed token")]
    Malformed,
}

impl AuthError {
    /// A short stable label, for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Expired => "expired",
            AuthError::BadSignature => "bad_signature",
            AuthError::WrongAlgorithm => "wrong_algorithm",
            AuthError::MissingClaim(_) => "missing_claim",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::UnknownIssuer => "unknown_issuer",
            AuthError::UnknownKey => "unknown_key",
            AuthError::NoKid => "no_kid",
            AuthError::NoKeys => "no_keys",
            AuthError::Malformed => "malformed",
        }
    }
}

impl From<jsonwebtoken::errors::Error> for AuthError {
    fn from(e: jsonwebtoken::errors::Error) -> Self {
        match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                AuthError::WrongAlgorithm
            }
            ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(claim.clone()),
            ErrorKind::InvalidAudience | ErrorKind::InvalidIssuer => AuthError::WrongAudience,
            _ => AuthError::Malformed,
        }
    }
}

/// Bytes an HS256 secret needs at least: as many bits as the hash (RFC 7518, section 3.2).
pub const MIN_SECRET_BYTES: usize = 32;

/// Refuses an HS256 secret too short to resist guessing; `source` says where it came from.
pub fn check_secret(secret: &str, source: &str) -> Result<(), ShortSecret> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(ShortSecret {
            setting: source.to_string(),
            length: secret.len(),
        });
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
#[error(
    "{setting} is {length} bytes long: HS256 needs at least {MIN_SECRET_BYTES} (RFC 7518, \
     section 3.2); make one with `openssl rand -base64 32`"
)]
pub struct ShortSecret {
    pub setting: String,
    pub length: usize,
}

/// Signs an HS256 token with a fresh `jti`, for `wskafka token` and for tests.
pub fn mint(secret: &str, sub: &str, grants: Grants, ttl: Duration) -> String {
    let now = SystemTime::now();
    let seconds = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let claims = Claims {
        sub: sub.to_string(),
        exp: seconds(now + ttl),
        iat: Some(seconds(now)),
        jti: Some(uuid::Uuid::new_v4().to_string()),
        wskafka: grants,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing cannot fail")
}
