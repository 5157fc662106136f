//! Several nodes in process, each a real server with its own hub, learning of each other
//! only through the backplane. The cross-node suite is written once and runs on both
//! backplanes, the way the store conformance suite runs on both stores:
//! `cluster::postgres::*` (`LISTEN`/`NOTIFY`) and `cluster::nats::*` (a `nats-server` of the
//! test's own, with Postgres as the store). Each test has its own fresh database. These run
//! when `DATABASE_URL` is set at build time (and, for NATS, a `nats-server` binary is found);
//! otherwise they are listed as ignored.

use std::time::Duration;

use relay_core::Publish;
use relay_proto::{ChannelName, Payload, ReceiptStatus, ServerFrame};
use relay_server::testing::NatsServer;
use relay_server::{ClusterError, ClusterMode, ClusterNode, NatsNode};
use relay_store::PgStoreOptions;
use relay_store::testing::TestDatabase;
use serde_json::json;

use crate::support::*;

/// How the nodes of a test's cluster reach each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backplane {
    Postgres,
    Nats,
}

/// A fresh database, and for NATS a server of the test's own.
pub struct Cluster {
    pub db: TestDatabase,
    pub nats: Option<NatsServer>,
    backplane: Backplane,
}

/// A node: a real server over a cluster member's hub.
pub struct Node {
    pub server: TestServer,
    /// The cluster membership (a `ClusterNode` or a `NatsNode`): dropped with the node.
    _member: Box<dyn std::any::Any + Send>,
}

const NAMESPACES: &str = "[namespaces.room]\npresence = true\njoin_leave = true\n\
     [namespaces.group]\nsubscribe = \"members\"\ncreate = \"any\"\n";

impl Cluster {
    pub async fn new(backplane: Backplane) -> Self {
        Self {
            db: TestDatabase::create().await,
            nats: (backplane == Backplane::Nats).then(NatsServer::start),
            backplane,
        }
    }

    pub async fn node(&self, id: &str) -> Node {
        self.node_with(id, NAMESPACES).await
    }

    pub async fn node_with(&self, id: &str, namespaces: &str) -> Node {
        let nats_url = self.nats.as_ref().map(NatsServer::url);
        let backplane = self.backplane;
        let config = TestServer::config(|config| {
            config.database_url = Some(self.db.url().to_owned());
            config.node_id = Some(id.to_owned());
            config.namespaces = relay_server::Config::from_toml(namespaces)
                .unwrap()
                .namespaces;
            match backplane {
                Backplane::Postgres => config.cluster = ClusterMode::Postgres,
                Backplane::Nats => {
                    config.cluster = ClusterMode::Nats;
                    config.nats.url = nats_url.clone().unwrap();
                }
            }
        });
        let (hub, member): (_, Box<dyn std::any::Any + Send>) = match self.backplane {
            Backplane::Postgres => {
                let store = self
                    .db
                    .store_with(PgStoreOptions {
                        cluster_node: Some(id.to_owned()),
                        ..PgStoreOptions::default()
                    })
                    .await;
                let (hub, node) =
                    ClusterNode::join(store, config.hub_config(), id, config.node_ttl())
                        .await
                        .unwrap();
                (hub, Box::new(node))
            }
            Backplane::Nats => {
                let store = std::sync::Arc::new(self.db.store().await);
                let (hub, node) = NatsNode::join(
                    store,
                    config.hub_config(),
                    id,
                    config.node_ttl(),
                    &config.nats,
                )
                .await
                .unwrap();
                (hub, Box::new(node))
            }
        };
        let server = TestServer::start_with_hub(hub, config).await;
        Node {
            server,
            _member: member,
        }
    }

    /// Waits until `nodes` nodes follow the cluster (on Postgres: are listening).
    pub async fn settle(&self, nodes: i64) {
        if self.backplane == Backplane::Postgres {
            wait_for_listeners(&self.db, nodes).await;
        }
    }
}

