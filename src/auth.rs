//! Token verification: before the WebSocket upgrade when the token comes in the URL or a
//! header, so that a refused client never gets a socket; otherwise on the socket's first
//! frame, and again on each refresh.
//!
//! Exactly one algorithm is accepted, the one the configured key is for: a token that names
//! another (`none`, or HS256 signed with an RS256 public key as the secret) is refused by
//! `jsonwebtoken` before its signature is looked at.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::JwtConfig;
use crate::grant::Grant;

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
    /// Reading past records with `history`; without the claim, what `subscribe` grants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<Grant>>,
}

/// The verified identity behind one connection.
#[derive(Debug)]
pub struct Session {
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

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "no key to verify tokens with: set WSKAFKA_JWT_SECRET (an HS256 secret of at least \
         {MIN_SECRET_BYTES} bytes) or WSKAFKA_JWT_PUBLIC_KEY (a PEM file holding an RSA or \
         P-256 public key)"
    )]
    Missing,
    #[error(
        "WSKAFKA_JWT_SECRET is {0} bytes long: HS256 needs at least {MIN_SECRET_BYTES} (RFC 7518, \
         section 3.2); make one with `openssl rand -base64 32`"
    )]
    ShortSecret(usize),
    #[error("cannot read the JWT public key {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} holds neither an RSA nor an EC public key in PEM form")]
    NotAKey(String),
}

pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
    leeway: Duration,
}

impl Authenticator {
    pub fn new(config: &JwtConfig) -> Result<Self, KeyError> {
        let (key, algorithm) = match (&config.jwt_secret, &config.jwt_public_key) {
            (Some(secret), _) => (
                check_secret(secret).map(|()| DecodingKey::from_secret(secret.as_bytes()))?,
                Algorithm::HS256,
            ),
            (None, Some(path)) => {
                let pem = std::fs::read(path).map_err(|source| KeyError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                    (key, Algorithm::RS256)
                } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                    (key, Algorithm::ES256)
                } else {
                    return Err(KeyError::NotAKey(path.display().to_string()));
                }
            }
            (None, None) => return Err(KeyError::Missing),
        };
        let mut validation = Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = config.jwt_leeway.as_secs();
        validation.validate_nbf = true;
        if let Some(audience) = &config.jwt_audience {
            validation.set_audience(&[audience]);
        }
        if let Some(issuer) = &config.jwt_issuer {
            validation.set_issuer(&[issuer]);
        }
        Ok(Authenticator {
            key,
            validation,
            leeway: config.jwt_leeway,
        })
    }

    pub fn verify(&self, token: &str) -> Result<Session, AuthError> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)?.claims;
        Ok(Session {
            expires_at: UNIX_EPOCH + Duration::from_secs(claims.exp) + self.leeway,
            sub: claims.sub,
            grants: claims.wskafka,
            token: TokenId {
                jti: claims.jti,
                issued_at: claims.iat,
            },
        })
    }
}

/// Refuses an HS256 secret too short to resist guessing.
pub fn check_secret(secret: &str) -> Result<(), KeyError> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(KeyError::ShortSecret(secret.len()));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-secret-of-at-least-thirty-two-bytes";

    fn config(secret: &str) -> JwtConfig {
        JwtConfig {
            jwt_secret: Some(secret.into()),
            jwt_public_key: None,
            jwt_audience: None,
            jwt_issuer: None,
            jwt_leeway: Duration::ZERO,
        }
    }

    fn grants(publish: &[&str], subscribe: &[&str]) -> Grants {
        let parse = |ps: &[&str]| ps.iter().map(|p| p.parse().unwrap()).collect();
        Grants {
            publish: parse(publish),
            subscribe: parse(subscribe),
            history: None,
        }
    }

    #[test]
    fn a_minted_token_verifies_with_its_grants() {
        let auth = Authenticator::new(&config(SECRET)).unwrap();
        let token = mint(
            SECRET,
            "alice",
            grants(&["chat.*"], &["chat.*", "notifications"]),
            Duration::from_secs(60),
        );
        let session = auth.verify(&token).unwrap();
        assert_eq!(session.sub, "alice");
        assert_eq!(
            format!("{:?}", session.grants),
            r#"Grants { publish: ["chat.*"], subscribe: ["chat.*", "notifications"], history: None }"#
        );
        assert!(session.expires_at > SystemTime::now());
    }

    #[test]
    fn another_secret_is_a_bad_signature() {
        let auth = Authenticator::new(&config(SECRET)).unwrap();
        let token = mint("other", "alice", Grants::default(), Duration::from_secs(60));
        assert_eq!(auth.verify(&token).unwrap_err(), AuthError::BadSignature);
    }

    #[test]
    fn garbage_is_malformed() {
        let auth = Authenticator::new(&config(SECRET)).unwrap();
        assert_eq!(auth.verify("not.a.jwt").unwrap_err(), AuthError::Malformed);
        assert_eq!(auth.verify("").unwrap_err(), AuthError::Malformed);
    }

    #[test]
    fn an_invalid_grant_pattern_refuses_the_whole_token() {
        let auth = Authenticator::new(&config(SECRET)).unwrap();
        let claims =
            serde_json::json!({"sub":"a","exp":u32::MAX,"wskafka":{"publish":["chat/[x]"]}});
        let token = jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(auth.verify(&token).unwrap_err(), AuthError::Malformed);
    }

    #[test]
    fn a_secret_shorter_than_the_hash_is_a_configuration_error() {
        for short in ["", "secret", &"x".repeat(MIN_SECRET_BYTES - 1)] {
            let refused = Authenticator::new(&config(short)).err();
            assert!(
                matches!(refused, Some(KeyError::ShortSecret(n)) if n == short.len()),
                "{short:?}"
            );
        }
        assert!(Authenticator::new(&config(&"x".repeat(MIN_SECRET_BYTES))).is_ok());
    }
}
