//! The real server on an ephemeral port, driven by real WebSocket and HTTP clients. One module
//! per real-world use, each written from the client's point of view.

#![allow(clippy::unwrap_used)]

mod support;

mod auth;
mod backend_topics;
mod bad_input;
mod browser;
mod cluster;
mod cluster_binaries;
mod cluster_nats;
mod direct_messages;
mod durability;
mod edits;
mod group_chat;
mod idempotency;
mod latest_mode;
mod limits;
mod liveness;
mod membership;
mod read_markers;
mod shutdown;
mod sse;
mod thread_relay;
