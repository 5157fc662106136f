//! [`ReadOnly`]: the read half of a socket, presented to tungstenite as a full stream.
//!
//! The writer of a session does not go through tungstenite: every frame it sends is already
//! encoded JSON, framed by hand (`crate::frame`) into one buffer per batch and one `write`.
//! tungstenite still parses what the client sends, over the read half of the socket;
//! [`ReadOnly`] gives it a write side that discards, because every frame the server sends
//! (pongs and close replies included) goes through the writer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The read half of a socket, presented to tungstenite as a full stream whose writes vanish.
pub(crate) struct ReadOnly<R>(pub(crate) R);

impl<R: AsyncRead + Unpin> AsyncRead for ReadOnly<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<R: Unpin> AsyncWrite for ReadOnly<R> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
