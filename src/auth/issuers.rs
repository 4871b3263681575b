//! Who issues the tokens the hub accepts, and how each issuer's tokens become a session.
//!
//! Either the `WSKAFKA_JWT_*` settings (one issuer, one static key), or a file
//! (`WSKAFKA_AUTH_CONFIG`) naming several issuers, each with its keys (a JWKS URL, or static
//! keys by `kid`), its audience, the claim that holds the user id and rules that turn the
//! claims identity providers can issue (scopes, roles, groups) into grants. A token is
//! checked against the rules of the issuer its `iss` names, and only those: an issuer's
//! audience never admits another issuer's tokens.
//!
//! SIGHUP reads the settings again (the file, and the key files it names), without a
//! restart; a file that does not load leaves the settings in force and says why.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::keys::{Jwks, JwksSettings, KeyMap, Missing, VerifyingKey, pick};
use crate::auth::{AuthError, Grants, Session, ShortSecret, TokenId, check_secret};
use crate::config::JwtConfig;
use crate::grant::{Grant, UserPattern};

/// Why the settings cannot verify tokens; the hub does not start with them.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "no key to verify tokens with: set WSKAFKA_JWT_SECRET (an HS256 secret of at least 32 \
         bytes), WSKAFKA_JWT_PUBLIC_KEY (a PEM file holding an RSA, P-256 or Ed25519 public \
         key), or WSKAFKA_AUTH_CONFIG (a file of issuers with JWKS URLs or keys)"
    )]
    Missing,
    #[error(transparent)]
    ShortSecret(#[from] ShortSecret),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} holds no RSA, EC or Ed25519 public key in PEM form")]
    NotAKey(String),
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("cannot make the HTTP client for {url}: {source}")]
    Client { url: String, source: reqwest::Error },
}

/// The file `WSKAFKA_AUTH_CONFIG` names.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    #[serde(default)]
    jwks: JwksFile,
    #[serde(default, rename = "issuer")]
    issuers: Vec<IssuerFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct JwksFile {
    #[serde(default, deserialize_with = "duration")]
    min_refresh: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    max_refresh: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    unknown_kid_refetch: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    timeout: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuerFile {
    /// The `iss` of its tokens.
    iss: String,
    /// A token must name one of these in `audience_claim`.
    audience: Vec<String>,
    #[serde(default = "aud")]
    audience_claim: String,
    jwks_url: Option<String>,
    #[serde(default, rename = "key")]
    keys: Vec<KeyFile>,
    /// The claim that holds the user id.
    #[serde(default = "sub")]
    user_claim: String,
    /// Whether the `wskafka` claim grants what it lists.
    #[serde(default = "yes")]
    wskafka_claim: bool,
    #[serde(default, rename = "grant")]
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    kid: Option<String>,
    /// A PEM public key (RSA, P-256, P-384 or Ed25519).
    public_key: Option<PathBuf>,
    /// A file holding an HS256 secret.
    secret_file: Option<PathBuf>,
}

/// Grants for tokens whose `claim` holds `value`: a claim that is a string of
/// space-separated values (`scope`, `scp`) or an array of strings (roles, groups).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    /// A claim name, or a path through objects (`realm_access.roles`); a name holding dots
    /// or colons (`https://example.com/roles`, `cognito:groups`) is taken whole first.
    claim: String,
    value: String,
    #[serde(default)]
    publish: Vec<Grant>,
    #[serde(default)]
    subscribe: Vec<Grant>,
    #[serde(default)]
    history: Vec<Grant>,
    #[serde(default)]
    online: Vec<UserPattern>,
}

fn aud() -> String {
    "aud".into()
}

fn sub() -> String {
    "sub".into()
}

