//! Command-line and environment configuration. Every flag of `serve` has a `WSKAFKA_*`
//! variable, so the same binary is configured the same way in a shell, systemd or a container.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::budget::{Kind, parse_rate};
use crate::grant::{Grant, UserPattern};
use crate::kafka_settings::{KafkaSettings, SettingsError, Sources};
use crate::memory::Budget;
use crate::topic::{TopicPattern, any_matches, is_kafka_internal};

#[derive(Parser)]
#[command(
    version,
    about = "A real-time hub joining WebSocket clients to Apache Kafka"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the hub.
    Serve(Box<ServeConfig>),
    /// Mint a development token signed with WSKAFKA_JWT_SECRET.
    Token(TokenArgs),
}

#[derive(Args, Clone)]
pub struct ServeConfig {
    /// Log lines as text (for people) or JSON objects (for log pipelines). Tokens and payloads
    /// are never logged either way.
    #[arg(long, env = "WSKAFKA_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub jwt: JwtConfig,

    #[command(flatten)]
    pub server: ServerConfig,

    #[command(flatten)]
    pub kafka: KafkaConfig,

    #[command(flatten)]
    pub topics: TopicsConfig,

    #[command(flatten)]
    pub database: DatabaseConfig,

    #[command(flatten)]
    pub presence: PresenceConfig,

    #[command(flatten)]
    pub limits: LimitsConfig,

    #[command(flatten)]
    pub push: PushConfig,
}

/// The listener, the sockets it serves, and the pages it serves.
#[derive(Args, Clone)]
#[command(next_help_heading = "HTTP and sockets")]
pub struct ServerConfig {
    /// Address to serve HTTP and WebSocket on.
    #[arg(long, env = "WSKAFKA_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Browser origins allowed to open a socket, comma-separated (`https://app.example.com`);
    /// others get HTTP 403. Requests without an Origin header (non-browser clients) are not
    /// affected. Unset: any origin.
    #[arg(long, env = "WSKAFKA_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// How long a client may take to send its request headers (the WebSocket handshake
    /// included) before the connection is dropped: slow-header (slowloris) clients hold
    /// nothing for long.
    #[arg(long, env = "WSKAFKA_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// How long a socket may refuse to take a write before it is dropped.
    #[arg(long, env = "WSKAFKA_WRITE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub write_timeout: Duration,

    /// How long a socket opened without a token has to send its `auth` frame.
    #[arg(long, env = "WSKAFKA_AUTH_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub auth_timeout: Duration,

    /// How long before a token runs out the hub sends `expiring`, so the client can refresh.
    #[arg(long, env = "WSKAFKA_EXPIRY_WARNING", default_value = "60s", value_parser = humantime::parse_duration)]
    pub expiry_warning: Duration,

    /// How often the hub pings each socket (a WebSocket ping, which browsers answer on their
    /// own), spread over the interval; `0s` turns heartbeats off. 25 s, as Centrifugo's:
    /// under the 30 to 60 s after which proxies, load balancers and NATs commonly drop an
    /// idle flow, so the pings also keep such flows open.
    #[arg(long, env = "WSKAFKA_PING_INTERVAL", default_value = "25s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,

    /// How long a ping may go unanswered before the socket is closed (4408) and its seat,
    /// subscriptions and presence released: long enough for a phone on a slow network, as
    /// Centrifugo's 8 s and Socket.IO's 20 s are.
    #[arg(long, env = "WSKAFKA_PONG_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub pong_timeout: Duration,

    /// On SIGTERM/SIGINT, how long to wait for sockets to finish their in-flight publishes.
    #[arg(long, env = "WSKAFKA_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    /// Password for the admin view at `/admin` (user `admin`, HTTP Basic authentication;
    /// serve the hub over HTTPS). Unset: no admin view.
    #[arg(long, env = "WSKAFKA_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,

