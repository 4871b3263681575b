//! The integration tests, one binary so that a change links once: each module an area,
//! each test against the real hub binary, a real Apache Kafka broker and, where it matters,
//! real PostgreSQL and Chromium (see `common`).

mod common;

mod admin;
mod auth;
mod bad_input;
mod browser;
mod durable;
mod faults;
mod http;
mod identity;
mod interest;
mod kafka;
mod lifecycle;
mod limits;
mod memory;
mod once;
mod operate;
mod presence;
mod pubsub;
mod push;
mod react;
mod resume;
mod rooms;
mod secure;
mod sse;
mod startup;
mod streams;
