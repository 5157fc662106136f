//! Server-to-client WebSocket framing, written by hand on the hot path.
//!
//! The writer of a session does not go through tungstenite: every frame it sends is already
//! encoded JSON (one `EncodedFrame` shared by every subscriber), so it only needs a 2- or
//! 4-byte header in front (server frames are never masked). A batch becomes one contiguous
//! buffer and one `write`. tungstenite still parses what the client sends, over the read half
//! of the socket; [`ReadOnly`] gives it a write side that discards, because every frame the
//! server sends (pongs and close replies included) goes through the writer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const FIN: u8 = 0x80;
const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

fn header(out: &mut Vec<u8>, opcode: u8, len: usize) {
    out.push(FIN | opcode);
    match len {
        n if n < 126 => out.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
}

/// Appends a text frame.
pub(crate) fn text(out: &mut Vec<u8>, payload: &[u8]) {
    header(out, OP_TEXT, payload.len());
    out.extend_from_slice(payload);
}

/// Appends an empty ping.
pub(crate) fn ping(out: &mut Vec<u8>) {
    header(out, OP_PING, 0);
}

/// Appends a pong echoing a ping's payload (at most 125 bytes, as for any control frame).
pub(crate) fn pong(out: &mut Vec<u8>, payload: &[u8]) {
    let payload = &payload[..payload.len().min(125)];
    header(out, OP_PONG, payload.len());
    out.extend_from_slice(payload);
}

/// Appends a close frame; the reason is cut to fit the 125-byte control-frame limit.
pub(crate) fn close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    header(out, OP_CLOSE, 2 + end);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&reason.as_bytes()[..end]);
}

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

#[cfg(test)]
mod tests {
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket};
    use tokio_tungstenite::tungstenite::{Message, protocol::frame::coding::CloseCode};

    /// Frames written here parse as the same messages in tungstenite's client role.
    #[test]
    fn hand_written_frames_parse_as_websocket_messages() {
        let mut bytes = Vec::new();
        super::text(&mut bytes, b"{\"type\":\"pong\"}");
        let long = "x".repeat(70_000);
        super::text(&mut bytes, long.as_bytes());
        let medium = "y".repeat(300);
        super::text(&mut bytes, medium.as_bytes());
        super::ping(&mut bytes);
        super::pong(&mut bytes, b"abc");
        super::close(&mut bytes, 4008, &"slow ".repeat(40));
        let mut ws = WebSocket::from_raw_socket(std::io::Cursor::new(bytes), Role::Client, None);
        assert_eq!(
            ws.read().unwrap(),
            Message::Text("{\"type\":\"pong\"}".into())
        );
        assert_eq!(ws.read().unwrap(), Message::Text(long.into()));
        assert_eq!(ws.read().unwrap(), Message::Text(medium.into()));
        assert_eq!(ws.read().unwrap(), Message::Ping(Default::default()));
        assert_eq!(ws.read().unwrap(), Message::Pong(b"abc".to_vec().into()));
        let Message::Close(Some(frame)) = ws.read().unwrap() else {
            panic!()
        };
        assert_eq!(frame.code, CloseCode::from(4008));
        assert_eq!(frame.reason.len(), 123);
    }
}
