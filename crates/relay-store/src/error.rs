//! [`StoreError`].

use relay_proto::ChannelName;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The operation needs a channel record that does not exist.
    #[error("channel {0} does not exist")]
    ChannelNotFound(ChannelName),
    /// The backing service cannot be reached or refused the operation; retry later.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store refused this data (a value it cannot hold); other operations are fine.
    #[error("the store refused the data: {0}")]
    Invalid(String),
    /// Stored data violates an invariant (a bug or manual tampering).
    #[error("store data is inconsistent: {0}")]
    Corrupt(String),
}
