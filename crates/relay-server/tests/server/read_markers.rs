//! Read markers in a group chat: one user on two devices marks messages read on one and the
//! other follows live; unread counts for the user's channels in one REST call.

use relay_proto::ServerFrame;
use serde_json::json;

use crate::support::*;

async fn chat_server() -> TestServer {
    TestServer::start_with(|config| {
        let policy = relay_server::Config::from_toml(
            "[namespaces.group]\nsubscribe = \"members\"\ncreate = \"any\"\necho = false\n",
        )
        .unwrap();
        config.namespaces = policy.namespaces;
    })
    .await
}

async fn publish(client: &mut WsClient, channel: &str, n: usize) {
    for k in 0..n {
        let ack = client
            .request(json!({"type": "publish", "channel": channel, "payload": k}))
            .await;
        assert!(matches!(ack, ServerFrame::Ack { .. }), "{ack:?}");
    }
}

/// The next `read` frame, skipping messages.
async fn next_read(client: &mut WsClient) -> ServerFrame {
    loop {
        match client.recv().await {
            ServerFrame::Message { .. } => {}
            frame => return frame,
        }
    }
}

#[tokio::test]
async fn a_marker_moves_up_only_and_the_user_s_other_devices_follow() {
    let server = chat_server().await;
    let alice_http = server.http(&server.token("alice"));
    let (status, body) = alice_http
        .post(
            "/api/channels",
            json!({"name": "group:1", "members": ["bob"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let mut phone = server.connect("alice").await;
    let mut laptop = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    for client in [&mut phone, &mut laptop, &mut bob] {
        assert!(matches!(
            client.subscribe("group:1").await,
            ServerFrame::Subscribed { .. }
        ));
    }
    publish(&mut bob, "group:1", 5).await;

    phone
        .send(json!({"type": "read", "id": 1, "channel": "group:1", "seq": 3}))
        .await;
    let reply = next_read(&mut phone).await;
    assert!(
        matches!(&reply, ServerFrame::Read { id: Some(_), seq, .. } if seq.0 == 3),
        "{reply:?}"
    );
    let synced = next_read(&mut laptop).await;
    assert!(
        matches!(&synced, ServerFrame::Read { id: None, seq, .. } if seq.0 == 3),
        "the other device follows: {synced:?}"
    );
    let lower = phone
        .request(json!({"type": "read", "id": 2, "channel": "group:1", "seq": 2}))
        .await;
    assert!(
        matches!(&lower, ServerFrame::Read { seq, .. } if seq.0 == 3),
        "markers never move back: {lower:?}"
    );
    let future = phone
        .request(json!({"type": "read", "id": 3, "channel": "group:1", "seq": 99}))
        .await;
    assert!(
        matches!(&future, ServerFrame::Read { seq, .. } if seq.0 == 5),
        "nor past the latest seq: {future:?}"
    );
    let synced = next_read(&mut laptop).await;
    assert!(
        matches!(&synced, ServerFrame::Read { id: None, seq, .. } if seq.0 == 5),
        "only moves are sent: 3 then 5, nothing for the lower mark: {synced:?}"
    );

    // REST: the same marker, and unread counts in one call.
    let (status, body) = alice_http.get("/api/channels/group:1/read").await;
    assert_eq!((status, &body["seq"]), (200, &json!(5)), "{body}");
    publish(&mut bob, "group:1", 2).await;
    let (status, body) = alice_http.get("/api/unread").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["channels"],
        json!([{"channel": "group:1", "last_seq": 7, "read_seq": 5, "unread": 2}])
    );
    assert_eq!(body["unread"], 2);
    assert_eq!(body["next"], json!(null));
    let (status, body) = alice_http
        .put_json("/api/channels/group:1/read", json!({"seq": 7}))
        .await;
    assert_eq!((status, &body["seq"]), (200, &json!(7)), "{body}");
    for device in [&mut phone, &mut laptop] {
        let frame = next_read(device).await;
        assert!(
            matches!(&frame, ServerFrame::Read { id: None, seq, .. } if seq.0 == 7),
            "a REST mark reaches every device: {frame:?}"
        );
    }
    bob.expect_nothing_pending().await;
}

#[tokio::test]
async fn only_those_who_may_read_a_channel_mark_it() {
    let server = chat_server().await;
    let (status, body) = server
        .http(&server.token("alice"))
        .post("/api/channels", json!({"name": "group:2"}))
        .await;
    assert_eq!(status, 201, "{body}");
    let mut carol = server.connect("carol").await;
    let frame = carol
        .request(json!({"type": "read", "id": 1, "channel": "group:2", "seq": 1}))
        .await;
    assert_eq!(error_code(&frame), Some("forbidden"), "{frame:?}");
    let carol_http = server.http(&server.token("carol"));
    let (status, _) = carol_http
        .put_json("/api/channels/group:2/read", json!({"seq": 1}))
        .await;
    assert_eq!(status, 403);
    let (status, _) = carol_http
        .put_json("/api/channels/group:2/read", json!({"seq": -1}))
        .await;
    assert_eq!(status, 400);
    let frame = carol
        .request(json!({"type": "read", "id": 2, "channel": "group:2"}))
        .await;
    assert_eq!(error_code(&frame), Some("bad_request"), "{frame:?}");
    let (status, body) = carol_http.get("/api/unread?limit=0").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["channels"], json!([]));
}

#[tokio::test]
async fn unread_pages_through_thousands_of_channels_by_name() {
    let server = TestServer::start().await;
    let mut writer = WsClient::connect(&server.ws_url(&server.service_token("backend"))).await;
    assert!(matches!(writer.recv().await, ServerFrame::Welcome { .. }));
    // A service token in alice's name: a user's read frames count against its publish rate.
    let mut alice = WsClient::connect(&server.ws_url(&server.service_token("alice"))).await;
    assert!(matches!(alice.recv().await, ServerFrame::Welcome { .. }));
    const CHANNELS: usize = 1500;
    for i in 0..CHANNELS {
        let channel = format!("feed:{i:04}");
        publish(&mut writer, &channel, 2).await;
        let frame = alice
            .request(json!({"type": "read", "id": i, "channel": channel, "seq": 1}))
            .await;
        assert!(matches!(frame, ServerFrame::Read { .. }), "{frame:?}");
    }
    let http = server.http(&server.token("alice"));
    let (mut seen, mut unread, mut after) = (0, 0, String::new());
    loop {
        let path = if after.is_empty() {
            "/api/unread?limit=1000".to_owned()
        } else {
            format!("/api/unread?limit=1000&after={after}")
        };
        let (status, body) = http.get(&path).await;
        assert_eq!(status, 200, "{body}");
        seen += body["channels"].as_array().unwrap().len();
        unread += body["unread"].as_u64().unwrap();
        match body["next"].as_str() {
            Some(next) => after = next.to_owned(),
            None => break,
        }
    }
    assert_eq!((seen, unread), (CHANNELS, CHANNELS as u64));
}
