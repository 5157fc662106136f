//! Exactly-once publishing: a publish retried with its idempotency key (over WebSocket or
//! REST, after a lost ack or a crash) is stored and delivered once, and the retry gets the
//! first publish's ack.

use std::collections::BTreeMap;

use relay_proto::{ChannelName, Seq, ServerFrame};
use relay_store::testing::TestDatabase;
use relay_store::{HistoryQuery, PgStore, Store};
use serde_json::json;

use crate::support::*;

fn ack(frame: &ServerFrame) -> (Option<Seq>, String) {
    match frame {
        ServerFrame::Ack {
            seq, message_id, ..
        } => (*seq, message_id.to_string()),
        other => panic!("expected an ack, got {other:?}"),
    }
}

#[tokio::test]
async fn a_repeated_key_gets_the_first_ack_and_is_delivered_once() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    bob.subscribe("room:1").await;

    let publish = |key: &str, text: &str| {
        json!({"type": "publish", "id": key, "channel": "room:1",
               "payload": {"text": text}, "idempotency_key": key})
    };
    let first = ack(&alice.request(publish("k-1", "hello")).await);
    assert_eq!(first.0, Some(Seq(1)));
    // The retry (say, after a reconnect) on another connection of the same user.
    let mut alice_again = server.connect("alice").await;
    let again = ack(&alice_again.request(publish("k-1", "hello")).await);
    assert_eq!(again, first, "the retry gets the first ack");
    let other = ack(&alice.request(publish("k-2", "second")).await);
    assert_eq!(other.0, Some(Seq(2)), "a repeat takes no seq");

    // Bob got each message once.
    for expected in [1, 2] {
        let frame = bob.recv().await;
        assert!(
            matches!(frame, ServerFrame::Message { seq: Some(Seq(s)), .. } if s == expected),
            "{frame:?}"
        );
    }
    bob.expect_nothing_pending().await;

    // Keys are per publisher: bob's "k-1" is his own message.
    bob.send(publish("k-1", "bob's")).await;
    let (echo, reply) = (bob.recv().await, bob.recv().await);
    assert!(matches!(echo, ServerFrame::Message { .. }), "{echo:?}");
    assert_eq!(ack(&reply).0, Some(Seq(3)));

    let frame = alice
        .request(
            json!({"type": "publish", "id": 9, "channel": "room:1", "payload": 1,
                        "idempotency_key": "has space"}),
        )
        .await;
    assert_eq!(error_code(&frame), Some("bad_request"), "{frame:?}");
    assert!(matches!(frame, ServerFrame::Error { id: Some(_), .. }));
    let http = server.http(&server.token("alice"));
    let (_, count) = http.get("/api/channels/room:1/messages/count").await;
    assert_eq!(count["count"], 3);
}

#[tokio::test]
async fn rest_publishes_honour_the_idempotency_key_header() {
    let server = TestServer::start().await;
    let alice = server.http(&server.token("alice"));
    let path = "/api/channels/room:2/messages";
    let (status, replayed, first) = alice
        .post_keyed(path, "order-17", json!({"payload": {"n": 1}}))
        .await;
    assert_eq!((status, replayed), (201, false), "{first}");
    let (status, replayed, again) = alice
        .post_keyed(path, "order-17", json!({"payload": {"n": 1}}))
        .await;
    assert_eq!((status, replayed), (200, true), "{again}");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["seq"], first["seq"]);
    let (status, _, body) = alice
        .post_keyed(path, "bad key", json!({"payload": 1}))
        .await;
    assert_eq!(status, 400, "{body}");
    let (_, count) = alice.get("/api/channels/room:2/messages/count").await;
    assert_eq!(count["count"], 1);

    // The server-side publish: one key, several channels, each stored once.
    let service = server.http(&server.service_token("backend"));
    let body = json!({"channels": ["feed:a", "feed:b"], "payload": {"event": "x"}});
    let (status, replayed, first) = service
        .post_keyed("/api/publish", "evt-1", body.clone())
        .await;
    assert_eq!((status, replayed), (200, false), "{first}");
    let (_, _, again) = service.post_keyed("/api/publish", "evt-1", body).await;
    for i in 0..2 {
        assert_eq!(again["published"][i]["seq"], first["published"][i]["seq"]);
        assert_eq!(
            again["published"][i]["message_id"],
            first["published"][i]["message_id"]
        );
        assert_eq!(again["published"][i]["repeat"], true);
        assert!(first["published"][i].get("repeat").is_none());
    }
}

