//! Heartbeats, idle closes and the maximum connection age.

use std::time::Duration;

use futures_util::StreamExt;
use relay_proto::ServerFrame;
use relay_server::frame::{self, FrameHead};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

#[tokio::test]
async fn app_level_ping_gets_pong_with_the_id() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    let frame = alice.request(json!({"type": "ping", "id": 42})).await;
    assert_eq!(
        frame,
        ServerFrame::Pong {
            id: Some(42u64.into())
        }
    );
}

#[tokio::test]
async fn every_websocket_ping_gets_its_own_pong() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    for n in 0..5u8 {
        alice.send_raw(Message::Ping(vec![b'p', n].into())).await;
    }
    let mut pongs = Vec::new();
    while pongs.len() < 5 {
        let message = tokio::time::timeout(Duration::from_secs(5), alice.ws.next())
            .await
            .expect("pongs within 5 s")
            .unwrap()
            .unwrap();
        match message {
            Message::Pong(payload) => pongs.push(payload.to_vec()),
            Message::Ping(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let expected: Vec<Vec<u8>> = (0..5u8).map(|n| vec![b'p', n]).collect();
    assert_eq!(pongs, expected, "each ping answered, in order");
}

#[tokio::test]
async fn a_client_that_answers_pings_stays_connected() {
    let server = TestServer::start_with(|config| config.heartbeat_ms = 100).await;
    let mut alice = server.connect("alice").await;
    let mut pings = 0;
    while pings < 4 {
        // Reading lets tungstenite answer each ping with a pong.
        match tokio::time::timeout(Duration::from_secs(5), alice.ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Message::Ping(_) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    alice.expect_nothing_pending().await;
}

#[tokio::test]
async fn a_silent_connection_is_closed_with_4002() {
    let server = TestServer::start_with(|config| config.heartbeat_ms = 100).await;
    // A raw socket: reading bytes off it never answers the server's pings.
    let code = silent_client_close_code(&server).await;
    assert_eq!(code, 4002);
}

/// Performs the WebSocket handshake by hand, then reads frames without ever answering,
/// returning the code of the server's close frame.
async fn silent_client_close_code(server: &TestServer) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        server.token("silent"),
        server.addr
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut buffer = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut chunk = [0u8; 4096];
    let mut frames_start = None;
    loop {
        let n = tokio::time::timeout_at(deadline, socket.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "server closed the socket without a close frame");
        buffer.extend_from_slice(&chunk[..n]);
        if frames_start.is_none() {
            frames_start = buffer
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|p| p + 4);
        }
        let Some(mut at) = frames_start else { continue };
        while let Some(head) = FrameHead::parse(&buffer[at..]) {
            if buffer.len() < at + head.frame_len() {
                break;
            }
            if head.opcode == frame::opcode::CLOSE {
                let payload = &buffer[at + head.header_len..at + head.frame_len()];
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
            at += head.frame_len();
        }
        frames_start = Some(at);
    }
}

#[tokio::test]
async fn connections_older_than_the_maximum_age_are_closed_with_4002() {
    let server = TestServer::start_with(|config| config.max_connection_age_secs = Some(1)).await;
    let mut alice = server.connect("alice").await;
    let close = tokio::time::timeout(Duration::from_secs(5), alice.recv_close())
        .await
        .unwrap();
    assert_eq!(u16::from(close.code), 4002);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_leaves_no_trace() {
    use relay_core::Publish;
    use relay_proto::{ChannelName, Payload};
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start_with(|config| config.outbox_capacity = 16).await;
    // A raw client: handshake, one subscribe, then it never reads again.
    let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        server.token("stalled")
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let subscribe = br#"{"type":"subscribe","channel":"feed:1"}"#;
    let mut bytes = Vec::new();
    frame::masked(&mut bytes, frame::opcode::TEXT, subscribe, [1, 2, 3, 4]);
    socket.write_all(&bytes).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while server.hub.stats().subscriptions == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never subscribed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Far more than the socket buffers hold, so the server's writes block.
    let channel = ChannelName::parse("feed:1").unwrap();
    let body = "z".repeat(32 * 1024);
    for n in 0..400 {
        let payload = Payload::from_value(&serde_json::json!({"n": n, "body": body})).unwrap();
        server
            .hub
            .publish(Publish::new(channel.clone(), payload))
            .await
            .unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.hub.stats() != relay_core::HubStats::default() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still held: {:?}",
            server.hub.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(socket);
}
