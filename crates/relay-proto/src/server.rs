//! [`ServerFrame`]: frames the server sends to a client.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::channel::{ChannelName, UserId};
use crate::codes::ErrorCode;
use crate::encoded::EncodedFrame;
use crate::types::{FrameId, MessageId, Payload, Seq, Timestamp};
use crate::wire::{DecodeError, DecodeErrorKind, Fields, present};

/// A frame from server to client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// First frame after a successful upgrade.
    Welcome {
        /// The server's id for this connection.
        connection_id: String,
        /// The authenticated user.
        user: UserId,
        /// Interval of the server's WebSocket pings.
        heartbeat_ms: u64,
    },
    /// Reply to `subscribe`.
    Subscribed {
        /// Echo of the request's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<FrameId>,
        /// The channel.
        channel: ChannelName,
        /// The channel's latest seq when the subscription started (0 if none).
        seq: Seq,
        /// Present when `since` was sent: whether every message after it was replayed.
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        /// Online users, when the namespace has presence.
        #[serde(skip_serializing_if = "Option::is_none")]
        presence: Option<Vec<UserId>>,
    },
    /// Reply to `unsubscribe`, or a subscription the server removed (then with `reason`).
    Unsubscribed {
        /// Echo of the request's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<FrameId>,
        /// The channel.
        channel: ChannelName,
        /// Why the server removed the subscription.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A published message.
    Message {
        /// The channel.
        channel: ChannelName,
        /// Server-assigned message id.
        id: MessageId,
        /// Per-channel seq (persistent messages only).
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<Seq>,
        /// The publisher (absent for server publishes).
        #[serde(skip_serializing_if = "Option::is_none")]
        from: Option<UserId>,
        /// Event name.
        #[serde(skip_serializing_if = "Option::is_none")]
        event: Option<String>,
        /// Opaque JSON, exactly as published (`null` once the message was deleted).
        payload: Payload,
        /// Server time of the publish.
        ts: Timestamp,
        /// For an `edit` or `delete` event: the seq of the message it changes.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Seq>,
    },
    /// Reply to `publish` once durable (or delivered, if ephemeral).
    Ack {
        /// Echo of the request's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<FrameId>,
        /// The channel.
        channel: ChannelName,
        /// The stored message's id.
        message_id: MessageId,
        /// Its seq (persistent messages only).
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<Seq>,
    },
    /// A signal addressed to this user.
    Signal {
        /// The channel.
        channel: ChannelName,
        /// The sender.
        from: UserId,
        /// Opaque JSON.
        payload: Payload,
        /// Event name.
        #[serde(skip_serializing_if = "Option::is_none")]
        event: Option<String>,
        /// The server's id of a signal sent with `receipt` or `ttl_ms`: the same on every
        /// delivery of it, so that a repeat can be recognised.
        #[serde(skip_serializing_if = "Option::is_none")]
        signal: Option<MessageId>,
    },
    /// What became of a signal sent with `receipt: true`; only to the connection that sent it.
    Receipt {
        /// Echo of the `signal` frame's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<FrameId>,
        /// The channel.
        channel: ChannelName,
        /// The signal's target.
        to: UserId,
        /// The server's id of the signal.
        signal: MessageId,
        /// `delivered`, `held` or `expired`.
        status: ReceiptStatus,
    },
    /// A user's first connection subscribed.
    Join {
        /// The channel.
        channel: ChannelName,
        /// The user.
        user: UserId,
    },
    /// A user's last connection left.
    Leave {
        /// The channel.
        channel: ChannelName,
        /// The user.
        user: UserId,
    },
    /// Reply to `presence`.
    Presence {
        /// Echo of the request's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<FrameId>,
        /// The channel.
        channel: ChannelName,
        /// Online users.
        users: Vec<UserId>,
    },
    /// A user's read marker in a channel: the reply to `read` (with its `id`), and sent
    /// to the user's other connections subscribed to the channel whenever it moves.
    Read {
        /// Echo of the request's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<FrameId>,
        /// The channel.
        channel: ChannelName,
        /// The highest seq the user has read there.
        seq: Seq,
    },
    /// Reply to `ping`.
    Pong {
        /// Echo of the request's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<FrameId>,
    },
    /// A refused or malformed frame; the connection stays open.
    Error {
        /// Echo of the request's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<FrameId>,
        /// Machine-readable code.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
        /// The channel concerned, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<ChannelName>,
    },
}

#[derive(Deserialize)]
struct WireServerFrame<'a> {
    #[serde(rename = "type", borrow, default)]
    ty: Option<Cow<'a, str>>,
    #[serde(default)]
    id: Option<FrameId>,
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<Seq>,
    #[serde(default)]
    recovered: Option<bool>,
    #[serde(default)]
    presence: Option<Vec<UserId>>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(borrow, default)]
    from: Option<Cow<'a, str>>,
    #[serde(default)]
    event: Option<String>,
    #[serde(default, deserialize_with = "present")]
    payload: Option<Payload>,
    #[serde(default)]
    ts: Option<Timestamp>,
    #[serde(rename = "ref", default)]
    reference: Option<Seq>,
    #[serde(borrow, default)]
    to: Option<Cow<'a, str>>,
    #[serde(default)]
    signal: Option<MessageId>,
    #[serde(default)]
    status: Option<ReceiptStatus>,
    #[serde(default)]
    message_id: Option<MessageId>,
    #[serde(default)]
    connection_id: Option<String>,
    #[serde(borrow, default)]
    user: Option<Cow<'a, str>>,
    #[serde(default)]
    heartbeat_ms: Option<u64>,
    #[serde(default)]
    users: Option<Vec<UserId>>,
    #[serde(default)]
    code: Option<ErrorCode>,
    #[serde(default)]
    message: Option<String>,
}