/// Publishes keyed messages in a closed loop until the connection dies; returns the acks and
/// the frame that was in flight when it died (sent, never acked).
async fn publish_keyed_until_killed(
    mut client: WsClient,
    publisher: usize,
) -> (Vec<(String, u64)>, Option<serde_json::Value>) {
    let mut acked = Vec::new();
    for n in 0.. {
        let key = format!("p{publisher}-{n}");
        let frame = json!({"type": "publish", "channel": "orders:keyed",
                           "payload": {"key": key}, "idempotency_key": key});
        if client.ws_send(frame.clone()).await.is_err() {
            return (acked, Some(frame));
        }
        match client.try_recv().await {
            Some(ServerFrame::Ack { seq: Some(seq), .. }) => acked.push((key, seq.0)),
            Some(other) => panic!("unexpected {other:?}"),
            None => return (acked, Some(frame)),
        }
    }
    (acked, None)
}

#[tokio::test]
#[cfg_attr(not(pg_tests), ignore = "Postgres tests need DATABASE_URL")]
async fn publishes_retried_after_kill_9_are_stored_exactly_once() {
    let db = TestDatabase::create().await;
    let server = ChildServer::spawn(&["--database-url", db.url()]);
    let mut watcher = server.connect("watcher").await;
    watcher.subscribe("orders:keyed").await;
    let mut publishers = Vec::new();
    for p in 0..4 {
        let client = server.connect(&format!("publisher{p}")).await;
        publishers.push(tokio::spawn(publish_keyed_until_killed(client, p)));
    }
    let mut seen = 0;
    while seen < 200 {
        if matches!(watcher.recv().await, ServerFrame::Message { .. }) {
            seen += 1;
        }
    }
    server.signal("-KILL");
    let mut results = Vec::new();
    for p in publishers {
        results.push(p.await.unwrap());
    }
    drop(server);

    // After the restart each publisher retries what was in flight, with the same key: it
    // may or may not have been committed before the kill.
    let server = ChildServer::spawn(&["--database-url", db.url()]);
    let mut expected: BTreeMap<String, Option<u64>> = BTreeMap::new();
    for (p, (acked, in_flight)) in results.into_iter().enumerate() {
        for (key, seq) in acked {
            expected.insert(key, Some(seq));
        }
        if let Some(frame) = in_flight {
            let key = frame["idempotency_key"].as_str().unwrap().to_owned();
            let mut client = server.connect(&format!("publisher{p}")).await;
            let (seq, _) = ack(&client.request(frame).await);
            expected.insert(key, seq.map(|s| s.0));
        }
    }
    let store = PgStore::connect(db.url()).await.unwrap();
    let channel = ChannelName::parse("orders:keyed").unwrap();
    let history = store
        .history(&channel, HistoryQuery::after(Seq::ZERO, 100_000))
        .await
        .unwrap();
    let mut stored: BTreeMap<String, u64> = BTreeMap::new();
    for m in &history {
        let key = m.payload.to_value::<serde_json::Value>().unwrap()["key"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            stored.insert(key.clone(), m.seq.0).is_none(),
            "{key} stored twice"
        );
    }
    for (key, seq) in &expected {
        assert_eq!(
            stored.get(key),
            seq.as_ref(),
            "{key} is stored once, at its acked seq"
        );
    }
    assert_eq!(stored.len(), expected.len(), "nothing else was stored");
}
