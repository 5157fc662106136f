//! Who receives what: subscribers only, echo, ephemeral, unsubscribe, server publishes.

use relay_core::{NamespacePolicy, Persistence, Policies, Publish};
use relay_proto::{ErrorCode, Payload, Seq, ServerFrame};
use relay_store::{HistoryQuery, Store};
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn messages_reach_only_subscribers() {
    let t = TestHub::new();
    let (alice, bob, carol) = (t.connect("alice"), t.connect("bob"), t.connect("carol"));
    alice.subscribe("chat:1").await;
    bob.subscribe("chat:1").await;
    carol.subscribe("chat:2").await;

    alice.publish("chat:1", json!({"text": "hi"})).await;

    assert_eq!(payloads(&bob.frames()), vec![json!({"text": "hi"})]);
    assert!(carol.frames().is_empty());
}

#[tokio::test]
async fn publisher_gets_its_own_message_then_the_ack() {
    let t = TestHub::new();
    let alice = t.connect("alice");
    alice.subscribe("chat:1").await;
    alice
        .send(json!({"type": "publish", "id": 9, "channel": "chat:1", "payload": {"a": 1}}))
        .await;
    let frames = alice.frames();
    let [
        ServerFrame::Message {
            id: message_id,
            seq,
            from,
            ..
        },
        ServerFrame::Ack {
            id,
            message_id: acked,
            seq: ack_seq,
            ..
        },
    ] = &frames[..]
    else {
        panic!("{frames:?}")
    };
    assert_eq!(id, &Some(9u64.into()));
    assert_eq!(message_id, acked);
    assert_eq!((*seq, *ack_seq), (Some(Seq(1)), Some(Seq(1))));
    assert_eq!(from.as_ref().map(|u| u.as_str()), Some("alice"));
}

#[tokio::test]
async fn namespace_without_echo_skips_the_publisher_but_acks() {
    let policy = NamespacePolicy {
        echo: false,
        ..NamespacePolicy::default()
    };
    let t = TestHub::with_policies(Policies::default().with("quiet", policy));
    let (alice, bob) = (t.connect("alice"), t.connect("bob"));
    alice.subscribe("quiet:1").await;
    bob.subscribe("quiet:1").await;
    let frames = alice.publish("quiet:1", json!(1)).await;
    assert!(
        matches!(&frames[..], [ServerFrame::Ack { .. }]),
        "{frames:?}"
    );
    assert_eq!(message_seqs(&bob.frames()), vec![1]);
    // The publisher's cursor still advanced: the next message flows normally.
    bob.publish("quiet:1", json!(2)).await;
    assert_eq!(message_seqs(&alice.frames()), vec![2]);
}

#[tokio::test]
async fn typing_is_ephemeral_never_stored_nor_echoed() {
    let t = TestHub::new();
    let (alice, bob) = (t.connect("alice"), t.connect("bob"));
    alice.subscribe("chat:1").await;
    bob.subscribe("chat:1").await;
    alice
        .send(json!({"type": "publish", "channel": "chat:1", "event": "typing", "ephemeral": true, "payload": {}}))
        .await;
    let own = alice.frames();
    assert!(
        matches!(&own[..], [ServerFrame::Ack { seq: None, .. }]),
        "{own:?}"
    );
    let frames = bob.frames();
    assert!(
        matches!(&frames[..], [ServerFrame::Message { seq: None, event: Some(e), .. }] if e == "typing"),
        "{frames:?}"
    );
    assert_eq!(t.store.count(&ch("chat:1")).await.unwrap(), 0);
    assert_eq!(t.latest("chat:1").await, Seq::ZERO);
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let t = TestHub::new();
    let (alice, bob) = (t.connect("alice"), t.connect("bob"));
    bob.subscribe("chat:1").await;
    bob.send(json!({"type": "unsubscribe", "id": "u", "channel": "chat:1"}))
        .await;
    assert!(matches!(
        &bob.frames()[..],
        [ServerFrame::Unsubscribed { reason: None, .. }]
    ));
    alice.publish("chat:1", json!(1)).await;
    assert!(bob.frames().is_empty());
    bob.send(json!({"type": "unsubscribe", "channel": "chat:1"}))
        .await;
    assert_eq!(error_code(&bob.frames()), Some(ErrorCode::BadRequest));
}

