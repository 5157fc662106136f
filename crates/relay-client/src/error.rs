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
    /// No reply within the request timeout.
    #[error("no reply within the request timeout")]
    Timeout,
    /// The connection dropped before the reply arrived; a publish may or may not have been
    /// stored (its seq will show up in the subscription if it was).
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
