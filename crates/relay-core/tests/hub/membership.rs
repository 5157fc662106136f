//! Channel records, roles and membership through the embedded API: one test per row of the
//! who-may-do-what table in docs/protocol.md ("Membership"), then regressions named after
//! the bugs the table replaced.
//!
//! The fixture: `group:1` in a members namespace where users create records, with alice its
//! owner, adam an admin, bob a plain member; carol is a stranger and `backend` a service.

use relay_core::{
    CreateChannel, CreateRule, HubError, Identity, MemberUpdate, NamespacePolicy, Policies,
    SubscribeRule,
};
use relay_proto::{ChannelName, ErrorCode, MemberRole, Payload, Seq, ServerFrame, UserId};
use relay_store::{Member, Store};

use crate::support::*;

fn who(name: &str) -> Identity {
    Identity::user(user(name))
}

fn service() -> Identity {
    Identity::service(user("backend"))
}

fn members_policy(create: Option<CreateRule>) -> NamespacePolicy {
    NamespacePolicy {
        subscribe: SubscribeRule::Members,
        create,
        presence: true,
        join_leave: true,
        ..NamespacePolicy::default()
    }
}

/// `group` lets users create records; `team` keeps the default (services only).
fn policies() -> Policies {
    Policies::default()
        .with("group", members_policy(Some(CreateRule::Any)))
        .with("team", members_policy(None))
}

fn create(name: &str, members: &[&str]) -> CreateChannel {
    CreateChannel {
        members: members.iter().map(|m| user(m)).collect(),
        ..CreateChannel::named(ch(name))
    }
}

async fn group() -> TestHub {
    let t = TestHub::with_policies(policies());
    t.hub
        .create_channel(&who("alice"), create("group:1", &["adam", "bob"]))
        .await
        .unwrap();
    t.hub
        .set_role(
            &who("alice"),
            &ch("group:1"),
            &user("adam"),
            MemberRole::Admin,
        )
        .await
        .unwrap();
    t
}

fn code<T: std::fmt::Debug>(result: Result<T, HubError>) -> ErrorCode {
    result.expect_err("refused").code()
}

async fn roles(t: &TestHub, channel: &str) -> Vec<(String, MemberRole)> {
    t.store
        .members(&ch(channel))
        .await
        .unwrap()
        .into_iter()
        .map(|Member { user, role }| (user.to_string(), role))
        .collect()
}

async fn add(t: &TestHub, by: &Identity, target: &str) -> Result<MemberUpdate, HubError> {
    t.hub
        .add_member(by, &ch("group:1"), &user(target), None)
        .await
}

async fn remove(t: &TestHub, by: &Identity, target: &str) -> Result<MemberRole, HubError> {
    t.hub.remove_member(by, &ch("group:1"), &user(target)).await
}

// --- the table, row by row ---

#[tokio::test]
async fn row_create_where_only_services_create() {
    let t = TestHub::with_policies(policies());
    assert_eq!(
        code(
            t.hub
                .create_channel(&who("alice"), create("team:1", &[]))
                .await
        ),
        ErrorCode::Forbidden
    );
    let created = t
        .hub
        .create_channel(&service(), create("team:1", &["alice"]))
        .await
        .unwrap();
    assert!(created.is_new());
    assert_eq!(created.record().created_by, None);
    assert_eq!(
        roles(&t, "team:1").await,
        [("alice".into(), MemberRole::Member)]
    );
}

#[tokio::test]
async fn row_create_where_users_create_makes_the_creator_owner() {
    let t = group().await;
    assert_eq!(
        roles(&t, "group:1").await,
        [
            ("adam".into(), MemberRole::Admin),
            ("alice".into(), MemberRole::Owner),
            ("bob".into(), MemberRole::Member),
        ]
    );
    let again = t
        .hub
        .create_channel(&who("bob"), create("group:1", &["alice", "adam"]))
        .await
        .unwrap();
    assert!(
        !again.is_new(),
        "a repeat naming the same members gets the record"
    );
}

