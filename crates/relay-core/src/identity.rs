//! [`Identity`]: who is behind a connection or request, as established by the transport.

use relay_proto::{ChannelName, UserId};

/// What a token grants beyond being a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// An end user.
    #[default]
    User,
    /// A trusted backend service: bypasses channel authorization and may publish to
    /// server-only namespaces.
    Service,
}

/// An authenticated principal. The hub trusts it: verifying tokens is the transport's job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user (`sub` claim).
    pub user: UserId,
    /// The role (`role` claim).
    pub role: Role,
    /// The `channels` claim: allowed names or `prefix*` patterns, for namespaces with the
    /// [`Claim`](crate::SubscribeRule::Claim) rule.
    pub channels: Option<Vec<String>>,
}

impl Identity {
    /// A plain user with no `channels` claim.
    pub fn user(user: UserId) -> Self {
        Self {
            user,
            role: Role::User,
            channels: None,
        }
    }

    /// A service principal.
    pub fn service(user: UserId) -> Self {
        Self {
            user,
            role: Role::Service,
            channels: None,
        }
    }

    /// Whether the `channels` claim allows `channel` (exact name or `prefix*`).
    pub fn claims(&self, channel: &ChannelName) -> bool {
        let name = channel.as_str();
        self.channels
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => pattern == name,
            })
    }

    /// Whether this is a service principal.
    pub fn is_service(&self) -> bool {
        self.role == Role::Service
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_claim_matches_exact_names_and_prefixes() {
        let id = Identity {
            channels: Some(vec!["list:*".into(), "chat:1".into()]),
            ..Identity::user(UserId::parse("a").unwrap())
        };
        let ch = |n| ChannelName::parse(n).unwrap();
        assert!(id.claims(&ch("list:123")));
        assert!(id.claims(&ch("chat:1")));
        assert!(!id.claims(&ch("chat:10")));
        assert!(!Identity::user(UserId::parse("b").unwrap()).claims(&ch("list:1")));
    }
}
