//! The conformance suite every [`Store`] implementation must pass.
//!
//! Each case is a public async function taking a fresh, empty store. The
//! [`conformance_tests!`](crate::conformance_tests) macro turns the whole list into one
//! `#[tokio::test]` per case, so a store crate runs the suite with one line:
//!
//! ```text
//! relay_store::conformance_tests!(async { std::sync::Arc::new(MemoryStore::new()) });
//! ```
//!
//! The factory yields an `Arc<S>`, or `(Arc<S>, guard)` when something must live as long as the
//! case (see [`Fixture`]). Attributes in brackets before the factory
//! (`[#[ignore = "…"]] async { … }`) are put on every generated test. The calling crate needs `tokio` with the `macros` and `rt-multi-thread`
//! features.

use std::collections::BTreeSet;
use std::sync::Arc;

use relay_proto::{ChannelName, IdempotencyKey, MemberRole, Payload, Seq, UserId};

use crate::{
    Appended, Created, HistoryQuery, Member, NewChannel, NewMessage, Removal, RoleChange, Store,
    StoreError,
};

/// Generates one `#[tokio::test]` per conformance case; see the [module docs](self).
#[macro_export]
macro_rules! conformance_tests {
    ([$(#[$attr:meta])*] $make:expr) => {
        $crate::conformance_tests!(@cases [$(#[$attr])*] $make;
            create_channel_is_idempotent,
            missing_channel_is_none,
            query_returns_only_existing_channels,
            creator_and_initial_members_are_members,
            channels_of_member_are_paged_by_name,
            membership_changes,
            adding_a_member_needs_a_channel,
            roles_change_but_the_last_owner_stays,
            owners_removing_each_other_concurrently_leave_one,
            a_channel_without_owner_has_no_last_owner_rule,
            appends_get_consecutive_seqs_per_channel,
            concurrent_appends_to_one_channel_are_gap_free,
            concurrent_appends_to_many_channels_are_gap_free,
            history_pages_by_after_before_and_limit,
            history_without_cursor_is_the_newest_page,
            count_and_latest_seq_follow_appends,
            trim_keeps_the_newest_and_never_reuses_seqs,
            payload_and_fields_are_kept_exactly,
            ping_succeeds,
            records_are_counted_per_creator,
            a_repeated_key_stores_nothing_and_answers_the_original,
            keys_are_scoped_by_channel_and_publisher,
            concurrent_repeats_store_one_copy,
            read_markers_are_monotonic_and_bounded_by_the_latest_seq,
            unread_lists_member_and_marked_channels_by_name,
            edits_and_deletes_are_appended_and_applied_in_the_current_view,
            a_delete_scrubs_the_payloads_of_the_message_and_its_edits,
            the_current_view_pages_over_messages_only,
            repeat_of_answers_a_known_key_without_storing,
            trimming_a_message_scrubs_the_edits_that_stay);
    };
    ($make:expr) => {
        $crate::conformance_tests!([] $make);
    };
    (@cases $attrs:tt $make:expr; $($case:ident),* $(,)?) => {
        $( $crate::conformance_tests!(@one $attrs $make; $case); )*
    };
    (@one [$(#[$attr:meta])*] $make:expr; $case:ident) => {
        $(#[$attr])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let (store, _guard) = $crate::conformance::Fixture::into_parts($make.await);
            $crate::conformance::$case(store).await;
        }
    };
}

/// What a conformance factory yields: a store, or a store with a guard that must outlive the
/// case (a test database that is dropped afterwards).
pub trait Fixture {
    /// Kept alive until the case ends.
    type Guard;
    /// The store and its guard.
    fn into_parts(self) -> (Arc<dyn Store>, Self::Guard);
}

impl<S: Store> Fixture for Arc<S> {
    type Guard = ();
    fn into_parts(self) -> (Arc<dyn Store>, ()) {
        (self, ())
    }
}

impl<S: Store, G> Fixture for (Arc<S>, G) {
    type Guard = G;
    fn into_parts(self) -> (Arc<dyn Store>, G) {
        (self.0, self.1)
    }
}

fn channel(name: &str) -> ChannelName {
    ChannelName::parse(name).expect("valid test channel")
}

fn user(id: &str) -> UserId {
    UserId::parse(id).expect("valid test user")
}

fn payload(n: u64) -> Payload {
    Payload::from_json(&format!(r#"{{"n":{n}}}"#)).expect("valid JSON")
}

async fn append_n(store: &dyn Store, ch: &ChannelName, n: u64) {
    for i in 0..n {
        store
            .append(NewMessage::new(ch.clone(), payload(i)))
            .await
            .expect("append");
    }
}

fn member(id: &str, role: MemberRole) -> Member {
    Member {
        user: user(id),
        role,
    }
}

fn seqs(messages: &[crate::StoredMessage]) -> Vec<u64> {
    messages.iter().map(|m| m.seq.0).collect()
}

/// Creating an existing channel returns it unchanged, whatever the second call carried.
pub async fn create_channel_is_idempotent(store: Arc<dyn Store>) {
    let name = channel("thread:0b6f");
    let meta = Payload::from_json(r#"{"ciphertext":"AAEC","iv":"AQ=="}"#).expect("json");
    let first = store
        .create_channel(NewChannel {
            meta: Some(meta.clone()),
            ..NewChannel::named(name.clone())
        })
        .await
        .expect("create");
    assert!(first.is_new());
    assert_eq!(first.record().meta.as_ref(), Some(&meta));
    let other_meta = Payload::from_json(r#"{"other":true}"#).expect("json");
    let second = store
        .create_channel(NewChannel {
            meta: Some(other_meta),
            created_by: Some(user("mallory")),
            ..NewChannel::named(name.clone())
        })
        .await
        .expect("create again");
    assert_eq!(second, Created::Existing(first.record().clone()));
    assert!(
        !store
            .is_member(&name, &user("mallory"))
            .await
            .expect("is_member")
    );
}

/// Records count for their creator once, however often they are created again.
pub async fn records_are_counted_per_creator(store: Arc<dyn Store>) {
    for name in ["group:1", "group:2", "group:1"] {
        store
            .create_channel(NewChannel {
                created_by: Some(user("alice")),
                ..NewChannel::named(channel(name))
            })
            .await
            .expect("create");
    }
    store
        .create_channel(NewChannel::named(channel("group:3")))
        .await
        .expect("create by a service");
    assert_eq!(
        store.count_created_by(&user("alice")).await.expect("count"),
        2
    );
    assert_eq!(
        store.count_created_by(&user("bob")).await.expect("count"),
        0
    );
}

/// An unknown channel reads as `None`.
pub async fn missing_channel_is_none(store: Arc<dyn Store>) {
    assert_eq!(
        store.get_channel(&channel("nope")).await.expect("get"),
        None
    );
}

/// The zero-knowledge lookup: only existing records, in request order, no duplicates.
pub async fn query_returns_only_existing_channels(store: Arc<dyn Store>) {
    for name in ["t:a", "t:b", "t:c"] {
        store
            .create_channel(NewChannel::named(channel(name)))
            .await
            .expect("create");
    }
    let names = [
        channel("t:c"),
        channel("t:x"),
        channel("t:a"),
        channel("t:c"),
    ];
    let found = store.query_channels(&names).await.expect("query");
    let found: Vec<&str> = found.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(found, ["t:c", "t:a"]);
}

/// A read marker only moves up, never past the channel's latest seq, and is kept per user.
pub async fn read_markers_are_monotonic_and_bounded_by_the_latest_seq(store: Arc<dyn Store>) {
    let ch = channel("chat:read");
    let (alice, bob) = (user("alice"), user("bob"));
    assert_eq!(
        store.read_marker(&alice, &ch).await.expect("marker"),
        Seq(0)
    );
    append_n(&*store, &ch, 5).await;
    assert_eq!(
        store.mark_read(&alice, &ch, Seq(3)).await.expect("mark"),
        (Seq(3), true)
    );
    assert_eq!(
        store.mark_read(&alice, &ch, Seq(2)).await.expect("mark"),
        (Seq(3), false),
        "a lower seq changes nothing"
    );
    assert_eq!(
        store.mark_read(&alice, &ch, Seq(3)).await.expect("mark"),
        (Seq(3), false)
    );
    assert_eq!(
        store.mark_read(&alice, &ch, Seq(99)).await.expect("mark"),
        (Seq(5), true),
        "not past the latest seq"
    );
    assert_eq!(
        store.read_marker(&alice, &ch).await.expect("marker"),
        Seq(5)
    );
    assert_eq!(store.read_marker(&bob, &ch).await.expect("marker"), Seq(0));
    assert_eq!(
        store
            .mark_read(&bob, &channel("chat:empty"), Seq(4))
            .await
            .expect("mark"),
        (Seq(0), false),
        "a channel without messages has nothing to read"
    );
}

/// `unread` covers the channels whose record lists the user and those it marked, by name.
pub async fn unread_lists_member_and_marked_channels_by_name(store: Arc<dyn Store>) {
    let alice = user("alice");
    for name in ["team:b", "team:a"] {
        store
            .create_channel(NewChannel {
                members: vec![alice.clone()],
                ..NewChannel::named(channel(name))
            })
            .await
            .expect("create");
    }
    append_n(&*store, &channel("team:a"), 4).await;
    append_n(&*store, &channel("chat:z"), 2).await;
    append_n(&*store, &channel("chat:other"), 7).await;
    store
        .mark_read(&alice, &channel("team:a"), Seq(1))
        .await
        .expect("mark");
    store
        .mark_read(&alice, &channel("chat:z"), Seq(2))
        .await
        .expect("mark");
    let all = store.unread(&alice, None, 100).await.expect("unread");
    let seen: Vec<(&str, u64, u64, u64)> = all
        .iter()
        .map(|r| (r.channel.as_str(), r.last_seq.0, r.read_seq.0, r.unread()))
        .collect();
    assert_eq!(
        seen,
        [
            ("chat:z", 2, 2, 0),
            ("team:a", 4, 1, 3),
            ("team:b", 0, 0, 0)
        ]
    );
    // Marking a channel with nothing in it stores nothing.
    store
        .mark_read(&alice, &channel("chat:nothing"), Seq(3))
        .await
        .expect("mark");
    let page = store
        .unread(&alice, Some(&channel("chat:z")), 1)
        .await
        .expect("unread");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].channel.as_str(), "team:a");
    assert!(
        store
            .unread(&user("nobody"), None, 100)
            .await
            .expect("unread")
            .is_empty()
    );
    // A member removed loses the marker too: the channel leaves its unread counts.
    store
        .remove_member(&channel("team:a"), &alice, MemberRole::Owner)
        .await
        .expect("remove");
    let names: Vec<String> = store
        .unread(&alice, None, 100)
        .await
        .expect("unread")
        .iter()
        .map(|r| r.channel.to_string())
        .collect();
    assert_eq!(names, ["chat:z", "team:b"]);
    assert_eq!(
        store
            .read_marker(&alice, &channel("team:a"))
            .await
            .expect("marker"),
        Seq(0)
    );
}

/// The creator of a new channel is its owner, the listed members are plain members (the
/// creator stays owner when it lists itself too).
pub async fn creator_and_initial_members_are_members(store: Arc<dyn Store>) {
    let name = channel("group:1");
    store
        .create_channel(NewChannel {
            created_by: Some(user("alice")),
            members: vec![user("bob"), user("alice")],
            ..NewChannel::named(name.clone())
        })
        .await
        .expect("create");
    assert_eq!(
        store.members(&name).await.expect("members"),
        vec![
            member("alice", MemberRole::Owner),
            member("bob", MemberRole::Member)
        ]
    );
    assert_eq!(
        store.member_role(&name, &user("bob")).await.expect("role"),
        Some(MemberRole::Member)
    );
    assert_eq!(
        store
            .member_role(&name, &user("carol"))
            .await
            .expect("role"),
        None
    );
    assert!(
        store
            .is_member(&name, &user("alice"))
            .await
            .expect("is_member")
    );
    assert!(
        !store
            .is_member(&name, &user("carol"))
            .await
            .expect("is_member")
    );
}

/// `channels_of_member` lists a user's channels by name, with limit and offset.
pub async fn channels_of_member_are_paged_by_name(store: Arc<dyn Store>) {
    for name in ["g:3", "g:1", "g:2", "g:4"] {
        let members = if name == "g:4" {
            vec![]
        } else {
            vec![user("alice")]
        };
        store
            .create_channel(NewChannel {
                members,
                ..NewChannel::named(channel(name))
            })
            .await
            .expect("create");
    }
    let all = store
        .channels_of_member(&user("alice"), 10, 0)
        .await
        .expect("list");
    let all: Vec<&str> = all.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(all, ["g:1", "g:2", "g:3"]);
    let page = store
        .channels_of_member(&user("alice"), 1, 1)
        .await
        .expect("list");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].name.as_str(), "g:2");
    assert!(
        store
            .channels_of_member(&user("nobody"), 10, 0)
            .await
            .expect("list")
            .is_empty()
    );
}

/// Adding is idempotent (a repeat changes no role); removing reports what was removed.
pub async fn membership_changes(store: Arc<dyn Store>) {
    let name = channel("group:2");
    store
        .create_channel(NewChannel::named(name.clone()))
        .await
        .expect("create");
    let carol = user("carol");
    assert!(
        store
            .add_member(&name, &carol, MemberRole::Admin)
            .await
            .expect("add")
    );
    assert!(
        !store
            .add_member(&name, &carol, MemberRole::Member)
            .await
            .expect("add again")
    );
    assert_eq!(
        store.members(&name).await.expect("members"),
        vec![member("carol", MemberRole::Admin)]
    );
    assert_eq!(
        store
            .remove_member(&name, &carol, MemberRole::Owner)
            .await
            .expect("remove"),
        Removal::Removed(MemberRole::Admin)
    );
    assert_eq!(
        store
            .remove_member(&name, &carol, MemberRole::Owner)
            .await
            .expect("remove again"),
        Removal::NotMember
    );
    assert_eq!(
        store
            .remove_member(&channel("ghost"), &carol, MemberRole::Owner)
            .await
            .expect("remove from no channel"),
        Removal::NotMember
    );
    assert!(store.members(&name).await.expect("members").is_empty());
}

/// Roles change, but neither a demotion nor a removal takes a record's last owner away.
pub async fn roles_change_but_the_last_owner_stays(store: Arc<dyn Store>) {
    let name = channel("group:roles");
    let (alice, bob) = (user("alice"), user("bob"));
    store
        .create_channel(NewChannel {
            created_by: Some(alice.clone()),
            members: vec![bob.clone()],
            ..NewChannel::named(name.clone())
        })
        .await
        .expect("create");
    assert_eq!(
        store
            .set_role(&name, &alice, MemberRole::Admin)
            .await
            .expect("demote"),
        RoleChange::LastOwner
    );
    assert_eq!(
        store
            .remove_member(&name, &alice, MemberRole::Owner)
            .await
            .expect("remove"),
        Removal::LastOwner
    );
    assert_eq!(
        store
            .set_role(&name, &bob, MemberRole::Owner)
            .await
            .expect("promote"),
        RoleChange::Changed {
            from: MemberRole::Member
        }
    );
    assert_eq!(
        store
            .set_role(&name, &bob, MemberRole::Owner)
            .await
            .expect("again"),
        RoleChange::Unchanged
    );
    assert_eq!(
        store
            .set_role(&name, &user("carol"), MemberRole::Admin)
            .await
            .expect("stranger"),
        RoleChange::NotMember
    );
    assert_eq!(
        store
            .remove_member(&name, &bob, MemberRole::Admin)
            .await
            .expect("outranked"),
        Removal::Outranked(MemberRole::Owner),
        "a removal limited to admins leaves an owner in place"
    );
    // Two owners now: one may go, the other then is the last.
    assert_eq!(
        store
            .remove_member(&name, &alice, MemberRole::Owner)
            .await
            .expect("remove"),
        Removal::Removed(MemberRole::Owner)
    );
    assert_eq!(
        store
            .set_role(&name, &bob, MemberRole::Member)
            .await
            .expect("demote"),
        RoleChange::LastOwner
    );
    assert_eq!(
        store.members(&name).await.expect("members"),
        vec![member("bob", MemberRole::Owner)]
    );
}

/// Two owners removing each other at the same moment: exactly one succeeds.
pub async fn owners_removing_each_other_concurrently_leave_one(store: Arc<dyn Store>) {
    for round in 0..20 {
        let name = channel(&format!("group:race{round}"));
        let (alice, bob) = (user("alice"), user("bob"));
        store
            .create_channel(NewChannel {
                created_by: Some(alice.clone()),
                members: vec![bob.clone()],
                ..NewChannel::named(name.clone())
            })
            .await
            .expect("create");
        store
            .set_role(&name, &bob, MemberRole::Owner)
            .await
            .expect("promote");
        let (a, b) = tokio::join!(
            store.remove_member(&name, &alice, MemberRole::Owner),
            store.remove_member(&name, &bob, MemberRole::Owner)
        );
        let outcomes = [a.expect("remove alice"), b.expect("remove bob")];
        assert_eq!(
            outcomes
                .iter()
                .filter(|o| **o == Removal::LastOwner)
                .count(),
            1,
            "round {round}: {outcomes:?}"
        );
        let members = store.members(&name).await.expect("members");
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].role, MemberRole::Owner);
    }
}

/// A record created without an owner (by a service) lets anyone be removed or demoted.
pub async fn a_channel_without_owner_has_no_last_owner_rule(store: Arc<dyn Store>) {
    let name = channel("group:service");
    store
        .create_channel(NewChannel {
            members: vec![user("bob")],
            ..NewChannel::named(name.clone())
        })
        .await
        .expect("create");
    assert_eq!(
        store
            .set_role(&name, &user("bob"), MemberRole::Admin)
            .await
            .expect("promote"),
        RoleChange::Changed {
            from: MemberRole::Member
        }
    );
    assert_eq!(
        store
            .remove_member(&name, &user("bob"), MemberRole::Owner)
            .await
            .expect("remove"),
        Removal::Removed(MemberRole::Admin)
    );
}

/// Members can only be added to a channel that has a record.
pub async fn adding_a_member_needs_a_channel(store: Arc<dyn Store>) {
    let err = store
        .add_member(&channel("ghost"), &user("a"), MemberRole::Member)
        .await
        .expect_err("no channel");
    assert!(matches!(err, StoreError::ChannelNotFound(c) if c.as_str() == "ghost"));
}

/// Each channel counts 1, 2, 3, … on its own, with or without a channel record.
pub async fn appends_get_consecutive_seqs_per_channel(store: Arc<dyn Store>) {
    let (a, b) = (channel("chat:a"), channel("chat:b"));
    store
        .create_channel(NewChannel::named(a.clone()))
        .await
        .expect("create");
    for expected in 1..=3 {
        let m = store
            .append(NewMessage::new(a.clone(), payload(expected)))
            .await
            .expect("append");
        assert_eq!(m.seq(), Seq(expected));
    }
    let m = store
        .append(NewMessage::new(b.clone(), payload(0)))
        .await
        .expect("append");
    assert_eq!(m.seq(), Seq(1), "an unrelated channel starts at 1");
}

/// Many tasks appending to one channel yield seq 1..=N, each exactly once.
pub async fn concurrent_appends_to_one_channel_are_gap_free(store: Arc<dyn Store>) {
    let ch = channel("hot");
    let (tasks, per_task) = (16u64, 25u64);
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (store, ch) = (store.clone(), ch.clone());
        handles.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..per_task {
                let m = store
                    .append(NewMessage::new(ch.clone(), payload(t * 1000 + i)))
                    .await;
                got.push(m.expect("append").seq().0);
            }
            got
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.expect("task"));
    }
    all.sort_unstable();
    let n = tasks * per_task;
    assert_eq!(all, (1..=n).collect::<Vec<_>>());
    let history = store
        .history(&ch, HistoryQuery::after(Seq::ZERO, n as usize))
        .await
        .expect("h");
    assert_eq!(seqs(&history), (1..=n).collect::<Vec<_>>());
}

/// 32 tasks appending to 4 channels: every channel is 1..=N, gap-free, no duplicates.
pub async fn concurrent_appends_to_many_channels_are_gap_free(store: Arc<dyn Store>) {
    let channels: Vec<ChannelName> = (0..4).map(|i| channel(&format!("multi:{i}"))).collect();
    let mut handles = Vec::new();
    for t in 0..32usize {
        let store = store.clone();
        let ch = channels[t % 4].clone();
        handles.push(tokio::spawn(async move {
            for i in 0..10 {
                store
                    .append(NewMessage::new(ch.clone(), payload(i)))
                    .await
                    .expect("append");
            }
        }));
    }
    for h in handles {
        h.await.expect("task");
    }
    for ch in &channels {
        let history = store
            .history(ch, HistoryQuery::after(Seq::ZERO, 1000))
            .await
            .expect("h");
        assert_eq!(seqs(&history), (1..=80).collect::<Vec<_>>(), "{ch}");
        let ids: BTreeSet<_> = history.iter().map(|m| m.id).collect();
        assert_eq!(ids.len(), 80, "message ids are unique");
    }
}

/// `after`, `before` and `limit` select an ascending window.
pub async fn history_pages_by_after_before_and_limit(store: Arc<dyn Store>) {
    let ch = channel("page");
    append_n(&*store, &ch, 10).await;
    let q = |after: Option<u64>, before: Option<u64>, limit| HistoryQuery {
        after: after.map(Seq),
        before: before.map(Seq),
        limit,
    };
    let get = |query| {
        let (store, ch) = (store.clone(), ch.clone());
        async move { seqs(&store.history(&ch, query).await.expect("history")) }
    };
    assert_eq!(get(q(Some(3), None, 4)).await, [4, 5, 6, 7]);
    assert_eq!(get(q(Some(8), None, 50)).await, [9, 10]);
    assert_eq!(get(q(Some(10), None, 50)).await, Vec::<u64>::new());
    assert_eq!(get(q(Some(2), Some(6), 50)).await, [3, 4, 5]);
    assert_eq!(get(q(Some(2), Some(6), 2)).await, [3, 4]);
    assert_eq!(get(q(None, Some(6), 2)).await, [4, 5]);
    assert_eq!(get(q(None, Some(1), 5)).await, Vec::<u64>::new());
    assert_eq!(get(q(Some(5), Some(5), 5)).await, Vec::<u64>::new());
    assert_eq!(get(q(Some(0), None, 0)).await, Vec::<u64>::new());
}

/// Without `after`, history is the newest `limit` messages, still ascending.
pub async fn history_without_cursor_is_the_newest_page(store: Arc<dyn Store>) {
    let ch = channel("newest");
    assert!(
        store
            .history(&ch, HistoryQuery::latest(5))
            .await
            .expect("h")
            .is_empty()
    );
    append_n(&*store, &ch, 7).await;
    let page = store
        .history(&ch, HistoryQuery::latest(3))
        .await
        .expect("h");
    assert_eq!(seqs(&page), [5, 6, 7]);
}

/// Count and latest seq track appends; unknown channels have 0 of both.
pub async fn count_and_latest_seq_follow_appends(store: Arc<dyn Store>) {
    let ch = channel("counted");
    assert_eq!(store.count(&ch).await.expect("count"), 0);
    assert_eq!(store.latest_seq(&ch).await.expect("latest"), Seq::ZERO);
    append_n(&*store, &ch, 4).await;
    assert_eq!(store.count(&ch).await.expect("count"), 4);
    assert_eq!(store.latest_seq(&ch).await.expect("latest"), Seq(4));
}

/// Trimming keeps the newest messages and the next append continues the sequence.
pub async fn trim_keeps_the_newest_and_never_reuses_seqs(store: Arc<dyn Store>) {
    let ch = channel("trimmed");
    append_n(&*store, &ch, 6).await;
    assert_eq!(store.trim(&ch, 2).await.expect("trim"), 4);
    assert_eq!(store.trim(&ch, 2).await.expect("trim again"), 0);
    assert_eq!(store.count(&ch).await.expect("count"), 2);
    assert_eq!(store.latest_seq(&ch).await.expect("latest"), Seq(6));
    let all = store
        .history(&ch, HistoryQuery::after(Seq::ZERO, 50))
        .await
        .expect("h");
    assert_eq!(seqs(&all), [5, 6]);
    let m = store
        .append(NewMessage::new(ch.clone(), payload(7)))
        .await
        .expect("append");
    assert_eq!(m.seq(), Seq(7));
    assert_eq!(store.trim(&ch, 0).await.expect("trim all"), 3);
    assert_eq!(store.latest_seq(&ch).await.expect("latest"), Seq(7));
    let m = store
        .append(NewMessage::new(ch.clone(), payload(8)))
        .await
        .expect("append");
    assert_eq!(m.seq(), Seq(8));
}

/// What goes in comes out: id, sender, event, timestamp and the payload's exact text.
pub async fn payload_and_fields_are_kept_exactly(store: Arc<dyn Store>) {
    let ch = channel("exact");
    let text = r#"{ "ciphertext" : "3q2+7w==", "iv": "AAECAwQFBgcICQoL", "n": [1, 2.5, null] }"#;
    let message = NewMessage {
        from: Some(user("alice")),
        event: Some("ADDED".into()),
        ..NewMessage::new(ch.clone(), Payload::from_json(text).expect("json"))
    };
    let stored = store
        .append(message.clone())
        .await
        .expect("append")
        .into_new()
        .expect("stored");
    let read = store
        .history(&ch, HistoryQuery::latest(1))
        .await
        .expect("h");
    assert_eq!(read, vec![stored.clone()]);
    assert_eq!(read[0].payload.as_str(), text);
    assert_eq!(read[0].id, message.id);
    assert_eq!(read[0].from, message.from);
    assert_eq!(read[0].event, message.event);
    assert_eq!(read[0].ts, message.ts);
}

fn keyed(ch: &ChannelName, key: &str, from: Option<&str>, n: u64) -> NewMessage {
    NewMessage {
        from: from.map(user),
        ..NewMessage::new(ch.clone(), payload(n))
            .keyed(IdempotencyKey::parse(key).expect("valid test key"))
    }
}

/// A second append with the same key stores nothing and answers the first one's seq, id and
/// time, also after the message was trimmed; later appends continue the sequence.
pub async fn a_repeated_key_stores_nothing_and_answers_the_original(store: Arc<dyn Store>) {
    let ch = channel("keyed");
    append_n(&*store, &ch, 2).await;
    let first = store
        .append(keyed(&ch, "k-1", Some("alice"), 1))
        .await
        .expect("append")
        .into_new()
        .expect("a new message");
    assert_eq!(first.seq, Seq(3));
    let again = store
        .append(keyed(&ch, "k-1", Some("alice"), 2))
        .await
        .expect("repeat");
    assert_eq!(again, Appended::Repeat(first.original()));
    assert_eq!(store.count(&ch).await.expect("count"), 3);
    assert_eq!(store.latest_seq(&ch).await.expect("latest"), Seq(3));
    let next = store
        .append(keyed(&ch, "k-2", Some("alice"), 3))
        .await
        .expect("next");
    assert!(!next.is_repeat());
    assert_eq!(next.seq(), Seq(4), "a repeat takes no seq");
    store.trim(&ch, 0).await.expect("trim");
    let after_trim = store
        .append(keyed(&ch, "k-1", Some("alice"), 4))
        .await
        .expect("repeat after trim");
    assert_eq!(after_trim, Appended::Repeat(first.original()));
    assert_eq!(store.count(&ch).await.expect("count"), 0);
}

/// The same key on another channel, or from another publisher (the server counts as one),
/// is another message.
pub async fn keys_are_scoped_by_channel_and_publisher(store: Arc<dyn Store>) {
    let (a, b) = (channel("scoped:a"), channel("scoped:b"));
    let mut seqs = Vec::new();
    for (ch, from) in [
        (&a, Some("alice")),
        (&b, Some("alice")),
        (&a, Some("bob")),
        (&a, None),
    ] {
        let appended = store
            .append(keyed(ch, "same", from, 0))
            .await
            .expect("append");
        assert!(!appended.is_repeat(), "{ch} {from:?}");
        seqs.push(appended.seq().0);
    }
    assert_eq!(seqs, [1, 1, 2, 3]);
    let repeat = store
        .append(keyed(&a, "same", None, 0))
        .await
        .expect("server repeat");
    assert_eq!(repeat.seq(), Seq(3));
    assert!(repeat.is_repeat());
}

/// Many tasks racing the same keys (a client retrying on several connections): each key is
/// stored once, everyone gets its seq and id, and the sequence stays gap-free.
pub async fn concurrent_repeats_store_one_copy(store: Arc<dyn Store>) {
    let ch = channel("racing");
    let mut handles = Vec::new();
    for t in 0..16u64 {
        let (store, ch) = (store.clone(), ch.clone());
        handles.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for k in 0..10u64 {
                let key = format!("key-{k}");
                let appended = store
                    .append(keyed(&ch, &key, Some("alice"), t))
                    .await
                    .expect("append");
                got.push((k, appended.seq(), appended.id()));
            }
            got
        }));
    }
    let mut by_key = std::collections::BTreeMap::new();
    for h in handles {
        for (k, seq, id) in h.await.expect("task") {
            let first = *by_key.entry(k).or_insert((seq, id));
            assert_eq!(first, (seq, id), "every repeat of key-{k} answers the same");
        }
    }
    let stored: BTreeSet<u64> = by_key.values().map(|(seq, _)| seq.0).collect();
    assert_eq!(stored, (1..=10).collect());
    assert_eq!(store.count(&ch).await.expect("count"), 10);
    assert_eq!(store.latest_seq(&ch).await.expect("latest"), Seq(10));
}

