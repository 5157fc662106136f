//! Edits and deletes in a group chat: appended as seq'd events with `ref`, delivered live and
//! replayed with `since` like any message, applied by `?view=current`, allowed to the sender,
//! owners, admins and services, and a delete really removes the content from the store
//! (checked in the Postgres table itself).

use std::sync::Arc;

use relay_proto::ServerFrame;
use relay_store::Store;
use serde_json::{Value, json};

use crate::support::*;

const GROUP: &str = "[namespaces.group]\nsubscribe = \"members\"\ncreate = \"any\"\n";

async fn group_server(store: Arc<dyn Store>) -> TestServer {
    TestServer::start_with_store(store, |config| {
        let policy = relay_server::Config::from_toml(GROUP).unwrap();
        config.namespaces = policy.namespaces;
    })
    .await
}

/// `group:1`: alice owns it; bob, carol and adam are members, adam an admin.
async fn create_group(server: &TestServer) {
    let alice = server.http(&server.token("alice"));
    let (status, body) = alice
        .post(
            "/api/channels",
            json!({"name": "group:1", "members": ["bob", "carol", "adam"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = alice
        .put_json(
            "/api/channels/group:1/members/adam",
            json!({"role": "admin"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// The reply to `frame`, skipping the messages delivered meanwhile (echo is on).
async fn answer(client: &mut WsClient, frame: Value) -> ServerFrame {
    client.send(frame).await;
    loop {
        match client.recv().await {
            ServerFrame::Message { .. } => {}
            reply => return reply,
        }
    }
}

async fn acked_seq(client: &mut WsClient, frame: Value) -> u64 {
    match answer(client, frame).await {
        ServerFrame::Ack { seq: Some(seq), .. } => seq.0,
        other => panic!("{other:?}"),
    }
}

fn edit(seq: u64, text: &str) -> Value {
    json!({"type": "publish", "id": 1, "channel": "group:1", "event": "edit", "ref": seq, "payload": {"text": text}})
}

fn delete(seq: u64) -> Value {
    json!({"type": "publish", "id": 1, "channel": "group:1", "event": "delete", "ref": seq})
}

/// The next message frame's (seq, event, ref, payload).
async fn next_message(client: &mut WsClient) -> (u64, Option<String>, Option<u64>, String) {
    loop {
        if let ServerFrame::Message {
            seq: Some(seq),
            event,
            reference,
            payload,
            ..
        } = client.recv().await
        {
            return (
                seq.0,
                event,
                reference.map(|r| r.0),
                payload.as_str().to_owned(),
            );
        }
    }
}

async fn edits_and_deletes_in_a_group_chat(store: Arc<dyn Store>) -> TestServer {
    let server = group_server(store).await;
    create_group(&server).await;
    let mut bob = server.connect("bob").await;
    let mut carol = server.connect("carol").await;
    let mut alice = server.connect("alice").await;
    for client in [&mut bob, &mut carol, &mut alice] {
        assert!(matches!(
            client.subscribe("group:1").await,
            ServerFrame::Subscribed { .. }
        ));
    }
    let hello = json!({"type": "publish", "id": 1, "channel": "group:1", "payload": {"text": "secret hello"}});
    assert_eq!(acked_seq(&mut bob, hello).await, 1);
    let other =
        json!({"type": "publish", "id": 1, "channel": "group:1", "payload": {"text": "by carol"}});
    assert_eq!(acked_seq(&mut carol, other).await, 2);
    // The sender edits; everyone gets the edit as the next seq'd event.
    assert_eq!(
        acked_seq(&mut bob, edit(1, "secret hello, edited")).await,
        3
    );
    assert_eq!(
        message(&mut alice, 3).await,
        (
            3,
            Some("edit".into()),
            Some(1),
            r#"{"text":"secret hello, edited"}"#.into()
        )
    );
    // Another plain member may not edit or delete it; the frame gets an error, nothing else.
    for frame in [edit(1, "not mine"), delete(1)] {
        let refused = answer(&mut carol, frame).await;
        assert_eq!(error_code(&refused), Some("forbidden"), "{refused:?}");
    }
    // The owner may delete it.
    assert_eq!(acked_seq(&mut alice, delete(1)).await, 4);
    assert_eq!(
        message(&mut bob, 4).await,
        (4, Some("delete".into()), Some(1), "null".into())
    );
    // What cannot be changed: a deleted message, a missing one, an edit itself.
    let gone = answer(&mut bob, edit(1, "again")).await;
    assert_eq!(error_code(&gone), Some("conflict"), "{gone:?}");
    let missing = answer(&mut bob, edit(99, "x")).await;
    assert_eq!(error_code(&missing), Some("not_found"), "{missing:?}");
    let of_an_edit = answer(&mut bob, edit(3, "x")).await;
    assert_eq!(error_code(&of_an_edit), Some("not_found"), "{of_an_edit:?}");
    // An admin may edit carol's message.
    let mut adam = server.connect("adam").await;
    assert_eq!(acked_seq(&mut adam, edit(2, "by carol, fixed")).await, 5);

    // The log stays append-only and gap-free; `since` replays edits and deletes in order.
    let mut late = server.connect("carol").await;
    late.send(json!({"type": "subscribe", "id": 9, "channel": "group:1", "since": 0}))
        .await;
    let mut replay = Vec::new();
    while replay.len() < 5 {
        let (seq, event, reference, _) = next_message(&mut late).await;
        replay.push((seq, event, reference));
    }
    assert_eq!(
        replay,
        [
            (1, None, None),
            (2, None, None),
            (3, Some("edit".into()), Some(1)),
            (4, Some("delete".into()), Some(1)),
            (5, Some("edit".into()), Some(2)),
        ]
    );

    // REST: the raw log has every event, with the deleted content gone; the current view
    // applies them.
    let http = server.http(&server.token("carol"));
    let (status, log) = http.get("/api/channels/group:1/messages").await;
    assert_eq!(status, 200, "{log}");
    let log = log["messages"].as_array().unwrap().clone();
    assert_eq!(log.len(), 5);
    assert_eq!(log[0]["payload"], Value::Null);
    assert_eq!(
        log[2]["payload"],
        Value::Null,
        "the edit of a deleted message too"
    );
    assert_eq!(log[2]["ref"], 1);
    assert!(!serde_json::to_string(&log).unwrap().contains("secret"));
    let (status, current) = http
        .get("/api/channels/group:1/messages?view=current")
        .await;
    assert_eq!(status, 200, "{current}");
    assert_eq!(current["view"], "current");
    let current = current["messages"].as_array().unwrap().clone();
    assert_eq!(current.len(), 2, "{current:?}");
    assert_eq!(
        (
            &current[0]["seq"],
            &current[0]["deleted"],
            &current[0]["payload"]
        ),
        (&json!(1), &json!(4), &Value::Null)
    );
    assert_eq!(current[0]["from"], "bob", "the original's sender stays");
    assert_eq!(
        (
            &current[1]["seq"],
            &current[1]["edited"],
            &current[1]["payload"]
        ),
        (&json!(2), &json!(5), &json!({"text": "by carol, fixed"}))
    );
    assert_eq!(current[1]["from"], "carol");
    let (status, body) = http.get("/api/channels/group:1/messages?view=newest").await;
    assert_eq!(status, 400, "{body}");
    server
}

#[tokio::test]
async fn edits_and_deletes_are_seq_d_events_applied_by_the_current_view() {
    edits_and_deletes_in_a_group_chat(Arc::new(relay_store::MemoryStore::new())).await;
}

#[tokio::test]
#[cfg_attr(not(pg_tests), ignore = "Postgres tests need DATABASE_URL")]
async fn on_postgres_a_delete_removes_the_content_from_the_table() {
    let db = relay_store::testing::TestDatabase::create().await;
    let store: Arc<dyn Store> = Arc::new(db.store().await);
    let _server = edits_and_deletes_in_a_group_chat(store).await;
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let rows: Vec<(i64, Option<i64>, String)> = sqlx::query_as(
        "SELECT seq, ref_seq, payload FROM messages WHERE channel = 'group:1' ORDER BY seq",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(rows.len(), 5);
    for (seq, _, payload) in &rows {
        assert!(!payload.contains("secret"), "seq {seq}: {payload}");
    }
    assert_eq!(rows[0].2, "null");
    assert_eq!(rows[2], (3, Some(1), "null".to_owned()));
    assert_eq!(rows[4].1, Some(2));
}

#[tokio::test]
async fn rest_edits_deletes_and_services() {
    let server = group_server(Arc::new(relay_store::MemoryStore::new())).await;
    create_group(&server).await;
    let bob = server.http(&server.token("bob"));
    let carol = server.http(&server.token("carol"));
    let (status, first) = bob
        .post(
            "/api/channels/group:1/messages",
            json!({"payload": {"text": "hi"}}),
        )
        .await;
    assert_eq!(status, 201, "{first}");
    // PATCH by the sender; the answer is the stored edit.
    let (status, edited) = bob
        .patch(
            "/api/channels/group:1/messages/1",
            json!({"payload": {"text": "hi!"}}),
        )
        .await;
    assert_eq!(status, 201, "{edited}");
    assert_eq!(
        (&edited["seq"], &edited["event"], &edited["ref"]),
        (&json!(2), &json!("edit"), &json!(1))
    );
    // The same through POST …/messages with `ref`.
    let (status, body) = bob
        .post(
            "/api/channels/group:1/messages",
            json!({"event": "edit", "ref": 1, "payload": {"text": "hi!!"}}),
        )
        .await;
    assert_eq!((status, &body["seq"]), (201, &json!(3)), "{body}");
    // Refusals: another member, a bad seq, a ref without its event, an edit without payload.
    let (status, body) = carol.delete("/api/channels/group:1/messages/1").await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = bob.delete("/api/channels/group:1/messages/zero").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = carol
        .delete("/api/channels/group:1/messages/9223372036854775808")
        .await;
    assert_eq!(status, 400, "past 2^63 - 1, whoever asks: {body}");
    let (status, body) = bob
        .post(
            "/api/channels/group:1/messages",
            json!({"ref": 1, "payload": 1}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = bob
        .post(
            "/api/channels/group:1/messages",
            json!({"event": "edit", "ref": 1}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    // A keyed edit, retried after the message was deleted, still gets its first answer.
    let keyed_edit = json!({"event": "edit", "ref": 1, "payload": "keyed"});
    let (status, _, first_edit) = bob
        .post_keyed(
            "/api/channels/group:1/messages",
            "edit-1",
            keyed_edit.clone(),
        )
        .await;
    assert_eq!(status, 201, "{first_edit}");
    // A keyed DELETE is safe to retry: the retry answers what the first one got.
    let (status, replayed, deleted) = bob
        .delete_keyed("/api/channels/group:1/messages/1", "del-1")
        .await;
    assert_eq!((status, replayed), (201, false), "{deleted}");
    let (status, replayed, again) = bob
        .delete_keyed("/api/channels/group:1/messages/1", "del-1")
        .await;
    assert_eq!((status, replayed), (200, true), "{again}");
    assert_eq!(again["seq"], deleted["seq"]);
    let (status, body) = bob.delete("/api/channels/group:1/messages/1").await;
    assert_eq!(status, 409, "an unkeyed second delete: {body}");
    let (status, _, body) = bob
        .delete_keyed("/api/channels/group:1/messages/1", "del-2")
        .await;
    assert_eq!(status, 409, "a second delete with a new key: {body}");
    let (status, replayed, again) = bob
        .post_keyed("/api/channels/group:1/messages", "edit-1", keyed_edit)
        .await;
    assert_eq!((status, replayed), (200, true), "{again}");
    assert_eq!(again["seq"], first_edit["seq"]);
    // A service may edit anyone's message, through /api/publish.
    let (_, second) = carol
        .post(
            "/api/channels/group:1/messages",
            json!({"payload": "carol"}),
        )
        .await;
    let backend = server.http(&server.service_token("moderation"));
    let (status, body) = backend
        .post(
            "/api/publish",
            json!({"channel": "group:1", "event": "edit", "ref": second["seq"], "payload": "[redacted]"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = backend
        .post(
            "/api/publish",
            json!({"channels": ["group:1", "group:2"], "event": "delete", "ref": 1}),
        )
        .await;
    assert_eq!(status, 400, "one channel per ref: {body}");
    let (_, current) = carol
        .get("/api/channels/group:1/messages?view=current")
        .await;
    let current = current["messages"].as_array().unwrap().clone();
    assert_eq!(current.len(), 2);
    assert_eq!(current[1]["payload"], "[redacted]");
    // Nothing left to edit in an ephemeral-only namespace.
    let server = TestServer::start_with(|config| {
        let policy =
            relay_server::Config::from_toml("[namespaces.live]\npersistence = \"ephemeral\"\n")
                .unwrap();
        config.namespaces = policy.namespaces;
    })
    .await;
    let mut client = server.connect("bob").await;
    let refused = client
        .request(json!({"type": "publish", "id": 1, "channel": "live:1", "event": "edit", "ref": 1, "payload": 1}))
        .await;
    assert_eq!(error_code(&refused), Some("forbidden"), "{refused:?}");
}

/// Message `seq`, skipping those before it.
async fn message(client: &mut WsClient, seq: u64) -> (u64, Option<String>, Option<u64>, String) {
    loop {
        let message = next_message(client).await;
        if message.0 >= seq {
            assert_eq!(message.0, seq, "{message:?}");
            return message;
        }
    }
}
