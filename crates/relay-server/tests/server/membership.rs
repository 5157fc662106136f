//! Channel records, roles and membership over REST: one test per row of the who-may-do-what
//! table in docs/protocol.md ("Membership"), then regressions named after the bugs it
//! replaced, and a removed member's live WebSocket subscription.
//!
//! `group` lets users create records (`create = "any"`); `team` keeps the default for a
//! members namespace (only services create). `group:1` has alice as owner, adam as admin
//! and bob as plain member; carol is a stranger, `backend` a service.

use relay_proto::ServerFrame;
use serde_json::{Value, json};

use crate::support::*;

async fn server() -> TestServer {
    TestServer::start_with(|config| {
        let file = relay_server::Config::from_toml(
            r#"
            [namespaces.group]
            subscribe = "members"
            create = "any"
            presence = true
            join_leave = true
            [namespaces.team]
            subscribe = "members"
            "#,
        )
        .unwrap();
        config.namespaces = file.namespaces;
    })
    .await
}

struct Group {
    server: TestServer,
}

impl Group {
    async fn new() -> Self {
        let server = server().await;
        let group = Self { server };
        let (status, body) = group
            .as_user("alice")
            .post(
                "/api/channels",
                json!({"name": "group:1", "members": ["adam", "bob"]}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = group.put_role("alice", "adam", "admin").await;
        assert_eq!(status, 200, "{body}");
        group
    }

    fn as_user(&self, user: &str) -> Http {
        self.server.http(&self.server.token(user))
    }

    fn as_service(&self) -> Http {
        self.server.http(&self.server.service_token("backend"))
    }

    fn by(&self, who: &str) -> Http {
        if who == "backend" {
            self.as_service()
        } else {
            self.as_user(who)
        }
    }

    async fn add(&self, by: &str, user: &str) -> u16 {
        self.by(by)
            .put(&format!("/api/channels/group:1/members/{user}"))
            .await
            .0
    }

    async fn put_role(&self, by: &str, user: &str, role: &str) -> (u16, Value) {
        self.by(by)
            .put_json(
                &format!("/api/channels/group:1/members/{user}"),
                json!({ "role": role }),
            )
            .await
    }

    async fn remove(&self, by: &str, user: &str) -> (u16, Value) {
        self.by(by)
            .delete(&format!("/api/channels/group:1/members/{user}"))
            .await
    }

    async fn roles(&self) -> Value {
        self.as_service()
            .get("/api/channels/group:1/members")
            .await
            .1["members"]
            .clone()
    }
}

// --- the table, row by row ---

#[tokio::test]
async fn row_create_where_only_services_create() {
    let server = server().await;
    let (status, body) = server
        .http(&server.token("alice"))
        .post("/api/channels", json!({"name": "team:1"}))
        .await;
    assert_eq!((status, &body["error"]["code"]), (403, &json!("forbidden")));
    let (status, record) = server
        .http(&server.service_token("backend"))
        .post(
            "/api/channels",
            json!({"name": "team:1", "members": ["alice"]}),
        )
        .await;
    assert_eq!(status, 201, "{record}");
    assert_eq!(record["created_by"], Value::Null);
}

#[tokio::test]
async fn row_create_where_users_create_makes_the_creator_owner() {
    let group = Group::new().await;
    assert_eq!(
        group.roles().await,
        json!([
            {"user": "adam", "role": "admin"},
            {"user": "alice", "role": "owner"},
            {"user": "bob", "role": "member"}
        ])
    );
    let (status, _) = group
        .as_user("alice")
        .post(
            "/api/channels",
            json!({"name": "group:1", "members": ["bob", "adam"]}),
        )
        .await;
    assert_eq!(
        status, 200,
        "a retry naming the same members gets the record"
    );
}

#[tokio::test]
async fn row_read_members_needs_membership() {
    let group = Group::new().await;
    for member in ["alice", "adam", "bob"] {
        let (status, _) = group
            .as_user(member)
            .get("/api/channels/group:1/members")
            .await;
        assert_eq!(status, 200, "{member}");
    }
    let carol = group.as_user("carol");
    assert_eq!(carol.get("/api/channels/group:1/members").await.0, 403);
    assert_eq!(carol.get("/api/channels/group:1").await.0, 403);
}

#[tokio::test]
async fn row_add_a_member_owners_admins_and_services_may() {
    let group = Group::new().await;
    assert_eq!(group.add("alice", "carol").await, 201);
    assert_eq!(group.add("adam", "dave").await, 201);
    assert_eq!(group.add("backend", "erin").await, 201);
    assert_eq!(group.add("bob", "frank").await, 403);
    assert_eq!(group.add("mallory", "mallory").await, 403);
    assert_eq!(group.add("alice", "carol").await, 200, "already a member");
}

#[tokio::test]
async fn row_grant_a_role_owners_and_services_may() {
    let group = Group::new().await;
    assert_eq!(group.put_role("adam", "bob", "admin").await.0, 403);
    assert_eq!(group.put_role("bob", "bob", "owner").await.0, 403);
    let (status, body) = group.put_role("alice", "bob", "admin").await;
    assert_eq!((status, &body["role"]), (200, &json!("admin")));
    let (status, body) = group.put_role("backend", "carol", "owner").await;
    assert_eq!((status, &body["role"]), (201, &json!("owner")));
    let (status, body) = group.put_role("alice", "bob", "root").await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn row_remove_a_plain_member_owners_admins_and_services_may() {
    let group = Group::new().await;
    for user in ["c1", "c2", "c3", "c4"] {
        assert_eq!(group.add("backend", user).await, 201);
    }
    assert_eq!(group.remove("alice", "c1").await.0, 200);
    assert_eq!(group.remove("adam", "c2").await.0, 200);
    assert_eq!(group.remove("backend", "c3").await.0, 200);
    assert_eq!(group.remove("bob", "c4").await.0, 403);
    assert_eq!(group.remove("carol", "c4").await.0, 403);
    assert_eq!(
        group.remove("alice", "c1").await.0,
        404,
        "no longer a member"
    );
}

#[tokio::test]
async fn row_remove_an_admin_or_owner_only_owners_and_services_may() {
    let group = Group::new().await;
    assert_eq!(group.remove("adam", "alice").await.0, 403);
    assert_eq!(group.put_role("backend", "ada", "admin").await.0, 201);
    assert_eq!(group.remove("adam", "ada").await.0, 403);
    let (status, body) = group.remove("alice", "ada").await;
    assert_eq!((status, &body["role"]), (200, &json!("admin")));
    assert_eq!(group.remove("backend", "adam").await.0, 200);
}

#[tokio::test]
async fn row_leave_anyone_may_but_the_last_owner() {
    let group = Group::new().await;
    assert_eq!(group.remove("bob", "bob").await.0, 200);
    assert_eq!(group.remove("adam", "adam").await.0, 200);
    let (status, body) = group.remove("alice", "alice").await;
    assert_eq!((status, &body["error"]["code"]), (409, &json!("conflict")));
    assert_eq!(group.remove("carol", "carol").await.0, 404);
}

#[tokio::test]
async fn row_last_owner_nobody_removes_or_demotes_it() {
    let group = Group::new().await;
    assert_eq!(group.remove("backend", "alice").await.0, 409);
    assert_eq!(group.put_role("alice", "alice", "admin").await.0, 409);
    assert_eq!(group.put_role("alice", "bob", "owner").await.0, 200);
    assert_eq!(
        group.remove("alice", "alice").await.0,
        200,
        "bob owns it now"
    );
}

// --- regressions ---

#[tokio::test]
async fn squatter_cannot_create_a_record_where_services_provision_them() {
    let server = server().await;
    let mallory = server.http(&server.token("mallory"));
    assert_eq!(
        mallory
            .post("/api/channels", json!({"name": "team:42"}))
            .await
            .0,
        403
    );
    let (status, body) = server
        .http(&server.service_token("backend"))
        .post(
            "/api/channels",
            json!({"name": "team:42", "members": ["alice", "bob"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn members_of_a_later_create_are_never_silently_dropped() {
    let server = server().await;
    let (status, _) = server
        .http(&server.token("mallory"))
        .post("/api/channels", json!({"name": "group:42"}))
        .await;
    assert_eq!(status, 201);
    let (status, body) = server
        .http(&server.service_token("backend"))
        .post(
            "/api/channels",
            json!({"name": "group:42", "members": ["alice", "bob"]}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
}

#[tokio::test]
async fn a_member_cannot_remove_the_creator() {
    let group = Group::new().await;
    assert_eq!(group.remove("bob", "alice").await.0, 403);
    assert_eq!(group.roles().await.as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn create_does_not_reveal_which_names_exist() {
    let group = Group::new().await;
    let carol = group.as_user("carol");
    let (_, created) = group
        .as_service()
        .post(
            "/api/channels",
            json!({"name": "team:1", "members": ["alice"]}),
        )
        .await;
    assert_eq!(created["name"], "team:1");
    for name in ["team:1", "team:none"] {
        let (status, body) = carol.post("/api/channels", json!({"name": name})).await;
        assert_eq!(status, 403, "{name}: {body}");
        assert_eq!(
            body["error"]["message"],
            "only services may create channels in namespace \"team\""
        );
    }
    for name in ["group:1", "group:none"] {
        let paths = [
            format!("/api/channels/{name}"),
            format!("/api/channels/{name}/members"),
        ];
        for path in paths {
            assert_eq!(carol.get(&path).await.0, 403, "{path}");
        }
        let put = format!("/api/channels/{name}/members/carol");
        assert_eq!(carol.put(&put).await.0, 403, "{put}");
    }
}

#[tokio::test]
async fn a_removed_member_s_live_subscription_ends_and_its_presence_leaves() {
    let group = Group::new().await;
    let mut alice = group.server.connect("alice").await;
    let mut bob = group.server.connect("bob").await;
    alice.subscribe("group:1").await;
    bob.subscribe("group:1").await;
    assert!(matches!(alice.recv().await, ServerFrame::Join { .. }));

    assert_eq!(group.remove("alice", "bob").await.0, 200);
    let frame = bob.recv().await;
    assert!(
        matches!(&frame, ServerFrame::Unsubscribed { channel, reason: Some(_), .. } if channel.as_str() == "group:1"),
        "{frame:?}"
    );
    let frame = alice.recv().await;
    assert!(
        matches!(&frame, ServerFrame::Leave { user, .. } if user.as_str() == "bob"),
        "{frame:?}"
    );
    alice
        .send(json!({"type": "publish", "channel": "group:1", "payload": "after"}))
        .await;
    bob.expect_nothing_pending().await;
}