    /// Address of a listener of its own for `/metrics` (`127.0.0.1:9100`, say, or an address
    /// only the monitoring network reaches); the public listener then answers `/metrics`
    /// with 404. Unset: `/metrics` is on the public listener, open to anyone who reaches it.
    #[arg(long, env = "WSKAFKA_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Origins besides the hub's own from which the admin view may change state,
    /// comma-separated (`https://admin.example.com`): for an admin view that a proxy serves
    /// under another host name than the one the hub sees. Requests that change state from
    /// any other browser origin get HTTP 403.
    #[arg(long, env = "WSKAFKA_ADMIN_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    pub admin_origins: Vec<String>,

    /// DEVELOPMENT ONLY: serve the demo page at `/` and `/dev/token`, which mints a token
    /// for any user name it is given. Never enable this where strangers can reach the hub.
    #[arg(long, env = "WSKAFKA_DEMO")]
    pub demo: bool,
}

/// The cluster, how every client of the hub talks to it, and publishing.
#[derive(Args, Clone)]
#[command(next_help_heading = "Kafka")]
pub struct KafkaConfig {
    /// Kafka bootstrap servers.
    #[arg(long, env = "WSKAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,

    /// A file of librdkafka properties in Kafka's own format (`key=value` lines, as Kafka's
    /// tools take with `--command-config`), for every Kafka client of the hub. Values are
    /// taken as written, commas and spaces included: the place for passwords, and a file a
    /// secret store can mount.
    #[arg(long, env = "WSKAFKA_KAFKA_CONFIG")]
    pub kafka_config: Option<PathBuf>,

    /// A librdkafka property for every Kafka client of the hub, as KEY=VALUE; repeat the
    /// flag, or separate with commas in the variable (so no value here can hold a comma).
    /// Applied after the properties file and the hub's own defaults, so it can override them.
    #[arg(
        short = 'X',
        long = "kafka",
        env = "WSKAFKA_KAFKA",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub properties: Vec<String>,

    /// A librdkafka property for the producers only (`linger.ms`, ...).
    #[arg(
        long,
        env = "WSKAFKA_KAFKA_PRODUCER",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub kafka_producer: Vec<String>,

    /// A librdkafka property for the consumers only (`fetch.wait.max.ms`, ...).
    #[arg(
        long,
        env = "WSKAFKA_KAFKA_CONSUMER",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub kafka_consumer: Vec<String>,

    /// Fetch every partition of every exposed topic, whether or not a socket here follows
    /// it, as hubs did before interest-based consumption: for comparing the two, or for a
    /// hub whose sockets follow nearly everything (it then never waits on a paused topic's
    /// end at a first subscribe).
    #[arg(long, env = "WSKAFKA_CONSUME_ALL")]
    pub consume_all: bool,

    /// How long the consumer keeps fetching a topic after its last subscriber here left (or
    /// after a subscribe that waited on it): as long as the recent records are kept, so
    /// that the sockets of a reconnect storm come back to a topic still read and kept, and
    /// one socket's churn does not pause and resume the topic each time.
    #[arg(long, env = "WSKAFKA_INTEREST_LINGER", default_value = "5m", value_parser = humantime::parse_duration)]
    pub interest_linger: Duration,

    /// The properties above, gathered at start (see `kafka_settings`).
    #[arg(skip)]
    pub kafka_settings: KafkaSettings,

    /// How long Kafka may take to acknowledge a publish before the client gets `unavailable`.
    #[arg(long, env = "WSKAFKA_PUBLISH_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub publish_timeout: Duration,

    /// How old a first attempt may be, by the client's clock, for a resend with its
    /// `publish_id` to be looked up in Kafka; an older resend gets `retry_expired`. Each
    /// partition searched is read from this far back (plus the landing bound), once for all
    /// the resends it gets at a time.
    #[arg(long, env = "WSKAFKA_PUBLISH_RETRY_WINDOW", default_value = "5m", value_parser = humantime::parse_duration)]
    pub publish_retry_window: Duration,
}

