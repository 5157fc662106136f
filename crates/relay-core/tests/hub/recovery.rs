//! `subscribe {since}`, out-of-order deliveries and gaps filled from the store.

use std::sync::Arc;

use relay_core::{Hub, HubConfig};
use relay_proto::{Payload, Seq, ServerFrame};
use relay_store::conformance::AppendHook;
use relay_store::{Appended, MemoryStore, NewMessage, Store, StoreError, StoreResult};
use serde_json::json;

use crate::support::*;

async fn publish_n(client: &Client, channel: &str, n: usize) {
    for i in 0..n {
        client.publish(channel, json!(i)).await;
    }
}

#[tokio::test]
async fn subscribe_since_replays_what_was_missed_then_continues_live() {
    let t = TestHub::new();
    let alice = t.connect("alice");
    publish_n(&alice, "chat:1", 5).await;

    let bob = t.connect("bob");
    bob.send(json!({"type": "subscribe", "id": "s", "channel": "chat:1", "since": 2}))
        .await;
    let frames = bob.frames();
    assert!(
        matches!(
            &frames[0],
            ServerFrame::Subscribed {
                seq: Seq(5),
                recovered: Some(true),
                ..
            }
        ),
        "{frames:?}"
    );
    assert_eq!(message_seqs(&frames), vec![3, 4, 5]);

    alice.publish("chat:1", json!("live")).await;
    assert_eq!(message_seqs(&bob.frames()), vec![6]);
}

#[tokio::test]
async fn subscribe_without_since_starts_at_the_latest_seq() {
    let t = TestHub::new();
    let alice = t.connect("alice");
    publish_n(&alice, "chat:1", 3).await;
    let bob = t.connect("bob");
    let frames = bob.subscribe("chat:1").await;
    assert!(matches!(
        &frames[..],
        [ServerFrame::Subscribed {
            seq: Seq(3),
            recovered: None,
            ..
        }]
    ));
}

#[tokio::test]
async fn since_further_back_than_the_recovery_limit_is_not_recovered() {
    let t = TestHub::with_config(HubConfig {
        max_recovery: 3,
        ..HubConfig::default()
    });
    let alice = t.connect("alice");
    publish_n(&alice, "chat:1", 5).await;
    let bob = t.connect("bob");
    bob.send(json!({"type": "subscribe", "channel": "chat:1", "since": 1}))
        .await;
    let frames = bob.frames();
    assert!(matches!(
        &frames[..],
        [ServerFrame::Subscribed {
            seq: Seq(5),
            recovered: Some(false),
            ..
        }]
    ));
    alice.publish("chat:1", json!("live")).await;
    assert_eq!(
        message_seqs(&bob.frames()),
        vec![6],
        "live messages continue from the latest seq"
    );
}

#[tokio::test]
async fn since_ahead_of_the_channel_is_not_recovered() {
    let t = TestHub::new();
    let bob = t.connect("bob");
    bob.send(json!({"type": "subscribe", "channel": "chat:1", "since": 40}))
        .await;
    let frames = bob.frames();
    assert!(matches!(
        &frames[..],
        [ServerFrame::Subscribed {
            seq: Seq(0),
            recovered: Some(false),
            ..
        }]
    ));
}

#[tokio::test]
async fn trimmed_history_is_not_recovered() {
    let t = TestHub::new();
    let alice = t.connect("alice");
    publish_n(&alice, "chat:1", 5).await;
    t.store.trim(&ch("chat:1"), 2).await.unwrap();
    let bob = t.connect("bob");
    bob.send(json!({"type": "subscribe", "channel": "chat:1", "since": 1}))
        .await;
    let frames = bob.frames();
    assert!(matches!(
        &frames[..],
        [ServerFrame::Subscribed {
            recovered: Some(false),
            ..
        }]
    ));
}

async fn append(t: &TestHub, channel: &str, n: u64) -> relay_store::StoredMessage {
    let payload = Payload::from_json(&n.to_string()).unwrap();
    t.store
        .append(NewMessage::new(ch(channel), payload))
        .await
        .unwrap()
        .into_new()
        .unwrap()
}

