//! Group chat: a members-only namespace where users start conversations (`create = "any"`),
//! with presence, join/leave and typing indicators; one user on two devices.

use relay_proto::ServerFrame;
use serde_json::json;

use crate::support::*;

async fn chat_server() -> TestServer {
    TestServer::start_with(|config| {
        let policy = relay_server::Config::from_toml(
            "[namespaces.group]\nsubscribe = \"members\"\ncreate = \"any\"\npresence = true\njoin_leave = true\n",
        )
        .unwrap();
        config.namespaces = policy.namespaces;
    })
    .await
}

async fn create_group(server: &TestServer) {
    let (status, body) = server
        .http(&server.token("alice"))
        .post(
            "/api/channels",
            json!({"name": "group:1", "members": ["bob"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn non_members_are_refused_and_members_can_be_managed() {
    let server = chat_server().await;
    create_group(&server).await;
    let mut carol = server.connect("carol").await;
    assert_eq!(
        error_code(&carol.subscribe("group:1").await),
        Some("forbidden")
    );
    let frame = carol
        .request(json!({"type": "publish", "channel": "group:1", "payload": "hi"}))
        .await;
    assert_eq!(error_code(&frame), Some("forbidden"));
    let carol_http = server.http(&server.token("carol"));
    assert_eq!(
        carol_http.get("/api/channels/group:1/messages").await.0,
        403
    );
    assert_eq!(
        carol_http
            .put("/api/channels/group:1/members/carol")
            .await
            .0,
        403
    );

    let alice_http = server.http(&server.token("alice"));
    assert_eq!(
        alice_http
            .put("/api/channels/group:1/members/carol")
            .await
            .0,
        201
    );
    let (_, members) = alice_http.get("/api/channels/group:1/members").await;
    assert_eq!(
        members["members"],
        json!([
            {"user": "alice", "role": "owner"},
            {"user": "bob", "role": "member"},
            {"user": "carol", "role": "member"}
        ])
    );
    assert!(matches!(
        carol.subscribe("group:1").await,
        ServerFrame::Subscribed { .. }
    ));
    let (_, mine) = carol_http.get("/api/channels").await;
    assert_eq!(mine["channels"][0]["name"], "group:1");
    assert_eq!(
        carol_http
            .delete("/api/channels/group:1/members/carol")
            .await
            .0,
        200,
        "anyone may leave"
    );
}

#[tokio::test]
async fn strangers_learn_nothing_about_a_members_channel() {
    let server = chat_server().await;
    create_group(&server).await;
    let carol = server.http(&server.token("carol"));
    let (status, body) = carol
        .post("/api/channels", json!({"name": "group:1"}))
        .await;
    assert_eq!(
        status, 409,
        "the name is taken; nothing else about it is revealed: {body}"
    );
    assert_eq!(body["error"]["code"], "conflict");
    assert!(!body.to_string().contains("alice"), "{body}");
    assert_eq!(
        carol.put("/api/channels/group:nope/members/carol").await.0,
        403
    );
    assert_eq!(carol.get("/api/channels/group:1").await.0, 403);
    let bob = server.http(&server.token("bob"));
    let (status, record) = bob
        .post(
            "/api/channels",
            json!({"name": "group:1", "members": ["alice"]}),
        )
        .await;
    assert_eq!(
        status, 200,
        "a member naming the same members gets the record"
    );
    assert_eq!(record["created_by"], "alice");
}

#[tokio::test]
async fn typing_is_relayed_live_but_never_stored_nor_echoed() {
    let server = chat_server().await;
    create_group(&server).await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    alice.subscribe("group:1").await;
    bob.subscribe("group:1").await;
    alice.recv().await; // bob's join

    let typing = json!({"type": "publish", "id": 1, "channel": "group:1", "event": "typing", "ephemeral": true, "payload": {}});
    let ack = alice.request(typing).await;
    assert!(matches!(ack, ServerFrame::Ack { seq: None, .. }), "{ack:?}");
    let frame = bob.recv().await;
    assert!(
        matches!(frame, ServerFrame::Message { seq: None, event: Some(ref e), .. } if e == "typing"),
        "{frame:?}"
    );
    alice.expect_nothing_pending().await;
    let (_, count) = server
        .http(&server.token("alice"))
        .get("/api/channels/group:1/messages/count")
        .await;
    assert_eq!(count["count"], 0);
}

#[tokio::test]
async fn join_leave_and_presence_follow_users_not_connections() {
    let server = chat_server().await;
    create_group(&server).await;
    let mut alice = server.connect("alice").await;
    alice.subscribe("group:1").await;

    let mut desktop = server.connect("bob").await;
    let frame = desktop.subscribe("group:1").await;
    let ServerFrame::Subscribed {
        presence: Some(users),
        ..
    } = frame
    else {
        panic!("{frame:?}")
    };
    let users: Vec<&str> = users.iter().map(|u| u.as_str()).collect();
    assert_eq!(users, ["alice", "bob"]);
    assert!(
        matches!(alice.recv().await, ServerFrame::Join { ref user, .. } if user.as_str() == "bob")
    );

    let mut phone = server.connect("bob").await;
    phone.subscribe("group:1").await;
    alice.expect_nothing_pending().await;

    alice
        .send(json!({"type": "publish", "channel": "group:1", "payload": {"text": "hello bob"}}))
        .await;
    assert!(
        matches!(desktop.recv().await, ServerFrame::Message { .. }),
        "desktop receives"
    );
    assert!(
        matches!(phone.recv().await, ServerFrame::Message { .. }),
        "phone receives"
    );

    let (_, presence) = server
        .http(&server.token("alice"))
        .get("/api/channels/group:1/presence")
        .await;
    assert_eq!(presence["users"], json!(["alice", "bob"]));

    drop(phone);
    alice.recv().await; // her own message
    alice.recv().await; // its ack
    alice.expect_nothing_pending().await;
    desktop.ws.close(None).await.unwrap();
    let frame = alice.recv().await;
    assert!(
        matches!(frame, ServerFrame::Leave { ref user, .. } if user.as_str() == "bob"),
        "{frame:?}"
    );
}