/// Which topics clients see, and how.
#[derive(Args, Clone)]
#[command(next_help_heading = "Topics")]
pub struct TopicsConfig {
    /// Topics exposed to clients, as comma-separated globs (`*`, `?`). Nothing outside them
    /// can be published or subscribed, whatever a token grants; nor can Kafka's own topics
    /// (every name starting with `__`) or the closed ones (`WSKAFKA_CLOSED_TOPICS`), whatever
    /// a glob covers.
    #[arg(long, env = "WSKAFKA_TOPICS", value_delimiter = ',', required = true)]
    pub topics: Vec<TopicPattern>,

    /// Topics closed as Kafka's own are, as comma-separated globs: never exposed, published,
    /// subscribed, read for history or read by the hub's consumer, whatever `WSKAFKA_TOPICS`
    /// and tokens say. The default closes Schema Registry's topic and Kafka Connect's default
    /// ones (connector settings may hold credentials); a value replaces the default.
    #[arg(
        long,
        env = "WSKAFKA_CLOSED_TOPICS",
        value_delimiter = ',',
        default_value = "_schemas,connect-configs,connect-offsets,connect-status"
    )]
    pub closed_topics: Vec<TopicPattern>,

    /// Exposed topics keyed by user id, as comma-separated globs: a subscriber receives only
    /// the records whose key is its token's `sub`, and publishing to them needs a token that
    /// names the topic literally.
    #[arg(long, env = "WSKAFKA_USER_TOPICS", value_delimiter = ',')]
    pub user_topics: Vec<TopicPattern>,

    /// Exposed topics whose key names a room (or any other unit a token's key grants
    /// address), as comma-separated globs: a publish to them needs a key. Per-user topics
    /// are keyed too.
    #[arg(long, env = "WSKAFKA_KEYED_TOPICS", value_delimiter = ',')]
    pub keyed_topics: Vec<TopicPattern>,

    /// Kafka topic over which hubs tell each other about revoked tokens; created (one
    /// partition) when missing. Clients can never publish or subscribe to it.
    #[arg(long, env = "WSKAFKA_CONTROL_TOPIC", default_value = "wskafka.control")]
    pub control_topic: String,

    /// Kafka topic on which every hub reports its load and connections every 5 s, for the
    /// admin view of the whole fleet; created (one partition, records kept a minute) when
    /// missing. Clients can never publish or subscribe to it.
    #[arg(long, env = "WSKAFKA_FLEET_TOPIC", default_value = "wskafka.fleet")]
    pub fleet_topic: String,
}

/// Read positions, revocations and sessions.
#[derive(Args, Clone)]
#[command(next_help_heading = "Database")]
pub struct DatabaseConfig {
    /// Where durable state lives (read positions, revocations, open sessions): a SQLite file
    /// for a single hub, or `postgres://...` shared by several hubs.
    #[arg(
        long,
        env = "WSKAFKA_DATABASE_URL",
        hide_env_values = true,
        default_value = "sqlite://wskafka.db?mode=rwc"
    )]
    pub database_url: String,

    /// Database connections the hub keeps open at most.
    #[arg(long, env = "WSKAFKA_DATABASE_MAX_CONNECTIONS", default_value_t = 8)]
    pub database_max_connections: u32,

    /// How long a request waits for a database connection before it is answered
    /// `unavailable` (an upgrade: HTTP 503).
    #[arg(long, env = "WSKAFKA_DATABASE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub database_timeout: Duration,

    /// How long the hub waits at start for a database that refuses connections or does not
    /// answer (it may be starting too), serving `/healthz` and answering `/readyz` 503
    /// meanwhile, before it exits. A database that answers with an error that waiting cannot
    /// mend (wrong password, no such database) ends the hub at once.
    #[arg(long, env = "WSKAFKA_DATABASE_WAIT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub database_wait: Duration,

    /// How often read positions taken from `commit`s are written to the database (and when a
    /// socket closes, and at shutdown): a database transaction per interval per hub, however
    /// often clients commit. A crash loses at most this long's positions, which only means a
    /// few messages shown as unread again.
    #[arg(long, env = "WSKAFKA_COMMIT_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub commit_interval: Duration,
}

