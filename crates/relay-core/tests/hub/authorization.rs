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
