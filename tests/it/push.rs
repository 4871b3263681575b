//! Web Push: records of a per-user topic pushed to the browsers of users with no socket
//! open, against a push service of the test's own on loopback that records each request,
//! with device keys the test makes and bodies decrypted by Python's `http_ece` (not the
//! hub's implementation). Real hubs, real Kafka, real PostgreSQL.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openssl::bn::BigNumContext;
use openssl::ec::{EcGroup, EcKey, PointConversionForm};
use openssl::nid::Nid;
use openssl::pkey::Private;
use serde_json::{Value, json};

use crate::common::*;

const CONTACT: &str = "mailto:ops@example.com";

/// One request the push service received.
#[derive(Clone, Debug)]
pub(crate) struct Received {
    path: String,
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

/// The test's push service: records every request, and answers each path from its script
/// (status, `Retry-After`), then 201; while closed, it holds every answer.
#[derive(Clone)]
pub(crate) struct PushService {
    open: Arc<tokio::sync::watch::Sender<bool>>,
    answered: Arc<std::sync::atomic::AtomicUsize>,
    received: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<BTreeMap<String, VecDeque<Answer>>>>,
    /// How long each answer takes, in ms: a push service under load.
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
}

/// A status, and a `Retry-After` in seconds.
pub(crate) type Answer = (u16, Option<u64>);

impl Default for PushService {
    fn default() -> Self {
        PushService {
            open: Arc::new(tokio::sync::watch::channel(true).0),
            answered: Arc::default(),
            received: Arc::default(),
            script: Arc::default(),
            delay_ms: Arc::default(),
        }
    }
}

impl PushService {
    /// Serves on a loopback port; returns its origin (`http://127.0.0.1:PORT`).
    pub(crate) async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        origin
    }

    pub(crate) fn answer(&self, path: &str, answers: &[Answer]) {
        self.script
            .lock()
            .unwrap()
            .insert(path.to_string(), answers.iter().copied().collect());
    }

    pub(crate) fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

async fn receive(
    State(service): State<PushService>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap, &'static str) {
    let path = uri.path().to_string();
    service.received.lock().unwrap().push(Received {
        path: path.clone(),
        headers,
        body,
        at: Instant::now(),
    });
    let answer = service
        .script
        .lock()
        .unwrap()
        .get_mut(&path)
        .and_then(VecDeque::pop_front);
    let (status, retry_after) = answer.unwrap_or((201, None));
    let delay = service.delay_ms.load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    let _ = service.open.subscribe().wait_for(|open| *open).await;
    service
        .answered
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let mut headers = HeaderMap::new();
    if let Some(seconds) = retry_after {
        headers.insert("retry-after", seconds.to_string().parse().unwrap());
    }
    (StatusCode::from_u16(status).unwrap(), headers, "")
}

/// A browser's push subscription keys, made here.
pub(crate) struct Device {
    endpoint: String,
    key: EcKey<Private>,
    auth: [u8; 16],
}

impl Device {
    pub(crate) fn new(endpoint: String) -> Device {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let mut auth = [0u8; 16];
        openssl::rand::rand_bytes(&mut auth).unwrap();
        Device {
            endpoint,
            key: EcKey::generate(&group).unwrap(),
            auth,
        }
    }

    fn p256dh(&self) -> String {
        let mut ctx = BigNumContext::new().unwrap();
        let point = self
            .key
            .public_key()
            .to_bytes(
                self.key.group(),
                PointConversionForm::UNCOMPRESSED,
                &mut ctx,
            )
            .unwrap();
        URL_SAFE_NO_PAD.encode(point)
    }

    fn subscription(&self) -> Value {
        json!({"endpoint": self.endpoint, "expirationTime": null,
            "keys": {"p256dh": self.p256dh(), "auth": URL_SAFE_NO_PAD.encode(self.auth)}})
    }