/// Presence events, the roster of rooms, signals.
#[derive(Args, Clone)]
#[command(next_help_heading = "Presence")]
pub struct PresenceConfig {
    /// Identifies this hub in logs and presence events, and starts its client ids and
    /// consumer group (`wskafka-<instance id>-<per run>`). Random when unset.
    /// Give each hub a stable, unique one when presence events are on: a restarted hub then
    /// writes the `disconnect` events its previous run could not at once.
    #[arg(long, env = "WSKAFKA_INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// Kafka topic that receives a presence event when a socket connects, subscribes,
    /// unsubscribes or disconnects, keyed by user id; created (one partition) when missing.
    /// Unset: no presence events.
    #[arg(long, env = "WSKAFKA_PRESENCE_TOPIC")]
    pub presence_topic: Option<String>,

    /// With presence on: the compacted topic where every hub writes the rooms each of its
    /// sockets follows, from which every hub builds the same roster; created (one partition,
    /// compacted) when missing. Clients can never read or write it.
    #[arg(long, env = "WSKAFKA_ROSTER_TOPIC", default_value = "wskafka.roster")]
    pub roster_topic: String,

    /// Members a room's roster lists at most; a larger room answers `presence` with a count,
    /// and pushes no joins or leaves.
    #[arg(long, env = "WSKAFKA_ROSTER_LIMIT", default_value_t = 10_000)]
    pub roster_limit: usize,

    /// Members past which a room pushes no joins or leaves: each would be a frame to every
    /// member that asked for them. `presence` still lists it.
    #[arg(long, env = "WSKAFKA_JOIN_LEAVE_LIMIT", default_value_t = 1000)]
    pub join_leave_limit: usize,

    /// Members one `presence` answer lists; more come on request.
    #[arg(long, env = "WSKAFKA_PRESENCE_PAGE", default_value_t = 100)]
    pub presence_page: usize,

    /// Kafka topic that carries ephemeral signals between hubs (typing, cursors), kept a
    /// minute; created when missing. Clients can never read or write it.
    #[arg(long, env = "WSKAFKA_SIGNAL_TOPIC", default_value = "wskafka.signals")]
    pub signal_topic: String,

    /// Signals one connection may send per second (with bursts of as many).
    #[arg(long, env = "WSKAFKA_SIGNAL_RATE", default_value = "10")]
    pub signal_rate: NonZeroU32,

    /// Largest signal payload, in bytes.
    #[arg(long, env = "WSKAFKA_MAX_SIGNAL_BYTES", default_value_t = 1024)]
    pub max_signal_bytes: usize,

    /// With presence events on: a hub silent (no heartbeat) for this long is taken for dead,
    /// and another hub writes the `disconnect` events of its sockets.
    #[arg(long, env = "WSKAFKA_INSTANCE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub instance_timeout: Duration,
}

/// Web Push: notifications for users whose pages are closed (see `push`).
#[derive(Args, Clone)]
#[command(next_help_heading = "Web Push")]
pub struct PushConfig {
    /// Push records of per-user topics to the browsers of users with no socket open on any
    /// hub (Web Push). Needs presence (`WSKAFKA_PRESENCE_TOPIC`: the roster says who is
    /// online) and `WSKAFKA_PUSH_CONTACT`.
    #[arg(long, env = "WSKAFKA_PUSH")]
    pub push: bool,

    /// The topics whose records are pushed, as comma-separated globs, each keyed by user id.
    /// Unset: the per-user topics (`WSKAFKA_USER_TOPICS`).
    #[arg(long, env = "WSKAFKA_PUSH_TOPICS", value_delimiter = ',')]
    pub push_topics: Vec<TopicPattern>,

    /// The Kafka consumer group the hubs share the push work through: each record is pushed
    /// by one hub, and a hub that stops hands its partitions to the others.
    #[arg(long, env = "WSKAFKA_PUSH_GROUP", default_value = "wskafka.push")]
    pub push_group: String,

    /// Who push services may contact about this sender (the VAPID `sub`): a `mailto:` or
    /// `https:` URL.
    #[arg(long, env = "WSKAFKA_PUSH_CONTACT")]
    pub push_contact: Option<String>,

