//! Zero-knowledge thread relay: clients create threads with encrypted metadata, exchange
//! encrypted blobs, and page through history. The server never looks inside.

use relay_proto::{Seq, ServerFrame};
use serde_json::{Value, json};

use crate::support::*;

const THREAD: &str = "thread:3f2c1b9e-8a1d-4c5e-9f00-0123456789ab";

fn blob(n: u64) -> Value {
    json!({"ciphertext": format!("Y2lwaGVy{n}=="), "iv": "AAECAwQFBgcICQoL"})
}

#[tokio::test]
async fn threads_are_created_idempotently_with_opaque_meta() {
    let server = TestServer::start().await;
    let http = server.http(&server.token("alice"));
    let meta = json!({"ciphertext": "bWV0YQ==", "iv": "AQID"});

    let (status, created) = http
        .post("/api/channels", json!({"name": THREAD, "meta": meta}))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["meta"], meta);

    let (status, again) = http
        .post(
            "/api/channels",
            json!({"name": THREAD, "meta": {"ciphertext": "other"}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        again["meta"], meta,
        "an existing channel is returned unchanged"
    );

    let (status, one) = http.get(&format!("/api/channels/{THREAD}")).await;
    assert_eq!((status, &one["name"]), (200, &json!(THREAD)));
    let (status, _) = http.get("/api/channels/thread:unknown").await;
    assert_eq!(status, 404);

    let (status, found) = http
        .post(
            "/api/channels/query",
            json!({"names": ["thread:nope", THREAD, "thread:also-nope"]}),
        )
        .await;
    assert_eq!(status, 200);
    let names: Vec<&str> = found["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [THREAD]);
}

#[tokio::test]
async fn encrypted_blobs_over_ws_and_rest_reach_only_subscribers_byte_for_byte() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let mut carol = server.connect("carol").await;
    assert!(matches!(
        alice.subscribe(THREAD).await,
        ServerFrame::Subscribed { .. }
    ));
    assert!(matches!(
        bob.subscribe(THREAD).await,
        ServerFrame::Subscribed { .. }
    ));

    alice
        .send(json!({"type": "publish", "id": "m1", "channel": THREAD, "payload": blob(1)}))
        .await;
    let ServerFrame::Message { payload, seq, .. } = bob.recv().await else {
        panic!()
    };
    assert_eq!(payload.to_value::<Value>().unwrap(), blob(1));
    assert_eq!(seq, Some(Seq(1)));
    assert!(
        matches!(alice.recv().await, ServerFrame::Message { .. }),
        "the publisher sees its own message"
    );
    assert!(matches!(
        alice.recv().await,
        ServerFrame::Ack {
            seq: Some(Seq(1)),
            ..
        }
    ));

    // Offline sync: the same thread over REST.
    let (status, stored) = server
        .http(&server.token("bob"))
        .post(
            &format!("/api/channels/{THREAD}/messages"),
            json!({"payload": blob(2)}),
        )
        .await;
    assert_eq!(status, 201, "{stored}");
    assert_eq!(
        (stored["seq"].as_u64(), &stored["payload"]),
        (Some(2), &blob(2))
    );
    let ServerFrame::Message {
        payload, seq, from, ..
    } = alice.recv().await
    else {
        panic!()
    };
    assert_eq!(
        (payload.to_value::<Value>().unwrap(), seq),
        (blob(2), Some(Seq(2)))
    );
    assert_eq!(from.unwrap().as_str(), "bob");

    carol.expect_nothing_pending().await;
}

#[tokio::test]
async fn history_pages_by_after_before_and_limit_and_counts() {
    let server = TestServer::start().await;
    let http = server.http(&server.token("alice"));
    for n in 1..=55 {
        let (status, _) = http
            .post(
                &format!("/api/channels/{THREAD}/messages"),
                json!({"payload": blob(n)}),
            )
            .await;
        assert_eq!(status, 201);
    }
    let seqs = |body: &Value| -> Vec<u64> {
        body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect()
    };
    let base = format!("/api/channels/{THREAD}/messages");
    let (_, newest) = http.get(&base).await;
    assert_eq!(
        seqs(&newest),
        (6..=55).collect::<Vec<_>>(),
        "no cursor: the newest 50, ascending"
    );
    let (_, page) = http.get(&format!("{base}?after=10&limit=5")).await;
    assert_eq!(seqs(&page), [11, 12, 13, 14, 15]);
    let (_, page) = http.get(&format!("{base}?before=5")).await;
    assert_eq!(seqs(&page), [1, 2, 3, 4]);
    let (_, page) = http.get(&format!("{base}?after=50&before=53")).await;
    assert_eq!(seqs(&page), [51, 52]);
    assert_eq!(page["messages"][0]["payload"], blob(51));
    let (status, _) = http.get(&format!("{base}?limit=201")).await;
    assert_eq!(status, 400, "limit is at most 200");
    let (status, _) = http.get(&format!("{base}?after=x")).await;
    assert_eq!(status, 400);
    let (_, count) = http.get(&format!("{base}/count")).await;
    assert_eq!(count, json!({"channel": THREAD, "count": 55}));
}

#[tokio::test]
async fn a_reconnecting_client_recovers_what_it_missed_with_since() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    alice.subscribe(THREAD).await;
    for n in 1..=3 {
        alice
            .send(json!({"type": "publish", "channel": THREAD, "payload": blob(n)}))
            .await;
    }
    let mut bob = server.connect("bob").await;
    let frame = bob
        .request(json!({"type": "subscribe", "channel": THREAD, "since": 1}))
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
    for expected in [2, 3] {
        let ServerFrame::Message { seq, .. } = bob.recv().await else {
            panic!()
        };
        assert_eq!(seq, Some(Seq(expected)));
    }
}

/// Seed 000's flow: both participants create the thread, each with its own freshly
/// encrypted meta; the second gets the first record with 200, not a conflict.
#[tokio::test]
async fn second_participant_creating_the_thread_gets_the_first_record() {
    let server = TestServer::start().await;
    let alice_meta = json!({"ciphertext": "YWxpY2U=", "iv": "AQID"});
    let (status, first) = server
        .http(&server.token("alice"))
        .post("/api/channels", json!({"name": THREAD, "meta": alice_meta}))
        .await;
    assert_eq!(status, 201, "{first}");
    let (status, second) = server
        .http(&server.token("bob"))
        .post(
            "/api/channels",
            json!({"name": THREAD, "meta": {"ciphertext": "Ym9i", "iv": "BAUG"}, "members": ["bob"]}),
        )
        .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second, first);
}
