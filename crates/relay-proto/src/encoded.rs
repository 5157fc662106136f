//! [`EncodedFrame`]: a server frame serialized once, shared by every recipient.

use bytes::Bytes;

/// A server frame already serialized to JSON text.
///
/// Fan-out encodes a published message once and hands every subscriber a clone of this value,
/// which is a reference-count bump, never a copy or a second serialization. The bytes are
/// always valid UTF-8 (they come from `serde_json`), so a transport may send them as a text
/// frame without validating them again.
#[derive(Clone, PartialEq, Eq)]
pub struct EncodedFrame(Bytes);

impl EncodedFrame {
    /// Wraps JSON text that is known at compile time.
    pub const fn from_static(json: &'static str) -> Self {
        Self(Bytes::from_static(json.as_bytes()))
    }

    pub(crate) fn from_json_vec(json: Vec<u8>) -> Self {
        Self(Bytes::from(json))
    }

    /// The frame as text.
    pub fn as_str(&self) -> &str {
        // The bytes come from `String`/`serde_json` output or a `&'static str`, so they are
        // UTF-8; a failure here would be a bug in this module, and yields an empty frame.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The frame as bytes (valid UTF-8).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The shared buffer (valid UTF-8).
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the frame is empty (never, for a real frame).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for EncodedFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
