//! Graceful shutdown of the real binary: SIGTERM closes every WebSocket with 1001 and the
//! process exits 0.

use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn sigterm_closes_connections_with_1001_and_exits_zero() {
    let server = ChildServer::spawn(&[]);
    let mut alice = server.connect("alice").await;
    alice.subscribe("chat:1").await;
    server.signal("-TERM");
    assert_eq!(u16::from(alice.recv_close().await.code), 1001);
    assert_eq!(server.wait().await.code(), Some(0));
}

#[tokio::test]
async fn in_process_shutdown_closes_websockets_with_1001_and_finishes() {
    let mut server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    alice.subscribe("chat:1").await;
    server.stop().await;
    assert_eq!(u16::from(alice.recv_close().await.code), 1001);
    assert_eq!(u16::from(bob.recv_close().await.code), 1001);
    assert!(
        tokio::net::TcpStream::connect(server.addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn closed_connections_leave_nothing_in_the_hub() {
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    for user in ["alice", "bob", "carol"] {
        let mut client = server.connect(user).await;
        client.subscribe("chat:1").await;
        client.subscribe(&format!("dm:#{user},zed")).await;
        clients.push(client);
    }
    assert_eq!(server.hub.stats().subscriptions, 6);
    for mut client in clients {
        client.ws.close(None).await.unwrap();
        // The server answers the close once it has let go of the connection.
        while let Some(Ok(_)) = futures_util::StreamExt::next(&mut client.ws).await {}
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while server.hub.stats() != relay_core::HubStats::default() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "residue: {:?}",
            server.hub.stats()
        );
        tokio::task::yield_now().await;
    }
}
