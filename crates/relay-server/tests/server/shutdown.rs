//! Graceful shutdown of the real binary: SIGTERM closes every WebSocket with 1001 and the
//! process exits 0.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn sigterm_closes_connections_with_1001_and_exits_zero() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_relay-server"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--jwt-secret",
            SECRET,
        ])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(log) = serde_json::from_str::<serde_json::Value>(&line)
                && log["fields"]["message"] == "listening"
            {
                let addr = log["fields"]["addr"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let _ = addr_tx.send(addr);
            }
        }
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the server reports its address");

    let auth = relay_server::Authenticator::from_config(&relay_server::AuthConfig {
        secret: Some(SECRET.into()),
        ..Default::default()
    })
    .unwrap();
    let token = auth
        .mint(&relay_server::Claims::new("alice", Duration::from_secs(60)))
        .unwrap();
    let mut alice = WsClient::connect(&format!("ws://{addr}/ws?token={token}")).await;
    alice.recv().await; // welcome
    alice.subscribe("chat:1").await;

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(u16::from(alice.recv_close().await.code), 1001);

    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(0));
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