    /// A PEM file holding the P-256 private key pushes are signed with (VAPID). Unset: a key
    /// generated at first start and kept in the database, the same for every hub.
    #[arg(long, env = "WSKAFKA_PUSH_KEY_FILE")]
    pub push_key_file: Option<PathBuf>,

    /// How long a push service keeps a push for a device that is offline (the `TTL` header).
    #[arg(long, env = "WSKAFKA_PUSH_TTL", default_value = "1day", value_parser = humantime::parse_duration)]
    pub push_ttl: Duration,

    /// The `Urgency` of pushes: very-low, low, normal or high.
    #[arg(long, env = "WSKAFKA_PUSH_URGENCY", default_value = "normal", value_parser = ["very-low", "low", "normal", "high"])]
    pub push_urgency: String,

    /// Push requests the hub has in flight at once; further records wait.
    #[arg(long, env = "WSKAFKA_PUSH_MAX_IN_FLIGHT", default_value = "64")]
    pub push_max_in_flight: NonZeroUsize,

    /// Pushes one user may get per minute (with bursts of as many), across devices counted
    /// once per record; past it a record is not pushed.
    #[arg(long, env = "WSKAFKA_PUSH_USER_RATE", default_value = "30")]
    pub push_user_rate: NonZeroU32,

    /// Push subscriptions (devices) one user may register.
    #[arg(long, env = "WSKAFKA_PUSH_MAX_DEVICES", default_value_t = 10)]
    pub push_max_devices: u32,

    /// TESTS ONLY: accept `http://` push endpoints on loopback addresses. Off, an endpoint
    /// must be `https://` and resolve to public addresses only, so that the hub never sends
    /// requests into the operator's own network.
    #[arg(long, env = "WSKAFKA_PUSH_ALLOW_LOOPBACK")]
    pub push_allow_loopback: bool,
}

impl PushConfig {
    /// The topics pushed: `WSKAFKA_PUSH_TOPICS`, or the per-user topics.
    pub fn topics<'a>(&'a self, topics: &'a TopicsConfig) -> &'a [TopicPattern] {
        if self.push_topics.is_empty() {
            &topics.user_topics
        } else {
            &self.push_topics
        }
    }
}

/// What sockets, users and requests may hold and ask.
#[derive(Args, Clone)]
#[command(next_help_heading = "Limits")]
pub struct LimitsConfig {
    /// Largest text frame a client may send, in bytes. Larger frames are refused with a
    /// `too_large` error; frames over four times this close the socket (1009).
    #[arg(long, env = "WSKAFKA_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,

    /// The memory the hub stays under, divided among the recent records, the send queues,
    /// replays and `history` pages, and Kafka's prefetch as the README's "Memory" section
    /// says (`512MiB`, `2GiB`, `800MB`, or bytes). Checked at start against the machine's
    /// memory or the container's limit, with a warning when it does not fit.
    #[arg(long, env = "WSKAFKA_MEMORY_BUDGET", default_value = Budget::DEFAULT)]
    pub memory_budget: Budget,

    /// Records a connection may have waiting to be written before it counts as lagging and is
    /// closed (4429, after a `lagged` frame saying where to resume). Queued records are
    /// shared with every other socket, so a slot costs a pointer; the bound is there to absorb
    /// bursts (a Kafka fetch brings hundreds of records at once): with 1,024, sockets read at
    /// a sustained 4,400 records/s were closed that Centrifugo's 1 MB queue kept. The
    /// queue's bytes are bounded too, by its share of `WSKAFKA_MEMORY_BUDGET`.
    #[arg(long, env = "WSKAFKA_SEND_QUEUE", default_value_t = 4096)]
    pub send_queue: usize,

    /// Topics one connection may subscribe to at once.
    #[arg(long, env = "WSKAFKA_MAX_SUBSCRIPTIONS", default_value_t = 256)]
    pub max_subscriptions: usize,

