//! [`ClientFrame`]: frames a client sends to the server.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::channel::{ChannelName, UserId};
use crate::key::IdempotencyKey;
use crate::types::{FrameId, Payload, Seq};
use crate::wire::{DecodeError, DecodeErrorKind, Fields, present};

/// Longest `event` string, in bytes.
pub const MAX_EVENT_LEN: usize = 255;

/// Checks an `event` name: at most [`MAX_EVENT_LEN`] bytes, no control characters (a NUL
/// could not even be stored). Returns why it is refused.
pub fn validate_event(event: &str) -> Result<(), &'static str> {
    if event.len() > MAX_EVENT_LEN {
        return Err("longer than 255 bytes");
    }
    if event.chars().any(char::is_control) {
        return Err("holds a control character");
    }
    Ok(())
}

/// The event of a publish that edits the message its `ref` names.
pub const EDIT_EVENT: &str = "edit";
/// The event of a publish that deletes the message its `ref` names.
pub const DELETE_EVENT: &str = "delete";

/// What a publish with a `ref` does to the message it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revision {
    /// `event: "edit"`: its payload replaces the message's in the current view.
    Edit,
    /// `event: "delete"`: the message and its edits lose their stored payloads.
    Delete,
}

impl Revision {
    /// The revision an event names, if any (`"edit"` or `"delete"`).
    pub fn of_event(event: Option<&str>) -> Option<Self> {
        match event {
            Some(EDIT_EVENT) => Some(Self::Edit),
            Some(DELETE_EVENT) => Some(Self::Delete),
            _ => None,
        }
    }

    /// Checks the pairing rules of `event`, `ref` and `ephemeral` on a publish: `ref` goes
    /// with the events `edit` and `delete` only, names a seq (1 to 2^63 - 1), and makes the
    /// publish a revision, which is never ephemeral. Without `ref`, an `edit` or `delete`
    /// event is an ordinary message (as it was before revisions existed). Returns the
    /// revision, or which field is wrong and why.
    pub fn check(
        event: Option<&str>,
        reference: Option<Seq>,
        ephemeral: bool,
    ) -> Result<Option<Self>, (&'static str, &'static str)> {
        let Some(reference) = reference else {
            return Ok(None);
        };
        let Some(revision) = Self::of_event(event) else {
            return Err(("ref", "only an \"edit\" or \"delete\" event has a ref"));
        };
        if reference.0 == 0 || reference.0 > i64::MAX as u64 {
            return Err(("ref", "a seq is a number from 1 to 2^63 - 1"));
        }
        if ephemeral {
            return Err(("ephemeral", "an edit or delete is stored, never ephemeral"));
        }
        Ok(Some(revision))
    }
}

/// A frame from client to server. Every variant may carry a client-chosen `id` that the
/// server echoes in each reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Join a channel; with `since`, first replay every stored message after it.
    Subscribe {
        /// Echoed in replies.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<FrameId>,
        /// The channel.
        channel: ChannelName,
        /// The last seq the client has seen.
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<Seq>,
        /// `reliable` (every message, in order) or `latest` (only the newest message is
        /// ever waiting for the client).
        #[serde(skip_serializing_if = "SubscribeMode::is_reliable")]
        mode: SubscribeMode,
    },
    /// Leave a channel.
    Unsubscribe {
        /// Echoed in replies.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<FrameId>,
        /// The channel.
        channel: ChannelName,
    },
    /// Publish a message to a channel.
    Publish {
        /// Echoed in the `ack`.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<FrameId>,
        /// The channel.
        channel: ChannelName,
        /// Opaque JSON.
        payload: Payload,
        /// An optional event name (`"ADDED"`, `"typing"`, …).
        #[serde(skip_serializing_if = "Option::is_none")]
        event: Option<String>,
        /// Live-only: not stored, no seq, not echoed to the publisher.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        ephemeral: bool,
        /// Makes a persistent publish safe to retry: a repeat with the same key gets the
        /// first one's ack and stores nothing (ignored for ephemeral publishes).
        #[serde(skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<IdempotencyKey>,
        /// With `event` `"edit"` or `"delete"`: the seq of the message it edits or deletes.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Seq>,
    },
    /// Send a payload to every connection of one user subscribed to the channel.
    Signal {
        /// Echoed in replies.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<FrameId>,
        /// The channel.
        channel: ChannelName,
        /// The target user.
        to: UserId,
        /// Opaque JSON (an SDP offer, an ICE candidate, …).
        payload: Payload,
        /// An optional event name (`"offer"`, `"answer"`, `"ice"`).
        #[serde(skip_serializing_if = "Option::is_none")]
        event: Option<String>,
        /// Asks for `receipt` frames: at once `delivered` or `held`, and after `held`, one of
        /// `delivered` or `expired`.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        receipt: bool,
        /// Milliseconds the server holds the signal for a target with no connection to
        /// deliver it to, delivering it when the target subscribes; absent or 0: not held.
        #[serde(skip_serializing_if = "Option::is_none")]
        ttl_ms: Option<u64>,
    },
    /// Marks the channel read up to `seq` for the user (monotonic: a lower seq changes
    /// nothing). Answered with `read` carrying the stored marker.
    Read {
        /// Echoed in the reply.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<FrameId>,
        /// The channel.
        channel: ChannelName,
        /// The highest seq read.
        seq: Seq,
    },
    /// Ask for the channel's online users.
    Presence {
        /// Echoed in the reply.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<FrameId>,
        /// The channel.
        channel: ChannelName,
    },
    /// Application-level ping; the server answers `pong`.
    Ping {
        /// Echoed in the reply.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<FrameId>,
    },
}

