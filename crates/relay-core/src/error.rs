//! [`HubError`]: why the hub refused or failed an operation, mapped onto protocol error codes.

use relay_proto::{ChannelName, ErrorCode};
use relay_store::StoreError;

/// A refused or failed hub operation. Each variant maps onto one protocol [`ErrorCode`].
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The frame or request is invalid.
    #[error("{0}")]
    BadRequest(String),
    /// The caller lacks the right.
    #[error("{0}")]
    Forbidden(String),
    /// A channel record, member or target user does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request contradicts the current state (a name taken with other members, the last
    /// owner's removal).
    #[error("{0}")]
    Conflict(String),
    /// A payload over the namespace's limit.
    #[error("payload is {size} bytes; namespace {namespace:?} allows at most {limit}")]
    TooLarge {
        /// The payload size.
        size: usize,
        /// The limit.
        limit: usize,
        /// The namespace.
        namespace: String,
    },
    /// A live event too large for the cluster's transport (one notification).
    #[error(
        "this live event is {size} bytes once encoded for the cluster; at most {limit} fit (channel {channel})"
    )]
    EventTooLarge {
        /// The encoded event's size.
        size: usize,
        /// What the transport carries.
        limit: usize,
        /// The channel.
        channel: ChannelName,
    },
    /// A bounded resource is full (held signals): retry later.
    #[error("{0}")]
    Busy(String),
    /// The store failed; nothing was acked.
    #[error("store unavailable, retry later")]
    Unavailable(#[source] StoreError),
    /// Stored data is inconsistent.
    #[error("internal error")]
    Internal(#[source] StoreError),
}

impl HubError {
    /// The protocol error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadRequest(_) => ErrorCode::BadRequest,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::Conflict(_) => ErrorCode::Conflict,
            Self::TooLarge { .. } | Self::EventTooLarge { .. } => ErrorCode::TooLarge,
            Self::Busy(_) => ErrorCode::RateLimited,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }

    pub(crate) fn forbidden(channel: &ChannelName, why: &str) -> Self {
        Self::Forbidden(format!("{why} on channel {channel}"))
    }
}

impl From<StoreError> for HubError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::ChannelNotFound(c) => Self::NotFound(format!("channel {c} does not exist")),
            StoreError::Invalid(why) => Self::BadRequest(format!("refused by the store: {why}")),
            e @ StoreError::Unavailable(_) => Self::Unavailable(e),
            e @ StoreError::Corrupt(_) => Self::Internal(e),
        }
    }
}