#[tokio::test]
async fn row_create_in_open_namespaces_returns_the_existing_record_whatever_its_meta() {
    let t = TestHub::with_policies(policies());
    let meta = |json: &str| Some(Payload::from_json(json).unwrap());
    let first = t
        .hub
        .create_channel(
            &who("alice"),
            CreateChannel {
                meta: meta(r#"{"ciphertext":"AAEC"}"#),
                ..CreateChannel::named(ch("thread:000"))
            },
        )
        .await
        .unwrap();
    let second = t
        .hub
        .create_channel(
            &who("bob"),
            CreateChannel {
                meta: meta(r#"{"ciphertext":"ZZZZ"}"#),
                members: vec![user("carol")],
                ..CreateChannel::named(ch("thread:000"))
            },
        )
        .await
        .unwrap();
    assert!(!second.is_new());
    assert_eq!(second.record(), first.record());
}

#[tokio::test]
async fn row_read_record_members_and_history_needs_membership() {
    let t = group().await;
    let group1 = ch("group:1");
    for member in ["alice", "adam", "bob"] {
        assert!(t.hub.channel(&who(member), &group1).await.is_ok());
        assert_eq!(t.hub.members(&who(member), &group1).await.unwrap().len(), 3);
    }
    assert!(t.hub.members(&service(), &group1).await.is_ok());
    assert_eq!(
        code(t.hub.members(&who("carol"), &group1).await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(t.hub.count(&who("carol"), &group1).await),
        ErrorCode::Forbidden
    );
}

#[tokio::test]
async fn row_add_a_member_owners_admins_and_services_may() {
    let t = group().await;
    assert!(add(&t, &who("alice"), "carol").await.unwrap().is_new());
    assert!(add(&t, &who("adam"), "dave").await.unwrap().is_new());
    assert!(add(&t, &service(), "erin").await.unwrap().is_new());
    assert_eq!(
        code(add(&t, &who("bob"), "frank").await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(add(&t, &who("mallory"), "mallory").await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        add(&t, &who("alice"), "carol").await.unwrap(),
        MemberUpdate::Unchanged(Member {
            user: user("carol"),
            role: MemberRole::Member
        }),
        "adding a member again changes nothing"
    );
}

#[tokio::test]
async fn row_grant_a_role_owners_and_services_may() {
    let t = group().await;
    let grant = |by: Identity, target: &'static str, role| {
        let hub = t.hub.clone();
        async move {
            hub.add_member(&by, &ch("group:1"), &user(target), Some(role))
                .await
        }
    };
    assert_eq!(
        code(grant(who("adam"), "bob", MemberRole::Admin).await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(grant(who("adam"), "carol", MemberRole::Admin).await),
        ErrorCode::Forbidden,
        "admins add plain members only"
    );
    assert_eq!(
        code(grant(who("bob"), "bob", MemberRole::Owner).await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        grant(who("alice"), "bob", MemberRole::Admin).await.unwrap(),
        MemberUpdate::Changed {
            member: Member {
                user: user("bob"),
                role: MemberRole::Admin
            },
            from: MemberRole::Member
        }
    );
    assert!(
        grant(service(), "carol", MemberRole::Owner)
            .await
            .unwrap()
            .is_new()
    );
    assert_eq!(
        code(grant(who("adam"), "bob", MemberRole::Admin).await),
        ErrorCode::Forbidden,
        "naming a role is an owner's business, even one the member has"
    );
}

#[tokio::test]
async fn row_remove_a_plain_member_owners_admins_and_services_may() {
    let t = group().await;
    for target in ["c1", "c2", "c3", "c4"] {
        add(&t, &service(), target).await.unwrap();
    }
    assert_eq!(
        remove(&t, &who("alice"), "c1").await.unwrap(),
        MemberRole::Member
    );
    assert_eq!(
        remove(&t, &who("adam"), "c2").await.unwrap(),
        MemberRole::Member
    );
    assert_eq!(
        remove(&t, &service(), "c3").await.unwrap(),
        MemberRole::Member
    );
    assert_eq!(
        code(remove(&t, &who("bob"), "c4").await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(remove(&t, &who("carol"), "c4").await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(remove(&t, &who("alice"), "c1").await),
        ErrorCode::NotFound
    );
}

#[tokio::test]
async fn row_remove_an_admin_or_owner_only_owners_and_services_may() {
    let t = group().await;
    add(&t, &service(), "ada").await.unwrap();
    t.hub
        .set_role(&service(), &ch("group:1"), &user("ada"), MemberRole::Admin)
        .await
        .unwrap();
    assert_eq!(
        code(remove(&t, &who("adam"), "ada").await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(remove(&t, &who("adam"), "alice").await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        remove(&t, &who("alice"), "ada").await.unwrap(),
        MemberRole::Admin
    );
    assert_eq!(
        remove(&t, &service(), "adam").await.unwrap(),
        MemberRole::Admin
    );
}

#[tokio::test]
async fn row_leave_anyone_may_but_the_last_owner() {
    let t = group().await;
    assert_eq!(
        remove(&t, &who("bob"), "bob").await.unwrap(),
        MemberRole::Member
    );
    assert_eq!(
        remove(&t, &who("adam"), "adam").await.unwrap(),
        MemberRole::Admin
    );
    assert_eq!(
        code(remove(&t, &who("alice"), "alice").await),
        ErrorCode::Conflict
    );
    assert_eq!(
        code(remove(&t, &who("carol"), "carol").await),
        ErrorCode::NotFound,
        "leaving what one is not in"
    );
}

#[tokio::test]
async fn row_last_owner_nobody_removes_or_demotes_it() {
    let t = group().await;
    let group1 = ch("group:1");
    assert_eq!(
        code(remove(&t, &service(), "alice").await),
        ErrorCode::Conflict,
        "not even a service"
    );
    assert_eq!(
        code(
            t.hub
                .set_role(&who("alice"), &group1, &user("alice"), MemberRole::Admin)
                .await
        ),
        ErrorCode::Conflict
    );
    t.hub
        .set_role(&who("alice"), &group1, &user("bob"), MemberRole::Owner)
        .await
        .unwrap();
    assert_eq!(
        remove(&t, &who("alice"), "alice").await.unwrap(),
        MemberRole::Owner
    );
    assert_eq!(
        roles(&t, "group:1").await,
        [
            ("adam".into(), MemberRole::Admin),
            ("bob".into(), MemberRole::Owner)
        ]
    );
}

// --- regressions ---

#[tokio::test]
async fn squatter_cannot_create_a_record_where_services_provision_them() {
    let t = TestHub::with_policies(policies());
    assert_eq!(
        code(
            t.hub
                .create_channel(&who("mallory"), create("team:42", &[]))
                .await
        ),
        ErrorCode::Forbidden
    );
    let created = t
        .hub
        .create_channel(&service(), create("team:42", &["alice", "bob"]))
        .await
        .unwrap();
    assert!(created.is_new(), "the name was never taken");
}

#[tokio::test]
async fn members_of_a_later_create_are_never_silently_dropped() {
    let t = TestHub::with_policies(policies());
    t.hub
        .create_channel(&who("mallory"), create("group:42", &[]))
        .await
        .unwrap();
    assert_eq!(
        code(
            t.hub
                .create_channel(&service(), create("group:42", &["alice", "bob"]))
                .await
        ),
        ErrorCode::Conflict
    );
    assert_eq!(
        roles(&t, "group:42").await,
        [("mallory".into(), MemberRole::Owner)]
    );
}

#[tokio::test]
async fn a_member_cannot_remove_the_creator() {
    let t = group().await;
    assert_eq!(
        code(remove(&t, &who("bob"), "alice").await),
        ErrorCode::Forbidden
    );
    assert_eq!(roles(&t, "group:1").await.len(), 3);
}

#[tokio::test]
async fn refusals_are_the_same_whether_a_record_exists_or_not() {
    let t = group().await;
    let carol = who("carol");
    for name in ["group:1", "group:none"] {
        let channel = ch(name);
        let refusals = [
            code(
                t.hub
                    .create_channel(&carol, create(&name.replace("group", "team"), &[]))
                    .await,
            ),
            code(t.hub.channel(&carol, &channel).await),
            code(t.hub.members(&carol, &channel).await),
            code(
                t.hub
                    .add_member(&carol, &channel, &user("carol"), None)
                    .await,
            ),
            code(t.hub.remove_member(&carol, &channel, &user("bob")).await),
        ];
        assert_eq!(refusals, [ErrorCode::Forbidden; 5], "{name}");
    }
}

#[tokio::test]
async fn a_removed_member_s_live_subscription_ends_and_its_presence_leaves() {
    let t = group().await;
    let (alice, bob) = (t.connect("alice"), t.connect("bob"));
    alice.subscribe("group:1").await;
    assert!(matches!(
        &bob.subscribe("group:1").await[..],
        [ServerFrame::Subscribed { .. }]
    ));
    alice.frames(); // bob's join

    remove(&t, &who("alice"), "bob").await.unwrap();
    let frames = bob.frames();
    assert!(
        matches!(&frames[..], [ServerFrame::Unsubscribed { channel, reason: Some(_), .. }] if channel.as_str() == "group:1"),
        "{frames:?}"
    );
    assert!(
        matches!(&alice.frames()[..], [ServerFrame::Leave { user, .. }] if user.as_str() == "bob")
    );
    alice.publish("group:1", serde_json::json!("after")).await;
    assert!(
        bob.frames().is_empty(),
        "nothing reaches the removed member"
    );
    assert_eq!(
        error_code(&bob.subscribe("group:1").await),
        Some(ErrorCode::Forbidden),
        "the connection forgot the subscription: a new subscribe is refused for rights"
    );
    assert_eq!(t.hub.online_users(&ch("group:1")), [user("alice")]);
}

#[tokio::test]
async fn removal_in_a_namespace_where_membership_grants_nothing_keeps_subscriptions() {
    let t = TestHub::with_policies(policies());
    t.hub
        .create_channel(&who("alice"), create("thread:1", &["bob"]))
        .await
        .unwrap();
    let bob = t.connect("bob");
    bob.subscribe("thread:1").await;
    remove_from(&t, "thread:1", "alice", "bob").await;
    assert!(bob.frames().is_empty());
    assert_eq!(t.hub.stats().subscriptions, 1);
}

async fn remove_from(t: &TestHub, channel: &str, by: &str, target: &str) {
    let channel: ChannelName = ch(channel);
    let target: UserId = user(target);
    t.hub
        .remove_member(&who(by), &channel, &target)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_user_creates_at_most_max_channels_per_user_records_and_services_any_number() {
    let t = TestHub::with_config(relay_core::HubConfig {
        policies: policies(),
        max_channels_per_user: Some(2),
        ..relay_core::HubConfig::default()
    });
    for name in ["thread:1", "thread:2", "thread:1"] {
        t.hub
            .create_channel(&who("alice"), CreateChannel::named(ch(name)))
            .await
            .unwrap();
    }
    let refused = t
        .hub
        .create_channel(&who("alice"), CreateChannel::named(ch("thread:3")))
        .await;
    assert_eq!(code(refused), ErrorCode::Forbidden);
    // Others keep their own quota; services have none.
    t.hub
        .create_channel(&who("bob"), CreateChannel::named(ch("thread:3")))
        .await
        .unwrap();
    for i in 0..5 {
        t.hub
            .create_channel(&service(), CreateChannel::named(ch(&format!("team:{i}"))))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn revalidation_ends_subscriptions_of_members_removed_behind_the_hub_s_back() {
    // Another node removed bob, and its eviction never arrived here.
    let t = group().await;
    let bob = t.connect("bob");
    let backend = t.connect_as(service());
    bob.subscribe("group:1").await;
    backend.subscribe("group:1").await;
    bob.frames();
    t.store
        .remove_member(&ch("group:1"), &user("bob"), MemberRole::Owner)
        .await
        .unwrap();
    assert_eq!(t.hub.revalidate_members().await, 1);
    assert!(
        matches!(
            &bob.frames()[..],
            [ServerFrame::Unsubscribed {
                reason: Some(_),
                ..
            }]
        ),
        "bob's subscription ended"
    );
    assert_eq!(
        t.hub.revalidate_members().await,
        0,
        "the service is not bound by membership, and bob is gone"
    );
    assert!(t.hub.serves(&ch("group:1")));
}

#[tokio::test]
async fn unread_leaves_out_claimed_channels_the_token_no_longer_claims() {
    let t = TestHub::with_policies(Policies::default().with(
        "doc",
        NamespacePolicy {
            subscribe: SubscribeRule::Claim,
            ..NamespacePolicy::default()
        },
    ));
    for channel in ["doc:1", "doc:2"] {
        t.store
            .append(relay_store::NewMessage::new(
                ch(channel),
                Payload::from_json("1").unwrap(),
            ))
            .await
            .unwrap();
    }
    let claims = |channels: &[&str]| Identity {
        channels: Some(channels.iter().map(|c| (*c).to_owned()).collect()),
        ..who("alice")
    };
    let both = claims(&["doc:*"]);
    for channel in ["doc:1", "doc:2"] {
        t.hub.mark_read(&both, &ch(channel), Seq(1)).await.unwrap();
    }
    let names = |states: Vec<relay_store::ReadState>| -> Vec<String> {
        states.iter().map(|s| s.channel.to_string()).collect()
    };
    assert_eq!(
        names(t.hub.unread(&both, None, 100).await.unwrap()),
        ["doc:1", "doc:2"]
    );
    let one = claims(&["doc:2"]);
    assert_eq!(
        names(t.hub.unread(&one, None, 100).await.unwrap()),
        ["doc:2"],
        "a claim the token lost hides the channel"
    );
    assert_eq!(
        code(t.hub.mark_read(&one, &ch("doc:1"), Seq(1)).await),
        ErrorCode::Forbidden
    );
}