fn yes() -> bool {
    true
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

enum Keys {
    Static(Arc<KeyMap>),
    Jwks(Arc<Jwks>),
}

struct Issuer {
    /// Its tokens' `iss`; `None` only for the `WSKAFKA_JWT_*` issuer without
    /// `WSKAFKA_JWT_ISSUER`.
    iss: Option<String>,
    /// `None`: the `WSKAFKA_JWT_*` issuer without `WSKAFKA_JWT_AUDIENCE`, which refuses
    /// tokens that carry an audience.
    audience: Option<Vec<String>>,
    audience_claim: String,
    keys: Keys,
    user_claim: String,
    wskafka_claim: bool,
    rules: Vec<Rule>,
}

/// The issuers in force.
struct Issuers {
    list: Vec<Issuer>,
    /// The `WSKAFKA_JWT_*` issuer alone, which checks every token (and refuses one of
    /// another `iss` when `WSKAFKA_JWT_ISSUER` is set).
    only: bool,
}

/// Where the settings come from, to read them again on SIGHUP.
enum Source {
    Flags(JwtConfig),
    File(PathBuf),
}

pub struct Authenticator {
    source: Source,
    leeway: Duration,
    issuers: RwLock<Arc<Issuers>>,
    /// Running JWKS refreshes, by URL.
    refreshing: std::sync::Mutex<HashMap<String, CancellationToken>>,
}

impl Authenticator {
    /// Loads the settings; fetches nothing (see `start`).
    pub fn new(jwt: &JwtConfig) -> Result<Self, KeyError> {
        let source = match &jwt.auth_config {
            Some(path) => Source::File(path.clone()),
            None => Source::Flags(jwt.clone()),
        };
        let issuers = load(&source, None)?;
        Ok(Authenticator {
            source,
            leeway: jwt.jwt_leeway,
            issuers: RwLock::new(Arc::new(issuers)),
            refreshing: std::sync::Mutex::new(HashMap::new()),
        })
    }

    fn issuers(&self) -> Arc<Issuers> {
        self.issuers.read().expect("issuers lock").clone()
    }

    /// Starts fetching every JWKS not fetched yet, on `tasks`, until `stop`; ends those no
    /// issuer uses any more.
    pub fn start(&self, tasks: &TaskTracker, stop: &CancellationToken) {
        let issuers = self.issuers();
        let mut refreshing = self.refreshing.lock().expect("refresh lock");
        let used: Vec<&Arc<Jwks>> = issuers
            .list
            .iter()
            .filter_map(|issuer| match &issuer.keys {
                Keys::Jwks(jwks) => Some(jwks),
                Keys::Static(_) => None,
            })
            .collect();
        refreshing.retain(|url, running| {
            let kept = used.iter().any(|jwks| &jwks.url == url);
            if !kept {
                running.cancel();
            }
            kept
        });
        for jwks in used {
            if refreshing.contains_key(&jwks.url) {
                continue;
            }
            let token = stop.child_token();
            refreshing.insert(jwks.url.clone(), token.clone());
            let jwks = jwks.clone();
            tasks.spawn(async move { jwks.run(token).await });
        }
    }

    /// Reads the settings again; on failure the ones in force stay.
    pub fn reload(&self, tasks: &TaskTracker, stop: &CancellationToken) -> Result<(), KeyError> {
        let fresh = load(&self.source, Some(&self.issuers()))?;
        *self.issuers.write().expect("issuers lock") = Arc::new(fresh);
        self.start(tasks, stop);
        Ok(())
    }

    /// The JWKS URLs with no key set yet: until they have one, their issuers' tokens are
    /// refused.
    pub fn missing_keys(&self) -> Vec<String> {
        self.issuers()
            .list
            .iter()
            .filter_map(|issuer| match &issuer.keys {
                Keys::Jwks(jwks) if !jwks.is_loaded() => Some(jwks.url.clone()),
                _ => None,
            })
            .collect()
    }

    pub async fn verify(&self, token: &str) -> Result<Session, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let issuers = self.issuers();
        // Which issuer's rules apply: the unverified `iss` only picks them, and the token
        // must then verify under them.
        let unverified: Value = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| AuthError::Malformed)?;
        let iss = unverified.get("iss").and_then(Value::as_str);
        let issuer = issuers
            .list
            .iter()
            .find(|issuer| issuers.only || issuer.iss.as_deref() == iss)
            .ok_or(AuthError::UnknownIssuer)?;
        let key = issuer.key(header.kid.as_deref()).await?;
        let claims =
            jsonwebtoken::decode::<Value>(token, &key.key, &issuer.validation(&key, self.leeway))?
                .claims;
        issuer.session(&claims, self.leeway)
    }
}

impl Issuer {
    async fn key(&self, kid: Option<&str>) -> Result<Arc<VerifyingKey>, AuthError> {
        let found = match &self.keys {
            Keys::Static(keys) => pick(keys, kid),
            Keys::Jwks(jwks) => jwks.key(kid).await,
        };
        found.map_err(|missing| match missing {
            Missing::NoKeys => AuthError::NoKeys,
            Missing::NoKid => AuthError::NoKid,
            Missing::UnknownKid => AuthError::UnknownKey,
        })
    }

