//! Validated names: channels (with namespace and user limit) and user ids.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest channel name or user id, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// Why a channel name or user id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("name is empty")]
    Empty,
    /// The name is longer than 255 bytes.
    #[error("name is {0} bytes long, at most 255 are allowed")]
    TooLong(usize),
    /// The name holds a character outside the allowed set.
    #[error("name holds {0:?}, only A-Z a-z 0-9 and _:.,#@=- are allowed")]
    BadChar(char),
}

fn is_channel_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'.' | b',' | b'#' | b'@' | b'=' | b'-')
}

/// A channel name: 1..=255 bytes of `[A-Za-z0-9_:.,#@=-]`.
///
/// The part before the first `:` is the [namespace](Self::namespace). A name that contains `#`
/// is *user-limited*: only the users listed after the last `#`, separated by commas, may use it
/// (`dm:#alice,bob`). A `#` followed by no user limits the channel to nobody.
///
/// Cloning is cheap (the text is shared).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    /// Validates `name` against the channel grammar.
    pub fn parse(name: &str) -> Result<Self, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong(name.len()));
        }
        if let Some(bad) = name.bytes().find(|b| !is_channel_char(*b)) {
            // Every allowed byte is ASCII, so the first refused byte starts a character.
            let offset = name.bytes().position(|b| b == bad).unwrap_or(0);
            let ch = name[offset..].chars().next().unwrap_or('\u{fffd}');
            return Err(NameError::BadChar(ch));
        }
        Ok(Self(Arc::from(name)))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The namespace: the part before the first `:`, or `""` (the default namespace).
    pub fn namespace(&self) -> &str {
        self.0.split_once(':').map_or("", |(ns, _)| ns)
    }

    /// True when the name carries a `#user,…` limit.
    pub fn is_user_limited(&self) -> bool {
        self.0.contains('#')
    }

    /// The users allowed on a user-limited channel; `None` when the channel is not limited.
    pub fn allowed_users(&self) -> Option<impl Iterator<Item = &str>> {
        let (_, list) = self.0.rsplit_once('#')?;
        Some(list.split(',').filter(|u| !u.is_empty()))
    }

    /// Whether `user` may use this channel as far as its user limit goes (always true for a
    /// channel without one).
    pub fn admits(&self, user: &UserId) -> bool {
        match self.allowed_users() {
            None => true,
            Some(mut users) => users.any(|u| u == user.as_str()),
        }
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for ChannelName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl AsRef<str> for ChannelName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for ChannelName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ChannelName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A user id: the `sub` claim of a token. 1..=255 bytes, no control characters, no `,` or `#`
/// (which would make user-limited channel names ambiguous).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(Arc<str>);

impl UserId {
    /// Validates a user id.
    pub fn parse(id: &str) -> Result<Self, NameError> {
        if id.is_empty() {
            return Err(NameError::Empty);
        }
        if id.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong(id.len()));
        }
        if let Some(bad) = id
            .chars()
            .find(|c| c.is_control() || matches!(c, ',' | '#'))
        {
            return Err(NameError::BadChar(bad));
        }
        Ok(Self(Arc::from(id)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for UserId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_is_the_part_before_the_first_colon() {
        assert_eq!(ChannelName::parse("list:123").unwrap().namespace(), "list");
        assert_eq!(ChannelName::parse("a:b:c").unwrap().namespace(), "a");
        assert_eq!(ChannelName::parse("lobby").unwrap().namespace(), "");
    }

    #[test]
    fn user_limited_channel_admits_only_listed_users() {
        let dm = ChannelName::parse("dm:#alice,bob").unwrap();
        assert!(dm.admits(&UserId::parse("alice").unwrap()));
        assert!(dm.admits(&UserId::parse("bob").unwrap()));
        assert!(!dm.admits(&UserId::parse("carol").unwrap()));
        let nobody = ChannelName::parse("dm:#").unwrap();
        assert!(!nobody.admits(&UserId::parse("alice").unwrap()));
        let open = ChannelName::parse("chat:1").unwrap();
        assert!(open.admits(&UserId::parse("carol").unwrap()));
    }

    #[test]
    fn bad_names_are_refused_with_the_reason() {
        assert_eq!(ChannelName::parse(""), Err(NameError::Empty));
        assert_eq!(ChannelName::parse("a b"), Err(NameError::BadChar(' ')));
        assert_eq!(ChannelName::parse("ä"), Err(NameError::BadChar('ä')));
        assert_eq!(
            ChannelName::parse(&"x".repeat(256)),
            Err(NameError::TooLong(256))
        );
        assert!(ChannelName::parse(&"x".repeat(255)).is_ok());
        assert!(ChannelName::parse("3f2c1b9e-8a1d-4c5e-9f00-0123456789ab").is_ok());
    }
}
