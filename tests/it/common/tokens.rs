//! Tokens for the test users.

use std::time::Duration;
use wskafka::{Grants, mint};

use super::*;

pub fn grants(publish: &[&str], subscribe: &[&str]) -> Grants {
    let parse = |globs: &[&str]| globs.iter().map(|g| g.parse().unwrap()).collect();
    Grants {
        publish: parse(publish),
        subscribe: parse(subscribe),
        history: Vec::new(),
        online: Vec::new(),
    }
}

/// A token with its own id (`jti`) and issue time, for revocations to name.
pub fn token_with(sub: &str, jti: &str, iat: u64, subscribe: &[&str]) -> String {
    let claims = wskafka::Claims {
        sub: sub.into(),
        exp: now_secs() + 3600,
        iat: Some(iat),
        jti: Some(jti.into()),
        wskafka: grants(&[], subscribe),
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// `Authorization` for HTTP Basic.
pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

pub fn token(sub: &str, publish: &[&str], subscribe: &[&str]) -> String {
    mint(
        SECRET,
        sub,
        grants(publish, subscribe),
        Duration::from_secs(3600),
    )
}
