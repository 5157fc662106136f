//! Bad input over a live connection: error frames (or 1009), and nobody else notices.

use relay_proto::ServerFrame;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

#[tokio::test]
async fn malformed_frames_get_error_frames_and_the_connection_keeps_working() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    bob.subscribe("chat:1").await;

    let cases: [(&str, Message); 6] = [
        ("invalid JSON", Message::Text("{\"type\": ".into())),
        (
            "unknown type",
            Message::Text(r#"{"type":"teleport","id":3}"#.into()),
        ),
        (
            "missing field",
            Message::Text(r#"{"type":"publish","channel":"chat:1"}"#.into()),
        ),
        (
            "bad channel name",
            Message::Text(r#"{"type":"subscribe","channel":"no spaces allowed"}"#.into()),
        ),
        (
            "wrong field type",
            Message::Text(r#"{"type":"subscribe","channel":"chat:1","since":"yesterday"}"#.into()),
        ),
        (
            "binary garbage",
            Message::Binary(vec![0xff, 0x00, 0x13, 0x37].into()),
        ),
    ];
    for (what, message) in cases {
        alice.send_raw(message).await;
        let frame = alice.recv().await;
        assert_eq!(error_code(&frame), Some("bad_request"), "{what}: {frame:?}");
    }
    let frame = alice.request(json!({"type": "teleport", "id": "x"})).await;
    assert!(
        matches!(frame, ServerFrame::Error { ref id, .. } if id == &Some("x".into())),
        "the id is echoed"
    );

    alice
        .send(json!({"type": "publish", "channel": "chat:1", "payload": "still here"}))
        .await;
    assert!(matches!(bob.recv().await, ServerFrame::Message { .. }));
    assert!(matches!(alice.recv().await, ServerFrame::Ack { .. }));
}

#[tokio::test]
async fn an_oversized_frame_closes_only_that_connection_with_1009() {
    let server = TestServer::start_with(|config| config.max_frame_bytes = 4096).await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    bob.subscribe("chat:1").await;

    let huge = json!({"type": "publish", "channel": "chat:1", "payload": "x".repeat(10_000)});
    alice.send(huge).await;
    assert_eq!(u16::from(alice.recv_close().await.code), 1009);

    let mut carol = server.connect("carol").await;
    carol
        .send(json!({"type": "publish", "channel": "chat:1", "payload": "fine"}))
        .await;
    assert!(matches!(bob.recv().await, ServerFrame::Message { .. }));
    bob.expect_nothing_pending().await;
}

#[tokio::test]
async fn a_payload_over_the_namespace_limit_is_too_large_but_not_fatal() {
    let server =
        TestServer::start_with(|config| config.default_policy.max_payload_bytes = Some(100)).await;
    let mut alice = server.connect("alice").await;
    let frame = alice
        .request(json!({"type": "publish", "channel": "c", "payload": "y".repeat(200)}))
        .await;
    assert_eq!(error_code(&frame), Some("too_large"));
    alice.expect_nothing_pending().await;
}

#[tokio::test]
async fn bad_rest_requests_get_json_errors() {
    let server = TestServer::start().await;
    let http = server.http(&server.token("alice"));
    let (status, body) = http.post("/api/channels", json!({"nam": "x"})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    let (status, _) = http
        .post("/api/channels", json!({"name": "bad name"}))
        .await;
    assert_eq!(status, 400);
    let (status, _) = http.get("/api/nowhere").await;
    assert_eq!(status, 404);
}
