//! [`MemberRole`]: what a member of a channel record may do with it.

use serde::{Deserialize, Serialize};

/// A member's role in a channel record. Ordered by rights: `Member < Admin < Owner`.
///
/// The creator of a record is its `Owner`; owners grant `Admin`; owners and admins manage
/// members (docs/protocol.md, "Membership", has the whole table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    /// A plain member: may read and, where the namespace says so, publish; may leave.
    Member,
    /// Manages plain members.
    Admin,
    /// Manages everything about the record, roles included.
    Owner,
}

impl MemberRole {
    /// The wire spelling (`"owner"`, `"admin"`, `"member"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Member => "member",
            Self::Admin => "admin",
            Self::Owner => "owner",
        }
    }

    /// The role for its wire spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "member" => Self::Member,
            "admin" => Self::Admin,
            "owner" => Self::Owner,
            _ => return None,
        })
    }
}

impl std::fmt::Display for MemberRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_through_their_wire_spelling() {
        for role in [MemberRole::Member, MemberRole::Admin, MemberRole::Owner] {
            assert_eq!(MemberRole::parse(role.as_str()), Some(role));
            let json = serde_json::to_string(&role).unwrap();
            assert_eq!(json, format!("\"{role}\""));
        }
        assert_eq!(MemberRole::parse("root"), None);
        assert!(MemberRole::Owner > MemberRole::Admin && MemberRole::Admin > MemberRole::Member);
    }
}