/// Waits until `node` receives the traffic of `channels` channels (NATS interest routing:
/// its subscriptions are confirmed by the server); nothing to wait for on Postgres.
pub async fn await_routed(node: &Node, channels: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let routed = node
            .server
            .hub
            .backplane_status()
            .and_then(|s| s.routed_channels);
        if routed.is_none_or(|n| n == channels) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "routed {routed:?} channels, not {channels}, within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs each named suite function on both backplanes: `postgres::name` and `nats::name`,
/// each calling `super::name(Backplane::…)` (the calling module imports `Backplane`).
macro_rules! on_both_backplanes {
    ($($test:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test]
                #[cfg_attr(not(pg_tests), ignore = "Postgres tests need DATABASE_URL")]
                async fn $test() {
                    super::$test(super::Backplane::Postgres).await;
                }
            )*
        }
        mod nats {
            $(
                #[tokio::test]
                #[cfg_attr(
                    not(all(pg_tests, nats_tests)),
                    ignore = "NATS cluster tests need DATABASE_URL and a nats-server binary"
                )]
                async fn $test() {
                    super::$test(super::Backplane::Nats).await;
                }
            )*
        }
    };
}
pub(crate) use on_both_backplanes;

on_both_backplanes!(
    persistent_messages_reach_subscribers_on_every_node_once_in_order,
    typing_and_signals_cross_nodes,
    a_member_removed_on_one_node_loses_its_subscriptions_on_every_node,
    a_database_restart_during_cluster_traffic_loses_and_duplicates_nothing,
    read_markers_reach_the_user_s_devices_on_every_node,
    signal_receipts_and_held_signals_cross_nodes,
);

/// The next receipt's status, skipping anything else, within 10 s.
async fn next_receipt(client: &mut WsClient) -> (relay_proto::MessageId, ReceiptStatus) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let ServerFrame::Receipt { signal, status, .. } = client.recv().await {
                return (signal, status);
            }
        }
    })
    .await
    .expect("a receipt within 10 s")
}

/// The next signal's server id, skipping anything else, within 10 s.
async fn next_signal(client: &mut WsClient) -> Option<relay_proto::MessageId> {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let ServerFrame::Signal { signal, .. } = client.recv().await {
                return signal;
            }
        }
    })
    .await
    .expect("a signal within 10 s")
}

/// `call` has presence off: a held signal reaches a target that subscribes on another node
/// by the periodic offer, not by presence.
async fn signal_receipts_and_held_signals_cross_nodes(backplane: Backplane) {
    let cluster = Cluster::new(backplane).await;
    let (a, b) = (cluster.node("node-a").await, cluster.node("node-b").await);
    cluster.settle(2).await;
    let mut alice = a.server.connect("alice").await;
    let mut bob = b.server.connect("bob").await;
    alice.subscribe("call:3").await;
    bob.subscribe("call:3").await;
    await_routed(&a, 1).await;
    await_routed(&b, 1).await;

    // Bob is on the other node: held here, delivered there, and the receipt comes back.
    alice
        .send(json!({"type": "signal", "id": 1, "channel": "call:3", "to": "bob", "payload": {"sdp": "v=0"}, "receipt": true}))
        .await;
    let (id, status) = next_receipt(&mut alice).await;
    assert_eq!(status, ReceiptStatus::Held);
    assert_eq!(next_signal(&mut bob).await, Some(id));
    assert_eq!(
        next_receipt(&mut alice).await,
        (id, ReceiptStatus::Delivered)
    );

    // Carol is nowhere yet: held until she subscribes on node B.
    alice
        .send(json!({"type": "signal", "id": 2, "channel": "call:3", "to": "carol", "payload": 1, "receipt": true, "ttl_ms": 30_000}))
        .await;
    let (held, status) = next_receipt(&mut alice).await;
    assert_eq!(status, ReceiptStatus::Held);
    let mut carol = b.server.connect("carol").await;
    carol.subscribe("call:3").await;
    assert_eq!(next_signal(&mut carol).await, Some(held));
    assert_eq!(
        next_receipt(&mut alice).await,
        (held, ReceiptStatus::Delivered)
    );

    // Dave never comes: expired once its time is up, and only then.
    alice
        .send(json!({"type": "signal", "id": 3, "channel": "call:3", "to": "dave", "payload": 1, "receipt": true, "ttl_ms": 300}))
        .await;
    let (gone, status) = next_receipt(&mut alice).await;
    assert_eq!(status, ReceiptStatus::Held);
    assert_eq!(
        next_receipt(&mut alice).await,
        (gone, ReceiptStatus::Expired)
    );
    assert_eq!(a.server.hub.stats().held_signals, 0);
}

