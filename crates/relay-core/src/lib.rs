//! The Relay hub: connections, subscriptions, presence, fan-out, policies, the publish
//! pipeline and gap-free recovery. It knows no socket, no HTTP and no SQL: a transport turns
//! socket frames into [`ClientFrame`](relay_proto::ClientFrame)s, hands them to a
//! [`Connection`], and drains the connection's [`Outbox`] to the socket.
//!
//! The invariants it keeps (tests enforce each):
//! - every subscriber sees a channel's persistent messages in seq order, each once, with no
//!   gap, from the point its subscription started (`subscribe {since}` included), however
//!   publishes race the subscribe;
//! - a publish is acked only after the store committed it;
//! - a slow connection never slows anyone else: its bounded outbox overflows and closes it
//!   with 4008;
//! - unsubscribe and disconnect leave nothing behind.
//!
//! Chat features live here too: edits and deletes of stored messages ([`Publish::edit`],
//! [`Publish::delete`], checked for the sender, an owner or admin, or a service), read
//! markers, `latest`-mode subscriptions, and signals with a receipt or a time to live, held
//! in memory (bounded by [`HubConfig::max_held_signals`], [`MAX_HELD_PER_TARGET`] and
//! [`MAX_HELD_PER_CONNECTION`]) until their target subscribes.
//!
//! ```
//! use std::sync::Arc;
//! use relay_core::{Hub, HubConfig, Identity, Publish};
//! use relay_proto::{ChannelName, ClientFrame, Payload, ServerFrame, SubscribeMode, UserId};
//! use relay_store::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let hub = Hub::new(Arc::new(MemoryStore::new()), HubConfig::default());
//! let alice = hub.connect(Identity::user(UserId::parse("alice").unwrap()));
//! let channel = ChannelName::parse("list:123").unwrap();
//! alice.handle(ClientFrame::Subscribe {
//!     id: None,
//!     channel: channel.clone(),
//!     since: None,
//!     mode: SubscribeMode::Reliable,
//! }).await;
//!
//! // A backend service embedding the hub broadcasts an event to the topic.
//! let payload = Payload::from_json(r#"{"item":42}"#).unwrap();
//! hub.publish(Publish::new(channel, payload).event("ADDED")).await.unwrap();
//!
//! let mut frames = Vec::new();
//! alice.outbox().try_drain(&mut frames);
//! let decoded: Vec<ServerFrame> =
//!     frames.iter().map(|f| ServerFrame::decode(f.as_bytes()).unwrap()).collect();
//! assert!(matches!(&decoded[0], ServerFrame::Subscribed { .. }));
//! assert!(matches!(&decoded[1], ServerFrame::Message { event: Some(e), .. } if e == "ADDED"));
//! # }
//! ```

mod channels;
mod cluster;
mod connection;
mod error;
mod held;
mod hub;
mod identity;
mod outbox;
mod policy;
mod publish;
mod rate;
mod reads;
mod repair;
mod subscriber;
mod subscribers;

pub use channels::{CreateChannel, MAX_LISTED_NAMES, MAX_PAGE, MemberUpdate};
pub use cluster::{Backplane, BackplaneStatus, BoxFuture, commit_pointer};
pub use connection::Connection;
pub use error::HubError;
pub use held::{MAX_HELD_PER_CONNECTION, MAX_HELD_PER_TARGET};
pub use hub::{Action, Hub, HubConfig, HubCounters, HubStats};
pub use identity::{Identity, Role};
pub use outbox::{Batch, CloseReason, Outbox, PushError};
pub use policy::{CreateRule, NamespacePolicy, Persistence, Policies, PublishRule, SubscribeRule};
pub use publish::{Publish, Published};
pub use rate::{FrameLimits, RateLimit, TokenBucket};
pub use reads::MAX_UNREAD_PAGE;
pub use subscriber::ConnId;
