//! [`IdempotencyKey`]: the client-chosen key that makes a publish safe to retry.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// Why an idempotency key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key is empty.
    #[error("the idempotency key is empty")]
    Empty,
    /// The key is longer than [`MAX_IDEMPOTENCY_KEY_LEN`] bytes.
    #[error("the idempotency key is {0} bytes long, at most 128 are allowed")]
    TooLong(usize),
    /// The key holds a character outside visible ASCII.
    #[error("the idempotency key holds {0:?}, only visible ASCII (! to ~) is allowed")]
    BadChar(char),
}

/// The key of a publish that may be retried (`idempotency_key` on a `publish` frame, the
/// `Idempotency-Key` header on REST): 1..=128 bytes of visible ASCII (`!` to `~`), so that it
/// is a valid HTTP header value as it is. A UUID is a good key.
///
/// A repeat of a persistent publish with the same key, on the same channel, by the same
/// publisher, within the server's window stores nothing and gets the first publish's ack.
///
/// Cloning is cheap (the text is shared).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(Arc<str>);

impl IdempotencyKey {
    /// Validates a key.
    pub fn parse(key: &str) -> Result<Self, KeyError> {
        if key.is_empty() {
            return Err(KeyError::Empty);
        }
        if key.len() > MAX_IDEMPOTENCY_KEY_LEN {
            return Err(KeyError::TooLong(key.len()));
        }
        if let Some(bad) = key.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(KeyError::BadChar(bad));
        }
        Ok(Self(Arc::from(key)))
    }

    /// A fresh unique key (a UUID v7: time-ordered, with 74 random bits), for clients that
    /// key every publish.
    pub fn random() -> Self {
        Self(Arc::from(uuid::Uuid::now_v7().to_string()))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for IdempotencyKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for IdempotencyKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_visible_ascii_up_to_128_bytes() {
        assert!(IdempotencyKey::parse("3f2c1b9e-8a1d-4c5e-9f00-0123456789ab").is_ok());
        assert!(IdempotencyKey::parse("order:42/retry#1").is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(128)).is_ok());
        assert_eq!(IdempotencyKey::parse(""), Err(KeyError::Empty));
        assert_eq!(
            IdempotencyKey::parse(&"k".repeat(129)),
            Err(KeyError::TooLong(129))
        );
        assert_eq!(IdempotencyKey::parse("a b"), Err(KeyError::BadChar(' ')));
        assert_eq!(IdempotencyKey::parse("é"), Err(KeyError::BadChar('é')));
        assert_eq!(IdempotencyKey::parse("a\nb"), Err(KeyError::BadChar('\n')));
    }

    #[test]
    fn random_keys_are_valid_and_distinct() {
        let (a, b) = (IdempotencyKey::random(), IdempotencyKey::random());
        assert_ne!(a, b);
        assert_eq!(IdempotencyKey::parse(a.as_str()), Ok(a));
    }
}
