//! Presence, join/leave and signals.

use relay_core::{NamespacePolicy, Policies};
use relay_proto::{ErrorCode, ServerFrame};
use serde_json::json;

use crate::support::*;

fn chat_policies() -> Policies {
    let policy = NamespacePolicy {
        presence: true,
        join_leave: true,
        ..NamespacePolicy::default()
    };
    Policies::default().with("chat", policy)
}

#[tokio::test]
async fn a_user_with_two_connections_joins_once_and_leaves_with_the_last() {
    let t = TestHub::with_policies(chat_policies());
    let alice = t.connect("alice");
    alice.subscribe("chat:1").await;
    let (bob_desktop, bob_phone) = (t.connect("bob"), t.connect("bob"));

    let frames = bob_desktop.subscribe("chat:1").await;
    let ServerFrame::Subscribed {
        presence: Some(users),
        ..
    } = &frames[0]
    else {
        panic!("{frames:?}")
    };
    assert_eq!(users, &vec![user("alice"), user("bob")]);
    assert!(
        matches!(&alice.frames()[..], [ServerFrame::Join { user: u, .. }] if u.as_str() == "bob")
    );

    bob_phone.subscribe("chat:1").await;
    assert!(
        alice.frames().is_empty(),
        "second connection does not join again"
    );

    drop(bob_desktop);
    assert!(
        alice.frames().is_empty(),
        "bob is still online on his phone"
    );
    alice
        .send(json!({"type": "presence", "id": 1, "channel": "chat:1"}))
        .await;
    assert!(
        matches!(&alice.frames()[..], [ServerFrame::Presence { users, .. }] if users.len() == 2)
    );

    drop(bob_phone);
    assert!(
        matches!(&alice.frames()[..], [ServerFrame::Leave { user: u, .. }] if u.as_str() == "bob")
    );
    assert_eq!(t.hub.online_users(&ch("chat:1")), vec![user("alice")]);
}

#[tokio::test]
async fn both_connections_of_a_user_receive_messages() {
    let t = TestHub::with_policies(chat_policies());
    let (desktop, phone, carol) = (t.connect("bob"), t.connect("bob"), t.connect("carol"));
    desktop.subscribe("chat:1").await;
    phone.subscribe("chat:1").await;
    carol.frames();
    carol.publish("chat:1", json!("hello")).await;
    assert_eq!(message_seqs(&desktop.frames()), vec![1]);
    assert_eq!(message_seqs(&phone.frames()), vec![1]);
}

#[tokio::test]
async fn presence_is_refused_where_the_namespace_disables_it() {
    let t = TestHub::new();
    let alice = t.connect("alice");
    alice
        .send(json!({"type": "presence", "channel": "plain:1"}))
        .await;
    assert_eq!(error_code(&alice.frames()), Some(ErrorCode::Forbidden));
}

#[tokio::test]
async fn signal_reaches_only_the_target_users_subscribed_connections() {
    let t = TestHub::new();
    let alice = t.connect("alice");
    let (bob_in, bob_elsewhere) = (t.connect("bob"), t.connect("bob"));
    let carol = t.connect("carol");
    alice.subscribe("call:1").await;
    bob_in.subscribe("call:1").await;
    bob_elsewhere.subscribe("call:2").await;
    carol.subscribe("call:1").await;

    let offer = json!({"type": "signal", "channel": "call:1", "to": "bob", "event": "offer", "payload": {"sdp": "v=0"}});
    alice.send(offer).await;

    let frames = bob_in.frames();
    assert!(
        matches!(&frames[..], [ServerFrame::Signal { from, event: Some(e), .. }] if from.as_str() == "alice" && e == "offer"),
        "{frames:?}"
    );
    assert!(bob_elsewhere.frames().is_empty());
    assert!(carol.frames().is_empty());
    assert!(alice.frames().is_empty());

    // Presence is off in `call`: a signal to a user who is not there gets the same answer
    // (none) as one that was delivered, so signals cannot probe who is online.
    alice
        .send(json!({"type": "signal", "channel": "call:1", "to": "dave", "payload": {}}))
        .await;
    assert!(alice.frames().is_empty());
    // Only subscribers signal.
    let mallory = t.connect("mallory");
    mallory
        .send(json!({"type": "signal", "channel": "call:1", "to": "bob", "payload": {}}))
        .await;
    assert_eq!(error_code(&mallory.frames()), Some(ErrorCode::Forbidden));
    assert!(bob_in.frames().is_empty());
    assert_eq!(
        t.store.count(&ch("call:1")).await.unwrap(),
        0,
        "signals are never stored"
    );
}

use relay_store::Store;

#[tokio::test]
async fn where_presence_is_shown_a_signal_to_nobody_is_not_found() {
    let policy = relay_core::NamespacePolicy {
        presence: true,
        ..relay_core::NamespacePolicy::default()
    };
    let t = TestHub::with_policies(relay_core::Policies::default().with("room", policy));
    let alice = t.connect("alice");
    alice.subscribe("room:1").await;
    alice.frames();
    alice
        .send(json!({"type": "signal", "channel": "room:1", "to": "dave", "payload": {}}))
        .await;
    assert_eq!(error_code(&alice.frames()), Some(ErrorCode::NotFound));
}
