//! WebSocket framing (RFC 6455, section 5.2), written and parsed by hand: the one encoder of
//! the project. The server's writer uses it on the hot path, where every frame it sends is
//! already-encoded JSON shared by every subscriber and only needs a 2-, 4- or 10-byte header
//! in front (server frames are never masked); the benchmark's load generator and reference
//! relay, and tests that speak raw WebSocket, use it too.
//!
//! Reading what clients send stays with tungstenite: this module parses headers only for
//! tools that are clients themselves or that must not pay for a full parser.

/// Opcodes of the frames Relay writes.
pub mod opcode {
    /// A UTF-8 text frame.
    pub const TEXT: u8 = 0x1;
    /// A binary frame (Relay sends none; the Autobahn echo endpoint does).
    pub const BINARY: u8 = 0x2;
    /// Connection close.
    pub const CLOSE: u8 = 0x8;
    /// Ping.
    pub const PING: u8 = 0x9;
    /// Pong.
    pub const PONG: u8 = 0xA;
}

const FIN: u8 = 0x80;
const MASKED: u8 = 0x80;
/// Control frames carry at most 125 payload bytes.
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Appends the header of a final frame with `opcode` and a payload of `len` bytes, masked
/// with `mask` when given (clients must mask; servers must not).
pub fn header(out: &mut Vec<u8>, opcode: u8, len: usize, mask: Option<[u8; 4]>) {
    out.push(FIN | opcode);
    let mask_bit = if mask.is_some() { MASKED } else { 0 };
    match len {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if let Some(key) = mask {
        out.extend_from_slice(&key);
    }
}

/// Appends a server text frame.
pub fn text(out: &mut Vec<u8>, payload: &[u8]) {
    header(out, opcode::TEXT, payload.len(), None);
    out.extend_from_slice(payload);
}

/// Appends an empty server ping.
pub fn ping(out: &mut Vec<u8>) {
    header(out, opcode::PING, 0, None);
}

/// Appends a server pong echoing a ping's payload, cut to the control-frame limit.
pub fn pong(out: &mut Vec<u8>, payload: &[u8]) {
    let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
    header(out, opcode::PONG, payload.len(), None);
    out.extend_from_slice(payload);
}

/// Appends a server close frame. The reason is cut to fit the control-frame limit (two
/// bytes go to the code), on a UTF-8 character boundary so that it stays valid text.
pub fn close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    header(out, opcode::CLOSE, 2 + end, None);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&reason.as_bytes()[..end]);
}

/// Appends a client frame masked with `key`.
pub fn masked(out: &mut Vec<u8>, opcode: u8, payload: &[u8], key: [u8; 4]) {
    header(out, opcode, payload.len(), Some(key));
    let start = out.len();
    out.extend_from_slice(payload);
    unmask(&mut out[start..], key);
}

/// Applies (or removes: it is its own inverse) a masking key.
pub fn unmask(payload: &mut [u8], key: [u8; 4]) {
    if key == [0; 4] {
        return;
    }
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= key[i % 4];
    }
}

/// The header of a frame at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    /// The opcode (low four bits of the first byte).
    pub opcode: u8,
    /// The masking key, for masked (client) frames.
    pub mask: Option<[u8; 4]>,
    /// Header length in bytes, masking key included: the payload starts here.
    pub header_len: usize,
    /// Payload length in bytes.
    pub payload_len: usize,
}

impl FrameHead {
    /// Parses the header at the front of `buf`; `None` until the whole header is there.
    pub fn parse(buf: &[u8]) -> Option<Self> {
        let (&first, rest) = buf.split_first()?;
        let (&second, rest) = rest.split_first()?;
        let (payload_len, rest, extended) = match second & 0x7f {
            126 => {
                let (len, rest) = rest.split_first_chunk::<2>()?;
                (usize::from(u16::from_be_bytes(*len)), rest, 2)
            }
            127 => {
                let (len, rest) = rest.split_first_chunk::<8>()?;
                (usize::try_from(u64::from_be_bytes(*len)).ok()?, rest, 8)
            }
            n => (usize::from(n), rest, 0),
        };
        let mask = if second & MASKED != 0 {
            Some(*rest.first_chunk::<4>()?)
        } else {
            None
        };
        Some(Self {
            opcode: first & 0x0f,
            mask,
            header_len: 2 + extended + if mask.is_some() { 4 } else { 0 },
            payload_len,
        })
    }

