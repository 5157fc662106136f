//! A server that goes silent (a half-dead connection) is detected after two heartbeats and
//! the client reconnects.

use std::time::Duration;

use futures_util::SinkExt;
use relay_client::{Client, ConnectionEvent};
use tokio_tungstenite::tungstenite::Message;

use crate::support::wait_for;

/// Accepts WebSocket connections, sends `welcome` with a 100 ms heartbeat, then never sends
/// anything again (and never reads, so no pong either).
async fn silent_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        for n in 0..5 {
            let (stream, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
            let welcome = format!(
                r#"{{"type":"welcome","connection_id":"{n}","user":"u","heartbeat_ms":100}}"#
            );
            ws.send(Message::Text(welcome.into())).await.unwrap();
            held.push(ws); // keep the socket open, silent
        }
    });
    addr
}

#[tokio::test]
async fn a_silent_server_is_detected_after_two_heartbeats_and_the_client_reconnects() {
    let addr = silent_server().await;
    let client = Client::builder(format!("ws://{addr}/ws"))
        .token("t")
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .connect()
        .await
        .unwrap();
    assert_eq!(client.connection_id(), "0");
    let mut events = client.connection_events();
    let lost = wait_for(&mut events, |e| {
        matches!(e, ConnectionEvent::Disconnected { .. })
    })
    .await;
    assert!(
        matches!(lost, ConnectionEvent::Disconnected { code: None, ref reason } if reason.contains("heartbeat")),
        "{lost:?}"
    );
    let back = wait_for(&mut events, |e| {
        matches!(e, ConnectionEvent::Connected { .. })
    })
    .await;
    assert_eq!(
        back,
        ConnectionEvent::Connected {
            connection_id: "1".into()
        }
    );
}