    fn validation(&self, key: &VerifyingKey, leeway: Duration) -> Validation {
        let mut validation = Validation::new(key.algorithms[0]);
        validation.algorithms = key.algorithms.clone();
        validation.set_required_spec_claims(&["exp"]);
        validation.leeway = leeway.as_secs();
        validation.validate_nbf = true;
        if let Some(iss) = &self.iss {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        match &self.audience {
            // `jsonwebtoken` checks `aud` only when the token has one: a token without it
            // must be refused too, as a missing `iss` is.
            Some(audience) if self.audience_claim == "aud" => {
                validation.set_audience(audience);
                validation.required_spec_claims.insert("aud".into());
            }
            // Checked in `session`.
            Some(_) => validation.validate_aud = false,
            // Refuses a token that carries an audience (`jsonwebtoken`'s default).
            None => {}
        }
        validation
    }

    fn session(&self, claims: &Value, leeway: Duration) -> Result<Session, AuthError> {
        if let Some(audience) = &self.audience
            && self.audience_claim != "aud"
        {
            let named = values(claim(claims, &self.audience_claim));
            if !named.iter().any(|n| audience.iter().any(|a| a == n)) {
                return Err(AuthError::WrongAudience);
            }
        }
        let missing = |name: &str| AuthError::MissingClaim(name.to_string());
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or_else(|| missing("exp"))?;
        let sub = match claim(claims, &self.user_claim) {
            Some(Value::String(id)) if !id.is_empty() => id.clone(),
            Some(Value::Number(id)) => id.to_string(),
            _ => return Err(missing(&self.user_claim)),
        };
        let mut grants = Grants::default();
        if self.wskafka_claim
            && let Some(listed) = claims.get("wskafka")
        {
            let listed: Grants =
                serde_json::from_value(listed.clone()).map_err(|_| AuthError::Malformed)?;
            grants.extend(listed);
        }
        for rule in &self.rules {
            if values(claim(claims, &rule.claim)).contains(&rule.value.as_str()) {
                grants.extend(Grants {
                    publish: rule.publish.clone(),
                    subscribe: rule.subscribe.clone(),
                    history: rule.history.clone(),
                    online: rule.online.clone(),
                });
            }
        }
        Ok(Session {
            sub,
            grants,
            expires_at: UNIX_EPOCH + Duration::from_secs(exp) + leeway,
            token: TokenId {
                jti: claims
                    .get("jti")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                issued_at: claims.get("iat").and_then(Value::as_u64),
            },
        })
    }
}

/// The claim `path` names: a top-level name taken whole (`cognito:groups`,
/// `https://example.com/roles`), or else a path of names separated by dots.
fn claim<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(path) {
        return Some(value);
    }
    path.split('.')
        .try_fold(claims, |value, name| value.get(name))
}

/// The values a claim holds: the words of a string (`scope` is space-separated), or the
/// strings of an array.
fn values(claim: Option<&Value>) -> Vec<&str> {
    match claim {
        Some(Value::String(words)) => words.split_whitespace().collect(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// A public key in PEM form, and the algorithms of its type: an EC key verifies ES256 or
/// ES384 (its curve decides which one's signatures hold).
fn public_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    use Algorithm::*;
    let pem = read(path)?;
    let (key, algorithms) = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        (key, vec![RS256, RS384, RS512, PS256, PS384, PS512])
    } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        (key, vec![ES256, ES384])
    } else if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
        (key, vec![EdDSA])
    } else {
        return Err(KeyError::NotAKey(path.display().to_string()));
    };
    Ok(VerifyingKey { key, algorithms })
}

fn secret(secret: &str, source: &str) -> Result<VerifyingKey, KeyError> {
    check_secret(secret, source)?;
    Ok(VerifyingKey {
        key: DecodingKey::from_secret(secret.as_bytes()),
        algorithms: vec![Algorithm::HS256],
    })
}

