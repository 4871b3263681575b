//! wskafka: a real-time hub joining WebSocket clients to Apache Kafka.
//!
//! A request's path: [`server`] admits the socket ([`hub`]) and upgrades, [`connection`]
//! parses its frames ([`protocol`]), checks each against the exposed topics and the token's
//! grants ([`policy`]) and publishes through [`kafka`]. A record's path: the [`kafka`]
//! consumer thread serialises it once and the [`registry`] queues it for each subscriber
//! whose filter it passes; the socket's [`subscription`]s write it. A subscription that
//! starts in the past is first served by a [`replay`], which meets the live stream at a seam
//! with no gap and no duplicate.
//!
//! Durable state (read positions, revocations, open sessions) lives in a database
//! ([`store`]); revocations travel between hubs over a Kafka topic ([`control`]), and
//! [`presence`] writes who connects and leaves to another.
//!
//! Each module depends only on modules that do not depend on it (`scripts/check-modules`
//! checks): [`protocol`], [`topic`], [`metrics`], [`stop`], [`clock`], [`logins`] and
//! [`memory`] depend on none.

mod auth;
mod budget;
mod clock;
mod config;
mod connection;
mod control;
mod fleet;
mod grant;
mod heartbeat;
mod history;
mod hub;
mod ingest;
mod kafka;
mod kafka_settings;
mod memory;
mod metrics;
mod presence;
mod protocol;
mod push;
mod recent;
mod registry;
mod replay;
mod retries;
mod server;
mod stop;
mod store;
mod subscription;
mod topic;

// What the binary, the tests, the benchmarks and the fuzz targets use.
pub use auth::{Claims, Grants, check_secret, mint};
pub use config::{Cli, Command, LogFormat};
pub use protocol::{Request, parse, peek_id};
pub use server::{READ_BUFFER, WRITE_BUFFER, serve};
pub use store::{Claim, Store};
pub use topic::{TopicPattern, is_valid_topic};
