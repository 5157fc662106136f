//! Who may subscribe and publish: user limits, membership, claims, server-only namespaces.

use relay_core::{Identity, NamespacePolicy, Policies, PublishRule, SubscribeRule};
use relay_proto::{ErrorCode, MemberRole, ServerFrame};
use relay_store::{NewChannel, Store};
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn user_limited_channel_refuses_everyone_not_listed() {
    let t = TestHub::new();
    let (alice, carol) = (t.connect("alice"), t.connect("carol"));
    let frames = alice.subscribe("dm:#alice,bob").await;
    assert!(
        matches!(&frames[..], [ServerFrame::Subscribed { .. }]),
        "{frames:?}"
    );
    let frames = carol.subscribe("dm:#alice,bob").await;
    assert_eq!(error_code(&frames), Some(ErrorCode::Forbidden));
    let frames = carol.publish("dm:#alice,bob", json!("psst")).await;
    assert_eq!(error_code(&frames), Some(ErrorCode::Forbidden));
    assert!(alice.frames().is_empty(), "carol's publish never arrived");
    assert_eq!(t.hub.stats().subscriptions, 1);
}

#[tokio::test]
async fn members_namespace_checks_stored_membership() {
    let policy = NamespacePolicy {
        subscribe: SubscribeRule::Members,
        ..NamespacePolicy::default()
    };
    let t = TestHub::with_policies(Policies::default().with("group", policy));
    t.store
        .create_channel(NewChannel {
            created_by: Some(user("alice")),
            ..NewChannel::named(ch("group:1"))
        })
        .await
        .unwrap();
    let (alice, bob) = (t.connect("alice"), t.connect("bob"));
    assert!(matches!(
        &alice.subscribe("group:1").await[..],
        [ServerFrame::Subscribed { .. }]
    ));
    assert_eq!(
        error_code(&bob.subscribe("group:1").await),
        Some(ErrorCode::Forbidden)
    );
    assert_eq!(
        error_code(&bob.publish("group:1", json!(1)).await),
        Some(ErrorCode::Forbidden)
    );

    t.store
        .add_member(&ch("group:1"), &user("bob"), MemberRole::Member)
        .await
        .unwrap();
    assert!(matches!(
        &bob.subscribe("group:1").await[..],
        [ServerFrame::Subscribed { .. }]
    ));
}

#[tokio::test]
async fn server_only_namespace_refuses_client_publishes_but_not_services() {
    let policy = NamespacePolicy {
        publish: PublishRule::None,
        ..NamespacePolicy::default()
    };
    let t = TestHub::with_policies(Policies::default().with("list", policy));
    let alice = t.connect("alice");
    alice.subscribe("list:123").await;
    assert_eq!(
        error_code(&alice.publish("list:123", json!(1)).await),
        Some(ErrorCode::Forbidden)
    );

    let backend = t.connect_as(Identity::service(user("backend")));
    let frames = backend.publish("list:123", json!({"event": "ADDED"})).await;
    assert!(
        matches!(&frames[..], [ServerFrame::Ack { .. }]),
        "{frames:?}"
    );
    assert_eq!(message_seqs(&alice.frames()), vec![1]);
}

#[tokio::test]
async fn claim_namespace_follows_the_tokens_channels_claim() {
    let policy = NamespacePolicy {
        subscribe: SubscribeRule::Claim,
        ..NamespacePolicy::default()
    };
    let t = TestHub::with_policies(Policies::default().with("list", policy));
    let allowed = t.connect_as(Identity {
        channels: Some(vec!["list:1*".into()]),
        ..Identity::user(user("alice"))
    });
    assert!(matches!(
        &allowed.subscribe("list:123").await[..],
        [ServerFrame::Subscribed { .. }]
    ));
    assert_eq!(
        error_code(&allowed.subscribe("list:2").await),
        Some(ErrorCode::Forbidden)
    );
    let plain = t.connect("bob");
    assert_eq!(
        error_code(&plain.subscribe("list:123").await),
        Some(ErrorCode::Forbidden)
    );
}