async fn read_markers_reach_the_user_s_devices_on_every_node(backplane: Backplane) {
    let cluster = Cluster::new(backplane).await;
    let (a, b) = (cluster.node("node-a").await, cluster.node("node-b").await);
    cluster.settle(2).await;
    let mut phone = a.server.connect("alice").await;
    let mut laptop = b.server.connect("alice").await;
    phone.subscribe("feed:9").await;
    laptop.subscribe("feed:9").await;
    await_routed(&b, 1).await;
    let mut bob = a.server.connect("bob").await;
    for n in 0..3 {
        let ack = bob
            .request(json!({"type": "publish", "channel": "feed:9", "payload": n}))
            .await;
        assert!(matches!(ack, ServerFrame::Ack { .. }), "{ack:?}");
    }
    phone
        .send(json!({"type": "read", "id": 50, "channel": "feed:9", "seq": 3}))
        .await;
    loop {
        match phone.recv().await {
            ServerFrame::Message { .. } => {}
            ServerFrame::Read { seq, .. } => {
                assert_eq!(seq.0, 3);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    let synced = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match laptop.recv().await {
                ServerFrame::Read { id: None, seq, .. } => return seq.0,
                ServerFrame::Message { .. } => {}
                other => panic!("{other:?}"),
            }
        }
    })
    .await
    .expect("the marker reaches the other node within 10 s");
    assert_eq!(synced, 3);
}

struct PgNode {
    server: TestServer,
    _node: ClusterNode,
}

/// A Postgres node, for the tests of what only that backplane has.
async fn node(db: &TestDatabase, id: &str) -> PgNode {
    let config = TestServer::config(|config| {
        config.cluster = ClusterMode::Postgres;
        config.database_url = Some(db.url().to_owned());
        config.node_id = Some(id.to_owned());
        config.namespaces = relay_server::Config::from_toml(NAMESPACES)
            .unwrap()
            .namespaces;
    });
    let store = db
        .store_with(PgStoreOptions {
            cluster_node: Some(id.to_owned()),
            ..PgStoreOptions::default()
        })
        .await;
    let (hub, node) = ClusterNode::join(store, config.hub_config(), id, config.node_ttl())
        .await
        .unwrap();
    let server = TestServer::start_with_hub(hub, config).await;
    PgNode {
        server,
        _node: node,
    }
}

async fn listeners(db: &TestDatabase) -> i64 {
    let mut admin = db.admin().await;
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN%'",
    )
    .bind(db.name())
    .fetch_one(&mut admin)
    .await
    .unwrap();
    n
}

