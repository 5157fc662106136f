//! `relay-client`: a typed async Rust client for a Relay server.
//!
//! - [`Client`] keeps one WebSocket open and reconnects on its own (exponential backoff with
//!   full jitter) after network errors and 1001/4002/4008 closes; after 4001 it asks the
//!   token provider for a new token and never retries a refused one.
//! - [`Client::subscribe`] returns a [`Subscription`], a `Stream` of [`Event`]s. Across
//!   reconnects every subscription is restored with `since` = the last seq it yielded and
//!   duplicates are filtered, so each persistent message arrives exactly once, in order. A
//!   subscription further behind than the server replays (`max_recovery`: a client offline
//!   for a week) reads what it missed over REST, page by page, waiting on the application
//!   so that memory stays bounded, then goes on live. Only messages the channel's history no
//!   longer holds are skipped, with an explicit [`Event::Gap`]. Dropping it unsubscribes.
//! - [`Client::publish`] resolves to the server's [`Ack`] (seq, message id) or a typed
//!   [`ClientError`], within a timeout. Exactly once: each persistent publish carries an
//!   idempotency key and is sent again after a reconnect if its ack was lost, so it is
//!   stored once; one that was sent but never acknowledged in time fails with
//!   [`ClientError::Unconfirmed`], naming the key to settle it with
//!   [`Client::publish_with_key`].
//! - Chat features: [`Client::edit`] and [`Client::delete`] (exactly once, like publish;
//!   the revisions arrive as messages with a [`Message::reference`]), [`Client::mark_read`]
//!   and [`Event::Read`] (read markers kept in step across devices),
//!   [`Client::subscribe_latest`] (only the newest message waits for a slow reader), and
//!   [`Client::signal_with_receipt`] (`delivered`, `held` or `expired`, with a time to live
//!   for targets not connected yet; later outcomes as [`Event::Receipt`]).
//! - [`RestClient`] reads history (the raw log, or [`RestClient::history_current`] with
//!   edits and deletes applied), channels and members over HTTP.
//!
//! Plain `ws://`/`http://` only: terminate TLS in front of the server.
//!
//! ```no_run
//! use relay_client::{Client, Event};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Chat {
//!     text: String,
//! }
//!
//! # async fn fetch_token() -> Result<String, std::io::Error> { Ok(String::new()) }
//! # async fn run() -> Result<(), relay_client::ClientError> {
//! let client = Client::builder("ws://127.0.0.1:8080/ws")
//!     .token_provider(|| async { fetch_token().await })
//!     .connect()
//!     .await?;
//!
//! let mut room = client.subscribe("chat:42").await?;
//! let ack = client.publish("chat:42", &Chat { text: "hello".into() }).await?;
//! println!("stored as #{:?}", ack.seq);
//!
//! while let Some(event) = room.next_event().await {
//!     match event {
//!         Event::Message(m) => println!("{:?}: {}", m.from, m.payload::<Chat>()?.text),
//!         Event::Gap { since, resumed_at } => println!("missed {since}..{resumed_at}: reload history"),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```

mod backoff;
mod client;
mod driver;
mod error;
mod rest;
mod subs;
mod subscription;

pub use client::{Ack, Client, ClientBuilder, ConnectionEvent, SignalReceipt, TokenProvider};
pub use error::{BoxError, ClientError};
pub use relay_proto as proto;
pub use rest::{ChannelInfo, CurrentMessage, HistoryPage, MemberInfo, RestClient};
pub use subscription::{Event, Message, Subscription};