#[tokio::test]
async fn subscribing_twice_on_one_connection_is_a_bad_request() {
    let t = TestHub::new();
    let alice = t.connect("alice");
    alice.subscribe("chat:1").await;
    assert_eq!(
        error_code(&alice.subscribe("chat:1").await),
        Some(ErrorCode::BadRequest)
    );
    assert_eq!(t.hub.stats().subscriptions, 1);
}

#[tokio::test]
async fn user_limits_bind_services_too() {
    let t = TestHub::new();
    let backend = t.connect_as(Identity::service(user("backend")));
    assert_eq!(
        error_code(&backend.subscribe("dm:#alice,bob").await),
        Some(ErrorCode::Forbidden)
    );
    let frames = backend.subscribe("dm:#alice,backend").await;
    assert!(
        matches!(&frames[..], [ServerFrame::Subscribed { .. }]),
        "{frames:?}"
    );
}

#[tokio::test]
async fn a_connection_cannot_hold_more_subscriptions_than_the_limit() {
    let t = TestHub::with_config(relay_core::HubConfig {
        max_subscriptions: 2,
        ..Default::default()
    });
    let alice = t.connect("alice");
    alice.subscribe("c:1").await;
    alice.subscribe("c:2").await;
    assert_eq!(
        error_code(&alice.subscribe("c:3").await),
        Some(ErrorCode::BadRequest)
    );
    alice
        .send(json!({"type": "unsubscribe", "channel": "c:1"}))
        .await;
    alice.frames();
    let frames = alice.subscribe("c:3").await;
    assert!(
        matches!(&frames[..], [ServerFrame::Subscribed { .. }]),
        "{frames:?}"
    );
}

/// Who may edit or delete a message: its sender, an owner or admin of the channel's record, a
/// service, and trusted code; the message must exist, be an original, and not be deleted.
#[tokio::test]
async fn edits_and_deletes_are_for_the_sender_owners_admins_and_services() {
    let t = TestHub::new();
    t.store
        .create_channel(NewChannel {
            created_by: Some(user("owner")),
            members: vec![user("member"), user("admin")],
            ..NewChannel::named(ch("chat:1"))
        })
        .await
        .unwrap();
    t.store
        .set_role(&ch("chat:1"), &user("admin"), MemberRole::Admin)
        .await
        .unwrap();
    let sender = t.connect("sender");
    sender.publish("chat:1", json!("one")).await;
    sender.publish("chat:1", json!("two")).await;
    let revise = |event: &str, seq: u64| json!({"type": "publish", "id": 1, "channel": "chat:1", "event": event, "ref": seq, "payload": "x"});
    let member = t.connect("member");
    member.send(revise("edit", 1)).await;
    assert_eq!(error_code(&member.frames()), Some(ErrorCode::Forbidden));
    for who in ["sender", "owner", "admin"] {
        let client = t.connect(who);
        client.send(revise("edit", 1)).await;
        let frames = client.frames();
        assert!(
            frames.iter().any(|f| matches!(f, ServerFrame::Ack { .. })),
            "{who}: {frames:?}"
        );
    }
    let service = t.connect_as(Identity::service(user("backend")));
    service.send(revise("delete", 2)).await;
    assert!(matches!(service.frames()[..], [ServerFrame::Ack { .. }]));
    // Deleted, an edit (seq 3), or absent: refused whoever asks.
    for (seq, code) in [
        (2, ErrorCode::Conflict),
        (3, ErrorCode::NotFound),
        (99, ErrorCode::NotFound),
    ] {
        sender.send(revise("edit", seq)).await;
        assert_eq!(error_code(&sender.frames()), Some(code), "seq {seq}");
    }
    // Trusted code may revise any message.
    let published = t
        .hub
        .publish(relay_core::Publish::delete(
            ch("chat:1"),
            relay_proto::Seq(1),
        ))
        .await
        .unwrap();
    assert_eq!(published.seq, Some(relay_proto::Seq(7)));
    let current = t
        .store
        .history_current(&ch("chat:1"), relay_store::HistoryQuery::latest(10))
        .await
        .unwrap();
    let deleted: Vec<Option<u64>> = current.iter().map(|c| c.deleted.map(|s| s.0)).collect();
    assert_eq!(deleted, [Some(7), Some(6)]);
}
