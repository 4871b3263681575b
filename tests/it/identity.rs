//! Tokens from identity providers: a JWKS endpoint the test runs (plain HTTP on 127.0.0.1,
//! serving keys it controls), keys rotating under a running hub, several issuers with their
//! own audiences and grant rules, tokens shaped like Keycloak's, Auth0's, Cognito's, Entra
//! ID's and Firebase's, and the attacks a JWKS invites.

use std::sync::{Arc, Mutex};

use crate::common::*;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const RSA_A: &[u8] = include_bytes!("../fixtures/rs256-private.pem");
const RSA_A_PUBLIC: &[u8] = include_bytes!("../fixtures/rs256-public.pem");
const RSA_B: &[u8] = include_bytes!("../fixtures/rs256-b-private.pem");
const EC: &[u8] = include_bytes!("../fixtures/es256-private.pem");
const ED: &[u8] = include_bytes!("../fixtures/ed25519-private.pem");

/// A signing key of the test's provider.
struct Signer {
    key: EncodingKey,
    alg: Algorithm,
    kid: String,
}

impl Signer {
    fn rsa(pem: &[u8], kid: &str) -> Signer {
        Signer {
            key: EncodingKey::from_rsa_pem(pem).unwrap(),
            alg: Algorithm::RS256,
            kid: kid.into(),
        }
    }

    fn ec(kid: &str) -> Signer {
        Signer {
            key: EncodingKey::from_ec_pem(EC).unwrap(),
            alg: Algorithm::ES256,
            kid: kid.into(),
        }
    }

    fn ed(kid: &str) -> Signer {
        Signer {
            key: EncodingKey::from_ed_pem(ED).unwrap(),
            alg: Algorithm::EdDSA,
            kid: kid.into(),
        }
    }