async fn wait_for_listeners(db: &TestDatabase, at_least: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while listeners(db).await < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no LISTEN within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads frames until `count` messages arrived; returns their seqs in arrival order.
pub async fn collect_seqs(client: &mut WsClient, count: usize) -> Vec<u64> {
    let mut seqs = Vec::with_capacity(count);
    tokio::time::timeout(Duration::from_secs(30), async {
        while seqs.len() < count {
            if let ServerFrame::Message { seq: Some(seq), .. } = client.recv().await {
                seqs.push(seq.0);
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {count} messages within 30 s", seqs.len()));
    seqs
}

async fn persistent_messages_reach_subscribers_on_every_node_once_in_order(backplane: Backplane) {
    let cluster = Cluster::new(backplane).await;
    let nodes = [
        cluster.node("node-a").await,
        cluster.node("node-b").await,
        cluster.node("node-c").await,
    ];
    cluster.settle(3).await;
    let mut subscribers = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        for j in 0..2 {
            let mut client = n.server.connect(&format!("reader{i}{j}")).await;
            assert!(matches!(
                client.subscribe("feed:1").await,
                ServerFrame::Subscribed { .. }
            ));
            subscribers.push(client);
        }
    }
    const PER_PATH: usize = 20;
    // Publishers on every node, over every path: WebSocket, REST, `/api/publish`, embedded.
    let mut publishers = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let mut client = n.server.connect(&format!("writer{i}")).await;
        publishers.push(tokio::spawn(async move {
            for k in 0..PER_PATH {
                let ack = client
                    .request(json!({"type": "publish", "channel": "feed:1", "payload": {"ws": k}}))
                    .await;
                assert!(matches!(ack, ServerFrame::Ack { .. }), "{ack:?}");
            }
        }));
    }
    let rest = nodes[1].server.http(&nodes[1].server.token("rest-writer"));
    let service = nodes[2]
        .server
        .http(&nodes[2].server.service_token("backend"));
    for k in 0..PER_PATH {
        let (status, body) = rest
            .post(
                "/api/channels/feed:1/messages",
                json!({"payload": {"rest": k}}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = service
            .post(
                "/api/publish",
                json!({"channel": "feed:1", "payload": {"svc": k}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let payload = Payload::from_json(&format!(r#"{{"embedded":{k}}}"#)).unwrap();
        let channel = ChannelName::parse("feed:1").unwrap();
        nodes[0]
            .server
            .hub
            .publish(Publish::new(channel, payload))
            .await
            .unwrap();
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let total = PER_PATH * 6;
    let expected: Vec<u64> = (1..=total as u64).collect();
    for (i, subscriber) in subscribers.iter_mut().enumerate() {
        let seqs = collect_seqs(subscriber, total).await;
        assert_eq!(seqs, expected, "subscriber {i}");
        subscriber.expect_nothing_pending().await;
    }
}

async fn typing_and_signals_cross_nodes(backplane: Backplane) {
    let cluster = Cluster::new(backplane).await;
    let (a, b) = (cluster.node("node-a").await, cluster.node("node-b").await);
    cluster.settle(2).await;
    let mut alice = a.server.connect("alice").await;
    let mut bob = b.server.connect("bob").await;
    alice.subscribe("room:2").await;
    bob.subscribe("room:2").await;
    await_routed(&a, 1).await;

    bob.send(json!({"type": "publish", "id": 1, "channel": "room:2", "event": "typing", "ephemeral": true, "payload": {}}))
        .await;
    let ack = recv_skipping_presence(&mut bob).await;
    assert!(matches!(ack, ServerFrame::Ack { seq: None, .. }), "{ack:?}");
    let frame = recv_skipping_presence(&mut alice).await;
    assert!(
        matches!(&frame, ServerFrame::Message { seq: None, event: Some(e), .. } if e == "typing"),
        "{frame:?}"
    );

    bob.send(json!({"type": "signal", "channel": "room:2", "to": "alice", "event": "offer", "payload": {"sdp": "v=0"}}))
        .await;
    let frame = recv_skipping_presence(&mut alice).await;
    assert!(
        matches!(&frame, ServerFrame::Signal { from, event: Some(e), .. } if from.as_str() == "bob" && e == "offer"),
        "{frame:?}"
    );
}

/// Presence crosses nodes too (its own tests are in `cluster_binaries`); these tests look
/// only at messages, whose order relative to join/leave is not defined across nodes.
async fn recv_skipping_presence(client: &mut WsClient) -> ServerFrame {
    loop {
        match client.recv().await {
            ServerFrame::Join { .. } | ServerFrame::Leave { .. } => {}
            frame => return frame,
        }
    }
}

#[tokio::test]
#[cfg_attr(not(pg_tests), ignore = "Postgres tests need DATABASE_URL")]
async fn an_ephemeral_payload_too_large_for_notify_is_refused() {
    let db = TestDatabase::create().await;
    let a = node(&db, "node-a").await;
    let mut alice = a.server.connect("alice").await;
    let big = "x".repeat(9000);
    let frame = alice
        .request(json!({"type": "publish", "id": 7, "channel": "room:3", "ephemeral": true, "payload": {"big": big}}))
        .await;
    assert_eq!(error_code(&frame), Some("too_large"), "{frame:?}");
    let frame = alice
        .request(json!({"type": "publish", "id": 8, "channel": "room:3", "payload": {"big": big}}))
        .await;
    assert!(
        matches!(frame, ServerFrame::Ack { seq: Some(_), .. }),
        "persistent messages travel as pointers, whatever their size: {frame:?}"
    );
}

#[tokio::test]
#[cfg_attr(not(pg_tests), ignore = "Postgres tests need DATABASE_URL")]
async fn a_dropped_listener_loses_nothing_and_catches_up_by_itself() {
    let db = TestDatabase::create().await;
    let (a, b) = (node(&db, "node-a").await, node(&db, "node-b").await);
    wait_for_listeners(&db, 2).await;
    let mut reader = a.server.connect("reader").await;
    reader.subscribe("room:4").await;
    let mut writer = b.server.connect("writer").await;
    const TOTAL: usize = 200;
    let writing = tokio::spawn(async move {
        for k in 0..TOTAL {
            let ack = writer
                .request(json!({"type": "publish", "channel": "room:4", "payload": k}))
                .await;
            assert!(matches!(ack, ServerFrame::Ack { .. }), "{ack:?}");
        }
    });
    // Terminate every LISTEN connection mid-stream, twice.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let mut admin = db.admin().await;
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND query LIKE 'LISTEN%'",
        )
        .bind(db.name())
        .execute(&mut admin)
        .await
        .unwrap();
    }
    writing.await.unwrap();
    let seqs = collect_seqs(&mut reader, TOTAL).await;
    assert_eq!(seqs, (1..=TOTAL as u64).collect::<Vec<_>>());
    reader.expect_nothing_pending().await;
}

#[tokio::test]
#[cfg_attr(not(pg_tests), ignore = "Postgres tests need DATABASE_URL")]
async fn a_second_live_node_with_the_same_id_is_refused() {
    let db = TestDatabase::create().await;
    let _a = node(&db, "node-a").await;
    let config = TestServer::config(|_| {});
    let refused = ClusterNode::join(
        db.store().await,
        config.hub_config(),
        "node-a",
        Duration::from_secs(30),
    )
    .await;
    assert!(
        matches!(refused, Err(ClusterError::DuplicateNodeId(ref id)) if id == "node-a"),
        "{:?}",
        refused.err()
    );
    let other = ClusterNode::join(
        db.store().await,
        config.hub_config(),
        "node-b",
        Duration::from_secs(30),
    )
    .await;
    assert!(other.is_ok());
}

#[test]
fn cluster_mode_without_a_database_is_a_configuration_error() {
    let config = relay_server::Config {
        cluster: ClusterMode::Postgres,
        ..relay_server::Config::default()
    };
    let error = config.validate().unwrap_err().to_string();
    assert!(error.contains("needs a database"), "{error}");
}

async fn a_member_removed_on_one_node_loses_its_subscriptions_on_every_node(backplane: Backplane) {
    let cluster = Cluster::new(backplane).await;
    let (a, b) = (cluster.node("node-a").await, cluster.node("node-b").await);
    cluster.settle(2).await;
    let alice = a.server.http(&a.server.token("alice"));
    let (status, body) = alice
        .post(
            "/api/channels",
            json!({"name": "group:1", "members": ["bob"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let mut bob = b.server.connect("bob").await;
    assert!(matches!(
        bob.subscribe("group:1").await,
        ServerFrame::Subscribed { .. }
    ));
    await_routed(&b, 1).await;
    let (status, body) = alice.delete("/api/channels/group:1/members/bob").await;
    assert_eq!(status, 200, "{body}");
    let frame = tokio::time::timeout(Duration::from_secs(10), bob.recv())
        .await
        .expect("the eviction crosses nodes within 10 s");
    assert!(
        matches!(
            &frame,
            ServerFrame::Unsubscribed {
                id: None,
                reason: Some(_),
                ..
            }
        ),
        "{frame:?}"
    );
    let mut carol = a.server.connect("carol").await;
    let frame = carol
        .request(json!({"type": "publish", "channel": "group:1", "payload": 1}))
        .await;
    assert_eq!(error_code(&frame), Some("forbidden"));
    bob.expect_nothing_pending().await;
}

/// Publishes `attempts` times, going on through `unavailable`; returns the acked seqs and
/// how many publishes were refused.
async fn publish_through_outage(
    mut client: WsClient,
    attempts: usize,
    acked_some: std::sync::Arc<tokio::sync::Notify>,
) -> (Vec<u64>, usize) {
    let mut acked = Vec::new();
    let mut refused = 0;
    for n in 0..attempts {
        match client
            .request(json!({"type": "publish", "channel": "room:6", "payload": n}))
            .await
        {
            ServerFrame::Ack { seq: Some(seq), .. } => acked.push(seq.0),
            frame => {
                assert_eq!(error_code(&frame), Some("unavailable"), "{frame:?}");
                refused += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if acked.len() == 20 {
            acked_some.notify_one();
        }
    }
    (acked, refused)
}

async fn a_database_restart_during_cluster_traffic_loses_and_duplicates_nothing(
    backplane: Backplane,
) {
    let cluster = Cluster::new(backplane).await;
    let db = &cluster.db;
    let (a, b) = (cluster.node("node-a").await, cluster.node("node-b").await);
    cluster.settle(2).await;
    let mut readers = Vec::new();
    for n in [&a, &b] {
        let mut reader = n.server.connect("reader").await;
        reader.subscribe("room:6").await;
        readers.push(reader);
    }
    let acked_some = std::sync::Arc::new(tokio::sync::Notify::new());
    let writers: Vec<_> = [&a, &b]
        .into_iter()
        .map(|n| n.server.connect("writer"))
        .collect();
    let mut tasks = Vec::new();
    for writer in writers {
        tasks.push(tokio::spawn(publish_through_outage(
            writer.await,
            150,
            acked_some.clone(),
        )));
    }
    // Mid-traffic, the database goes away as in a restart: every backend of it terminated,
    // new connections refused for a moment.
    acked_some.notified().await;
    let mut admin = db.admin().await;
    let name = db.name();
    for sql in [
        format!("ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false"),
        format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"),
    ] {
        sqlx::query(&sql).execute(&mut admin).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query(&format!(
        "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true"
    ))
    .execute(&mut admin)
    .await
    .unwrap();

    let mut acked = Vec::new();
    let mut refused = 0;
    for task in tasks {
        let (seqs, refusals) = task.await.unwrap();
        acked.extend(seqs);
        refused += refusals;
    }
    assert!(
        refused > 0,
        "the restart was felt: publishes were refused meanwhile"
    );
    let store = db.store().await;
    let latest = relay_store::Store::latest_seq(&store, &ChannelName::parse("room:6").unwrap())
        .await
        .unwrap()
        .0;
    acked.sort_unstable();
    let before = acked.len();
    acked.dedup();
    assert_eq!(acked.len(), before, "no seq acked twice");
    assert!(acked.last().is_some_and(|last| *last <= latest));
    assert!(
        acked.len() > 40,
        "service resumed after the restart: {} acks",
        acked.len()
    );
    let expected: Vec<u64> = (1..=latest).collect();
    for (i, reader) in readers.iter_mut().enumerate() {
        assert_eq!(
            collect_seqs(reader, latest as usize).await,
            expected,
            "reader on node {i}: every committed message once, in order"
        );
        reader.expect_nothing_pending().await;
    }
}