    /// The body decrypted by Python's `http_ece`.
    async fn decrypt(&self, body: &[u8]) -> Value {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let script = "import sys, http_ece\n\
            from cryptography.hazmat.primitives.asymmetric import ec\n\
            d, auth, body = (bytes.fromhex(a) for a in sys.argv[1:4])\n\
            key = ec.derive_private_key(int.from_bytes(d, 'big'), ec.SECP256R1())\n\
            sys.stdout.write(http_ece.decrypt(body, private_key=key, auth_secret=auth, version='aes128gcm').decode())\n";
        let output = tokio::process::Command::new("python3")
            .args([
                "-c",
                script,
                &hex(&self.key.private_key().to_vec()),
                &hex(&self.auth),
                &hex(body),
            ])
            .output()
            .await
            .expect("python3 (with http_ece: scripts/install-tools)");
        assert!(
            output.status.success(),
            "http_ece: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }
}

/// Hubs of one test: a per-user topic, presence, a push group and a database of their own.
pub(crate) struct Cluster {
    pub(crate) topic: String,
    pub(crate) glob: String,
    pub(crate) args: Vec<String>,
    database: String,
}

impl Cluster {
    pub(crate) async fn new(prefix: &str, allow_loopback: bool) -> Cluster {
        let (topic, glob) = fresh_topic(prefix, 4).await;
        let database = fresh_postgres().await;
        let mut args = vec![
            "--database-url".to_string(),
            database.clone(),
            "--user-topics".into(),
            glob.clone(),
            "--push".into(),
            "--push-contact".into(),
            CONTACT.into(),
            "--push-group".into(),
            unique("push"),
            // The tests poll who is online.
            "--request-rates".into(),
            "online=1000".into(),
            "--user-request-rates".into(),
            "online=1000".into(),
        ];
        args.extend(own_presence_topics());
        if allow_loopback {
            args.push("--push-allow-loopback".into());
        }
        Cluster {
            topic,
            glob,
            args,
            database,
        }
    }

    async fn hub(&self) -> Hub {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        Hub::start(&self.glob, &args).await
    }

    /// A hub that also serves the demo, with a topic of rooms beside the per-user one.
    async fn demo_hub(&self, rooms: &str) -> Hub {
        let mut args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        args.extend(["--demo", "--keyed-topics", rooms]);
        Hub::start(&format!("{},{rooms}", self.glob), &args).await
    }

    pub(crate) fn token(&self, user: &str) -> String {
        token(user, &[], &[&self.glob])
    }

    /// Pushes claimed and marked done.
    async fn claims_done(&self) -> usize {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM push_sent WHERE done")
            .fetch_one(&mut self.db().await)
            .await
            .unwrap();
        n as usize
    }

    async fn db(&self) -> sqlx::PgConnection {
        use sqlx::Connection as _;
        sqlx::PgConnection::connect(&self.database).await.unwrap()
    }

    async fn stored_endpoints(&self) -> Vec<String> {
        let mut db = self.db().await;
        sqlx::query_as::<_, (String,)>("SELECT endpoint FROM push_subscriptions ORDER BY endpoint")
            .fetch_all(&mut db)
            .await
            .unwrap()
            .into_iter()
            .map(|(e,)| e)
            .collect()
    }
}

/// Registers `devices` for `user` on `hub`; returns the hub's VAPID public key.
pub(crate) async fn register(hub: &Hub, token: &str, devices: &[&Device]) -> String {
    let mut page = hub.connect(token).await;
    for device in devices {
        let reply = page
            .call(json!({"type": "push_subscribe", "id": 1, "subscription": device.subscription()}))
            .await;
        assert_eq!(
            reply,
            json!({"type": "push_subscribed", "id": 1, "endpoint": device.endpoint})
        );
    }
    // The hub loads its key once the database is migrated, which may be after it is ready.
    let mut key = String::new();
    eventually("the push key", async || {
        let reply = page.call(json!({"type": "push_key", "id": 2})).await;
        key = reply["key"].as_str().unwrap_or_default().to_string();
        !key.is_empty()
    })
    .await;
    key
}

/// Waits until every hub's roster has `user` offline, asked over a socket of `hub`.
pub(crate) async fn until_offline(hub: &Hub, user: &str) {
    let mut grants = grants(&[], &[]);
    grants.online = vec![user.parse().unwrap()];
    let watcher = wskafka::mint(
        SECRET,
        "watcher",
        grants,
        std::time::Duration::from_secs(600),
    );
    let mut watching = hub.connect(&watcher).await;
    eventually(format!("{user} offline"), async || {
        let status = watching
            .call(json!({"type": "online", "users": [user]}))
            .await;
        status["users"][user] == false
    })
    .await;
}

/// Checks a push's headers and VAPID token; returns the notification it carries.
async fn open(push: &Received, device: &Device, vapid_key: &str, origin: &str) -> Value {
    let header = |name: &str| {
        push.headers
            .get(name)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(header("content-encoding"), "aes128gcm");
    assert_eq!(header("ttl"), "86400");
    assert_eq!(header("urgency"), "normal");
    assert_eq!(header("topic").len(), 32);
    let authorization = header("authorization");
    let (token, k) = authorization
        .strip_prefix("vapid t=")
        .and_then(|rest| rest.split_once(", k="))
        .expect("a VAPID authorization");
    assert_eq!(k, vapid_key);
    let point = URL_SAFE_NO_PAD.decode(vapid_key).unwrap();
    let key = jsonwebtoken::DecodingKey::from_ec_components(
        &URL_SAFE_NO_PAD.encode(&point[1..33]),
        &URL_SAFE_NO_PAD.encode(&point[33..]),
    )
    .unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&[origin]);
    let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)
        .expect("the VAPID token verifies with the hub's key, for the push service's origin")
        .claims;
    assert_eq!(claims["sub"], CONTACT);
    let exp = claims["exp"].as_u64().unwrap();
    assert!(
        exp > now_secs() && exp <= now_secs() + 24 * 3600,
        "exp {exp}"
    );
    device.decrypt(&push.body).await
}

#[tokio::test]
async fn a_record_for_an_offline_user_is_pushed_once_to_each_device_signed_and_encrypted() {
    let cluster = Cluster::new("push", true).await;
    let service = PushService::default();
    let origin = service.start().await;
    let hub = cluster.hub().await;
    let phone = Device::new(format!("{origin}/device/phone"));
    let laptop = Device::new(format!("{origin}/device/laptop"));
    let key = register(&hub, &cluster.token("ann"), &[&phone, &laptop]).await;
    until_offline(&hub, "ann").await;

    let producer = producer();
    let first = produce(&producer, &cluster.topic, "ann", br#"{"text":"hello"}"#).await;
    let second = produce(&producer, &cluster.topic, "ann", br#"{"text":"again"}"#).await;
    eventually("four pushes", async || service.received().len() >= 4).await;
    let received = service.received();
    assert_eq!(received.len(), 4, "{received:?}");
    for device in [&phone, &laptop] {
        let path = device.endpoint.strip_prefix(&origin).unwrap();
        let pushes: Vec<&Received> = received.iter().filter(|r| r.path == path).collect();
        let mut seen = Vec::new();
        for push in pushes {
            let notification = open(push, device, &key, &origin).await;
            assert_eq!(notification["topic"], cluster.topic.as_str());
            assert_eq!(notification["key"], "ann");
            seen.push((
                (
                    notification["partition"].as_i64().unwrap() as i32,
                    notification["offset"].as_i64().unwrap(),
                ),
                notification["payload"]["text"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            ));
        }
        seen.sort();
        let mut expected = vec![(first, "hello".to_string()), (second, "again".to_string())];
        expected.sort();
        assert_eq!(seen, expected, "each record once to {path}");
    }
}

#[tokio::test]
async fn no_push_while_the_user_is_online_on_either_hub_and_one_once_the_last_socket_closes() {
    let cluster = Cluster::new("push-online", true).await;
    let service = PushService::default();
    let origin = service.start().await;
    let (a, b) = tokio::join!(cluster.hub(), cluster.hub());
    let phone = Device::new(format!("{origin}/device/phone"));
    register(&a, &cluster.token("bob"), &[&phone]).await;
    until_offline(&a, "bob").await;
    let producer = producer();

    for online_on in [&a, &b] {
        let mut page = online_on.connect(&cluster.token("bob")).await;
        page.subscribe(&cluster.topic).await;
        let skipped = async || {
            let mut total = 0.0;
            for hub in [&a, &b] {
                total += hub
                    .metric("wskafka_push_skipped_total{reason=\"online\"}")
                    .await;
            }
            total
        };
        // Online as far as every hub's roster knows.
        let mut grants = grants(&[], &[]);
        grants.online = vec!["bob".parse().unwrap()];
        let watcher = wskafka::mint(SECRET, "w", grants, std::time::Duration::from_secs(60));
        let mut watchers = [a.connect(&watcher).await, b.connect(&watcher).await];
        eventually("bob online", async || {
            let mut all = true;
            for w in &mut watchers {
                let status = w.call(json!({"type": "online", "users": ["bob"]})).await;
                all &= status["users"]["bob"] == true;
            }
            all
        })
        .await;
        let before = skipped().await;
        produce(&producer, &cluster.topic, "bob", br#"{"text":"live"}"#).await;
        // Delivered over the socket, and the push worker passed it over.
        let (_, message) = page.message().await;
        assert_eq!(message["payload"]["text"], "live");
        eventually("the record skipped as online", async || {
            skipped().await > before
        })
        .await;
        drop(page);
    }
    until_offline(&a, "bob").await;
    until_offline(&b, "bob").await;
    let (_, offset) = produce(&producer, &cluster.topic, "bob", br#"{"text":"closed"}"#).await;
    eventually("a push", async || !service.received().is_empty()).await;
    let received = service.received();
    assert_eq!(received.len(), 1, "no push while online: {received:?}");
    let notification = phone.decrypt(&received[0].body).await;
    assert_eq!(
        (notification["offset"].as_i64(), &notification["payload"]),
        (Some(offset), &json!({"text": "closed"}))
    );
}

#[tokio::test]
async fn a_gone_subscription_is_removed_and_a_429_is_retried_after_its_retry_after() {
    let cluster = Cluster::new("push-status", true).await;
    let service = PushService::default();
    let origin = service.start().await;
    service.answer("/device/gone", &[(410, None)]);
    service.answer("/device/busy", &[(429, Some(2))]);
    let hub = cluster.hub().await;
    let gone = Device::new(format!("{origin}/device/gone"));
    let busy = Device::new(format!("{origin}/device/busy"));
    register(&hub, &cluster.token("cy"), &[&gone, &busy]).await;
    until_offline(&hub, "cy").await;
    assert_eq!(cluster.stored_endpoints().await.len(), 2);

    produce(&producer(), &cluster.topic, "cy", br#"{"text":"hi"}"#).await;
    eventually("the retried push", async || {
        service
            .received()
            .iter()
            .filter(|r| r.path == "/device/busy")
            .count()
            >= 2
    })
    .await;
    let busy_pushes: Vec<Received> = service
        .received()
        .into_iter()
        .filter(|r| r.path == "/device/busy")
        .collect();
    assert!(
        busy_pushes[1].at - busy_pushes[0].at >= std::time::Duration::from_secs(2),
        "retried before Retry-After"
    );
    eventually("the gone subscription removed", async || {
        cluster.stored_endpoints().await == vec![busy.endpoint.clone()]
    })
    .await;
    let gone_pushes = service
        .received()
        .iter()
        .filter(|r| r.path == "/device/gone")
        .count();
    assert_eq!(gone_pushes, 1);
}

#[tokio::test]
async fn bad_subscriptions_are_refused_with_a_clear_error_and_nothing_stored() {
    // Loopback is not allowed here, as in production.
    let mut cluster = Cluster::new("push-bad", false).await;
    cluster
        .args
        .extend(["--request-rates".into(), "push=100".into()]);
    let hub = cluster.hub().await;
    let mut page = hub.connect(&cluster.token("dee")).await;
    let good = Device::new("https://push.example.net/x".into()).subscription();
    let with = |field: &str, value: Value| {
        let mut s = good.clone();
        match field {
            "endpoint" => s["endpoint"] = value,
            key => s["keys"][key] = value,
        }
        s
    };
    let mut off_curve = vec![4u8];
    off_curve.extend([1u8; 64]);
    for (subscription, expected) in [
        (
            with("endpoint", json!("http://127.0.0.1:9/push")),
            "private or reserved",
        ),
        (
            with("endpoint", json!("https://10.1.2.3/push")),
            "private or reserved",
        ),
        (
            with("endpoint", json!("https://169.254.169.254/latest")),
            "private or reserved",
        ),
        (
            with("endpoint", json!("https://[::1]/push")),
            "private or reserved",
        ),
        (
            with("endpoint", json!("https://localhost/push")),
            "private or reserved",
        ),
        (
            with(
                "endpoint",
                json!(format!("https://push.example.net/{}", "a".repeat(2000))),
            ),
            "longer than",
        ),
        (with("endpoint", json!("javascript:alert(1)")), "https://"),
        (
            with("p256dh", json!("A".repeat(10_000))),
            "must be 65 bytes",
        ),
        (
            with("auth", json!(URL_SAFE_NO_PAD.encode([0u8; 8]))),
            "must be 16 bytes",
        ),
        (
            with("p256dh", json!(URL_SAFE_NO_PAD.encode(off_curve))),
            "not a point of P-256",
        ),
        (
            json!({"endpoint": "https://push.example.net/x"}),
            "missing field `subscription.keys.p256dh`",
        ),
        (json!("nope"), "must be an object"),
    ] {
        let reply = page
            .call(json!({"type": "push_subscribe", "id": 9, "subscription": subscription}))
            .await;
        assert_eq!(reply["type"], "error", "{subscription}: {reply}");
        assert_eq!(reply["code"], "bad_request", "{reply}");
        assert_eq!(reply["id"], 9, "{reply}");
        let message = reply["message"].as_str().unwrap();
        assert!(message.contains(expected), "{subscription}: {message}");
    }
    assert_eq!(cluster.stored_endpoints().await, Vec::<String>::new());
    // A public endpoint is stored, and removed again.
    let public = with("endpoint", json!("https://8.8.8.8/push/dee"));
    let reply = page
        .call(json!({"type": "push_subscribe", "id": 1, "subscription": public}))
        .await;
    assert_eq!(reply["type"], "push_subscribed", "{reply}");
    assert_eq!(
        cluster.stored_endpoints().await,
        vec!["https://8.8.8.8/push/dee"]
    );
    let reply = page
        .call(json!({"type": "push_unsubscribe", "id": 2, "endpoint": "https://8.8.8.8/push/dee"}))
        .await;
    assert_eq!(
        reply,
        json!({"type": "push_unsubscribed", "id": 2, "endpoint": "https://8.8.8.8/push/dee", "removed": true})
    );
    assert_eq!(cluster.stored_endpoints().await, Vec::<String>::new());
}

#[tokio::test]
async fn a_hub_killed_mid_burst_leaves_its_records_to_the_other_and_loses_no_push() {
    let mut cluster = Cluster::new("push-kill", true).await;
    cluster.args.extend(
        [
            "--request-rates",
            "push=1000",
            "--push-user-rate",
            "100000",
            "--push-max-in-flight",
            "8",
        ]
        .map(String::from),
    );
    let service = PushService::default();
    let origin = service.start().await;
    service
        .delay_ms
        .store(20, std::sync::atomic::Ordering::Relaxed);
    let (a, b) = tokio::join!(cluster.hub(), cluster.hub());
    let users: Vec<String> = (0..8).map(|i| format!("user-{i}")).collect();
    let mut devices = BTreeMap::new();
    for user in &users {
        let pair = [
            Device::new(format!("{origin}/{user}/phone")),
            Device::new(format!("{origin}/{user}/laptop")),
        ];
        register(&a, &cluster.token(user), &[&pair[0], &pair[1]]).await;
        devices.insert(user.clone(), pair);
    }
    for user in &users {
        until_offline(&a, user).await;
        until_offline(&b, user).await;
    }

    // The burst: 25 records per user, 400 pushes.
    let producer = producer();
    let mut records = Vec::new();
    for n in 0..25 {
        for user in &users {
            let value = json!({"n": n}).to_string();
            let (partition, offset) =
                produce(&producer, &cluster.topic, user, value.as_bytes()).await;
            records.push((
                user.clone(),
                format!("{}/{partition}/{offset}", cluster.topic),
            ));
        }
    }
    let expected = records.len() * 2;
    eventually("the burst under way", async || {
        service.received().len() >= 40
    })
    .await;
    // The push service stops answering, so that the hub is killed with its 8 pushes in
    // flight: sent, and never known to be taken.
    service.open.send_replace(false);
    // The hub killed is one with its 8 out (the group may not have given the other any
    // partition yet); every push either hub sent has arrived.
    let mut outs = (0.0, 0.0);
    eventually("a hub's pushes all in flight", async || {
        let held =
            service.received().len() - service.answered.load(std::sync::atomic::Ordering::SeqCst);
        outs = (
            a.metric("wskafka_push_in_flight").await,
            b.metric("wskafka_push_in_flight").await,
        );
        (outs.0 == 8.0 || outs.1 == 8.0) && held as f64 == outs.0 + outs.1
    })
    .await;
    let (killed, survivor) = if outs.0 == 8.0 { (a, b) } else { (b, a) };
    killed.kill().await;
    service.open.send_replace(true);
    let at_kill = service.received().len();
    eprintln!("{at_kill} of {expected} pushes received at SIGKILL");
    assert!(at_kill < expected, "the kill came after the burst");

    // Every (device, record) is claimed and done once some hub handled it, the dead one's
    // partitions by the survivor once the group's session (10 s) timed out: PATIENCE beyond
    // the session for that.
    eventually_within(
        PATIENCE + std::time::Duration::from_secs(10),
        "every push done",
        async || cluster.claims_done().await == expected,
    )
    .await;
    eventually("the survivor done", async || {
        survivor.metric("wskafka_push_queue").await == 0.0
    })
    .await;
    // (device path, Topic header) names (device, record): the header is derived from the
    // record's position. A push service keeps one push per Topic for a device that has not
    // fetched it yet (the users here are offline), so each such pair is one notification.
    let topic_of =
        |record: &str| URL_SAFE_NO_PAD.encode(&openssl::sha::sha256(record.as_bytes())[..24]);
    let mut received: BTreeMap<(String, String), usize> = BTreeMap::new();
    for push in service.received() {
        let topic = push.headers["topic"].to_str().unwrap().to_string();
        *received.entry((push.path.clone(), topic)).or_default() += 1;
    }
    let mut missing = Vec::new();
    for (user, record) in &records {
        for device in &devices[user] {
            let path = device.endpoint.strip_prefix(&origin).unwrap().to_string();
            if !received.contains_key(&(path.clone(), topic_of(record))) {
                missing.push((path, record.clone()));
            }
        }
    }
    assert_eq!(missing, Vec::new(), "pushes lost with the killed hub");
    assert_eq!(received.len(), expected);
    // Sent again: what the killed hub had in flight, claimed and never said done, each
    // under its first push's Topic.
    let again: usize = received.values().map(|n| n - 1).sum();
    assert_eq!(again, 8, "pushes sent again");
    assert_eq!(
        survivor
            .metrics()
            .await
            .get("wskafka_push_resent_total")
            .copied(),
        Some(8.0)
    );
    // One of them, decrypted, is the record it names.
    let (user, record) = &records[records.len() - 1];
    let device = &devices[user][0];
    let path = device.endpoint.strip_prefix(&origin).unwrap();
    let last = service
        .received()
        .into_iter()
        .find(|r| r.path == path && r.headers["topic"] == topic_of(record).as_str())
        .expect("the last record pushed");
    let notification = device.decrypt(&last.body).await;
    assert_eq!(
        format!(
            "{}/{}/{}",
            notification["topic"].as_str().unwrap(),
            notification["partition"],
            notification["offset"]
        ),
        *record
    );
    assert_eq!(notification["payload"], json!({"n": 24}));
}

#[tokio::test]
async fn a_hub_restarted_pushes_what_came_while_it_was_down_once_and_nothing_twice() {
    let cluster = Cluster::new("push-restart", true).await;
    let service = PushService::default();
    let origin = service.start().await;
    let hub = cluster.hub().await;
    let phone = Device::new(format!("{origin}/device/phone"));
    register(&hub, &cluster.token("ann"), &[&phone]).await;
    until_offline(&hub, "ann").await;
    let producer = producer();
    let mut records = Vec::new();
    for n in 0..3 {
        records.push(
            produce(
                &producer,
                &cluster.topic,
                "ann",
                json!({"n": n}).to_string().as_bytes(),
            )
            .await,
        );
    }
    eventually("three pushes done", async || {
        cluster.claims_done().await == 3
    })
    .await;
    assert_eq!(hub.terminate().await, Some(0));

    // Written while no hub runs: the next one starts where the first one stopped.
    for n in 3..5 {
        records.push(
            produce(
                &producer,
                &cluster.topic,
                "ann",
                json!({"n": n}).to_string().as_bytes(),
            )
            .await,
        );
    }
    let hub = cluster.hub().await;
    eventually("five pushes done", async || {
        cluster.claims_done().await == 5
    })
    .await;
    eventually("the hub done", async || {
        hub.metric("wskafka_push_queue").await == 0.0
    })
    .await;
    let mut pushed = Vec::new();
    for push in service.received() {
        let notification = phone.decrypt(&push.body).await;
        pushed.push((
            notification["partition"].as_i64().unwrap() as i32,
            notification["offset"].as_i64().unwrap(),
        ));
    }
    pushed.sort();
    records.sort();
    assert_eq!(pushed, records, "each record pushed once");
}

#[tokio::test]
async fn a_push_service_that_does_not_answer_holds_up_no_socket() {
    let cluster = Cluster::new("push-slow", true).await;
    let service = PushService::default();
    let origin = service.start().await;
    let hub = cluster.hub().await;
    let away = Device::new(format!("{origin}/device/away"));
    register(&hub, &cluster.token("away"), &[&away]).await;
    until_offline(&hub, "away").await;
    let mut here = hub.connect(&cluster.token("here")).await;
    here.subscribe(&cluster.topic).await;

    service.open.send_replace(false);
    let producer = producer();
    for n in 0..5 {
        let value = json!({"n": n}).to_string();
        produce(&producer, &cluster.topic, "away", value.as_bytes()).await;
    }
    eventually("pushes waiting on the push service", async || {
        service.received().len() == 5
    })
    .await;
    produce(&producer, &cluster.topic, "here", br#"{"text":"live"}"#).await;
    let (_, message) = here.message().await;
    assert_eq!(message["payload"]["text"], "live");
    assert_eq!(
        service.answered.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "delivered over the socket while every push waited"
    );
    service.open.send_replace(true);
    eventually("the pushes answered", async || {
        service.answered.load(std::sync::atomic::Ordering::SeqCst) == 5
    })
    .await;
}

/// Chromium's `PushManager` made to hand out `device`'s subscription, with the keys the test
/// decrypts with; the service worker, the permission and the page's client are the real ones.
fn fake_push_manager(device: &Device) -> String {
    format!(
        "(() => {{\n\
        const json = {};\n\
        let current = null;\n\
        PushManager.prototype.getSubscription = async function () {{ return current; }};\n\
        PushManager.prototype.subscribe = async function (options) {{\n\
          current = {{ endpoint: json.endpoint, options, toJSON: () => json,\n\
            unsubscribe: async () => {{ current = null; return true; }} }};\n\
          return current;\n\
        }};\n\
        }})();",
        device.subscription()
    )
}

/// The demo's "notify me when this page is closed": its service worker registered, the
/// subscription in the hub's database, and a record pushed once the page is closed.
#[tokio::test]
async fn the_demo_registers_its_service_worker_and_subscription_and_a_closed_page_is_pushed_to() {
    let cluster = Cluster::new("push-demo", true).await;
    let service = PushService::default();
    let origin = service.start().await;
    let rooms = unique("push-demo-rooms");
    create_topic(&rooms, 1).await;
    let hub = cluster.demo_hub(&rooms).await;
    let device = Device::new(format!("{origin}/device/chromium"));
    let mut browser = Browser::start().await;
    let page = format!(
        "http://{}/?user=ann&topic={rooms}&notifications={}",
        hub.addr, cluster.topic
    );
    // Playwright's contexts are incognito, where Chromium refuses the Push API ("Registration
    // failed - permission denied", tried): the page's PushManager is the test's.
    let init = fake_push_manager(&device);
    browser
        .run(json!({"cmd": "open", "name": "ann", "url": page,
            "permissions": ["notifications"], "init": init}))
        .await;
    browser.wait_text("ann", "#status", "open").await;
    browser.click("ann", "#push").await;
    browser
        .wait_text("ann", "#push-state", "You will be notified")
        .await;
    assert_eq!(
        cluster.stored_endpoints().await,
        vec![device.endpoint.clone()]
    );
    let worker = browser
        .run(json!({"cmd": "evaluate", "name": "ann",
            "script": "navigator.serviceWorker.ready.then(r => r.active.scriptURL)"}))
        .await;
    assert_eq!(worker, format!("http://{}/sw.js", hub.addr));

    browser.run(json!({"cmd": "close", "name": "ann"})).await;
    until_offline(&hub, "ann").await;
    produce(
        &producer(),
        &cluster.topic,
        "ann",
        br#"{"text":"while closed"}"#,
    )
    .await;
    eventually("the push", async || !service.received().is_empty()).await;
    let push = &service.received()[0];
    assert_eq!(
        device.decrypt(&push.body).await["payload"]["text"],
        "while closed"
    );
}