    /// The public half, as a JWKS publishes it.
    fn jwk(&self) -> Value {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.alg).unwrap();
        jwk.common.key_id = Some(self.kid.clone());
        serde_json::to_value(jwk).unwrap()
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

/// What the JWKS endpoint serves, per path, and how often it was asked.
#[derive(Default)]
struct Served {
    /// Per path: status, body and `Cache-Control`.
    documents: std::collections::HashMap<String, (u16, String, String)>,
    fetches: std::collections::HashMap<String, usize>,
}

#[derive(Clone, Default)]
struct Provider(Arc<Mutex<Served>>);

impl Provider {
    /// Serves on a free port; returns it with the base URL.
    async fn start() -> (Provider, String) {
        let provider = Provider::default();
        let app = Router::new()
            .route("/{*path}", get(serve))
            .with_state(provider.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (provider, url)
    }

    fn publish(&self, path: &str, keys: &[&Signer], max_age: u64) {
        let body = json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
        self.set(path, 200, body.to_string(), format!("max-age={max_age}"));
    }

    fn set(&self, path: &str, status: u16, body: String, cache: String) {
        let mut served = self.0.lock().unwrap();
        served
            .documents
            .insert(path.to_string(), (status, body, cache));
    }

    fn fetches(&self, path: &str) -> usize {
        let served = self.0.lock().unwrap();
        served.fetches.get(path).copied().unwrap_or(0)
    }
}

async fn serve(State(provider): State<Provider>, Path(path): Path<String>) -> Response {
    let path = format!("/{path}");
    let mut served = provider.0.lock().unwrap();
    *served.fetches.entry(path.clone()).or_default() += 1;
    match served.documents.get(&path) {
        Some((status, body, cache)) => (
            StatusCode::from_u16(*status).unwrap(),
            [(header::CACHE_CONTROL, cache.clone())],
            body.clone(),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Writes `toml` to a file of its own; returns its path.
fn auth_file(toml: &str) -> String {
    let path = std::env::temp_dir().join(format!("{}.toml", unique("wskafka-auth")));
    std::fs::write(&path, toml).unwrap();
    path.display().to_string()
}

/// A hub reading its issuers from `toml`, not yet waited for.
async fn hub_with(toml: &str) -> (Hub, String) {
    hub_exposing("id.*", toml).await
}

async fn hub_exposing(topics: &str, toml: &str) -> (Hub, String) {
    let file = auth_file(toml);
    let hub = Hub::launch(hub_command(
        "127.0.0.1:0",
        topics,
        &["--auth-config", &file],
    ))
    .await;
    (hub, file)
}

/// An issuer block for `path` on the provider at `url`, with `more` lines.
fn issuer(iss: &str, url: &str, path: &str, more: &str) -> String {
    format!(
        "[[issuer]]\niss = \"{iss}\"\naudience = [\"wskafka\"]\njwks_url = \"{url}{path}\"\n{more}\n"
    )
}

fn claims(iss: &str, sub: &str) -> Value {
    json!({"iss": iss, "aud": "wskafka", "sub": sub, "exp": now_secs() + 600, "iat": now_secs(),
           "wskafka": {"subscribe": ["id.*"]}})
}

const FAST: &str =
    "[jwks]\nmin_refresh = \"1s\"\nmax_refresh = \"1h\"\nunknown_kid_refetch = \"1h\"\n";

#[tokio::test]
async fn keys_rotate_under_a_running_hub_and_a_retired_key_stops_verifying() {
    let (provider, url) = Provider::start().await;
    let (old, new) = (Signer::rsa(RSA_A, "2026-11"), Signer::rsa(RSA_B, "2026-12"));
    provider.publish("/rotate", &[&old], 3600);
    let iss = "https://idp.test/rotate";
    let config = format!(
        "[jwks]\nmin_refresh = \"1s\"\nmax_refresh = \"1h\"\nunknown_kid_refetch = \"1s\"\n{}",
        issuer(iss, &url, "/rotate", "")
    );
    let (hub, _) = hub_with(&config).await;
    hub.wait_readyz(200).await;
    let old_token = old.sign(&claims(iss, "alice"));
    assert_eq!(hub.handshake_status(&hub.url(&old_token)).await, 101);
    let mut live = hub.connect(&old_token).await;

    // The provider publishes its next key before signing with it: the first token that
    // names it makes the hub fetch the set again.
    provider.publish("/rotate", &[&old, &new], 1);
    let new_token = new.sign(&claims(iss, "alice"));
    assert_eq!(hub.handshake_status(&hub.url(&new_token)).await, 101);

    // Then it retires the old one: once the hub has fetched the set again (max-age 1 s),
    // the old key's tokens are refused, at the door and as a refresh.
    provider.publish("/rotate", &[&new], 1);
    eventually("the retired key stops verifying", || async {
        hub.handshake_status(&hub.url(&old_token)).await == 401
    })
    .await;
    let refused = live
        .call(json!({"type": "auth", "id": 1, "token": old_token}))
        .await;
    assert_eq!(refused["code"], "unauthorized", "{refused}");
    let refreshed = live
        .call(json!({"type": "auth", "id": 2, "token": new_token}))
        .await;
    assert_eq!(refreshed["type"], "authenticated", "{refreshed}");
}

#[tokio::test]
async fn forged_kids_cost_at_most_one_fetch_then_refusal() {
    let (provider, url) = Provider::start().await;
    let genuine = Signer::rsa(RSA_A, "genuine");
    provider.publish("/forged", &[&genuine], 3600);
    let iss = "https://idp.test/forged";
    let config = format!(
        "[jwks]\nmin_refresh = \"1s\"\nmax_refresh = \"1h\"\nunknown_kid_refetch = \"1h\"\n{}",
        issuer(iss, &url, "/forged", "")
    );
    let (hub, _) = hub_with(&config).await;
    hub.wait_readyz(200).await;
    let before = provider.fetches("/forged");
    let attacker = EncodingKey::from_rsa_pem(RSA_B).unwrap();
    for n in 0..50 {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(format!("forged-{n}"));
        let token = jsonwebtoken::encode(&header, &claims(iss, "mallory"), &attacker).unwrap();
        assert_eq!(hub.handshake_status(&hub.url(&token)).await, 401);
    }
    let fetched = provider.fetches("/forged") - before;
    assert!(fetched <= 1, "{fetched} fetches for 50 forged kids");
    assert_eq!(
        hub.handshake_status(&hub.url(&genuine.sign(&claims(iss, "alice"))))
            .await,
        101
    );
}

#[tokio::test]
async fn a_provider_down_at_start_then_down_again_or_serving_garbage() {
    let (provider, url) = Provider::start().await;
    let key = Signer::ec("ec-1");
    provider.set("/flaky", 503, "down for maintenance".into(), String::new());
    let iss = "https://idp.test/flaky";
    let config = format!(
        "[jwks]\nmin_refresh = \"1s\"\nmax_refresh = \"1s\"\nunknown_kid_refetch = \"1h\"\n{}",
        issuer(iss, &url, "/flaky", "")
    );
    let (hub, _) = hub_with(&config).await;
    let (status, body) = hub.get("/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("\"keys\""), "{body}");
    let token = key.sign(&claims(iss, "alice"));
    // No key set yet is the hub's trouble, not the token's.
    assert_eq!(hub.handshake_status(&hub.url(&token)).await, 503);

    provider.publish("/flaky", &[&key], 1);
    hub.wait_readyz(200).await;
    assert_eq!(hub.handshake_status(&hub.url(&token)).await, 101);

    // Down again, then serving an error page: the last good set stays, and the log says
    // why.
    provider.set("/flaky", 500, "oops".into(), String::new());
    let fetched = provider.fetches("/flaky");
    eventually("the hub asks the failing provider again", || async {
        provider.fetches("/flaky") > fetched + 1
    })
    .await;
    assert_eq!(hub.handshake_status(&hub.url(&token)).await, 101);
    provider.set(
        "/flaky",
        200,
        "<html>maintenance</html>".into(),
        String::new(),
    );
    eventually("the hub reads the garbage and says so", || async {
        hub.log_lines().iter().any(|l| {
            l.contains("not a JSON Web Key Set") && l.contains("keeping the last good key set")
        })
    })
    .await;
    assert_eq!(hub.handshake_status(&hub.url(&token)).await, 101);
    assert_eq!(hub.get("/readyz").await.0, 200);
}

#[tokio::test]
async fn each_issuer_checks_its_own_tokens_with_its_audience_and_grant_rules() {
    let (provider, url) = Provider::start().await;
    let (users, services) = (Signer::rsa(RSA_A, "users"), Signer::ed("services"));
    let (topic, glob) = fresh_topic("issuers", 1).await;
    ensure_topic("id.rooms").await;
    provider.publish("/users", &[&users], 3600);
    provider.publish("/services", &[&services], 3600);
    let config = format!(
        "{FAST}
[[issuer]]
iss = \"https://users.test\"
audience = [\"chat\"]
jwks_url = \"{url}/users\"
wskafka_claim = false
[[issuer.grant]]
claim = \"scope\"
value = \"chat:read\"
subscribe = [\"id.rooms:{{sub}}\"]

[[issuer]]
iss = \"https://services.test\"
audience = [\"backend\"]
jwks_url = \"{url}/services\"
user_claim = \"client.name\"
[[issuer.grant]]
claim = \"roles\"
value = \"notifier\"
publish = [\"{glob}\"]
"
    );
    let (hub, _) = hub_exposing(&format!("id.*,{glob}"), &config).await;
    hub.wait_readyz(200).await;
    let user = |aud: &str| {
        json!({"iss": "https://users.test", "aud": aud, "sub": "alice", "exp": now_secs() + 600,
               "scope": "openid chat:read", "wskafka": {"publish": ["id.*"]}})
    };
    let service = |aud: &str| {
        json!({"iss": "https://services.test", "aud": aud, "sub": "svc-1",
               "client": {"name": "billing"}, "roles": ["notifier"], "exp": now_secs() + 600})
    };
    // Each audience holds for its own issuer only.
    assert_eq!(
        hub.handshake_status(&hub.url(&users.sign(&user("backend"))))
            .await,
        401
    );
    assert_eq!(
        hub.handshake_status(&hub.url(&services.sign(&service("chat"))))
            .await,
        401
    );
    // A key of one issuer does not sign for the other.
    let crossed = users.sign(&service("backend"));
    assert_eq!(hub.handshake_status(&hub.url(&crossed)).await, 401);
    let unknown =
        json!({"iss": "https://else.test", "aud": "chat", "sub": "x", "exp": now_secs() + 600});
    assert_eq!(
        hub.handshake_status(&hub.url(&users.sign(&unknown))).await,
        401
    );

    // The user's grants come from her scope; her `wskafka` claim is ignored by her issuer.
    let mut alice = hub.connect(&users.sign(&user("chat"))).await;
    let own = alice
        .call(json!({"type": "subscribe", "topic": "id.rooms", "key": "alice"}))
        .await;
    assert_eq!(own["type"], "subscribed", "{own}");
    for request in [
        json!({"type": "subscribe", "topic": "id.rooms", "key": "bob"}),
        json!({"type": "publish", "topic": "id.rooms", "key": "alice", "payload": 1}),
    ] {
        assert_eq!(alice.call(request).await["code"], "forbidden");
    }
    // The service's user id is its client name; its role lets it publish.
    let mut billing = hub.connect(&services.sign(&service("backend"))).await;
    let who = billing
        .call(json!({"type": "auth", "token": services.sign(&service("backend"))}))
        .await;
    assert_eq!(who["sub"], "billing", "{who}");
    let granted = billing
        .call(json!({"type": "publish", "topic": topic, "payload": 1}))
        .await;
    assert_eq!(granted["type"], "ack", "{granted}");
}

#[tokio::test]
async fn an_issuers_required_claims_are_required_on_every_path() {
    let (provider, url) = Provider::start().await;
    let key = Signer::rsa(RSA_A, "only");
    provider.publish("/only", &[&key], 3600);
    let iss = "https://required.test";
    let (hub, _) = hub_with(&format!(
        "{FAST}{}",
        issuer(iss, &url, "/only", "user_claim = \"email\"")
    ))
    .await;
    hub.wait_readyz(200).await;
    let without = |claim: &str| {
        let mut claims = claims(iss, "alice");
        claims["email"] = json!("alice@example.test");
        claims.as_object_mut().unwrap().remove(claim);
        key.sign(&claims)
    };
    let good = without("");
    assert_eq!(hub.handshake_status(&hub.url(&good)).await, 101);
    for (claim, reason) in [
        ("aud", "token lacks the `aud` claim"),
        // Its issuer is found by `iss`.
        ("iss", "token issuer not accepted"),
        ("email", "token lacks the `email` claim"),
        ("exp", "token lacks the `exp` claim"),
    ] {
        hub.refuses_on_every_path(&good, &without(claim), reason)
            .await;
    }
}

#[tokio::test]
async fn tokens_shaped_like_each_providers_verify_with_the_documented_settings() {
    let (provider, url) = Provider::start().await;
    let key = Signer::rsa(RSA_A, "k");
    ensure_topic("id.rooms").await;
    for path in ["/keycloak", "/auth0", "/cognito", "/entra", "/firebase"] {
        provider.publish(path, &[&key], 3600);
    }
    // The settings the README documents for each provider, with the test's URLs.
    let config = format!(
        "{FAST}
[[issuer]]
iss = \"https://sso.test/realms/chat\"
audience = [\"wskafka\"]
jwks_url = \"{url}/keycloak\"
user_claim = \"preferred_username\"
[[issuer.grant]]
claim = \"realm_access.roles\"
value = \"chat-user\"
subscribe = [\"id.rooms:*\"]

[[issuer]]
iss = \"https://tenant.auth0.test/\"
audience = [\"https://chat.example.com\"]
jwks_url = \"{url}/auth0\"
[[issuer.grant]]
claim = \"permissions\"
value = \"read:rooms\"
subscribe = [\"id.rooms:*\"]

[[issuer]]
iss = \"https://cognito-idp.eu-west-1.amazonaws.test/eu-west-1_Pool\"
audience = [\"app-client-id\"]
audience_claim = \"client_id\"
jwks_url = \"{url}/cognito\"
user_claim = \"username\"
[[issuer.grant]]
claim = \"cognito:groups\"
value = \"chatters\"
subscribe = [\"id.rooms:*\"]

[[issuer]]
iss = \"https://login.microsoftonline.test/tenant-id/v2.0\"
audience = [\"api://wskafka\"]
jwks_url = \"{url}/entra\"
user_claim = \"oid\"
[[issuer.grant]]
claim = \"scp\"
value = \"Rooms.Read\"
subscribe = [\"id.rooms:*\"]

[[issuer]]
iss = \"https://securetoken.google.test/chat-project\"
audience = [\"chat-project\"]
jwks_url = \"{url}/firebase\"
user_claim = \"user_id\"
[[issuer.grant]]
claim = \"chat_member\"
value = \"yes\"
subscribe = [\"id.rooms:*\"]
"
    );
    let (hub, _) = hub_with(&config).await;
    hub.wait_readyz(200).await;
    let exp = now_secs() + 600;
    for (shape, user) in [
        (
            json!({"iss": "https://sso.test/realms/chat", "aud": ["wskafka", "account"], "sub": "f1c2-uuid",
                   "azp": "web", "preferred_username": "kc-alice", "exp": exp,
                   "realm_access": {"roles": ["offline_access", "chat-user"]}, "scope": "openid profile"}),
            "kc-alice",
        ),
        (
            json!({"iss": "https://tenant.auth0.test/", "aud": ["https://chat.example.com", "https://tenant.auth0.test/userinfo"],
                   "sub": "auth0|5f7c", "exp": exp, "scope": "openid", "permissions": ["read:rooms"]}),
            "auth0|5f7c",
        ),
        (
            json!({"iss": "https://cognito-idp.eu-west-1.amazonaws.test/eu-west-1_Pool", "client_id": "app-client-id",
                   "token_use": "access", "sub": "9d2e", "username": "cog-alice", "exp": exp,
                   "cognito:groups": ["chatters"], "scope": "aws.cognito.signin.user.admin"}),
            "cog-alice",
        ),
        (
            json!({"iss": "https://login.microsoftonline.test/tenant-id/v2.0", "aud": "api://wskafka",
                   "sub": "pairwise-sub", "oid": "00000000-aaaa", "tid": "tenant-id", "exp": exp,
                   "scp": "Rooms.Read Rooms.Write", "roles": []}),
            "00000000-aaaa",
        ),
        (
            json!({"iss": "https://securetoken.google.test/chat-project", "aud": "chat-project",
                   "sub": "fb-uid", "user_id": "fb-uid", "exp": exp, "auth_time": now_secs(),
                   "firebase": {"sign_in_provider": "password"}, "chat_member": "yes"}),
            "fb-uid",
        ),
    ] {
        let token = key.sign(&shape);
        let mut client = hub.connect(&token).await;
        let who = client.call(json!({"type": "auth", "token": token})).await;
        assert_eq!(who["sub"], user, "{shape}: {who}");
        let subscribed = client
            .call(json!({"type": "subscribe", "topic": "id.rooms", "key": "lobby"}))
            .await;
        assert_eq!(subscribed["type"], "subscribed", "{shape}: {subscribed}");
    }
}

#[tokio::test]
async fn attacks_on_a_jwks_hub_are_refused() {
    let (provider, url) = Provider::start().await;
    let (attacker_site, attacker_url) = Provider::start().await;
    let genuine = Signer::rsa(RSA_A, "real");
    provider.publish("/keys", &[&genuine], 3600);
    let attacker = Signer::rsa(RSA_B, "real");
    attacker_site.publish("/keys", &[&attacker], 3600);
    let iss = "https://idp.test/attacked";
    let (hub, _) = hub_with(&format!("{FAST}{}", issuer(iss, &url, "/keys", ""))).await;
    hub.wait_readyz(200).await;
    let body = B64.encode(claims(iss, "mallory").to_string());
    let forge = |header: Value, sign: &dyn Fn(&[u8]) -> String| {
        let header = B64.encode(header.to_string());
        let input = format!("{header}.{body}");
        format!("{input}.{}", sign(input.as_bytes()))
    };
    let hmac_with = |secret: &[u8]| {
        let secret = secret.to_vec();
        move |input: &[u8]| {
            jsonwebtoken::crypto::sign(input, &EncodingKey::from_secret(&secret), Algorithm::HS256)
                .unwrap()
        }
    };
    let rsa_attacker =
        |input: &[u8]| jsonwebtoken::crypto::sign(input, &attacker.key, Algorithm::RS256).unwrap();
    for (what, token) in [
        // The provider's public key as an HMAC secret.
        (
            "alg confusion",
            forge(
                json!({"alg": "HS256", "kid": "real"}),
                &hmac_with(RSA_A_PUBLIC),
            ),
        ),
        (
            "none",
            forge(json!({"alg": "none", "kid": "real"}), &|_: &[u8]| {
                String::new()
            }),
        ),
        (
            "a key in the header",
            forge(
                json!({"alg": "RS256", "kid": "real", "jwk": attacker.jwk()}),
                &rsa_attacker,
            ),
        ),
        (
            "a key set of the attacker's",
            forge(
                json!({"alg": "RS256", "kid": "real", "jku": format!("{attacker_url}/keys")}),
                &rsa_attacker,
            ),
        ),
        (
            "a certificate URL",
            forge(
                json!({"alg": "RS256", "kid": "real", "x5u": format!("{attacker_url}/cert")}),
                &rsa_attacker,
            ),
        ),
    ] {
        assert_eq!(hub.handshake_status(&hub.url(&token)).await, 401, "{what}");
    }
    assert_eq!(
        attacker_site.fetches("/keys"),
        0,
        "the hub never fetched the attacker's keys"
    );
    // Oversized: refused with the request headers, before any verifying or fetching.
    let padded = json!({"iss": iss, "aud": "wskafka", "sub": "x", "exp": now_secs() + 600, "pad": "x".repeat(1 << 20)});
    let status = hub.bearer_upgrade_status(&genuine.sign(&padded)).await;
    assert!(matches!(status, 431 | 0), "got {status}");
    assert_eq!(
        hub.handshake_status(&hub.url(&genuine.sign(&claims(iss, "alice"))))
            .await,
        101
    );
}

#[tokio::test]
async fn static_keys_rotate_with_sighup_and_a_broken_file_keeps_the_old_ones() {
    let dir = std::env::temp_dir().join(unique("wskafka-keys"));
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b) = (Signer::rsa(RSA_A, "a"), Signer::ed("b"));
    std::fs::write(dir.join("a.pem"), RSA_A_PUBLIC).unwrap();
    std::fs::write(
        dir.join("b.pem"),
        include_bytes!("../fixtures/ed25519-public.pem"),
    )
    .unwrap();
    let iss = "https://static.test";
    let with_keys = |kids: &[&str]| {
        let keys: String = kids
            .iter()
            .map(|kid| {
                format!(
                    "[[issuer.key]]\nkid = \"{kid}\"\npublic_key = \"{}\"\n",
                    dir.join(format!("{kid}.pem")).display()
                )
            })
            .collect();
        format!("[[issuer]]\niss = \"{iss}\"\naudience = [\"wskafka\"]\n{keys}")
    };
    let (hub, file) = hub_with(&with_keys(&["a"])).await;
    hub.wait_readyz(200).await;
    let (token_a, token_b) = (a.sign(&claims(iss, "alice")), b.sign(&claims(iss, "alice")));
    assert_eq!(hub.handshake_status(&hub.url(&token_a)).await, 101);
    assert_eq!(hub.handshake_status(&hub.url(&token_b)).await, 401);

    std::fs::write(&file, with_keys(&["b"])).unwrap();
    hub.signal("HUP").await;
    eventually("key b verifies after SIGHUP", || async {
        hub.handshake_status(&hub.url(&token_b)).await == 101
    })
    .await;
    assert_eq!(hub.handshake_status(&hub.url(&token_a)).await, 401);

    std::fs::write(&file, "[[issuer]]\nthis is not toml").unwrap();
    hub.signal("HUP").await;
    eventually("the hub says the file did not load", || async {
        hub.log_lines()
            .iter()
            .any(|l| l.contains("token settings not reloaded"))
    })
    .await;
    assert_eq!(hub.handshake_status(&hub.url(&token_b)).await, 101);
}
