//! wskafka: a real-time hub joining WebSocket clients to Apache Kafka.
//!
//! A request's path: [`server`] verifies the token and upgrades, [`connection`] parses
//! frames ([`protocol`]), checks them against the exposed topics and the token's grants
//! ([`topic`], [`auth`]) and publishes through [`kafka`]. A record's path: the [`kafka`]
//! consumer thread serialises it once and the [`registry`] queues it for each subscriber
//! whose filter it passes. A subscription that starts in the past is first served by a
//! [`replay`] up to where the live stream took over.
//!
//! Durable state (read positions, revocations, open sessions) lives in a database
//! ([`store`]); revocations travel between hubs over a Kafka topic ([`control`]), and
//! [`presence`] writes who connects and leaves to another.

pub mod admin;
pub mod auth;
pub mod clock;
pub mod config;
pub mod connection;
pub mod control;
pub mod hub;
pub mod kafka;
pub mod metrics;
pub mod policy;
pub mod presence;
pub mod protocol;
pub mod registry;
pub mod replay;
pub mod server;
pub mod stop;
pub mod store;
pub mod subscription;
pub mod topic;
pub mod web;
