//! Backend topic events: a service publishes "ADDED"/"UPDATED" events to server-only topics.

use relay_proto::ServerFrame;
use serde_json::json;

use crate::support::*;

async fn topic_server() -> TestServer {
    TestServer::start_with(|config| {
        let parsed =
            relay_server::Config::from_toml("[namespaces.list]\npublish = \"none\"\n").unwrap();
        config.namespaces = parsed.namespaces;
    })
    .await
}

#[tokio::test]
async fn a_service_publishes_events_to_one_or_many_topics() {
    let server = topic_server().await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    alice.subscribe("list:123").await;
    bob.subscribe("list:456").await;
    let backend = server.http(&server.service_token("inventory-service"));

    let (status, body) = backend
        .post(
            "/api/publish",
            json!({"channel": "list:123", "event": "ADDED", "payload": {"item": 7}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["published"][0]["seq"], 1);
    let frame = alice.recv().await;
    assert!(
        matches!(frame, ServerFrame::Message { from: None, event: Some(ref e), .. } if e == "ADDED"),
        "{frame:?}"
    );
    bob.expect_nothing_pending().await;

    let (status, _) = backend
        .post("/api/publish", json!({"channels": ["list:123", "list:456"], "event": "UPDATED", "payload": {"item": 7}}))
        .await;
    assert_eq!(status, 200);
    assert!(
        matches!(alice.recv().await, ServerFrame::Message { event: Some(ref e), .. } if e == "UPDATED")
    );
    assert!(
        matches!(bob.recv().await, ServerFrame::Message { event: Some(ref e), .. } if e == "UPDATED")
    );
}

#[tokio::test]
async fn users_cannot_publish_to_server_only_topics() {
    let server = topic_server().await;
    let (status, body) = server
        .http(&server.token("alice"))
        .post(
            "/api/publish",
            json!({"channel": "list:123", "payload": {}}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");

    let mut alice = server.connect("alice").await;
    alice.subscribe("list:123").await;
    let frame = alice
        .request(json!({"type": "publish", "id": 5, "channel": "list:123", "payload": {}}))
        .await;
    assert!(
        matches!(frame, ServerFrame::Error { ref id, .. } if id == &Some(5u64.into())),
        "{frame:?}"
    );
    assert_eq!(error_code(&frame), Some("forbidden"));
}
