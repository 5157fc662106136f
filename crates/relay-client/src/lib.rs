//! The typed Rust client for the Relay protocol. Built out in the client issue; this crate
//! currently only re-exports the wire vocabulary it will speak.

pub use relay_proto as proto;
