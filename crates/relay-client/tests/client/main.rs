//! The client against the real server, started in-process on an ephemeral port.

#![allow(clippy::unwrap_used)]

mod support;

mod catch_up;
mod edits;
mod exactly_once;
mod heartbeat;
mod membership;
mod receipts;
mod reconnect;
mod rest;
mod roundtrip;
mod slow_consumer;
mod token_expiry;