#[tokio::test]
async fn deliveries_out_of_seq_order_reach_subscribers_in_order() {
    let t = TestHub::new();
    let bob = t.connect("bob");
    bob.subscribe("chat:1").await;
    let (m1, m2, m3) = (
        append(&t, "chat:1", 1).await,
        append(&t, "chat:1", 2).await,
        append(&t, "chat:1", 3).await,
    );
    t.hub.deliver(&m3);
    t.hub.deliver(&m1);
    t.hub.deliver(&m1);
    t.hub.deliver(&m2);
    assert_eq!(message_seqs(&bob.frames()), vec![1, 2, 3]);
}

#[tokio::test]
async fn a_gap_left_by_a_lost_delivery_is_filled_from_the_store() {
    let t = TestHub::new();
    let bob = t.connect("bob");
    bob.subscribe("chat:1").await;
    append(&t, "chat:1", 1).await;
    append(&t, "chat:1", 2).await;
    let m3 = append(&t, "chat:1", 3).await;
    // Only the newest notification arrives (as if a backplane hint was lost).
    t.hub.deliver(&m3);
    let mut seqs = Vec::new();
    while seqs.len() < 3 {
        seqs.extend(message_seqs(&bob.next_batch().await));
    }
    assert_eq!(seqs, vec![1, 2, 3]);
}

