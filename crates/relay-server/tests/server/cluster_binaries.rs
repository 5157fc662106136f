//! Two real `relay-server` processes as a cluster on one fresh database, on each backplane
//! (`--cluster postgres`, and `--cluster nats` with a `nats-server` of the test's own):
//! messages, typing, signals and presence cross between them, and `kill -9` of one node makes
//! its users leave on the other within the configured bound while its clients recover there
//! with `since`. These run when `DATABASE_URL` is set at build time (and, for NATS, a
//! `nats-server` binary is found); otherwise they are listed as ignored.

use std::time::Duration;

use relay_proto::ServerFrame;
use relay_server::testing::NatsServer;
use relay_store::testing::TestDatabase;
use serde_json::json;

use crate::cluster::{Backplane, on_both_backplanes};
use crate::support::*;

/// (`echo = false`: a publisher's next frame is its ack.)
/// Node lifetime of these tests: a dead node's users leave within 1.25 times this.
const TTL_SECS: u64 = 4;

fn config_file(db: &TestDatabase) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("relay-cluster-{}.toml", db.name()));
    std::fs::write(
        &path,
        format!(
            "node_ttl_secs = {TTL_SECS}\n[namespaces.room]\npresence = true\njoin_leave = true\necho = false\n"
        ),
    )
    .unwrap();
    path
}

/// Relay processes of one cluster: a fresh database, and for NATS a server of the test's own.
struct Processes {
    db: TestDatabase,
    nats: Option<NatsServer>,
    config: std::path::PathBuf,
}

impl Processes {
    async fn new(backplane: Backplane) -> Self {
        let db = TestDatabase::create().await;
        Self {
            config: config_file(&db),
            nats: (backplane == Backplane::Nats).then(NatsServer::start),
            db,
        }
    }

