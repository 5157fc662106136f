//! The standalone Relay server: WebSocket and REST transport over the hub. Built out in the
//! server issue; this crate currently only re-exports the engine it will serve.

pub use relay_core as core;