#[tokio::test]
async fn messages_published_during_a_subscribe_are_neither_lost_nor_duplicated() {
    // Many publishers race many subscribe-with-since calls; every subscriber must see a
    // gap-free, duplicate-free run from its start point to the end.
    let t = TestHub::new();
    let publishers: Vec<_> = (0..4).map(|i| t.connect(&format!("p{i}"))).collect();
    let subscribers: Vec<_> = (0..8).map(|i| t.connect(&format!("s{i}"))).collect();
    let publishing = async {
        for round in 0..50 {
            for p in &publishers {
                p.publish("race:1", json!(round)).await;
            }
            tokio::task::yield_now().await;
        }
    };
    let subscribing = async {
        for (i, s) in subscribers.iter().enumerate() {
            s.send(json!({"type": "subscribe", "channel": "race:1", "since": i * 3}))
                .await;
            tokio::task::yield_now().await;
        }
    };
    tokio::join!(publishing, subscribing);
    let latest = t.latest("race:1").await.0;
    for s in &subscribers {
        let frames = s.frames();
        let ServerFrame::Subscribed { seq, recovered, .. } = &frames[0] else {
            panic!("{frames:?}")
        };
        let seqs = message_seqs(&frames);
        let start = if *recovered == Some(true) {
            seqs.first().map_or(seq.0, |s| s - 1)
        } else {
            seq.0
        };
        assert_eq!(seqs, (start + 1..=latest).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn a_replay_larger_than_the_outbox_does_not_cut_the_recovering_connection() {
    let t = TestHub::with_config(HubConfig {
        outbox_capacity: 8,
        ..HubConfig::default()
    });
    let alice = t.connect("alice");
    for i in 0..50 {
        alice.publish("chat:1", json!(i)).await;
    }
    let bob = t.connect("bob");
    bob.send(json!({"type": "subscribe", "channel": "chat:1", "since": 0}))
        .await;
    assert_eq!(bob.conn.outbox().closed(), None, "still open");
    assert_eq!(message_seqs(&bob.frames()), (1..=50).collect::<Vec<_>>());
    alice.publish("chat:1", json!("live")).await;
    assert_eq!(message_seqs(&bob.frames()), vec![51]);
}

/// A memory store whose appends commit, then can fail to report it or wait on a gate: the
/// two ways a commit's delivery could go missing.
struct AfterCommit {
    inner: MemoryStore,
    fail: std::sync::atomic::AtomicBool,
    gate: tokio::sync::Semaphore,
    gated: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl AppendHook for AfterCommit {
    type Inner = MemoryStore;

    fn inner(&self) -> &MemoryStore {
        &self.inner
    }

    async fn append(&self, m: NewMessage) -> StoreResult<Appended> {
        let stored = self.inner.append(m).await?;
        if self.gated.load(std::sync::atomic::Ordering::SeqCst) {
            let _permit = self.gate.acquire().await;
        }
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Unavailable("the ack was lost".into()));
        }
        Ok(stored)
    }
}

impl Default for AfterCommit {
    fn default() -> Self {
        Self {
            inner: MemoryStore::new(),
            fail: Default::default(),
            gate: tokio::sync::Semaphore::new(0),
            gated: Default::default(),
        }
    }
}

fn hub_over(store: Arc<AfterCommit>) -> Hub {
    Hub::new(
        store,
        HubConfig {
            repair_delay: std::time::Duration::ZERO,
            ..HubConfig::default()
        },
    )
}

fn client(hub: &Hub, user: &str) -> Client {
    Client {
        conn: hub.connect(relay_core::Identity::user(self::user(user))),
    }
}

#[tokio::test]
async fn a_commit_whose_ack_was_lost_still_reaches_live_subscribers() {
    let store = Arc::new(AfterCommit::default());
    let hub = hub_over(store.clone());
    let (alice, bob) = (client(&hub, "alice"), client(&hub, "bob"));
    bob.subscribe("chat:1").await;
    store.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let frames = alice.publish("chat:1", json!("maybe")).await;
    assert_eq!(
        error_code(&frames),
        Some(relay_proto::ErrorCode::Unavailable)
    );
    // Stored after all: bob gets it without waiting for another publish.
    assert_eq!(message_seqs(&bob.next_batch().await), vec![1]);
}

#[tokio::test]
async fn a_publish_abandoned_after_its_commit_is_still_delivered() {
    let store = Arc::new(AfterCommit::default());
    let hub = hub_over(store.clone());
    let (alice, bob) = (client(&hub, "alice"), client(&hub, "bob"));
    bob.subscribe("chat:1").await;
    store.gated.store(true, std::sync::atomic::Ordering::SeqCst);
    {
        let publish = alice.send(json!({"type": "publish", "channel": "chat:1", "payload": 1}));
        // The commit happens, the reply waits on the gate; then the caller goes away.
        let abandoned = tokio::time::timeout(std::time::Duration::from_millis(50), publish).await;
        assert!(abandoned.is_err(), "still waiting on the gate");
    }
    store.gate.add_permits(1);
    assert_eq!(message_seqs(&bob.next_batch().await), vec![1]);
}

/// A store whose commits run in a task of their own (as the Postgres committer does) and land
/// `delay` after the append is called, whether or not its caller is still waiting.
struct LateCommit {
    inner: Arc<MemoryStore>,
    delay: std::time::Duration,
}

#[async_trait::async_trait]
impl AppendHook for LateCommit {
    type Inner = MemoryStore;

    fn inner(&self) -> &MemoryStore {
        &self.inner
    }

    async fn append(&self, m: NewMessage) -> StoreResult<Appended> {
        let (inner, delay) = (self.inner.clone(), self.delay);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            inner.append(m).await
        })
        .await
        .map_err(|_| StoreError::Unavailable("committer stopped".into()))?
    }

    fn commit_deadline(&self) -> Option<std::time::Duration> {
        Some(self.delay + std::time::Duration::from_millis(50))
    }
}

#[tokio::test]
async fn a_commit_that_lands_long_after_its_publisher_left_is_still_delivered() {
    let store = Arc::new(LateCommit {
        inner: Arc::new(MemoryStore::new()),
        delay: std::time::Duration::from_millis(300),
    });
    let hub = Hub::new(store, HubConfig::default());
    let (alice, bob) = (client(&hub, "alice"), client(&hub, "bob"));
    bob.subscribe("chat:1").await;
    {
        let publish = alice.send(json!({"type": "publish", "channel": "chat:1", "payload": 1}));
        // The caller goes away long before the commit (and after the first tail check).
        let abandoned = tokio::time::timeout(std::time::Duration::from_millis(50), publish).await;
        assert!(abandoned.is_err(), "the commit is still running");
    }
    // Nothing else is published on the channel: only the hub's own late check can deliver it.
    assert_eq!(message_seqs(&bob.next_batch().await), vec![1]);
}

