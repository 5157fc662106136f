//! [`Body`]: the body of every response: a whole buffer, or a stream of chunks (Server-Sent
//! Events), so that one service type serves both.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::Full;
use tokio::sync::mpsc;

/// The body type of every response.
#[derive(Debug, Default)]
pub struct Body(Kind);

#[derive(Debug)]
enum Kind {
    Full(Full<Bytes>),
    /// Chunks as the sender produces them; the body ends when the sender is dropped. The
    /// guard lives as long as the body, which may outlive its sender while the server still
    /// writes to a slow client.
    Stream {
        chunks: mpsc::Receiver<Bytes>,
        _guard: Guard,
    },
}

/// Something held for as long as a streamed body exists.
struct Guard {
    _held: Box<dyn Send + Sync>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Guard")
    }
}

impl Default for Kind {
    fn default() -> Self {
        Self::Full(Full::default())
    }
}

impl Body {
    /// A body streamed from `chunks`, ending when their sender is dropped. Dropping the body
    /// (the client went away) makes the sender's `send` fail. `guard` is dropped with the
    /// body, not before.
    pub(crate) fn stream(chunks: mpsc::Receiver<Bytes>, guard: impl Send + Sync + 'static) -> Self {
        Self(Kind::Stream {
            chunks,
            _guard: Guard {
                _held: Box::new(guard),
            },
        })
    }
}

impl<T: Into<Bytes>> From<T> for Body {
    fn from(bytes: T) -> Self {
        Self(Kind::Full(Full::new(bytes.into())))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.get_mut().0 {
            Kind::Full(full) => Pin::new(full).poll_frame(cx),
            Kind::Stream { chunks, .. } => chunks
                .poll_recv(cx)
                .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Full(full) => full.is_end_stream(),
            Kind::Stream { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Full(full) => full.size_hint(),
            Kind::Stream { .. } => SizeHint::default(),
        }
    }
}
