//! Roles over the SDK: an owner manages members, and a removed member's subscription ends.

use std::time::Duration;

use relay_client::Event;
use relay_proto::{ErrorCode, MemberRole};

use crate::support::*;

async fn group_server() -> Server {
    Server::start_with(|config| {
        let file = relay_server::Config::from_toml(
            "[namespaces.group]\nsubscribe = \"members\"\ncreate = \"any\"\n",
        )
        .unwrap();
        config.namespaces = file.namespaces;
    })
    .await
}

#[tokio::test]
async fn a_removed_member_s_subscription_ends_with_refused() {
    let server = group_server().await;
    let alice = server.client("alice").await;
    let rest = alice.rest().unwrap();
    rest.create_channel::<()>("group:7", None, &["bob"])
        .await
        .unwrap();
    let admin = rest
        .set_role("group:7", "bob", MemberRole::Admin)
        .await
        .unwrap();
    assert_eq!(admin.role, MemberRole::Admin);
    let members = rest.members("group:7").await.unwrap();
    assert_eq!(members[0].role, MemberRole::Owner);

    let bob = server.client("bob").await;
    let mut sub = bob.subscribe("group:7").await.unwrap();
    rest.remove_member("group:7", "bob").await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), sub.next_event())
        .await
        .expect("an event within 10 s");
    assert!(
        matches!(
            event,
            Some(Event::Refused {
                code: ErrorCode::Forbidden,
                ..
            })
        ),
        "{event:?}"
    );
    let end = tokio::time::timeout(Duration::from_secs(10), sub.next_event())
        .await
        .expect("the stream ends");
    assert!(end.is_none(), "{end:?}");
}