    fn spawn(&self, id: &str) -> ChildServer {
        let nats_url = self.nats.as_ref().map(NatsServer::url);
        let mut args = vec![
            "--database-url",
            self.db.url(),
            "--node-id",
            id,
            "--config",
            self.config.to_str().unwrap(),
        ];
        match &nats_url {
            Some(url) => args.extend(["--cluster", "nats", "--nats-url", url]),
            None => args.extend(["--cluster", "postgres"]),
        }
        ChildServer::spawn(&args)
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

on_both_backplanes!(
    two_processes_share_messages_typing_signals_and_presence,
    a_killed_node_s_users_leave_and_its_clients_recover_on_another_node,
);

fn spawn_node(db: &TestDatabase, config: &std::path::Path, id: &str) -> ChildServer {
    ChildServer::spawn(&[
        "--cluster",
        "postgres",
        "--database-url",
        db.url(),
        "--node-id",
        id,
        "--config",
        config.to_str().unwrap(),
    ])
}

async fn http_presence(node: &ChildServer, channel: &str) -> Vec<String> {
    let response = reqwest::Client::new()
        .get(format!(
            "http://{}/api/channels/{channel}/presence",
            node.addr
        ))
        .bearer_auth(token_for("observer"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_owned())
        .collect()
}

/// Polls a node's presence until it equals `want` (presence rows are written asynchronously).
async fn await_presence(node: &ChildServer, channel: &str, want: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let users = http_presence(node, channel).await;
        if users == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "presence on {channel} is {users:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn next_message_seq(client: &mut WsClient) -> u64 {
    loop {
        match client.recv().await {
            ServerFrame::Message { seq: Some(seq), .. } => return seq.0,
            ServerFrame::Join { .. } | ServerFrame::Leave { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn two_processes_share_messages_typing_signals_and_presence(backplane: Backplane) {
    let cluster = Processes::new(backplane).await;
    let a = cluster.spawn("node-a");
    let b = cluster.spawn("node-b");

    let mut alice = a.connect("alice").await;
    alice.subscribe("room:1").await;
    await_presence(&b, "room:1", &["alice"]).await;
    let mut bob = b.connect("bob").await;
    let frame = bob.subscribe("room:1").await;
    let ServerFrame::Subscribed {
        presence: Some(users),
        ..
    } = frame
    else {
        panic!("{frame:?}")
    };
    let users: Vec<&str> = users.iter().map(|u| u.as_str()).collect();
    assert_eq!(users, ["alice", "bob"], "presence on B shows A's user");
    assert!(
        matches!(alice.recv().await, ServerFrame::Join { ref user, .. } if user.as_str() == "bob")
    );
    assert_eq!(http_presence(&a, "room:1").await, ["alice", "bob"]);

    // Persistent, over WebSocket and REST on B.
    let ack = bob
        .request(json!({"type": "publish", "channel": "room:1", "payload": "ws"}))
        .await;
    assert!(matches!(ack, ServerFrame::Ack { .. }), "{ack:?}");
    assert_eq!(next_message_seq(&mut alice).await, 1);
    let response = reqwest::Client::new()
        .post(format!("http://{}/api/channels/room:1/messages", b.addr))
        .bearer_auth(token_for("bob"))
        .json(&json!({"payload": "rest"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(next_message_seq(&mut alice).await, 2);
    assert_eq!(
        next_message_seq(&mut bob).await,
        2,
        "a REST publish reaches its own node too"
    );

    // Typing and a signal from B reach A.
    bob.send(json!({"type": "publish", "channel": "room:1", "event": "typing", "ephemeral": true, "payload": {}}))
        .await;
    let frame = alice.recv().await;
    assert!(
        matches!(&frame, ServerFrame::Message { seq: None, event: Some(e), .. } if e == "typing"),
        "{frame:?}"
    );
    bob.send(json!({"type": "signal", "channel": "room:1", "to": "alice", "event": "offer", "payload": {"sdp": "v=0"}}))
        .await;
    let frame = alice.recv().await;
    assert!(
        matches!(&frame, ServerFrame::Signal { from, .. } if from.as_str() == "bob"),
        "{frame:?}"
    );

    // Bob's last connection in the cluster goes: A announces his leave.
    drop(bob);
    let frame = alice.recv().await;
    assert!(
        matches!(&frame, ServerFrame::Leave { user, .. } if user.as_str() == "bob"),
        "{frame:?}"
    );
}

async fn a_killed_node_s_users_leave_and_its_clients_recover_on_another_node(backplane: Backplane) {
    let cluster = Processes::new(backplane).await;
    let a = cluster.spawn("node-a");
    let b = cluster.spawn("node-b");

    let mut alice = a.connect("alice").await;
    alice.subscribe("room:2").await;
    let mut bob = b.connect("bob").await;
    bob.subscribe("room:2").await;
    let frame = alice.recv().await;
    assert!(
        matches!(&frame, ServerFrame::Join { user, .. } if user.as_str() == "bob"),
        "{frame:?}"
    );
    for n in 0..3 {
        let ack = alice
            .request(json!({"type": "publish", "channel": "room:2", "payload": n}))
            .await;
        assert!(matches!(ack, ServerFrame::Ack { .. }), "{ack:?}");
    }
    let mut seen = 0;
    while seen < 3 {
        seen = next_message_seq(&mut bob).await;
    }

    b.signal("-KILL");
    let killed = std::time::Instant::now();
    b.wait().await;
    // Published while bob's node is dead.
    for n in 3..6 {
        let ack = alice
            .request(json!({"type": "publish", "channel": "room:2", "payload": n}))
            .await;
        assert!(matches!(ack, ServerFrame::Ack { .. }), "{ack:?}");
    }
    let bound = Duration::from_millis(TTL_SECS * 1250) + Duration::from_secs(3);
    let leave = tokio::time::timeout(bound, async {
        loop {
            match alice.recv().await {
                ServerFrame::Leave { user, .. } if user.as_str() == "bob" => return,
                ServerFrame::Message { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    assert!(leave.is_ok(), "no leave for bob within {bound:?}");
    assert!(killed.elapsed() >= Duration::from_secs(TTL_SECS) / 2);
    assert_eq!(http_presence(&a, "room:2").await, ["alice"]);

    // Bob's client reconnects to A with `since` and gets exactly what it missed.
    let mut bob = a.connect("bob").await;
    let frame = bob
        .request(json!({"type": "subscribe", "channel": "room:2", "since": 3}))
        .await;
    assert!(
        matches!(
            frame,
            ServerFrame::Subscribed {
                recovered: Some(true),
                ..
            }
        ),
        "{frame:?}"
    );
    let mut replayed = Vec::new();
    for _ in 0..3 {
        replayed.push(next_message_seq(&mut bob).await);
    }
    assert_eq!(replayed, [4, 5, 6]);
    bob.expect_nothing_pending().await;
}

#[test]
fn a_nats_cluster_on_the_memory_store_with_persistent_namespaces_exits_with_2() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_relay-server"))
        .args(["--cluster", "nats", "--listen", "127.0.0.1:0"])
        .env_remove("RELAY_DATABASE_URL")
        .env_remove("RELAY_CONFIG")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--database-url") && stderr.contains("ephemeral-only"),
        "{stderr}"
    );
}

#[test]
fn cluster_mode_without_a_database_exits_with_2() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_relay-server"))
        .args(["--cluster", "postgres", "--listen", "127.0.0.1:0"])
        .env_remove("RELAY_DATABASE_URL")
        .env_remove("RELAY_CONFIG")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("needs a database"), "{stderr}");
}

#[tokio::test]
#[cfg_attr(not(pg_tests), ignore = "Postgres tests need DATABASE_URL")]
async fn a_second_process_with_a_live_node_s_id_exits_with_2() {
    let db = TestDatabase::create().await;
    let config = config_file(&db);
    let _a = spawn_node(&db, &config, "node-a");
    let url = db.url().to_owned();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_relay-server"))
            .args(["--listen", "127.0.0.1:0", "--jwt-secret", SECRET])
            .args(["--cluster", "postgres", "--database-url", &url])
            .args(["--node-id", "node-a"])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("held by another live node"), "{stderr}");
    let _ = std::fs::remove_file(config);
}
