//! Random interleavings of subscribe, subscribe-with-since, unsubscribe, publish and disconnect
//! across several concurrently running connections. Checks the core invariant: every
//! subscription sees exactly the persisted messages from its start point, in seq order, with
//! no gap and no duplicate; and once everyone is gone the hub holds nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use relay_core::{Hub, HubConfig, HubStats, Identity};
use relay_proto::{ChannelName, MessageId, Seq, ServerFrame, UserId};
use relay_store::{HistoryQuery, MemoryStore, Store};
use serde_json::json;

const CHANNELS: [&str; 2] = ["room:a", "room:b"];

#[derive(Debug, Clone)]
enum Op {
    Subscribe { channel: usize, since: bool },
    Unsubscribe { channel: usize },
    Publish { channel: usize, burst: u8 },
    Reconnect,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..2usize, any::<bool>()).prop_map(|(channel, since)| Op::Subscribe { channel, since }),
        1 => (0..2usize).prop_map(|channel| Op::Unsubscribe { channel }),
        4 => (0..2usize, 1..4u8).prop_map(|(channel, burst)| Op::Publish { channel, burst }),
        1 => Just(Op::Reconnect),
    ]
}

/// One subscription as the client sees it: the next seq it expects.
struct Session {
    next: u64,
}

/// A connection plus the client-side checker of what it receives.
struct Actor {
    hub: Hub,
    user: UserId,
    conn: relay_core::Connection,
    sessions: HashMap<String, Session>,
    /// The last seq seen per channel, across reconnects (what a client passes as `since`).
    seen: HashMap<String, u64>,
    received: Vec<(String, u64, MessageId)>,
}

impl Actor {
    fn new(hub: &Hub, user: &str) -> Self {
        let user = UserId::parse(user).unwrap();
        let conn = hub.connect(Identity::user(user.clone()));
        Self {
            hub: hub.clone(),
            user,
            conn,
            sessions: HashMap::new(),
            seen: HashMap::new(),
            received: Vec::new(),
        }
    }

    fn drain(&mut self) {
        let mut out = Vec::new();
        self.conn.outbox().try_drain(&mut out);
        for frame in out {
            match ServerFrame::decode(frame.as_bytes()).unwrap() {
                ServerFrame::Subscribed {
                    channel,
                    seq,
                    recovered,
                    ..
                } => {
                    let name = channel.as_str().to_owned();
                    let start = match recovered {
                        Some(true) => self.seen.get(&name).copied().unwrap_or(0),
                        _ => seq.0,
                    };
                    self.sessions.insert(name, Session { next: start + 1 });
                }
                ServerFrame::Unsubscribed { channel, .. } => {
                    self.sessions.remove(channel.as_str());
                }
                ServerFrame::Message {
                    channel,
                    seq: Some(seq),
                    id,
                    ..
                } => {
                    let name = channel.as_str().to_owned();
                    let session = self
                        .sessions
                        .get_mut(&name)
                        .expect("message outside a subscription");
                    assert_eq!(
                        seq.0, session.next,
                        "{}: gap or duplicate on {name}",
                        self.user
                    );
                    session.next += 1;
                    self.seen.insert(name.clone(), seq.0);
                    self.received.push((name, seq.0, id));
                }
                ServerFrame::Error { code, message, .. } => {
                    assert_eq!(code, relay_proto::ErrorCode::BadRequest, "{message}");
                }
                _ => {}
            }
        }
    }

    async fn run(&mut self, op: &Op) {
        match op {
            Op::Subscribe { channel, since } => {
                let name = CHANNELS[*channel];
                let frame = match (since, self.seen.get(name)) {
                    (true, Some(seen)) => {
                        json!({"type": "subscribe", "channel": name, "since": seen})
                    }
                    (true, None) => json!({"type": "subscribe", "channel": name, "since": 0}),
                    (false, _) => json!({"type": "subscribe", "channel": name}),
                };
                self.conn.handle_text(frame.to_string().as_bytes()).await;
            }
            Op::Unsubscribe { channel } => {
                let frame = json!({"type": "unsubscribe", "channel": CHANNELS[*channel]});
                self.conn.handle_text(frame.to_string().as_bytes()).await;
            }
            Op::Publish { channel, burst } => {
                for i in 0..*burst {
                    let frame =
                        json!({"type": "publish", "channel": CHANNELS[*channel], "payload": i});
                    self.conn.handle_text(frame.to_string().as_bytes()).await;
                }
            }
            Op::Reconnect => {
                self.drain();
                self.sessions.clear();
                self.conn = self.hub.connect(Identity::user(self.user.clone()));
            }
        }
        self.drain();
    }
}

fn run_case(scripts: Vec<Vec<Op>>) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let store = Arc::new(MemoryStore::new());
        let config = HubConfig {
            repair_delay: Duration::ZERO,
            ..HubConfig::default()
        };
        let hub = Hub::new(store.clone(), config);

        let tasks: Vec<_> = scripts
            .into_iter()
            .enumerate()
            .map(|(i, script)| {
                let hub = hub.clone();
                tokio::spawn(async move {
                    let mut actor = Actor::new(&hub, &format!("user{i}"));
                    for op in &script {
                        actor.run(op).await;
                        tokio::task::yield_now().await;
                    }
                    actor
                })
            })
            .collect();
        let mut actors = Vec::new();
        for task in tasks {
            actors.push(task.await.unwrap());
        }

        // Every open subscription must catch up to the channel's last seq (gap repair may
        // still be finishing in the background: wait for it, bounded).
        let mut latest = HashMap::new();
        let mut stored = HashMap::new();
        for name in CHANNELS {
            let channel = ChannelName::parse(name).unwrap();
            latest.insert(name, store.latest_seq(&channel).await.unwrap().0);
            let all = store
                .history(&channel, HistoryQuery::after(Seq::ZERO, 100_000))
                .await
                .unwrap();
            stored.insert(
                name,
                all.into_iter()
                    .map(|m| (m.seq.0, m.id))
                    .collect::<HashMap<_, _>>(),
            );
        }
        for actor in &mut actors {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                actor.drain();
                let behind = actor
                    .sessions
                    .iter()
                    .any(|(name, s)| s.next <= latest[name.as_str()]);
                if !behind {
                    break;
                }
                prop_assert!(
                    tokio::time::Instant::now() < deadline,
                    "{} never caught up",
                    actor.user
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            for (name, seq, id) in &actor.received {
                prop_assert_eq!(
                    stored[name.as_str()].get(seq),
                    Some(id),
                    "delivered what was stored"
                );
            }
        }

        drop(actors);
        prop_assert_eq!(hub.stats(), HubStats::default());
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn every_subscription_sees_a_gap_free_ordered_run(
        scripts in prop::collection::vec(prop::collection::vec(op(), 1..14), 2..5)
    ) {
        run_case(scripts)?;
    }
}
