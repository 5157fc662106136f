//! Error codes carried by `error` frames and REST errors, and WebSocket close codes.

use serde::{Deserialize, Serialize};

/// The `code` of an `error` frame or REST error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed or invalid frame or request.
    BadRequest,
    /// Missing, invalid or expired credentials.
    Unauthorized,
    /// Authenticated, but not allowed to do this.
    Forbidden,
    /// The thing asked for does not exist.
    NotFound,
    /// The request contradicts the current state (a channel name taken with other members,
    /// removing a channel's last owner).
    Conflict,
    /// A frame or payload over its size limit.
    TooLarge,
    /// Too many requests.
    RateLimited,
    /// A dependency (the store) is unavailable; retry later.
    Unavailable,
    /// A bug on the server side.
    Internal,
}

impl ErrorCode {
    /// The wire spelling (`"bad_request"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    /// The HTTP status that goes with this code on the REST API.
    pub fn http_status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::Conflict => 409,
            Self::TooLarge => 413,
            Self::RateLimited => 429,
            Self::Unavailable => 503,
            Self::Internal => 500,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// WebSocket close codes used by the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: normal closure.
    Normal,
    /// 1001: the server is shutting down; reconnect with backoff.
    GoingAway,
    /// 1002: the peer broke the WebSocket protocol.
    ProtocolError,
    /// 1007: a text frame that is not UTF-8.
    InvalidPayload,
    /// 1009: a frame over the size limit.
    TooBig,
    /// 4001: unauthorized or token expired.
    Unauthorized,
    /// 4002: idle or stale connection closed.
    Idle,
    /// 4008: slow consumer; its queue overflowed. Reconnect with `since` to recover.
    SlowConsumer,
    /// 4029: rate limit exceeded repeatedly.
    RateLimited,
}

impl CloseCode {
    /// The numeric close code.
    pub fn code(self) -> u16 {
        match self {
            Self::Normal => 1000,
            Self::GoingAway => 1001,
            Self::ProtocolError => 1002,
            Self::InvalidPayload => 1007,
            Self::TooBig => 1009,
            Self::Unauthorized => 4001,
            Self::Idle => 4002,
            Self::SlowConsumer => 4008,
            Self::RateLimited => 4029,
        }
    }

    /// The close code for a number, if the protocol defines it.
    pub fn from_code(code: u16) -> Option<Self> {
        Some(match code {
            1000 => Self::Normal,
            1001 => Self::GoingAway,
            1002 => Self::ProtocolError,
            1007 => Self::InvalidPayload,
            1009 => Self::TooBig,
            4001 => Self::Unauthorized,
            4002 => Self::Idle,
            4008 => Self::SlowConsumer,
            4029 => Self::RateLimited,
            _ => return None,
        })
    }

    /// Whether a client should reconnect (with backoff) after this close.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::GoingAway | Self::Idle | Self::SlowConsumer | Self::RateLimited
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_round_trip_through_numbers() {
        for code in [
            CloseCode::Normal,
            CloseCode::GoingAway,
            CloseCode::ProtocolError,
            CloseCode::InvalidPayload,
            CloseCode::TooBig,
            CloseCode::Unauthorized,
            CloseCode::Idle,
            CloseCode::SlowConsumer,
            CloseCode::RateLimited,
        ] {
            assert_eq!(CloseCode::from_code(code.code()), Some(code));
        }
        assert_eq!(CloseCode::from_code(4999), None);
    }

    #[test]
    fn error_codes_serialize_as_snake_case() {
        let json = serde_json::to_string(&ErrorCode::BadRequest).unwrap();
        assert_eq!(json, r#""bad_request""#);
        assert_eq!(ErrorCode::RateLimited.as_str(), "rate_limited");
    }
}
