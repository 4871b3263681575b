//! VAPID (RFC 8292): the P-256 key that identifies the hub to push services, and the
//! `Authorization` header each push carries. The key is OpenSSL's (already linked for TLS);
//! the token an ES256 JWT signed by `jsonwebtoken`, which verifies the hub's own tokens.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use openssl::bn::BigNumContext;
use openssl::ec::{EcGroup, EcKey, PointConversionForm};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use serde::Serialize;

use crate::clock::now_secs;

/// How long a push's token is valid: RFC 8292 allows at most 24 hours.
const TOKEN_LIFETIME_SECS: u64 = 12 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not a PEM private key: {0}")]
    Pem(#[from] openssl::error::ErrorStack),
    #[error("the key is not a P-256 (prime256v1) EC key, which VAPID requires")]
    Curve,
    #[error("the key cannot sign tokens: {0}")]
    Signing(#[from] jsonwebtoken::errors::Error),
}

/// The signing half, and the public key as base64url of its uncompressed point (the `k` of
/// the header, and the page's `applicationServerKey`).
pub struct Vapid {
    key: EncodingKey,
    public_key: String,
}

#[derive(Serialize)]
struct Claims<'a> {
    aud: &'a str,
    exp: u64,
    sub: &'a str,
}

/// A new P-256 key, as PKCS#8 PEM.
pub fn generate() -> String {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("OpenSSL knows P-256");
    let key = EcKey::generate(&group).expect("generating a P-256 key");
    let pem = PKey::from_ec_key(key)
        .and_then(|k| k.private_key_to_pem_pkcs8())
        .expect("encoding a P-256 key");
    String::from_utf8(pem).expect("PEM is ASCII")
}

impl Vapid {
    /// From a PEM private key, SEC1 (`EC PRIVATE KEY`) or PKCS#8 (`PRIVATE KEY`).
    pub fn from_pem(pem: &str) -> Result<Vapid, KeyError> {
        let pkey = PKey::private_key_from_pem(pem.as_bytes())?;
        let ec = pkey.ec_key().map_err(|_| KeyError::Curve)?;
        if ec.group().curve_name() != Some(Nid::X9_62_PRIME256V1) {
            return Err(KeyError::Curve);
        }
        let mut ctx = BigNumContext::new()?;
        let point =
            ec.public_key()
                .to_bytes(ec.group(), PointConversionForm::UNCOMPRESSED, &mut ctx)?;
        let key = EncodingKey::from_ec_pem(&pkey.private_key_to_pem_pkcs8()?)?;
        Ok(Vapid {
            key,
            public_key: URL_SAFE_NO_PAD.encode(point),
        })
    }

    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// The `Authorization` header of a push to `endpoint`: a token for the endpoint's origin,
    /// naming `contact`.
    pub fn authorization(&self, endpoint: &url::Url, contact: &str) -> String {
        let aud = endpoint.origin().ascii_serialization();
        let claims = Claims {
            aud: &aud,
            exp: now_secs() + TOKEN_LIFETIME_SECS,
            sub: contact,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.key)
            .expect("an ES256 key signs");
        format!("vapid t={token}, k={}", self.public_key)
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{DecodingKey, Validation};

    use super::*;

    #[test]
    fn a_token_verifies_with_the_public_key_and_names_the_origin() {
        let vapid = Vapid::from_pem(&generate()).unwrap();
        let point = URL_SAFE_NO_PAD.decode(vapid.public_key()).unwrap();
        assert_eq!((point.len(), point[0]), (65, 4));
        let endpoint = url::Url::parse("https://push.example.net:8443/s/abc").unwrap();
        let header = vapid.authorization(&endpoint, "mailto:ops@example.com");
        let token = header
            .strip_prefix("vapid t=")
            .and_then(|rest| rest.split(", k=").next())
            .unwrap();
        let key = DecodingKey::from_ec_components(
            &URL_SAFE_NO_PAD.encode(&point[1..33]),
            &URL_SAFE_NO_PAD.encode(&point[33..]),
        )
        .unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&["https://push.example.net:8443"]);
        let claims = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
            .unwrap()
            .claims;
        assert_eq!(claims["sub"], "mailto:ops@example.com");
        let exp = claims["exp"].as_u64().unwrap();
        assert!(exp > now_secs() && exp <= now_secs() + 24 * 3600);
        assert!(header.ends_with(&format!(", k={}", vapid.public_key())));
    }

    #[test]
    fn keys_of_other_curves_are_refused() {
        let group = EcGroup::from_curve_name(Nid::SECP384R1).unwrap();
        let pem = PKey::from_ec_key(EcKey::generate(&group).unwrap())
            .unwrap()
            .private_key_to_pem_pkcs8()
            .unwrap();
        assert!(matches!(
            Vapid::from_pem(std::str::from_utf8(&pem).unwrap()),
            Err(KeyError::Curve)
        ));
        assert!(matches!(Vapid::from_pem("nope"), Err(KeyError::Pem(_))));
    }
}