#[tokio::test]
async fn embedded_server_publish_reaches_subscribers_without_a_sender() {
    let t = TestHub::new();
    let alice = t.connect("alice");
    alice.subscribe("list:123").await;
    let published = t
        .hub
        .publish(
            Publish::new(ch("list:123"), Payload::from_json(r#"{"id":7}"#).unwrap()).event("ADDED"),
        )
        .await
        .unwrap();
    assert_eq!(published.seq, Some(Seq(1)));
    let frames = alice.frames();
    assert!(
        matches!(&frames[..], [ServerFrame::Message { from: None, event: Some(e), .. }] if e == "ADDED"),
        "{frames:?}"
    );
}

#[tokio::test]
async fn payload_over_the_namespace_limit_is_refused_as_too_large() {
    let policy = NamespacePolicy {
        max_payload_bytes: 16,
        ..NamespacePolicy::default()
    };
    let t = TestHub::with_policies(Policies::new(policy));
    let alice = t.connect("alice");
    let frames = alice
        .publish("chat:1", json!({"text": "far more than sixteen bytes"}))
        .await;
    assert_eq!(error_code(&frames), Some(ErrorCode::TooLarge));
    assert_eq!(t.latest("chat:1").await, Seq::ZERO);
}

#[tokio::test]
async fn persistence_rules_of_the_namespace_apply() {
    let policies = Policies::default()
        .with(
            "cursor",
            NamespacePolicy {
                persistence: Persistence::EphemeralOnly,
                ..Default::default()
            },
        )
        .with(
            "ledger",
            NamespacePolicy {
                persistence: Persistence::PersistentOnly,
                ..Default::default()
            },
        );
    let t = TestHub::with_policies(policies);
    let alice = t.connect("alice");
    let frames = alice.publish("cursor:doc", json!({"x": 1})).await;
    assert!(
        matches!(&frames[..], [ServerFrame::Ack { seq: None, .. }]),
        "{frames:?}"
    );
    assert_eq!(t.latest("cursor:doc").await, Seq::ZERO);
    alice
        .send(json!({"type": "publish", "channel": "ledger:1", "ephemeral": true, "payload": 1}))
        .await;
    assert_eq!(error_code(&alice.frames()), Some(ErrorCode::Forbidden));
}

#[tokio::test]
async fn history_is_trimmed_to_the_namespace_limit() {
    let policy = NamespacePolicy {
        max_history: Some(3),
        ..NamespacePolicy::default()
    };
    let t = TestHub::with_policies(Policies::new(policy));
    let alice = t.connect("alice");
    for i in 0..5 {
        alice.publish("chat:1", json!(i)).await;
    }
    let kept = t
        .store
        .history(&ch("chat:1"), HistoryQuery::latest(50))
        .await
        .unwrap();
    assert_eq!(
        kept.iter().map(|m| m.seq.0).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
}

#[tokio::test]
async fn malformed_frames_get_bad_request_and_change_nothing() {
    let t = TestHub::new();
    let alice = t.connect("alice");
    alice.subscribe("chat:1").await;
    for bad in [
        "{",
        "[]",
        r#"{"type":"dance"}"#,
        r#"{"type":"publish","channel":"chat:1"}"#,
        r#"{"type":"subscribe","channel":"bad name"}"#,
    ] {
        alice.conn.handle_text(bad.as_bytes()).await;
        assert_eq!(
            error_code(&alice.frames()),
            Some(ErrorCode::BadRequest),
            "{bad}"
        );
    }
    alice.conn.handle_text(br#"{"type":"ping","id":"p"}"#).await;
    assert!(matches!(
        &alice.frames()[..],
        [ServerFrame::Pong { id: Some(_) }]
    ));
    assert_eq!(t.hub.stats().subscriptions, 1);
}