/// Loads the issuers from `source`; a JWKS whose URL `previous` already fetches carries
/// over with its keys.
fn load(source: &Source, previous: Option<&Issuers>) -> Result<Issuers, KeyError> {
    match source {
        Source::Flags(jwt) => {
            let key = match (&jwt.jwt_secret, &jwt.jwt_public_key) {
                (Some(value), _) => secret(value, "WSKAFKA_JWT_SECRET")?,
                (None, Some(path)) => public_key(path)?,
                (None, None) => return Err(KeyError::Missing),
            };
            Ok(Issuers {
                list: vec![Issuer {
                    iss: jwt.jwt_issuer.clone(),
                    audience: jwt.jwt_audience.clone().map(|a| vec![a]),
                    audience_claim: aud(),
                    keys: Keys::Static(Arc::new(KeyMap::from([(None, Arc::new(key))]))),
                    user_claim: sub(),
                    wskafka_claim: true,
                    rules: Vec::new(),
                }],
                only: true,
            })
        }
        Source::File(path) => load_file(path, previous),
    }
}

fn load_file(path: &Path, previous: Option<&Issuers>) -> Result<Issuers, KeyError> {
    let shown = path.display().to_string();
    let invalid = |message: String| KeyError::File {
        path: shown.clone(),
        message,
    };
    let text = String::from_utf8(read(path)?).map_err(|e| invalid(e.to_string()))?;
    let file: AuthFile = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    if file.issuers.is_empty() {
        return Err(invalid("no [[issuer]]".into()));
    }
    let defaults = JwksSettings::default();
    let settings = JwksSettings {
        min_refresh: file.jwks.min_refresh.unwrap_or(defaults.min_refresh),
        max_refresh: file.jwks.max_refresh.unwrap_or(defaults.max_refresh),
        unknown_kid_refetch: file
            .jwks
            .unknown_kid_refetch
            .unwrap_or(defaults.unknown_kid_refetch),
        timeout: file.jwks.timeout.unwrap_or(defaults.timeout),
    };
    if settings.min_refresh > settings.max_refresh {
        return Err(invalid("jwks.min_refresh is above jwks.max_refresh".into()));
    }
    let fetched: HashMap<&str, &Arc<Jwks>> = previous
        .map(|issuers| {
            issuers
                .list
                .iter()
                .filter_map(|issuer| match &issuer.keys {
                    Keys::Jwks(jwks) => Some((jwks.url.as_str(), jwks)),
                    Keys::Static(_) => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let mut list = Vec::with_capacity(file.issuers.len());
    for issuer in file.issuers {
        let name = &issuer.iss;
        if list
            .iter()
            .any(|known: &Issuer| known.iss.as_ref() == Some(name))
        {
            return Err(invalid(format!("issuer {name:?} is listed twice")));
        }
        if issuer.audience.is_empty() {
            return Err(invalid(format!("issuer {name:?} names no audience")));
        }
        let keys = match (&issuer.jwks_url, issuer.keys.is_empty()) {
            (Some(url), true) => match fetched.get(url.as_str()) {
                Some(jwks) => Keys::Jwks((*jwks).clone()),
                None => Keys::Jwks(Arc::new(Jwks::new(url.clone(), settings.clone()).map_err(
                    |source| KeyError::Client {
                        url: url.clone(),
                        source,
                    },
                )?)),
            },
            (None, false) => {
                let mut keys = KeyMap::new();
                for key in &issuer.keys {
                    let verifying = match (&key.public_key, &key.secret_file) {
                        (Some(pem), None) => public_key(pem)?,
                        (None, Some(file)) => {
                            let text = String::from_utf8(read(file)?)
                                .map_err(|e| invalid(format!("{}: {e}", file.display())))?;
                            secret(text.trim(), &file.display().to_string())?
                        }
                        _ => {
                            return Err(invalid(format!(
                                "issuer {name:?}: each key names public_key or secret_file"
                            )));
                        }
                    };
                    if keys.insert(key.kid.clone(), Arc::new(verifying)).is_some() {
                        return Err(invalid(format!("issuer {name:?}: a kid is listed twice")));
                    }
                }
                Keys::Static(Arc::new(keys))
            }
            _ => {
                return Err(invalid(format!(
                    "issuer {name:?}: give jwks_url or [[issuer.key]], one of them"
                )));
            }
        };
        list.push(Issuer {
            iss: Some(issuer.iss),
            audience: Some(issuer.audience),
            audience_claim: issuer.audience_claim,
            keys,
            user_claim: issuer.user_claim,
            wskafka_claim: issuer.wskafka_claim,
            rules: issuer.rules,
        });
    }
    Ok(Issuers { list, only: false })
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use jsonwebtoken::{EncodingKey, Header};

    use super::*;
    use crate::auth::mint;

    const SECRET: &str = "a-secret-of-at-least-thirty-two-bytes";

    fn config(secret: &str) -> JwtConfig {
        JwtConfig {
            jwt_secret: Some(secret.into()),
            jwt_public_key: None,
            auth_config: None,
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
            history: Vec::new(),
            online: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_minted_token_verifies_with_its_grants() {
        let auth = Authenticator::new(&config(SECRET)).unwrap();
        let token = mint(
            SECRET,
            "alice",
            grants(&["chat.*"], &["chat.*", "notifications"]),
            Duration::from_secs(60),
        );
        let session = auth.verify(&token).await.unwrap();
        assert_eq!(session.sub, "alice");
        assert_eq!(
            format!("{:?}", session.grants),
            r#"Grants { publish: ["chat.*"], subscribe: ["chat.*", "notifications"], history: [], online: [] }"#
        );
        assert!(session.expires_at > SystemTime::now());
    }

    #[tokio::test]
    async fn another_secret_is_a_bad_signature_and_garbage_is_malformed() {
        let auth = Authenticator::new(&config(SECRET)).unwrap();
        let other = "another-secret-of-at-least-32-bytes";
        let token = mint(other, "alice", Grants::default(), Duration::from_secs(60));
        assert_eq!(
            auth.verify(&token).await.unwrap_err(),
            AuthError::BadSignature
        );
        assert_eq!(
            auth.verify("not.a.jwt").await.unwrap_err(),
            AuthError::Malformed
        );
        assert_eq!(auth.verify("").await.unwrap_err(), AuthError::Malformed);
    }

    #[tokio::test]
    async fn an_invalid_grant_pattern_refuses_the_whole_token() {
        let auth = Authenticator::new(&config(SECRET)).unwrap();
        let claims =
            serde_json::json!({"sub":"a","exp":u32::MAX,"wskafka":{"publish":["chat/[x]"]}});
        let token = jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(auth.verify(&token).await.unwrap_err(), AuthError::Malformed);
    }

    #[test]
    fn a_secret_shorter_than_the_hash_is_a_configuration_error() {
        for short in ["", "secret", &"x".repeat(31)] {
            let refused = Authenticator::new(&config(short)).err();
            assert!(
                matches!(refused, Some(KeyError::ShortSecret(ShortSecret { length, .. })) if length == short.len()),
                "{short:?}"
            );
        }
        assert!(Authenticator::new(&config(&"x".repeat(32))).is_ok());
    }

    #[test]
    fn claims_are_found_whole_or_by_path_and_hold_words_or_lists() {
        let claims = serde_json::json!({
            "scope": "openid chat:write",
            "realm_access": {"roles": ["staff", "user"]},
            "cognito:groups": ["admins"],
            "https://example.com/roles": ["editor"],
        });
        assert_eq!(values(claim(&claims, "scope")), ["openid", "chat:write"]);
        assert_eq!(
            values(claim(&claims, "realm_access.roles")),
            ["staff", "user"]
        );
        assert_eq!(values(claim(&claims, "cognito:groups")), ["admins"]);
        assert_eq!(
            values(claim(&claims, "https://example.com/roles")),
            ["editor"]
        );
        assert!(values(claim(&claims, "missing.path")).is_empty());
    }

    #[test]
    fn a_file_that_cannot_work_says_why() {
        let dir = std::env::temp_dir().join(format!("wskafka-auth-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("auth.toml");
        for (text, says) in [
            ("", "no [[issuer]]"),
            (
                "[[issuer]]\niss = \"a\"\naudience = []\njwks_url = \"http://x\"",
                "names no audience",
            ),
            (
                "[[issuer]]\niss = \"a\"\naudience = [\"w\"]",
                "give jwks_url or [[issuer.key]]",
            ),
            (
                "[[issuer]]\niss = \"a\"\naudience = [\"w\"]\nfavourite = 1",
                "unknown field",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let file = JwtConfig {
                jwt_secret: None,
                auth_config: Some(path.clone()),
                ..config(SECRET)
            };
            let error = Authenticator::new(&file).err().unwrap().to_string();
            assert!(error.contains(says), "{text:?}: {error}");
        }
    }
}