/// Publishes `n` messages of about `bytes` bytes each to `channel`.
async fn publish_big(client: &Client, channel: &str, n: usize, bytes: usize) {
    for i in 0..n {
        let payload = format!("{i:0>width$}", width = bytes);
        client.publish(channel, json!(payload)).await;
    }
}

fn recovered(frames: &[ServerFrame]) -> Option<bool> {
    frames.iter().find_map(|f| match f {
        ServerFrame::Subscribed { recovered, .. } => *recovered,
        _ => None,
    })
}

#[tokio::test]
async fn a_replay_is_bounded_in_bytes_per_connection_including_what_it_has_not_read() {
    let t = TestHub::with_config(HubConfig {
        max_replay_bytes: 4_500,
        ..HubConfig::default()
    });
    let alice = t.connect("alice");
    publish_big(&alice, "chat:1", 10, 1_000).await;
    publish_big(&alice, "chat:2", 10, 1_000).await;
    let bob = t.connect("bob");
    // Ten messages of ~1 KB: over the allowance, so not recovered (and nothing pinned).
    bob.send(json!({"type": "subscribe", "channel": "chat:1", "since": 0}))
        .await;
    let frames = bob.frames();
    assert_eq!(recovered(&frames), Some(false));
    assert!(message_seqs(&frames).is_empty());
    assert_eq!(t.hub.stats().replay_bytes, 0);
    // Three fit; while they sit unread, another three do not.
    bob.send(json!({"type": "subscribe", "channel": "chat:2", "since": 7}))
        .await;
    let carol = t.connect("carol");
    carol
        .send(json!({"type": "subscribe", "channel": "chat:2", "since": 7}))
        .await;
    assert!(t.hub.stats().replay_bytes > 6_000, "two replays queued");
    bob.send(json!({"type": "unsubscribe", "channel": "chat:1"}))
        .await;
    bob.send(json!({"type": "subscribe", "channel": "chat:1", "since": 7}))
        .await;
    let frames = bob.frames();
    assert_eq!(message_seqs(&frames), vec![8, 9, 10]);
    assert_eq!(
        frames
            .iter()
            .filter_map(|f| match f {
                ServerFrame::Subscribed { recovered, .. } => Some(*recovered),
                _ => None,
            })
            .collect::<Vec<_>>(),
        vec![Some(true), Some(false)]
    );
    assert_eq!(t.hub.counters().replays_refused, 2);
    // Written (drained) replays leave the budget; a dropped connection's too.
    drop(carol);
    assert_eq!(t.hub.stats().replay_bytes, 0);
}

#[tokio::test]
async fn the_hub_wide_replay_budget_refuses_recoveries_until_replays_are_written() {
    let t = TestHub::with_config(HubConfig {
        replay_budget_bytes: 4_500,
        ..HubConfig::default()
    });
    let alice = t.connect("alice");
    publish_big(&alice, "chat:1", 3, 1_000).await;
    let (bob, carol) = (t.connect("bob"), t.connect("carol"));
    let subscribe = json!({"type": "subscribe", "channel": "chat:1", "since": 0});
    bob.send(subscribe.clone()).await;
    // Bob has not read his replay: the budget is taken.
    carol.send(subscribe.clone()).await;
    assert_eq!(recovered(&carol.frames()), Some(false));
    assert_eq!(message_seqs(&bob.frames()), vec![1, 2, 3]);
    assert_eq!(t.hub.stats().replay_bytes, 0);
    carol
        .send(json!({"type": "unsubscribe", "channel": "chat:1"}))
        .await;
    carol.send(subscribe).await;
    let frames = carol.frames();
    assert_eq!(recovered(&frames), Some(true));
    assert_eq!(message_seqs(&frames), vec![1, 2, 3]);
}
