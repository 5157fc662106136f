//! The standalone Relay server: the hub behind a WebSocket endpoint (`/ws`), the REST API
//! (`/api/…`), probes and Prometheus metrics, on hyper 1 and tokio-tungstenite.
//!
//! The binary `relay-server` is a thin `main.rs` over this library. Embedders build the same
//! service themselves: [`App`] handles any `http::Request` (mount it in hyper, axum, …), and
//! [`Relay`] binds, serves and shuts down gracefully. A cluster node builds its hub through
//! [`ClusterNode::join`] (nodes sharing Postgres, `LISTEN`/`NOTIFY`) or [`NatsNode::join`]
//! (nodes fanning out over NATS, each receiving only the channels it serves).
//!
//! ```no_run
//! use std::sync::Arc;
//! use relay_core::Hub;
//! use relay_server::{Authenticator, Config, Relay};
//! use relay_store::MemoryStore;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = Config::default();
//! config.auth.secret = Some("a development secret of 32+ bytes, not this one".into());
//! let auth = Authenticator::from_config(&config.auth)?;
//! let hub = Hub::new(Arc::new(MemoryStore::new()), config.hub_config());
//! let relay = Relay::bind(config, hub, auth).await?;
//! println!("listening on {}", relay.local_addr()?);
//! relay.serve(async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(()) }
//! ```

mod app;
mod assets;
mod auth;
mod body;
mod cluster;
mod config;
pub mod frame;
mod limits;
mod metrics;
mod nats;
mod rest;
mod serve;
mod sse;
#[cfg(feature = "testing")]
pub mod testing;
mod wire;
mod ws;

pub use app::{App, Body};
pub use auth::{AuthError, Authenticator, Claims};
pub use cluster::{ClusterError, ClusterNode};
pub use config::{
    AuthConfig, ClusterMode, Config, ConfigError, CreateRuleConfig, ForwardedHeader,
    FrameLimitsConfig, JwtAlgorithm, LimitConfig, LogFormat, PersistenceConfig, PolicyConfig,
    PublishRuleConfig, RateLimitsConfig, SubscribeRuleConfig,
};
pub use limits::RemoteAddr;
pub use metrics::Metrics;
pub use nats::{NatsError, NatsNode, NatsOptions, channel_from_subject, channel_subject};
pub use serve::Relay;