/// How a subscription delivers a channel's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscribeMode {
    /// Every message, each once, in seq order; a client too slow to keep up is closed
    /// with 4008 and recovers with `since`.
    #[default]
    Reliable,
    /// For state that only matters at its newest (prices, cursors, dashboards): a slow
    /// client gets the channel's newest message, older ones it had not been sent yet are
    /// dropped, and it is never closed with 4008 for this subscription.
    Latest,
}

impl SubscribeMode {
    /// Whether this is the default mode.
    pub fn is_reliable(&self) -> bool {
        *self == Self::Reliable
    }
}

#[derive(Deserialize)]
struct WireClientFrame<'a> {
    #[serde(rename = "type", borrow, default)]
    ty: Option<Cow<'a, str>>,
    #[serde(default)]
    id: Option<FrameId>,
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(default)]
    since: Option<Seq>,
    #[serde(default)]
    seq: Option<Seq>,
    #[serde(default, deserialize_with = "present")]
    payload: Option<Payload>,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    ephemeral: Option<bool>,
    #[serde(borrow, default)]
    to: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    idempotency_key: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    mode: Option<Cow<'a, str>>,
    #[serde(rename = "ref", default)]
    reference: Option<Seq>,
    #[serde(default)]
    receipt: Option<bool>,
    #[serde(default)]
    ttl_ms: Option<u64>,
}

