//! Small value types of the protocol: sequence numbers, frame ids, message ids, timestamps and
//! opaque payloads.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// A per-channel message sequence number: 1, 2, 3, … with no gap. `Seq(0)` means "nothing yet".
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl Seq {
    /// The seq before any message.
    pub const ZERO: Seq = Seq(0);

    /// The seq that follows this one.
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A server-assigned message id (UUID v7, so ids sort by creation time).
pub type MessageId = uuid::Uuid;

/// The client-chosen `"id"` of a frame, echoed in every reply to it: a string or a number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FrameId {
    /// A numeric id (kept exactly as sent).
    Number(serde_json::Number),
    /// A string id.
    Text(String),
}

impl From<u64> for FrameId {
    fn from(n: u64) -> Self {
        Self::Number(n.into())
    }
}

impl From<&str> for FrameId {
    fn from(s: &str) -> Self {
        Self::Text(s.to_owned())
    }
}

/// A server timestamp with millisecond precision, on the wire as RFC 3339 UTC
/// (`2026-11-21T10:00:00.123Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp {
    millis: u64,
}

impl Timestamp {
    /// The current time of the system clock.
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    /// A timestamp from milliseconds since the Unix epoch.
    pub fn from_unix_millis(millis: u64) -> Self {
        Self { millis }
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_millis(self) -> u64 {
        self.millis
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        let millis = t
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Self { millis }
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> Self {
        UNIX_EPOCH + Duration::from_millis(t.millis)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(
            &humantime::format_rfc3339_millis(SystemTime::from(*self)),
            f,
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        humantime::parse_rfc3339_weak(&s)
            .map(Timestamp::from)
            .map_err(serde::de::Error::custom)
    }
}

/// An opaque JSON value that the server never inspects: kept as the exact text the publisher
/// sent and written out again unchanged (an end-to-end-encrypted blob stays byte-identical).
#[derive(Clone)]
pub struct Payload(Box<RawValue>);

impl Payload {
    /// Checks that `json` is one JSON value and keeps its text.
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        RawValue::from_string(json.to_owned()).map(Self)
    }

    /// The JSON `null`: what a deleted message's payload becomes.
    pub fn null() -> Self {
        Self(RawValue::NULL.to_owned())
    }

    /// Whether the payload is the JSON `null`.
    pub fn is_null(&self) -> bool {
        self.as_str() == "null"
    }

    /// Serializes any value into a payload.
    pub fn from_value<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(Self)
    }

    /// Deserializes the payload into a typed value.
    pub fn to_value<'a, T: Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// Length of the JSON text in bytes (what payload size limits count).
    pub fn len(&self) -> usize {
        self.0.get().len()
    }

    /// A payload is never empty text; this exists for clippy's sake and is always false.
    pub fn is_empty(&self) -> bool {
        self.0.get().is_empty()
    }
}

impl From<Box<RawValue>> for Payload {
    fn from(raw: Box<RawValue>) -> Self {
        Self(raw)
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Payload {}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(d).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_is_rfc3339_utc_with_millis() {
        let ts = Timestamp::from_unix_millis(1_763_719_200_123);
        let json = serde_json::to_string(&ts).unwrap();
        assert_eq!(json, r#""2025-11-21T10:00:00.123Z""#);
        let back: Timestamp = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ts);
    }

    #[test]
    fn payload_keeps_the_exact_text() {
        let p = Payload::from_json(r#"{ "ciphertext": "AAEC", "iv":"x" }"#).unwrap();
        assert_eq!(p.as_str(), r#"{ "ciphertext": "AAEC", "iv":"x" }"#);
        assert!(Payload::from_json("{").is_err());
        assert!(Payload::from_json("1 2").is_err());
    }
}
