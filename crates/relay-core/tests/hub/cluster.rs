//! A hub as one node of a cluster, driven directly: commits other nodes announce, catch-up
//! after lost announcements, live events from other nodes, and what it forwards.

use std::sync::Arc;

use parking_lot::Mutex;
use relay_core::{Backplane, Hub, HubConfig, Identity};
use relay_proto::{ErrorCode, Payload, Seq, ServerFrame};
use relay_store::{MemoryStore, NewMessage, Store};
use serde_json::json;

use crate::support::*;

/// Appends as another node would: straight to the shared store, unseen by this hub.
async fn append_elsewhere(t: &TestHub, channel: &str, n: u64) {
    for i in 0..n {
        t.store
            .append(NewMessage::new(
                ch(channel),
                Payload::from_json(&i.to_string()).unwrap(),
            ))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn an_announced_commit_brings_subscribers_up_to_its_seq() {
    let t = TestHub::new();
    let alice = t.connect("alice");
    alice.subscribe("chat:1").await;
    append_elsewhere(&t, "chat:1", 3).await;
    assert!(alice.frames().is_empty(), "nobody told this node yet");
    t.hub.remote_commit(&ch("chat:1"), Seq(3));
    assert_eq!(message_seqs(&alice.next_batch().await), [1, 2, 3]);
    t.hub.remote_commit(&ch("chat:1"), Seq(2));
    t.hub.remote_commit(&ch("chat:9"), Seq(5));
    assert_eq!(
        message_seqs(&alice.publish("chat:1", json!("mine")).await),
        [4],
        "stale and foreign announcements change nothing"
    );
}

#[tokio::test]
async fn resync_delivers_commits_whose_announcements_were_lost() {
    let t = TestHub::new();
    let (alice, bob) = (t.connect("alice"), t.connect("bob"));
    alice.subscribe("chat:1").await;
    bob.subscribe("chat:2").await;
    append_elsewhere(&t, "chat:1", 2).await;
    append_elsewhere(&t, "chat:2", 1).await;
    t.hub.resync();
    assert_eq!(message_seqs(&alice.next_batch().await), [1, 2]);
    assert_eq!(message_seqs(&bob.next_batch().await), [1]);
}

#[tokio::test]
async fn live_events_from_other_nodes_reach_local_subscribers() {
    let t = TestHub::new();
    let (alice, bob) = (t.connect("alice"), t.connect("bob"));
    alice.subscribe("chat:1").await;
    bob.subscribe("chat:1").await;
    alice.frames();
    let typing = json!({"type": "message", "channel": "chat:1", "id": "0193a6f2-7c4e-7b21-9d3f-2a8c5e4b1f06", "from": "carol", "event": "typing", "payload": {}, "ts": "2026-11-22T10:00:00.000Z"});
    assert!(t.hub.receive(
        "node-x",
        &json!({"k": "ephemeral", "f": typing}).to_string()
    ));
    assert_eq!(alice.frames().len(), 1);
    assert_eq!(bob.frames().len(), 1);
    let offer = json!({"type": "signal", "channel": "chat:1", "from": "carol", "event": "offer", "payload": {"sdp": "x"}});
    assert!(t.hub.receive(
        "node-x",
        &json!({"k": "signal", "to": "bob", "f": offer}).to_string()
    ));
    assert!(
        alice.frames().is_empty(),
        "a signal reaches only its target"
    );
    assert!(matches!(&bob.frames()[..], [ServerFrame::Signal { .. }]));
    assert!(
        !t.hub
            .receive("node-x", r#"{"k":"ephemeral","f":{"type":"pong"}}"#)
    );
    assert!(!t.hub.receive("node-x", "garbage"));
}

#[derive(Default)]
struct Recorder {
    sent: Mutex<Vec<String>>,
    committed: Mutex<Vec<(String, u64, String)>>,
    interest: Mutex<Vec<String>>,
}

impl Backplane for Recorder {
    fn max_event_bytes(&self) -> usize {
        1000
    }
    fn send(&self, _channel: &relay_proto::ChannelName, event: &str) {
        self.sent.lock().push(event.to_owned());
    }
    fn carries_commits(&self) -> bool {
        true
    }
    fn committed(&self, channel: &relay_proto::ChannelName, seq: Seq, event: &str) {
        self.committed
            .lock()
            .push((channel.to_string(), seq.0, event.to_owned()));
    }
    fn interest(&self, channel: &relay_proto::ChannelName) {
        self.interest.lock().push(channel.to_string());
    }
}

#[tokio::test]
async fn commits_are_forwarded_whole_or_as_pointers_and_interest_follows_subscribers() {
    let recorder = Arc::new(Recorder::default());
    let hub = Hub::with_backplane(
        Arc::new(MemoryStore::new()),
        HubConfig::default(),
        recorder.clone(),
    );
    let alice = Client {
        conn: hub.connect(Identity::user(user("alice"))),
    };
    let bob = Client {
        conn: hub.connect(Identity::user(user("bob"))),
    };
    alice.subscribe("chat:1").await;
    bob.subscribe("chat:1").await;
    assert!(hub.serves(&ch("chat:1")));
    assert_eq!(
        *recorder.interest.lock(),
        ["chat:1"],
        "first subscriber only"
    );
    alice
        .send(json!({"type": "publish", "channel": "chat:1", "payload": "small"}))
        .await;
    alice
        .send(json!({"type": "publish", "channel": "chat:2", "payload": "x".repeat(2000)}))
        .await;
    let committed = recorder.committed.lock().clone();
    assert_eq!(committed.len(), 2, "{committed:?}");
    let (channel, seq, event) = &committed[0];
    assert_eq!((channel.as_str(), *seq), ("chat:1", 1));
    assert!(
        event.starts_with(r#"{"k":"msg","f":{"type":"message""#),
        "{event}"
    );
    assert!(event.contains(r#""seq":1"#), "{event}");
    assert_eq!(
        committed[1].2,
        relay_core::commit_pointer(&ch("chat:2"), Seq(1)),
        "too large for the transport: a pointer"
    );
    alice
        .send(json!({"type": "unsubscribe", "channel": "chat:1"}))
        .await;
    assert_eq!(recorder.interest.lock().len(), 1, "bob still subscribed");
    drop(bob);
    assert!(!hub.serves(&ch("chat:1")));
    assert_eq!(*recorder.interest.lock(), ["chat:1", "chat:1"]);
}

#[tokio::test]
async fn committed_messages_from_other_nodes_are_delivered_without_a_store_read() {
    let t = TestHub::new();
    let alice = t.connect("alice");
    alice.subscribe("chat:1").await;
    let message = |seq: u64| {
        json!({"k": "msg", "f": {"type": "message", "channel": "chat:1", "seq": seq, "id": "0193a6f2-7c4e-7b21-9d3f-2a8c5e4b1f06", "from": "carol", "payload": seq, "ts": "2026-11-22T10:00:00.000Z"}}).to_string()
    };
    // Seqs 1 and 2 exist only in the events: the store of this test has none.
    assert!(t.hub.receive("node-x", &message(1)));
    assert!(t.hub.receive("node-x", &message(2)));
    assert!(t.hub.receive("node-x", &message(1)), "a repeat is dropped");
    assert_eq!(message_seqs(&alice.frames()), [1, 2]);
    assert_eq!(t.hub.counters().cluster_received, 3);
    // A pointer past what arrived: the rest is read from the store.
    append_elsewhere(&t, "chat:1", 4).await;
    assert!(
        t.hub
            .receive("node-x", &relay_core::commit_pointer(&ch("chat:1"), Seq(4)))
    );
    assert_eq!(message_seqs(&alice.next_batch().await), [3, 4]);
    assert!(
        !t.hub.receive(
            "node-x",
            r#"{"k":"msg","f":{"type":"message","channel":"chat:1","id":"0193a6f2-7c4e-7b21-9d3f-2a8c5e4b1f06","payload":1,"ts":"2026-11-22T10:00:00.000Z"}}"#
        ),
        "a committed message without a seq is refused"
    );
    // On a channel's own route, only that channel's messages, pointers and signals count.
    assert!(t.hub.receive_routed(&ch("chat:1"), &message(5)));
    assert!(!t.hub.receive_routed(&ch("chat:2"), &message(6)));
    let evict = json!({"k": "evict", "ch": "chat:1", "u": "alice"}).to_string();
    assert!(!t.hub.receive_routed(&ch("chat:1"), &evict));
    assert!(t.hub.serves(&ch("chat:1")), "alice is still subscribed");
}

#[tokio::test]
async fn live_events_are_forwarded_and_oversized_ones_refused() {
    let recorder = Arc::new(Recorder::default());
    let hub = Hub::with_backplane(
        Arc::new(MemoryStore::new()),
        HubConfig::default(),
        recorder.clone(),
    );
    let alice = Client {
        conn: hub.connect(Identity::user(user("alice"))),
    };
    alice.subscribe("chat:1").await;
    alice
        .send(json!({"type": "publish", "channel": "chat:1", "ephemeral": true, "payload": {}}))
        .await;
    alice
        .send(json!({"type": "signal", "channel": "chat:1", "to": "bob", "payload": {}}))
        .await;
    let frames = alice.frames();
    assert!(
        error_code(&frames).is_none(),
        "a signal to a user this node does not see is forwarded, not refused: {frames:?}"
    );
    alice
        .send(json!({"type": "publish", "channel": "chat:1", "payload": "stored"}))
        .await;
    alice
        .send(json!({"type": "publish", "channel": "chat:1", "ephemeral": true, "payload": "x".repeat(2000)}))
        .await;
    assert_eq!(error_code(&alice.frames()), Some(ErrorCode::TooLarge));
    let sent = recorder.sent.lock().clone();
    assert_eq!(
        sent.len(),
        2,
        "persistent messages go through `committed`, not `send`: {sent:?}"
    );
    assert!(sent[0].starts_with(r#"{"k":"ephemeral""#), "{}", sent[0]);
    assert!(
        sent[1].starts_with(r#"{"k":"signal","to":"bob""#),
        "{}",
        sent[1]
    );
}

fn presence_event(channel: &str, user: &str, online: bool) -> String {
    json!({"k": "presence", "ch": channel, "u": user, "on": online}).to_string()
}

fn room_hub() -> TestHub {
    TestHub::with_policies(relay_core::Policies::default().with(
        "room",
        relay_core::NamespacePolicy {
            presence: true,
            join_leave: true,
            ..relay_core::NamespacePolicy::default()
        },
    ))
}

#[tokio::test]
async fn presence_counts_users_once_across_nodes() {
    let t = room_hub();
    let alice = t.connect("alice");
    alice.subscribe("room:1").await;
    t.hub
        .receive("node-b", &presence_event("room:1", "bob", true));
    assert!(
        matches!(&alice.frames()[..], [ServerFrame::Join { user, .. }] if user.as_str() == "bob")
    );
    t.hub
        .receive("node-c", &presence_event("room:1", "bob", true));
    t.hub
        .receive("node-b", &presence_event("room:1", "alice", true));
    assert!(
        alice.frames().is_empty(),
        "bob and alice were online already"
    );
    assert_eq!(
        t.hub.online_users(&ch("room:1")),
        [user("alice"), user("bob")]
    );

    t.hub
        .receive("node-b", &presence_event("room:1", "bob", false));
    assert!(alice.frames().is_empty(), "bob is still on node-c");
    t.hub
        .receive("node-c", &presence_event("room:1", "bob", false));
    assert!(
        matches!(&alice.frames()[..], [ServerFrame::Leave { user, .. }] if user.as_str() == "bob")
    );
    let local_bob = t.connect("bob");
    local_bob.subscribe("room:1").await;
    assert!(matches!(&alice.frames()[..], [ServerFrame::Join { .. }]));
    drop(local_bob);
    assert!(
        matches!(&alice.frames()[..], [ServerFrame::Leave { .. }]),
        "bob's last connection anywhere left"
    );
}

#[tokio::test]
async fn reconciliation_lets_the_users_of_a_dead_node_leave() {
    let t = room_hub();
    let alice = t.connect("alice");
    alice.subscribe("room:1").await;
    t.hub
        .receive("node-b", &presence_event("room:1", "bob", true));
    t.hub
        .receive("node-b", &presence_event("room:1", "carol", true));
    alice.frames();
    // node-b died: the table now holds only carol, on node-c.
    let channels = t.hub.presence_channels();
    assert_eq!(channels, [ch("room:1")]);
    t.hub.reconcile_presence(
        &channels,
        vec![(ch("room:1"), user("carol"), "node-c".into())],
    );
    assert!(
        matches!(&alice.frames()[..], [ServerFrame::Leave { user, .. }] if user.as_str() == "bob")
    );
    assert_eq!(
        t.hub.online_users(&ch("room:1")),
        [user("alice"), user("carol")]
    );
    assert_eq!(t.hub.local_presence(), [(ch("room:1"), user("alice"))]);
}

#[tokio::test]
async fn a_node_reads_what_its_subscribers_miss_and_delivers_it() {
    let t = TestHub::new();
    let alice = t.connect("alice");
    alice.subscribe("chat:1").await;
    append_elsewhere(&t, "chat:1", 3).await;
    assert_eq!(t.hub.wanted_after(&ch("chat:1"), Seq(3)), Some(Seq(0)));
    assert_eq!(
        t.hub.wanted_after(&ch("chat:2"), Seq(3)),
        None,
        "no subscriber here"
    );
    let read = t
        .store
        .history(&ch("chat:1"), relay_store::HistoryQuery::after(Seq(0), 10))
        .await
        .unwrap();
    for message in read.iter().rev() {
        t.hub.deliver(message); // in any order
    }
    assert_eq!(message_seqs(&alice.frames()), [1, 2, 3]);
    assert_eq!(
        t.hub.wanted_after(&ch("chat:1"), Seq(3)),
        None,
        "up to date"
    );
}

/// A tracked signal across nodes, driven by hand: the sender's node forwards it asking for an
/// answer and holds it; the target's node delivers it once and answers (again, not
/// delivering again, for a repeated offer); only a matching answer settles it.
#[tokio::test(start_paused = true)]
async fn tracked_signals_are_answered_once_delivered_and_settled_by_a_matching_answer() {
    let recorder = Arc::new(Recorder::default());
    let sender_node = Hub::with_backplane(
        Arc::new(MemoryStore::new()),
        HubConfig::default(),
        recorder.clone(),
    );
    let alice = Client {
        conn: sender_node.connect(Identity::user(user("alice"))),
    };
    alice.subscribe("call:1").await;
    recorder.sent.lock().clear();
    alice
        .send(json!({"type": "signal", "id": 1, "channel": "call:1", "to": "bob", "payload": 1, "receipt": true, "ttl_ms": 60_000}))
        .await;
    let held = alice.frames();
    let Some(ServerFrame::Receipt { signal: id, .. }) = held.first() else {
        panic!("{held:?}");
    };
    let offer = recorder
        .sent
        .lock()
        .pop()
        .expect("offered to the other nodes");
    assert!(offer.contains(r#""r":true"#), "{offer}");
    // Offered again after 1 s, then 2 s later (backing off), while nobody answers.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(recorder.sent.lock().len(), 1);
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    assert_eq!(recorder.sent.lock().len(), 1, "the second pause is 2 s");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(recorder.sent.lock().len(), 2);

    // The target's node: delivers the first offer, answers it; a repeat is only answered.
    let answers = Arc::new(Recorder::default());
    let target_node = Hub::with_backplane(
        Arc::new(MemoryStore::new()),
        HubConfig::default(),
        answers.clone(),
    );
    let bob = Client {
        conn: target_node.connect(Identity::user(user("bob"))),
    };
    bob.subscribe("call:1").await;
    answers.sent.lock().clear();
    assert!(target_node.receive("node-a", &offer));
    assert!(target_node.receive("node-a", &offer));
    let got = bob.frames();
    assert_eq!(got.len(), 1, "delivered once: {got:?}");
    let answered = answers.sent.lock().clone();
    assert_eq!(answered.len(), 2, "answered twice");

    // An answer for another target does not settle it; the right one does, once.
    let wrong = answered[0].replace(r#""to":"bob""#, r#""to":"carol""#);
    assert!(sender_node.receive("node-b", &wrong));
    assert!(alice.frames().is_empty());
    assert_eq!(sender_node.stats().held_signals, 1);
    assert!(sender_node.receive("node-b", &answered[0]));
    assert!(sender_node.receive("node-b", &answered[1]));
    let done = alice.frames();
    assert!(
        matches!(&done[..], [ServerFrame::Receipt { signal, status: relay_proto::ReceiptStatus::Delivered, .. }] if signal == id),
        "{done:?}"
    );
    assert_eq!(sender_node.stats().held_signals, 0);
}