    /// Header plus payload: the bytes the whole frame takes.
    pub fn frame_len(&self) -> usize {
        self.header_len.saturating_add(self.payload_len)
    }
}

#[cfg(test)]
mod tests {
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket};
    use tokio_tungstenite::tungstenite::{Message, protocol::frame::coding::CloseCode};

    use super::*;

    fn read_as(role: Role, bytes: Vec<u8>) -> Vec<Message> {
        let mut ws = WebSocket::from_raw_socket(std::io::Cursor::new(bytes), role, None);
        std::iter::from_fn(|| ws.read().ok()).collect()
    }

    /// Server frames on both sides of each length-encoding boundary parse as the same
    /// messages in tungstenite's client role, and their heads parse back.
    #[test]
    fn server_frames_at_length_boundaries_parse() {
        for len in [0, 125, 126, 127, 65_535, 65_536, 70_000] {
            let body = "x".repeat(len);
            let mut bytes = Vec::new();
            text(&mut bytes, body.as_bytes());
            let head = FrameHead::parse(&bytes).unwrap();
            assert_eq!(
                (head.opcode, head.mask, head.payload_len, head.frame_len()),
                (opcode::TEXT, None, len, bytes.len()),
                "{len}"
            );
            let expected_header = match len {
                0..=125 => 2,
                126..=65_535 => 4,
                _ => 10,
            };
            assert_eq!(head.header_len, expected_header, "{len}");
            assert_eq!(
                read_as(Role::Client, bytes),
                [Message::Text(body.into())],
                "{len}"
            );
        }
    }

    /// Masked client frames at the same boundaries parse in tungstenite's server role.
    #[test]
    fn masked_client_frames_at_length_boundaries_parse() {
        for len in [0, 125, 126, 65_535, 65_536] {
            let body = "y".repeat(len);
            let mut bytes = Vec::new();
            masked(&mut bytes, opcode::TEXT, body.as_bytes(), [1, 2, 3, 4]);
            let head = FrameHead::parse(&bytes).unwrap();
            assert_eq!(head.mask, Some([1, 2, 3, 4]));
            let mut payload = bytes[head.header_len..].to_vec();
            unmask(&mut payload, [1, 2, 3, 4]);
            assert_eq!(payload, body.as_bytes());
            assert_eq!(
                read_as(Role::Server, bytes),
                [Message::Text(body.into())],
                "{len}"
            );
        }
    }

    #[test]
    fn incomplete_headers_parse_as_none() {
        let mut bytes = Vec::new();
        masked(&mut bytes, opcode::TEXT, &[b'z'; 70_000], [9, 9, 9, 9]);
        for cut in 0..14 {
            assert_eq!(FrameHead::parse(&bytes[..cut]), None, "{cut}");
        }
        assert!(FrameHead::parse(&bytes[..14]).is_some());
    }

    #[test]
    fn control_frames_parse_and_fit_their_limit() {
        let mut bytes = Vec::new();
        ping(&mut bytes);
        pong(&mut bytes, &[7; 200]);
        close(&mut bytes, 4008, &"slow ".repeat(40));
        let messages = read_as(Role::Client, bytes);
        assert_eq!(messages[0], Message::Ping(Default::default()));
        assert_eq!(messages[1], Message::Pong(vec![7; 125].into()));
        let Message::Close(Some(frame)) = &messages[2] else {
            panic!("{messages:?}")
        };
        assert_eq!(frame.code, CloseCode::from(4008));
        assert_eq!(frame.reason.len(), 123);
    }

    /// A reason whose 123rd byte falls inside a character is cut before that character.
    #[test]
    fn close_reasons_are_cut_on_a_utf8_boundary() {
        let reason = format!("{}é and more", "a".repeat(122)); // 'é' spans bytes 122..124
        let mut bytes = Vec::new();
        close(&mut bytes, 1000, &reason);
        let messages = read_as(Role::Client, bytes);
        let Message::Close(Some(frame)) = &messages[0] else {
            panic!("{messages:?}")
        };
        assert_eq!(frame.reason.as_str(), "a".repeat(122));
    }
}