fn revision(channel: &ChannelName, event: &str, target: u64, payload: &str) -> NewMessage {
    NewMessage {
        event: Some(event.to_owned()),
        reference: Some(Seq(target)),
        from: Some(UserId::parse("alice").expect("user")),
        ..NewMessage::new(channel.clone(), Payload::from_json(payload).expect("json"))
    }
}

async fn append_text(store: &Arc<dyn Store>, channel: &ChannelName, text: &str) -> Seq {
    let payload = Payload::from_value(&serde_json::json!({ "text": text })).expect("json");
    store
        .append(NewMessage::new(channel.clone(), payload))
        .await
        .expect("append")
        .seq()
}

async fn current(store: &Arc<dyn Store>, channel: &ChannelName) -> Vec<crate::CurrentMessage> {
    store
        .history_current(channel, HistoryQuery::latest(100))
        .await
        .expect("current view")
}

/// Edits and deletes are appended with their own seqs and `ref`; the log keeps them in
/// order, and the current view applies the latest edit and the delete.
pub async fn edits_and_deletes_are_appended_and_applied_in_the_current_view(store: Arc<dyn Store>) {
    let ch = ChannelName::parse("chat:revisions").expect("name");
    let one = append_text(&store, &ch, "one").await;
    let two = append_text(&store, &ch, "two").await;
    let edit = store
        .append(revision(&ch, "edit", 1, r#"{"text":"one, edited"}"#))
        .await
        .expect("edit")
        .into_new()
        .expect("new");
    assert_eq!((edit.seq, edit.reference), (Seq(3), Some(one)));
    let second_edit = store
        .append(revision(&ch, "edit", 1, r#"{"text":"one, again"}"#))
        .await
        .expect("edit");
    assert_eq!(second_edit.seq(), Seq(4));
    assert_eq!(append_text(&store, &ch, "three").await, Seq(5));
    // The log holds every event, with its ref.
    let log = store
        .history(&ch, HistoryQuery::latest(100))
        .await
        .expect("log");
    let refs: Vec<(u64, Option<u64>)> = log
        .iter()
        .map(|m| (m.seq.0, m.reference.map(|r| r.0)))
        .collect();
    assert_eq!(
        refs,
        [(1, None), (2, None), (3, Some(1)), (4, Some(1)), (5, None)]
    );
    assert_eq!(
        log[2].payload.as_str(),
        r#"{"text":"one, edited"}"#,
        "the log is raw"
    );
    // The current view: the latest edit applied, edits left out.
    let view = current(&store, &ch).await;
    let seqs: Vec<u64> = view.iter().map(|c| c.message.seq.0).collect();
    assert_eq!(seqs, [1, 2, 5]);
    assert_eq!(view[0].message.payload.as_str(), r#"{"text":"one, again"}"#);
    assert_eq!((view[0].edited, view[0].deleted), (Some(Seq(4)), None));
    assert_eq!(view[0].message.event, None, "the original's event stays");
    assert_eq!(view[0].message.id, log[0].id, "and its id");
    assert_eq!((view[1].edited, view[1].deleted), (None, None));
    // Deleting `two`.
    store
        .append(revision(&ch, "delete", two.0, "null"))
        .await
        .expect("delete");
    let view = current(&store, &ch).await;
    assert_eq!(
        view.len(),
        3,
        "a deleted message stays in the view as a tombstone"
    );
    assert_eq!(view[1].message.payload.as_str(), "null");
    assert_eq!((view[1].edited, view[1].deleted), (None, Some(Seq(6))));
    assert_eq!(store.latest_seq(&ch).await.expect("latest"), Seq(6));
}

/// A delete replaces the stored payload of the message and of every edit of it with `null`
/// (end-to-end-encrypted content is gone from the store, not hidden); an edit appended after
/// the delete is stored with a `null` payload too.
pub async fn a_delete_scrubs_the_payloads_of_the_message_and_its_edits(store: Arc<dyn Store>) {
    let ch = ChannelName::parse("chat:scrub").expect("name");
    let other = ChannelName::parse("chat:untouched").expect("name");
    append_text(&store, &ch, "secret").await;
    append_text(&store, &other, "secret").await;
    store
        .append(revision(&ch, "edit", 1, r#"{"text":"secret 2"}"#))
        .await
        .expect("edit");
    append_text(&store, &ch, "kept").await;
    let delete = store
        .append(revision(&ch, "delete", 1, r#"{"reason":"oops"}"#))
        .await
        .expect("delete")
        .into_new()
        .expect("new");
    assert_eq!(
        delete.payload.as_str(),
        r#"{"reason":"oops"}"#,
        "the delete keeps its own"
    );
    let late_edit = store
        .append(revision(&ch, "edit", 1, r#"{"text":"secret 3"}"#))
        .await
        .expect("late edit")
        .into_new()
        .expect("new");
    assert_eq!(
        late_edit.payload.as_str(),
        "null",
        "an edit after the delete is scrubbed"
    );
    let log = store
        .history(&ch, HistoryQuery::latest(100))
        .await
        .expect("log");
    let payloads: Vec<&str> = log.iter().map(|m| m.payload.as_str()).collect();
    assert_eq!(
        payloads,
        [
            "null",
            "null",
            r#"{"text":"kept"}"#,
            r#"{"reason":"oops"}"#,
            "null"
        ]
    );
    for m in &log {
        assert!(!m.payload.as_str().contains("secret"), "{m:?}");
    }
    let untouched = store
        .history(&other, HistoryQuery::latest(10))
        .await
        .expect("log");
    assert_eq!(untouched[0].payload.as_str(), r#"{"text":"secret"}"#);
    let view = current(&store, &ch).await;
    assert_eq!(view.len(), 2);
    assert_eq!((view[0].edited, view[0].deleted), (None, Some(Seq(4))));
    // A second delete changes nothing more.
    store
        .append(revision(&ch, "delete", 1, "null"))
        .await
        .expect("delete again");
    assert_eq!(current(&store, &ch).await[0].deleted, Some(Seq(4)));
}

/// The current view's `after`, `before` and `limit` count messages only, never their edits
/// and deletes.
pub async fn the_current_view_pages_over_messages_only(store: Arc<dyn Store>) {
    let ch = ChannelName::parse("chat:pages").expect("name");
    for i in 1..=5u64 {
        append_text(&store, &ch, &format!("m{i}")).await;
        for _ in 0..3 {
            store
                .append(revision(&ch, "edit", 1, r#"{"text":"again"}"#))
                .await
                .expect("edit");
        }
    }
    // Seqs: 1, 5, 9, 13, 17 are messages; the rest edit seq 1.
    let seqs = |page: Vec<crate::CurrentMessage>| -> Vec<u64> {
        page.iter().map(|c| c.message.seq.0).collect()
    };
    let newest = store
        .history_current(&ch, HistoryQuery::latest(2))
        .await
        .expect("page");
    assert_eq!(seqs(newest), [13, 17]);
    let first = store
        .history_current(&ch, HistoryQuery::after(Seq::ZERO, 2))
        .await
        .expect("page");
    assert_eq!(first[0].edited, Some(Seq(20)));
    assert_eq!(seqs(first), [1, 5]);
    let next = store
        .history_current(&ch, HistoryQuery::after(Seq(5), 2))
        .await
        .expect("page");
    assert_eq!(seqs(next), [9, 13]);
    let before = store
        .history_current(
            &ch,
            HistoryQuery {
                after: None,
                before: Some(Seq(13)),
                limit: 10,
            },
        )
        .await
        .expect("page");
    assert_eq!(seqs(before), [1, 5, 9]);
}

/// An edit's content goes with its message: trimming a message replaces the payloads of its
/// edits that stay with `null`, as a delete would have done (nothing can delete them later).
pub async fn trimming_a_message_scrubs_the_edits_that_stay(store: Arc<dyn Store>) {
    let ch = ChannelName::parse("chat:trim-edits").expect("name");
    append_text(&store, &ch, "secret").await;
    append_text(&store, &ch, "kept").await;
    store
        .append(revision(&ch, "edit", 1, r#"{"text":"secret 2"}"#))
        .await
        .expect("edit");
    store
        .append(revision(&ch, "edit", 2, r#"{"text":"kept 2"}"#))
        .await
        .expect("edit");
    assert_eq!(store.trim(&ch, 3).await.expect("trim"), 1);
    let log = store
        .history(&ch, HistoryQuery::latest(10))
        .await
        .expect("log");
    let payloads: Vec<(u64, &str)> = log.iter().map(|m| (m.seq.0, m.payload.as_str())).collect();
    assert_eq!(
        payloads,
        [
            (2, r#"{"text":"kept"}"#),
            (3, "null"),
            (4, r#"{"text":"kept 2"}"#)
        ]
    );
    let view = current(&store, &ch).await;
    assert_eq!(view.len(), 1);
    assert_eq!(view[0].message.payload.as_str(), r#"{"text":"kept 2"}"#);
    // An edit of the trimmed message that arrives afterwards (it passed its checks before
    // the trim) is stored without its content.
    let late = store
        .append(revision(&ch, "edit", 1, r#"{"text":"secret 3"}"#))
        .await
        .expect("late edit")
        .into_new()
        .expect("new");
    assert_eq!(late.payload.as_str(), "null");
    let log = store
        .history(&ch, HistoryQuery::latest(10))
        .await
        .expect("log");
    assert!(
        log.iter().all(|m| !m.payload.as_str().contains("secret")),
        "{log:?}"
    );
}

/// `repeat_of` answers what a repeat of a key would get, and stores nothing.
pub async fn repeat_of_answers_a_known_key_without_storing(store: Arc<dyn Store>) {
    let ch = ChannelName::parse("chat:repeat-of").expect("name");
    let key = IdempotencyKey::parse("k-1").expect("key");
    let message = NewMessage {
        from: Some(UserId::parse("alice").expect("user")),
        ..NewMessage::new(ch.clone(), Payload::from_json("1").expect("json"))
    }
    .keyed(key.clone());
    let stored = store
        .append(message)
        .await
        .expect("append")
        .into_new()
        .expect("new");
    let known = store
        .repeat_of(&ch, "alice", &key)
        .await
        .expect("repeat_of");
    assert_eq!(known, Some(stored.original()));
    assert_eq!(
        store.repeat_of(&ch, "bob", &key).await.expect("repeat_of"),
        None
    );
    let other = IdempotencyKey::parse("k-2").expect("key");
    assert_eq!(
        store
            .repeat_of(&ch, "alice", &other)
            .await
            .expect("repeat_of"),
        None
    );
    let elsewhere = ChannelName::parse("chat:elsewhere").expect("name");
    assert_eq!(
        store
            .repeat_of(&elsewhere, "alice", &key)
            .await
            .expect("repeat_of"),
        None
    );
    assert_eq!(store.latest_seq(&ch).await.expect("latest"), Seq(1));
}

/// A reachable store answers `ping`.
pub async fn ping_succeeds(store: Arc<dyn Store>) {
    store.ping().await.expect("ping");
}

/// For tests and benchmarks that need to intercept commits: a type implementing this gets a
/// [`Store`] implementation that delegates every operation to [`inner`](Self::inner) except
/// `append`, which it answers itself.
#[async_trait::async_trait]
pub trait AppendHook: Send + Sync + 'static {
    /// The store everything else goes to.
    type Inner: Store;
    /// The inner store.
    fn inner(&self) -> &Self::Inner;
    /// The intercepted append.
    async fn append(&self, message: NewMessage) -> crate::StoreResult<crate::Appended>;
    /// See [`Store::commit_deadline`]; the inner store's by default.
    fn commit_deadline(&self) -> Option<std::time::Duration> {
        self.inner().commit_deadline()
    }
}

#[async_trait::async_trait]
impl<T: AppendHook> Store for T {
    async fn create_channel(&self, new: NewChannel) -> crate::StoreResult<Created> {
        self.inner().create_channel(new).await
    }
    async fn get_channel(
        &self,
        name: &ChannelName,
    ) -> crate::StoreResult<Option<crate::ChannelRecord>> {
        self.inner().get_channel(name).await
    }
    async fn count_created_by(&self, user: &UserId) -> crate::StoreResult<u64> {
        self.inner().count_created_by(user).await
    }
    async fn query_channels(
        &self,
        names: &[ChannelName],
    ) -> crate::StoreResult<Vec<crate::ChannelRecord>> {
        self.inner().query_channels(names).await
    }
    async fn channels_of_member(
        &self,
        user: &UserId,
        limit: usize,
        offset: usize,
    ) -> crate::StoreResult<Vec<crate::ChannelRecord>> {
        self.inner().channels_of_member(user, limit, offset).await
    }
    async fn add_member(
        &self,
        channel: &ChannelName,
        user: &UserId,
        role: MemberRole,
    ) -> crate::StoreResult<bool> {
        self.inner().add_member(channel, user, role).await
    }
    async fn set_role(
        &self,
        channel: &ChannelName,
        user: &UserId,
        role: MemberRole,
    ) -> crate::StoreResult<RoleChange> {
        self.inner().set_role(channel, user, role).await
    }
    async fn remove_member(
        &self,
        channel: &ChannelName,
        user: &UserId,
        up_to: MemberRole,
    ) -> crate::StoreResult<Removal> {
        self.inner().remove_member(channel, user, up_to).await
    }
    async fn members(&self, channel: &ChannelName) -> crate::StoreResult<Vec<Member>> {
        self.inner().members(channel).await
    }
    async fn member_role(
        &self,
        channel: &ChannelName,
        user: &UserId,
    ) -> crate::StoreResult<Option<MemberRole>> {
        self.inner().member_role(channel, user).await
    }
    async fn append(&self, message: NewMessage) -> crate::StoreResult<crate::Appended> {
        AppendHook::append(self, message).await
    }
    async fn history(
        &self,
        channel: &ChannelName,
        query: HistoryQuery,
    ) -> crate::StoreResult<Vec<crate::StoredMessage>> {
        self.inner().history(channel, query).await
    }
    async fn repeat_of(
        &self,
        channel: &ChannelName,
        publisher: &str,
        key: &IdempotencyKey,
    ) -> crate::StoreResult<Option<crate::Original>> {
        self.inner().repeat_of(channel, publisher, key).await
    }
    async fn history_current(
        &self,
        channel: &ChannelName,
        query: HistoryQuery,
    ) -> crate::StoreResult<Vec<crate::CurrentMessage>> {
        self.inner().history_current(channel, query).await
    }
    async fn count(&self, channel: &ChannelName) -> crate::StoreResult<u64> {
        self.inner().count(channel).await
    }
    async fn latest_seq(&self, channel: &ChannelName) -> crate::StoreResult<Seq> {
        self.inner().latest_seq(channel).await
    }
    async fn trim(&self, channel: &ChannelName, keep: u64) -> crate::StoreResult<u64> {
        self.inner().trim(channel, keep).await
    }
    async fn mark_read(
        &self,
        user: &UserId,
        channel: &ChannelName,
        seq: Seq,
    ) -> crate::StoreResult<(Seq, bool)> {
        self.inner().mark_read(user, channel, seq).await
    }
    async fn read_marker(&self, user: &UserId, channel: &ChannelName) -> crate::StoreResult<Seq> {
        self.inner().read_marker(user, channel).await
    }
    async fn unread(
        &self,
        user: &UserId,
        after: Option<&ChannelName>,
        limit: usize,
    ) -> crate::StoreResult<Vec<crate::ReadState>> {
        self.inner().unread(user, after, limit).await
    }
    async fn ping(&self) -> crate::StoreResult<()> {
        self.inner().ping().await
    }
    fn commit_deadline(&self) -> Option<std::time::Duration> {
        AppendHook::commit_deadline(self)
    }
}
