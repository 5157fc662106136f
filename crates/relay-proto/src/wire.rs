//! Decoding support shared by client and server frames: the flat wire shape of a frame (every
//! field optional, so that a missing field becomes a precise error rather than serde's generic
//! one) and [`DecodeError`].

use std::fmt;

use serde::{Deserialize, Deserializer};

use crate::channel::{ChannelName, UserId};
use crate::types::FrameId;

/// Why a frame could not be decoded. Carries the frame's `"id"` when it could be read, so that
/// the `error` reply can echo it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DecodeError {
    /// The frame's `"id"`, when the frame was JSON enough to carry one.
    pub id: Option<FrameId>,
    /// What was wrong.
    pub kind: DecodeErrorKind,
}

/// The kinds of [`DecodeError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeErrorKind {
    /// Not a JSON object (syntax error, wrong top-level type or not UTF-8).
    InvalidJson(String),
    /// The object has no `"type"`.
    MissingType,
    /// The `"type"` is not one this side understands.
    UnknownType(String),
    /// A field the frame type requires is absent.
    MissingField {
        /// The frame type.
        frame: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// A field is present but invalid (wrong JSON type, bad channel name, …).
    InvalidField {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            DecodeErrorKind::InvalidJson(e) => write!(f, "invalid JSON: {e}"),
            DecodeErrorKind::MissingType => f.write_str("missing field `type`"),
            DecodeErrorKind::UnknownType(t) => write!(f, "unknown frame type {t:?}"),
            DecodeErrorKind::MissingField { frame, field } => {
                write!(f, "missing field `{field}` for `{frame}`")
            }
            DecodeErrorKind::InvalidField { field, reason } => {
                write!(f, "invalid field `{field}`: {reason}")
            }
        }
    }
}

impl DecodeError {
    pub(crate) fn new(id: Option<FrameId>, kind: DecodeErrorKind) -> Self {
        Self { id, kind }
    }

    /// Turns a serde failure into a decode error, recovering the frame id when possible.
    pub(crate) fn from_serde(bytes: &[u8], err: &serde_json::Error) -> Self {
        #[derive(Deserialize)]
        struct IdOnly {
            #[serde(default)]
            id: Option<FrameId>,
        }
        let id = serde_json::from_slice::<IdOnly>(bytes)
            .ok()
            .and_then(|f| f.id);
        Self::new(id, DecodeErrorKind::InvalidJson(err.to_string()))
    }
}

/// Deserializes a present field into `Some`, so that `"payload": null` is a payload of `null`
/// rather than a missing payload.
pub(crate) fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// Field access helpers for the flat wire structs.
pub(crate) struct Fields<'f> {
    pub(crate) frame: &'static str,
    pub(crate) id: &'f Option<FrameId>,
}

impl Fields<'_> {
    pub(crate) fn require<T>(
        &self,
        field: &'static str,
        value: Option<T>,
    ) -> Result<T, DecodeError> {
        value.ok_or_else(|| {
            DecodeError::new(
                self.id.clone(),
                DecodeErrorKind::MissingField {
                    frame: self.frame,
                    field,
                },
            )
        })
    }

    pub(crate) fn channel(&self, value: Option<&str>) -> Result<ChannelName, DecodeError> {
        let raw = self.require("channel", value)?;
        ChannelName::parse(raw).map_err(|e| self.invalid("channel", e.to_string()))
    }

    pub(crate) fn user(
        &self,
        field: &'static str,
        value: Option<&str>,
    ) -> Result<UserId, DecodeError> {
        let raw = self.require(field, value)?;
        UserId::parse(raw).map_err(|e| self.invalid(field, e.to_string()))
    }

    pub(crate) fn invalid(&self, field: &'static str, reason: String) -> DecodeError {
        DecodeError::new(
            self.id.clone(),
            DecodeErrorKind::InvalidField { field, reason },
        )
    }
}
