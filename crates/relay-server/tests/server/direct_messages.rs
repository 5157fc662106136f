//! Channels and direct messages with presence and WebRTC signalling.

use relay_proto::ServerFrame;
use serde_json::json;

use crate::support::*;

async fn dm_server() -> TestServer {
    TestServer::start_with(|config| {
        let parsed = relay_server::Config::from_toml("[namespaces.dm]\npresence = true\n").unwrap();
        config.namespaces = parsed.namespaces;
    })
    .await
}

#[tokio::test]
async fn a_direct_channel_admits_only_its_two_users() {
    let server = dm_server().await;
    let mut alice = server.connect("alice").await;
    let mut carol = server.connect("carol").await;
    assert!(matches!(
        alice.subscribe("dm:#alice,bob").await,
        ServerFrame::Subscribed { .. }
    ));
    assert_eq!(
        error_code(&carol.subscribe("dm:#alice,bob").await),
        Some("forbidden")
    );
    let frame = carol
        .request(json!({"type": "publish", "channel": "dm:#alice,bob", "payload": "hi"}))
        .await;
    assert_eq!(error_code(&frame), Some("forbidden"));
    let (status, _) = server
        .http(&server.token("carol"))
        .get("/api/channels/dm:%23alice,bob/messages")
        .await;
    assert_eq!(
        status, 403,
        "REST follows the same rule (the # is percent-encoded)"
    );
    alice.expect_nothing_pending().await;
}

#[tokio::test]
async fn offer_answer_and_ice_reach_only_the_target_user() {
    let server = dm_server().await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let mut bob_elsewhere = server.connect("bob").await;
    alice.subscribe("dm:#alice,bob").await;
    bob.subscribe("dm:#alice,bob").await;
    bob_elsewhere.subscribe("chat:lobby").await;

    let presence = alice
        .request(json!({"type": "presence", "id": "p", "channel": "dm:#alice,bob"}))
        .await;
    assert!(
        matches!(presence, ServerFrame::Presence { ref users, .. } if users.len() == 2),
        "{presence:?}"
    );

    alice
        .send(json!({"type": "signal", "channel": "dm:#alice,bob", "to": "bob", "event": "offer", "payload": {"sdp": "v=0 offer"}}))
        .await;
    let frame = bob.recv().await;
    let ServerFrame::Signal {
        from,
        event,
        payload,
        ..
    } = frame
    else {
        panic!("{frame:?}")
    };
    assert_eq!((from.as_str(), event.as_deref()), ("alice", Some("offer")));
    assert_eq!(
        payload.to_value::<serde_json::Value>().unwrap()["sdp"],
        "v=0 offer"
    );

    bob.send(json!({"type": "signal", "channel": "dm:#alice,bob", "to": "alice", "event": "answer", "payload": {"sdp": "v=0 answer"}}))
        .await;
    assert!(
        matches!(alice.recv().await, ServerFrame::Signal { event: Some(ref e), .. } if e == "answer")
    );
    for candidate in 0..3 {
        alice
            .send(json!({"type": "signal", "channel": "dm:#alice,bob", "to": "bob", "event": "ice", "payload": {"candidate": candidate}}))
            .await;
        assert!(
            matches!(bob.recv().await, ServerFrame::Signal { event: Some(ref e), .. } if e == "ice")
        );
    }

    bob_elsewhere.expect_nothing_pending().await;
    alice.expect_nothing_pending().await;
    let (_, count) = server
        .http(&server.token("alice"))
        .get("/api/channels/dm:%23alice,bob/messages/count")
        .await;
    assert_eq!(count["count"], 0, "signals are never stored");
}