impl ServerFrame {
    /// Serializes the frame once into shareable bytes.
    pub fn encode(&self) -> EncodedFrame {
        // Serializing these types cannot fail (string keys, plain data); should it ever, the
        // client gets an `internal` error frame rather than a panic.
        match serde_json::to_vec(self) {
            Ok(json) => EncodedFrame::from_json_vec(json),
            Err(_) => EncodedFrame::from_static(
                r#"{"type":"error","code":"internal","message":"frame encoding failed"}"#,
            ),
        }
    }

    /// Decodes a server frame (what a client does). Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let w: WireServerFrame<'_> =
            serde_json::from_slice(bytes).map_err(|e| DecodeError::from_serde(bytes, &e))?;
        let Some(ty) = w.ty.as_deref() else {
            return Err(DecodeError::new(w.id, DecodeErrorKind::MissingType));
        };
        let frame: &'static str = match ty {
            "welcome" => "welcome",
            "subscribed" => "subscribed",
            "unsubscribed" => "unsubscribed",
            "message" => "message",
            "ack" => "ack",
            "signal" => "signal",
            "join" => "join",
            "leave" => "leave",
            "presence" => "presence",
            "pong" => "pong",
            "read" => "read",
            "receipt" => "receipt",
            "error" => "error",
            other => {
                let kind = DecodeErrorKind::UnknownType(other.chars().take(64).collect());
                return Err(DecodeError::new(w.id, kind));
            }
        };
        let f = Fields { frame, id: &w.id };
        let channel = w.channel.as_deref();
        Ok(match frame {
            "welcome" => Self::Welcome {
                connection_id: f.require("connection_id", w.connection_id)?,
                user: f.user("user", w.user.as_deref())?,
                heartbeat_ms: f.require("heartbeat_ms", w.heartbeat_ms)?,
            },
            "subscribed" => Self::Subscribed {
                channel: f.channel(channel)?,
                seq: f.require("seq", w.seq)?,
                recovered: w.recovered,
                presence: w.presence,
                id: w.id,
            },
            "unsubscribed" => Self::Unsubscribed {
                channel: f.channel(channel)?,
                reason: w.reason,
                id: w.id,
            },
            "message" => {
                let id = match f.require("id", w.id.as_ref())? {
                    FrameId::Text(s) => {
                        MessageId::parse_str(s).map_err(|e| f.invalid("id", e.to_string()))?
                    }
                    FrameId::Number(_) => return Err(f.invalid("id", "expected a UUID".into())),
                };
                Self::Message {
                    channel: f.channel(channel)?,
                    id,
                    seq: w.seq,
                    from: w
                        .from
                        .as_deref()
                        .map(|u| f.user("from", Some(u)))
                        .transpose()?,
                    event: w.event,
                    payload: f.require("payload", w.payload)?,
                    ts: f.require("ts", w.ts)?,
                    reference: w.reference,
                }
            }
            "ack" => Self::Ack {
                channel: f.channel(channel)?,
                message_id: f.require("message_id", w.message_id)?,
                seq: w.seq,
                id: w.id,
            },
            "signal" => Self::Signal {
                channel: f.channel(channel)?,
                from: f.user("from", w.from.as_deref())?,
                payload: f.require("payload", w.payload)?,
                event: w.event,
                signal: w.signal,
            },
            "receipt" => Self::Receipt {
                channel: f.channel(channel)?,
                to: f.user("to", w.to.as_deref())?,
                signal: f.require("signal", w.signal)?,
                status: f.require("status", w.status)?,
                id: w.id,
            },
            "join" => Self::Join {
                channel: f.channel(channel)?,
                user: f.user("user", w.user.as_deref())?,
            },
            "leave" => Self::Leave {
                channel: f.channel(channel)?,
                user: f.user("user", w.user.as_deref())?,
            },
            "presence" => Self::Presence {
                channel: f.channel(channel)?,
                users: f.require("users", w.users)?,
                id: w.id,
            },
            "pong" => Self::Pong { id: w.id },
            "read" => Self::Read {
                channel: f.channel(channel)?,
                seq: f.require("seq", w.seq)?,
                id: w.id,
            },
            _ => Self::Error {
                code: f.require("code", w.code)?,
                message: f.require("message", w.message)?,
                channel: channel.map(|c| f.channel(Some(c))).transpose()?,
                id: w.id,
            },
        })
    }
}

/// What became of a signal sent with `receipt: true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptStatus {
    /// A connection of the target received it.
    Delivered,
    /// No connection of the target could take it yet: held up to its `ttl_ms`, then
    /// `delivered` or `expired` follows.
    Held,
    /// No connection of the target received it before its `ttl_ms` ran out (or at once,
    /// without a `ttl_ms`).
    Expired,
}

impl ReceiptStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Held => "held",
            Self::Expired => "expired",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_frame_has_the_documented_shape() {
        let frame = ServerFrame::Message {
            channel: ChannelName::parse("chat:1").unwrap(),
            id: MessageId::nil(),
            seq: Some(Seq(3)),
            from: Some(UserId::parse("alice").unwrap()),
            event: None,
            payload: Payload::from_json(r#"{"t":"hi"}"#).unwrap(),
            ts: Timestamp::from_unix_millis(0),
            reference: None,
        };
        assert_eq!(
            frame.encode().as_str(),
            r#"{"type":"message","channel":"chat:1","id":"00000000-0000-0000-0000-000000000000","seq":3,"from":"alice","payload":{"t":"hi"},"ts":"1970-01-01T00:00:00.000Z"}"#
        );
        assert_eq!(
            ServerFrame::decode(frame.encode().as_bytes()).unwrap(),
            frame
        );
    }
}
