//! Hub behaviour with in-process connections: no sockets, no ports.

#![allow(clippy::unwrap_used)]

mod support;

mod authorization;
mod cluster;
mod delivery;
mod interleavings;
mod membership;
mod presence;
mod receipts;
mod recovery;
mod slow_consumer;