impl ClientFrame {
    /// Decodes one frame from JSON bytes. Never panics; every failure is a [`DecodeError`]
    /// that carries the frame's `id` when it could be read.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let wire: WireClientFrame<'_> =
            serde_json::from_slice(bytes).map_err(|e| DecodeError::from_serde(bytes, &e))?;
        let Some(ty) = wire.ty.as_deref() else {
            return Err(DecodeError::new(wire.id, DecodeErrorKind::MissingType));
        };
        let frame = match ty {
            "subscribe" => "subscribe",
            "unsubscribe" => "unsubscribe",
            "publish" => "publish",
            "signal" => "signal",
            "presence" => "presence",
            "read" => "read",
            "ping" => "ping",
            other => {
                let kind = DecodeErrorKind::UnknownType(other.chars().take(64).collect());
                return Err(DecodeError::new(wire.id, kind));
            }
        };
        let f = Fields {
            frame,
            id: &wire.id,
        };
        let event = match wire.event {
            Some(e) => match validate_event(&e) {
                Ok(()) => Some(e),
                Err(why) => return Err(f.invalid("event", why.to_owned())),
            },
            None => None,
        };
        let channel = wire.channel.as_deref();
        Ok(match frame {
            "subscribe" => Self::Subscribe {
                channel: f.channel(channel)?,
                since: wire.since,
                mode: match wire.mode.as_deref() {
                    None | Some("reliable") => SubscribeMode::Reliable,
                    Some("latest") => SubscribeMode::Latest,
                    Some(_) => {
                        return Err(f.invalid("mode", "expected \"reliable\" or \"latest\"".into()));
                    }
                },
                id: wire.id,
            },
            "unsubscribe" => Self::Unsubscribe {
                channel: f.channel(channel)?,
                id: wire.id,
            },
            "publish" => Self::Publish {
                channel: f.channel(channel)?,
                payload: match (wire.payload, Revision::of_event(event.as_deref())) {
                    (Some(payload), _) => payload,
                    // A delete needs no payload of its own.
                    (None, Some(Revision::Delete)) if wire.reference.is_some() => Payload::null(),
                    (None, _) => f.require("payload", None)?,
                },
                ephemeral: {
                    let ephemeral = wire.ephemeral.unwrap_or(false);
                    Revision::check(event.as_deref(), wire.reference, ephemeral)
                        .map_err(|(field, why)| f.invalid(field, why.to_owned()))?;
                    ephemeral
                },
                event,
                reference: wire.reference,
                idempotency_key: wire
                    .idempotency_key
                    .as_deref()
                    .map(IdempotencyKey::parse)
                    .transpose()
                    .map_err(|e| f.invalid("idempotency_key", e.to_string()))?,
                id: wire.id,
            },
            "signal" => Self::Signal {
                channel: f.channel(channel)?,
                to: f.user("to", wire.to.as_deref())?,
                payload: f.require("payload", wire.payload)?,
                event,
                receipt: wire.receipt.unwrap_or(false),
                ttl_ms: wire.ttl_ms.filter(|ttl| *ttl > 0),
                id: wire.id,
            },
            "presence" => Self::Presence {
                channel: f.channel(channel)?,
                id: wire.id,
            },
            "read" => Self::Read {
                channel: f.channel(channel)?,
                seq: f.require("seq", wire.seq)?,
                id: wire.id,
            },
            _ => Self::Ping { id: wire.id },
        })
    }

    /// Encodes the frame as JSON text.
    pub fn encode(&self) -> String {
        // Serializing these types cannot fail: every map key is a string and every value is
        // plain data.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The frame's `id`, if any.
    pub fn id(&self) -> Option<&FrameId> {
        match self {
            Self::Subscribe { id, .. }
            | Self::Unsubscribe { id, .. }
            | Self::Publish { id, .. }
            | Self::Signal { id, .. }
            | Self::Presence { id, .. }
            | Self::Read { id, .. }
            | Self::Ping { id } => id.as_ref(),
        }
    }

    /// The channel the frame is about, if any.
    pub fn channel(&self) -> Option<&ChannelName> {
        match self {
            Self::Subscribe { channel, .. }
            | Self::Unsubscribe { channel, .. }
            | Self::Publish { channel, .. }
            | Self::Signal { channel, .. }
            | Self::Presence { channel, .. }
            | Self::Read { channel, .. } => Some(channel),
            Self::Ping { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(json: &str) -> DecodeErrorKind {
        ClientFrame::decode(json.as_bytes()).unwrap_err().kind
    }

    #[test]
    fn publish_decodes_with_opaque_payload() {
        let f = ClientFrame::decode(
            br#"{"type":"publish","id":"a1","channel":"thread:x","payload":{"ciphertext":"AA==","iv":"b"}}"#,
        )
        .unwrap();
        let ClientFrame::Publish {
            id,
            channel,
            payload,
            ephemeral,
            event,
            idempotency_key,
            reference,
        } = f
        else {
            panic!()
        };
        assert_eq!(reference, None);
        assert_eq!(id, Some(FrameId::from("a1")));
        assert_eq!(channel.as_str(), "thread:x");
        assert_eq!(payload.as_str(), r#"{"ciphertext":"AA==","iv":"b"}"#);
        assert!(!ephemeral);
        assert_eq!(event, None);
        assert_eq!(idempotency_key, None);
    }

    #[test]
    fn edits_and_deletes_carry_a_ref_and_a_delete_needs_no_payload() {
        let f = ClientFrame::decode(
            br#"{"type":"publish","channel":"chat:1","event":"edit","ref":4,"payload":{"t":"x"}}"#,
        )
        .unwrap();
        assert!(matches!(
            f,
            ClientFrame::Publish { reference: Some(Seq(4)), ref event, .. } if event.as_deref() == Some("edit")
        ));
        let f = ClientFrame::decode(
            br#"{"type":"publish","channel":"chat:1","event":"delete","ref":4}"#,
        )
        .unwrap();
        let ClientFrame::Publish { payload, .. } = &f else {
            panic!()
        };
        assert_eq!(payload.as_str(), "null");
        assert!(f.encode().contains(r#""ref":4"#));
    }

    #[test]
    fn ref_and_the_revision_events_go_together() {
        let invalid = |json: &str, field: &str| match kind(json) {
            DecodeErrorKind::InvalidField { field: f, .. } => assert_eq!(f, field, "{json}"),
            other => panic!("{json}: {other:?}"),
        };
        // A ref without an edit or delete event, and the reverse.
        invalid(
            r#"{"type":"publish","channel":"c","payload":1,"ref":1}"#,
            "ref",
        );
        invalid(
            r#"{"type":"publish","channel":"c","payload":1,"event":"x","ref":1}"#,
            "ref",
        );
        // Without a ref, "edit" and "delete" are ordinary events, as before revisions.
        assert!(matches!(
            ClientFrame::decode(br#"{"type":"publish","channel":"c","payload":1,"event":"edit"}"#),
            Ok(ClientFrame::Publish {
                reference: None,
                ..
            })
        ));
        assert!(matches!(
            kind(r#"{"type":"publish","channel":"c","event":"delete"}"#),
            DecodeErrorKind::MissingField {
                field: "payload",
                ..
            }
        ));
        invalid(
            r#"{"type":"publish","channel":"c","payload":1,"event":"edit","ref":9223372036854775808}"#,
            "ref",
        );
        invalid(
            r#"{"type":"publish","channel":"c","payload":1,"event":"edit","ref":0}"#,
            "ref",
        );
        // Never ephemeral.
        invalid(
            r#"{"type":"publish","channel":"c","payload":1,"event":"edit","ref":1,"ephemeral":true}"#,
            "ephemeral",
        );
        // An edit needs its payload.
        assert!(matches!(
            kind(r#"{"type":"publish","channel":"c","event":"edit","ref":1}"#),
            DecodeErrorKind::MissingField {
                field: "payload",
                ..
            }
        ));
        // A ref of the wrong type, like any mistyped field.
        assert!(matches!(
            kind(r#"{"type":"publish","channel":"c","payload":1,"event":"edit","ref":"x"}"#),
            DecodeErrorKind::InvalidJson(_)
        ));
    }

    #[test]
    fn publish_carries_its_idempotency_key() {
        let f = ClientFrame::decode(
            br#"{"type":"publish","channel":"c","payload":1,"idempotency_key":"k-1"}"#,
        )
        .unwrap();
        assert!(matches!(
            f,
            ClientFrame::Publish { idempotency_key: Some(k), .. } if k.as_str() == "k-1"
        ));
        assert!(matches!(
            kind(r#"{"type":"publish","channel":"c","payload":1,"idempotency_key":"a b"}"#),
            DecodeErrorKind::InvalidField {
                field: "idempotency_key",
                ..
            }
        ));
        assert!(matches!(
            kind(r#"{"type":"publish","channel":"c","payload":1,"idempotency_key":7}"#),
            DecodeErrorKind::InvalidJson(_)
        ));
    }

    #[test]
    fn null_payload_is_a_payload() {
        let f = ClientFrame::decode(br#"{"type":"publish","channel":"c","payload":null}"#).unwrap();
        assert!(matches!(f, ClientFrame::Publish { payload, .. } if payload.as_str() == "null"));
    }

    #[test]
    fn errors_name_what_is_wrong_and_keep_the_id() {
        assert!(matches!(kind("{"), DecodeErrorKind::InvalidJson(_)));
        assert!(matches!(kind("[1]"), DecodeErrorKind::InvalidJson(_)));
        assert_eq!(kind(r#"{"channel":"c"}"#), DecodeErrorKind::MissingType);
        assert_eq!(
            kind(r#"{"type":"dance"}"#),
            DecodeErrorKind::UnknownType("dance".into())
        );
        assert!(matches!(
            kind(r#"{"type":"publish","channel":"c","payload":1,"event":"a\u0000b"}"#),
            DecodeErrorKind::InvalidField { field: "event", .. }
        ));
        assert_eq!(
            kind(r#"{"type":"publish","channel":"c"}"#),
            DecodeErrorKind::MissingField {
                frame: "publish",
                field: "payload"
            }
        );
        let err =
            ClientFrame::decode(br#"{"type":"subscribe","id":7,"channel":"a b"}"#).unwrap_err();
        assert_eq!(err.id, Some(FrameId::from(7)));
        assert!(matches!(
            err.kind,
            DecodeErrorKind::InvalidField {
                field: "channel",
                ..
            }
        ));
        let err =
            ClientFrame::decode(br#"{"type":"subscribe","id":"q","channel":"c","since":"x"}"#)
                .unwrap_err();
        assert_eq!(err.id, Some(FrameId::from("q")));
    }
}
