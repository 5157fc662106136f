//! [`ClientError`].

use relay_proto::ErrorCode;

/// A boxed error from a token provider.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not a `ws://` or `wss://` URL the client can use.
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// The token provider failed.
    #[error("token provider failed: {0}")]
    Token(#[source] BoxError),
    /// The WebSocket connection could not be established.
    #[error("cannot connect: {0}")]
    Connect(#[source] Box<tokio_tungstenite::tungstenite::Error>),
    /// The server refused the token (close 4001).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The server answered with an `error` frame (or a REST error).
    #[error("{code}: {message}")]
    Server {
        /// The protocol error code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// No reply within the request timeout. For a publish: it was never sent (the client was
    /// disconnected all along), so it is not stored.
    #[error("no reply within the request timeout")]
    Timeout,
    /// A persistent publish was sent (perhaps more than once, across reconnects) but no ack
    /// arrived within the request timeout: it may or may not be stored. Publishing again
    /// with this key ([`Client::publish_with_key`](crate::Client::publish_with_key)) is
    /// safe: the server stores it at most once and answers with its seq.
    #[error("publish not confirmed within the request timeout (idempotency key {idempotency_key})")]
    Unconfirmed {
        /// The publish's idempotency key.
        idempotency_key: String,
    },
    /// The connection dropped before the reply arrived. Persistent publishes never fail with
    /// this (they are sent again after the reconnect); an ephemeral one may or may not have
    /// been delivered.
    #[error("disconnected before the reply arrived")]
    Disconnected,
    /// The client was closed.
    #[error("client closed")]
    Closed,
    /// This client already has a subscription to the channel.
    #[error("already subscribed to {0}")]
    AlreadySubscribed(String),
    /// A payload could not be (de)serialized.
    #[error("payload: {0}")]
    Payload(#[from] serde_json::Error),
    /// An HTTP request failed.
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    /// The server sent something this client does not understand.
    #[error("unexpected reply: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The protocol error code, when the server refused the operation.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Server { code, .. } => Some(*code),
            Self::Unauthorized(_) => Some(ErrorCode::Unauthorized),
            _ => None,
        }
    }
}