    /// Publishes one connection may make per second (with bursts of as many); the rest are
    /// refused with `rate_limited`.
    #[arg(long, env = "WSKAFKA_PUBLISH_RATE", default_value = "100")]
    pub publish_rate: NonZeroU32,

    /// Requests of each other type one connection may make per second (with bursts of as
    /// many), as TYPE=RATE over the defaults: subscribe=20 (unsubscribe too), history=5,
    /// commit=10, push=5 (the `push_*` requests), presence=10, online=10, auth=5, ping=10,
    /// invalid=10 (frames that are not valid requests). Past its budget a request is refused
    /// with `rate_limited` and when to retry; a connection that goes on regardless is closed
    /// with 1008.
    #[arg(long, env = "WSKAFKA_REQUEST_RATES", value_delimiter = ',', value_parser = parse_rate)]
    pub request_rates: Vec<(Kind, NonZeroU32)>,

    /// Requests of each type (publish and signal too) all the sockets of one user on this
    /// hub may make together per second (with bursts of as many), as TYPE=RATE over the
    /// defaults: four times a socket's, so that a user with many sockets does not multiply
    /// the budget. Past it a request is refused with `rate_limited` as past a socket's.
    #[arg(long, env = "WSKAFKA_USER_REQUEST_RATES", value_delimiter = ',', value_parser = parse_rate)]
    pub user_request_rates: Vec<(Kind, NonZeroU32)>,

    /// Sockets one user (`sub`) may hold open on this hub; more are refused with HTTP 429.
    #[arg(long, env = "WSKAFKA_MAX_CONNECTIONS_PER_USER", default_value = "32")]
    pub max_connections_per_user: NonZeroUsize,

    /// Publishes one connection may have awaiting Kafka's acknowledgement; past it the hub
    /// stops reading from that socket until acknowledgements come back.
    #[arg(long, env = "WSKAFKA_MAX_IN_FLIGHT", default_value_t = 256)]
    pub max_in_flight: usize,

    /// Most records a subscription replays per partition; a resume from further back starts
    /// this many records before the live stream, and `subscribed` reports the rest as lost.
    #[arg(long, env = "WSKAFKA_MAX_REPLAY", default_value_t = 10_000)]
    pub max_replay: u32,

    /// Most records one `history` request returns (a request asks for 50 by default).
    #[arg(long, env = "WSKAFKA_HISTORY_LIMIT", default_value_t = 100)]
    pub history_limit: u32,

    /// Most records one `history` request reads from Kafka looking for its page: a room whose
    /// records are sparse among its topic's gets a shorter page that says so, and carries on
    /// with the next request.
    #[arg(long, env = "WSKAFKA_HISTORY_SCAN", default_value_t = 10_000)]
    pub history_scan: u32,

    /// `history` requests the hub reads at once, each with a Kafka client of its own (kept
    /// for the next); more wait their turn.
    #[arg(long, env = "WSKAFKA_MAX_CONCURRENT_HISTORY", default_value = "8")]
    pub max_concurrent_history: NonZeroUsize,

    /// Replays the hub runs at once, each with a Kafka client of its own; more wait their
    /// turn.
    #[arg(long, env = "WSKAFKA_MAX_CONCURRENT_REPLAYS", default_value = "16")]
    pub max_concurrent_replays: NonZeroUsize,

    /// Newest records kept in memory per partition of each topic with subscribers on this
    /// hub (and for five minutes after the last one leaves). A socket resuming from within
    /// them, as every socket of a reconnect storm does, is served from memory; one resuming
    /// from further back is read from Kafka. Each costs a record's frame (its payload and
    /// about 200 bytes), and all of them together stay within their share of
    /// `WSKAFKA_MEMORY_BUDGET`, the oldest dropped first; 0 keeps none.
    #[arg(long, env = "WSKAFKA_RECENT_RECORDS", default_value_t = 1_000)]
    pub recent_records: usize,

