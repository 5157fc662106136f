//! The Relay wire vocabulary: what travels over a WebSocket or REST body, and nothing else.
//!
//! This crate is pure data plus encode/decode. It owns:
//! - [`ClientFrame`] and [`ServerFrame`], the JSON frames of the protocol (`"type"` is the tag);
//! - validated newtypes for the things that must never be wrong once past the edge:
//!   [`ChannelName`] (with its namespace and `#alice,bob` user limit), [`UserId`], [`Seq`];
//! - the error codes ([`ErrorCode`]) and close codes ([`CloseCode`]) of the protocol;
//! - [`EncodedFrame`], a server frame serialized once and shared by reference among every
//!   recipient.
//!
//! It does no I/O, knows no socket and no clock of its own. Decoding any byte string returns a
//! typed [`DecodeError`] and never panics.
//!
//! ```
//! use relay_proto::{ClientFrame, ServerFrame, ChannelName, Seq};
//!
//! let frame = ClientFrame::decode(br#"{"type":"subscribe","channel":"chat:42","since":7,"id":1}"#)
//!     .expect("a valid frame");
//! match frame {
//!     ClientFrame::Subscribe { channel, since, .. } => {
//!         assert_eq!(channel.namespace(), "chat");
//!         assert_eq!(since, Some(Seq(7)));
//!     }
//!     other => panic!("unexpected {other:?}"),
//! }
//!
//! let pong = ServerFrame::Pong { id: None }.encode();
//! assert_eq!(pong.as_str(), r#"{"type":"pong"}"#);
//! # let _ = ChannelName::parse("dm:#alice,bob").unwrap();
//! ```

mod channel;
mod client;
mod codes;
mod encoded;
mod key;
mod role;
mod server;
mod types;
mod wire;

pub use channel::{ChannelName, MAX_NAME_LEN, NameError, UserId};
pub use client::{
    ClientFrame, DELETE_EVENT, EDIT_EVENT, MAX_EVENT_LEN, Revision, SubscribeMode, validate_event,
};
pub use codes::{CloseCode, ErrorCode};
pub use encoded::EncodedFrame;
pub use key::{IdempotencyKey, KeyError, MAX_IDEMPOTENCY_KEY_LEN};
pub use role::MemberRole;
pub use server::{ReceiptStatus, ServerFrame};
pub use types::{FrameId, MessageId, Payload, Seq, Timestamp};
pub use wire::{DecodeError, DecodeErrorKind};

/// The WebSocket subprotocol name of this version of the protocol.
pub const SUBPROTOCOL: &str = "relay.v1.json";