    /// Sockets the hub holds open at once; more get HTTP 503, which a load balancer can take
    /// as the cue to try another hub. Keep it below the process's descriptor limit
    /// (`ulimit -n`), or accepts fail with no answer at all.
    #[arg(long, env = "WSKAFKA_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Sockets opened without a token that may wait for their `auth` frame at once, across
    /// the hub; more get HTTP 503.
    #[arg(long, env = "WSKAFKA_MAX_AWAITING_AUTH", default_value_t = 1024)]
    pub max_awaiting_auth: usize,
}

impl TopicsConfig {
    /// Whether `topic` is Kafka's own or closed by `WSKAFKA_CLOSED_TOPICS`.
    pub fn is_closed(&self, topic: &str) -> bool {
        is_kafka_internal(topic) || any_matches(&self.closed_topics, topic)
    }

    /// `is_closed` as anchored regexes, for librdkafka's `topic.blacklist`.
    pub fn closed_regexes(&self) -> Vec<String> {
        std::iter::once("^__.*$".to_string())
            .chain(self.closed_topics.iter().map(TopicPattern::regex))
            .collect()
    }
}

impl ServeConfig {
    /// Whether `topic` is Kafka's own or closed by `WSKAFKA_CLOSED_TOPICS`: the hub never
    /// touches it.
    pub fn is_closed_topic(&self, topic: &str) -> bool {
        self.topics.is_closed(topic)
    }

    /// Whether `topic` is keyed by user id (`WSKAFKA_USER_TOPICS`).
    pub fn is_user_topic(&self, topic: &str) -> bool {
        any_matches(&self.topics.user_topics, topic)
    }

    /// Whether records of `topic` must carry a key: a room (`WSKAFKA_KEYED_TOPICS`) or a user.
    pub fn is_keyed_topic(&self, topic: &str) -> bool {
        any_matches(&self.topics.keyed_topics, topic) || self.is_user_topic(topic)
    }

    /// The topics the hub writes itself.
    pub fn own_topics(&self) -> Vec<&str> {
        let roster = self
            .presence
            .presence_topic
            .is_some()
            .then_some(self.presence.roster_topic.as_str());
        [
            self.topics.control_topic.as_str(),
            self.topics.fleet_topic.as_str(),
            self.presence.signal_topic.as_str(),
        ]
        .into_iter()
        .chain(self.presence.presence_topic.as_deref())
        .chain(roster)
        .collect()
    }

    /// The hub's own topics, which clients can never publish to; the control topic cannot be
    /// read either.
    pub fn is_internal_topic(&self, topic: &str) -> bool {
        self.own_topics().contains(&topic)
    }

    /// The hub's own topics that clients can never read either: all but presence events.
    pub fn is_hidden_topic(&self, topic: &str) -> bool {
        self.is_internal_topic(topic) && self.presence.presence_topic.as_deref() != Some(topic)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Clone)]
pub struct JwtConfig {
    /// HS256 secret that tokens are signed with, of at least 32 bytes. One source of keys
    /// is required: this, the public key, or the auth file.
    #[arg(long, env = "WSKAFKA_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM public key that tokens are signed with: RSA (RS256 and the other RS and PS
    /// algorithms), EC (ES256, ES384) or Ed25519 (EdDSA). Read again on SIGHUP.
    #[arg(long, env = "WSKAFKA_JWT_PUBLIC_KEY", conflicts_with = "jwt_secret")]
    pub jwt_public_key: Option<PathBuf>,

    /// A TOML file of token issuers, each with its JWKS URL or keys, audience, user-id
    /// claim and grant rules (see the README); read again on SIGHUP. Instead of the secret
    /// or the public key, whose issuer and audience settings it replaces.
    #[arg(long, env = "WSKAFKA_AUTH_CONFIG", conflicts_with_all = ["jwt_secret", "jwt_public_key", "jwt_audience", "jwt_issuer"])]
    pub auth_config: Option<PathBuf>,

    /// Required `aud` claim, when set.
    #[arg(long, env = "WSKAFKA_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Required `iss` claim, when set.
    #[arg(long, env = "WSKAFKA_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Clock skew allowed on `exp`, both at connect and for closing live sockets.
    #[arg(long, env = "WSKAFKA_JWT_LEEWAY", default_value = "30s", value_parser = humantime::parse_duration)]
    pub jwt_leeway: Duration,
}

#[derive(Args)]
pub struct TokenArgs {
    /// The user id (`sub` claim).
    #[arg(long)]
    pub sub: String,

    /// What the token may publish to: topic globs, each optionally narrowed to keys
    /// (`chat.rooms:team-*`, `{sub}` for the user's own id); repeat or separate with commas.
    #[arg(long, value_delimiter = ',')]
    pub publish: Vec<Grant>,

    /// What the token may subscribe to, in the same form.
    #[arg(long, value_delimiter = ',')]
    pub subscribe: Vec<Grant>,

    /// What the token may read with `history` beyond what it may subscribe to (which it may
    /// read too), in the same form.
    #[arg(long, value_delimiter = ',')]
    pub history: Vec<Grant>,

    /// Whose online status the token may ask for: globs over user ids, `{sub}` for the
    /// token's own.
    #[arg(long, value_delimiter = ',')]
    pub online: Vec<UserPattern>,

    /// Lifetime of the token.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,

    #[arg(long, env = "WSKAFKA_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
}

impl ServeConfig {
    /// Gathers the Kafka properties from the file and the flags, once, before any client
    /// is made.
    pub fn load_kafka_settings(&mut self) -> Result<(), SettingsError> {
        self.kafka.kafka_settings = KafkaSettings::load(&Sources {
            file: self.kafka.kafka_config.as_deref(),
            common: &self.kafka.properties,
            producer: &self.kafka.kafka_producer,
            consumer: &self.kafka.kafka_consumer,
        })?;
        Ok(())
    }
}

/// A browser origin, `scheme://host[:port]`, in the form browsers send in `Origin` (host in
/// lower case, no default port), so that it compares as a string.
fn parse_origin(s: &str) -> Result<String, String> {
    let refused = || format!("expected an origin such as https://admin.example.com, got {s:?}");
    let url = url::Url::parse(s.trim()).map_err(|_| refused())?;
    let bare = url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none();
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() || !bare {
        return Err(refused());
    }
    Ok(url.origin().ascii_serialization())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_origins_are_written_as_browsers_send_them() {
        assert_eq!(
            parse_origin("https://Admin.Example.com:443/").unwrap(),
            "https://admin.example.com"
        );
        assert_eq!(
            parse_origin("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        for wrong in [
            "admin.example.com",
            "https://a.example/admin",
            "ftp://a.example",
            "*",
        ] {
            assert!(parse_origin(wrong).is_err(), "{wrong}");
        }
    }

    #[test]
    fn serve_requires_topics_and_at_most_one_key() {
        // Which key is missing, and how to give one, `auth::KeyError::Missing` says.
        let parse = |args: &[&str]| Cli::try_parse_from([&["wskafka", "serve"], args].concat());
        assert!(parse(&["--jwt-secret", "s"]).is_err());
        assert!(
            parse(&[
                "--topics",
                "chat.*",
                "--jwt-secret",
                "s",
                "--jwt-public-key",
                "k.pem"
            ])
            .is_err()
        );
        assert!(parse(&["--topics", "chat/*", "--jwt-secret", "s"]).is_err());
        let Ok(Cli {
            command: Command::Serve(config),
        }) = parse(&[
            "--topics",
            "chat.*,notifications",
            "--jwt-secret",
            "s",
            "-X",
            "a=1",
            "-X",
            "b=2",
        ])
        else {
            panic!("valid configuration refused")
        };
        assert_eq!(config.topics.topics.len(), 2);
        for closed in [
            "__consumer_offsets",
            "__transaction_state",
            "__share_group_state",
            "_schemas",
            "connect-offsets",
        ] {
            assert!(config.is_closed_topic(closed), "{closed}");
        }
        assert!(!config.is_closed_topic("chat._schemas"));
        assert!(!config.is_closed_topic("_internal-ish"));
        assert_eq!(config.kafka.properties, ["a=1", "b=2"]);
    }
}
