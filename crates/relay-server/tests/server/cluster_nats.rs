//! What only the NATS backplane has: interest routing, a NATS restart mid-traffic, and a
//! cluster of in-memory stores for ephemeral-only traffic. Each test runs its own
//! `nats-server` on its own port (never the machine's shared one).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use relay_proto::ServerFrame;
use relay_server::testing::NatsServer;
use relay_server::{ClusterMode, NatsNode};
use relay_store::MemoryStore;
use serde_json::json;

use crate::cluster::{Backplane, Cluster, await_routed, collect_seqs};
use crate::support::*;

/// Polls `/readyz` (as a service, which is told why) until its status is `want`.
async fn await_readiness(server: &TestServer, want: &str) -> serde_json::Value {
    let http = server.http(&server.service_token("probe"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = http.get("/readyz").await;
        if body["status"] == want {
            assert_eq!(status, 200, "degraded or not, the node serves: {body}");
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz still says {body} after 15 s, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metrics(server: &TestServer) -> String {
    reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
#[cfg_attr(
    not(all(pg_tests, nats_tests)),
    ignore = "NATS cluster tests need DATABASE_URL and a nats-server binary"
)]
async fn a_nats_restart_mid_traffic_loses_and_duplicates_nothing() {
    let mut cluster = Cluster::new(Backplane::Nats).await;
    let (a, b) = (cluster.node("node-a").await, cluster.node("node-b").await);
    let mut reader = a.server.connect("reader").await;
    reader.subscribe("room:4").await;
    await_routed(&a, 1).await;
    // On the writer's own node: served throughout, NATS or not.
    let mut local = b.server.connect("local").await;
    local.subscribe("room:4").await;
    // A backend's connection: a user's publish rate limit would slow the test down.
    let mut writer = WsClient::connect(&b.server.ws_url(&b.server.service_token("writer"))).await;
    assert!(matches!(writer.recv().await, ServerFrame::Welcome { .. }));
    let acked = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writing = tokio::spawn({
        let (acked, stop) = (acked.clone(), stop.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                let ack = writer
                    .request(json!({"type": "publish", "channel": "room:4", "payload": "x"}))
                    .await;
                assert!(
                    matches!(ack, ServerFrame::Ack { seq: Some(_), .. }),
                    "commits go on without NATS: {ack:?}"
                );
                acked.fetch_add(1, Ordering::Relaxed);
            }
            writer
        }
    });
    // Waits (bounded) until the writer has `n` more acks than now.
    let more_acks = |n: usize| {
        let acked = acked.clone();
        async move {
            let target = acked.load(Ordering::Relaxed) + n;
            tokio::time::timeout(Duration::from_secs(20), async {
                while acked.load(Ordering::Relaxed) < target {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .expect("the writer goes on");
        }
    };
    more_acks(50).await;
    let nats = cluster.nats.as_mut().unwrap();
    nats.stop();
    let body = await_readiness(&a.server, "degraded").await;
    assert!(body["reason"].as_str().unwrap().contains("NATS"), "{body}");
    await_readiness(&b.server, "degraded").await;
    assert!(
        metrics(&a.server)
            .await
            .contains("relay_cluster_degraded 1")
    );
    more_acks(50).await;
    // Local delivery went on during the outage: node B's subscriber has every message
    // acked so far (one writer: its n-th ack is seq n), while NATS is still down.
    let during = acked.load(Ordering::Relaxed) as u64;
    let mut seen = 0;
    while seen < during {
        match tokio::time::timeout(Duration::from_secs(10), local.recv())
            .await
            .expect("local delivery goes on without NATS")
        {
            ServerFrame::Message { seq: Some(seq), .. } => {
                assert_eq!(seq.0, seen + 1, "in order, none missing");
                seen = seq.0;
            }
            ServerFrame::Join { .. } | ServerFrame::Leave { .. } => {}
            frame => panic!("{frame:?}"),
        }
    }
    nats.start_again();
    await_readiness(&a.server, "ready").await;
    await_readiness(&b.server, "ready").await;
    more_acks(50).await;
    stop.store(true, Ordering::Relaxed);
    let mut writer = writing.await.unwrap();
    let total = acked.load(Ordering::Relaxed);

    let seqs = collect_seqs(&mut reader, total).await;
    assert_eq!(
        seqs,
        (1..=total as u64).collect::<Vec<_>>(),
        "every commit once, in order, across the outage"
    );
    reader.expect_nothing_pending().await;
    // Live traffic flows again.
    writer
        .send(json!({"type": "publish", "channel": "room:4", "event": "typing", "ephemeral": true, "payload": {}}))
        .await;
    let frame = loop {
        match reader.recv().await {
            ServerFrame::Join { .. } | ServerFrame::Leave { .. } => {}
            frame => break frame,
        }
    };
    assert!(
        matches!(&frame, ServerFrame::Message { seq: None, event: Some(e), .. } if e == "typing"),
        "{frame:?}"
    );
    assert!(
        metrics(&a.server)
            .await
            .contains("relay_cluster_degraded 0")
    );
}

#[tokio::test]
#[cfg_attr(
    not(all(pg_tests, nats_tests)),
    ignore = "NATS cluster tests need DATABASE_URL and a nats-server binary"
)]
async fn a_node_receives_only_the_channels_it_serves() {
    let cluster = Cluster::new(Backplane::Nats).await;
    let (a, b, c) = (
        cluster.node("node-a").await,
        cluster.node("node-b").await,
        cluster.node("node-c").await,
    );
    let mut reader = a.server.connect("reader").await;
    reader.subscribe("feed:1").await;
    let mut other = c.server.connect("other").await;
    other.subscribe("feed:2").await;
    await_routed(&a, 1).await;
    await_routed(&c, 1).await;
    let mut writer = b.server.connect("writer").await;
    const N: usize = 20;
    for k in 0..N {
        writer
            .request(json!({"type": "publish", "channel": "feed:1", "payload": k}))
            .await;
        writer
            .request(
                json!({"type": "publish", "channel": "feed:1", "ephemeral": true, "payload": k}),
            )
            .await;
    }
    let mut received = 0;
    while received < 2 * N {
        match tokio::time::timeout(Duration::from_secs(10), reader.recv())
            .await
            .expect("all of feed:1 within 10 s")
        {
            ServerFrame::Message { .. } => received += 1,
            frame => panic!("{frame:?}"),
        }
    }
    assert_eq!(a.server.hub.counters().cluster_received, 2 * N as u64);
    assert_eq!(
        c.server.hub.counters().cluster_received,
        0,
        "node C serves only feed:2: none of feed:1 reached it"
    );
    assert_eq!(b.server.hub.counters().cluster_received, 0);

    // C starts serving feed:1: its traffic follows, and stops again once C's last
    // subscriber there leaves.
    other.subscribe("feed:1").await;
    await_routed(&c, 2).await;
    writer
        .request(json!({"type": "publish", "channel": "feed:1", "payload": "late"}))
        .await;
    let frame = other.recv().await;
    assert!(
        matches!(frame, ServerFrame::Message { seq: Some(seq), .. } if seq.0 == N as u64 + 1),
        "{frame:?}"
    );
    assert_eq!(c.server.hub.counters().cluster_received, 1);
    other
        .request(json!({"type": "unsubscribe", "id": 9, "channel": "feed:1"}))
        .await;
    await_routed(&c, 1).await;
    writer
        .request(json!({"type": "publish", "channel": "feed:1", "payload": "after"}))
        .await;
    let mut last = 0;
    while last < N as u64 + 2 {
        if let ServerFrame::Message { seq: Some(seq), .. } = reader.recv().await {
            last = seq.0;
        }
    }
    assert_eq!(
        c.server.hub.counters().cluster_received,
        1,
        "unsubscribed: nothing more for C"
    );
    let text = metrics(&c.server).await;
    assert!(text.contains("relay_cluster_routed_channels 1"), "{text}");
    assert!(text.contains("relay_cluster_events_total 1\n"), "{text}");
}

#[tokio::test]
#[cfg_attr(not(nats_tests), ignore = "NATS tests need a nats-server binary")]
async fn an_ephemeral_only_cluster_runs_on_memory_stores() {
    let nats = NatsServer::start();
    let mut nodes = Vec::new();
    for id in ["node-a", "node-b"] {
        let config = TestServer::config(|config| {
            config.cluster = ClusterMode::Nats;
            config.nats.url = nats.url();
            config.node_id = Some(id.to_owned());
            config.default_policy = relay_server::Config::from_toml(
                "[default_policy]\npersistence = \"ephemeral\"\npresence = true\n",
            )
            .unwrap()
            .default_policy;
        });
        config.validate().unwrap();
        let (hub, node) = NatsNode::join(
            Arc::new(MemoryStore::new()),
            config.hub_config(),
            id,
            config.node_ttl(),
            &config.nats,
        )
        .await
        .unwrap();
        nodes.push((TestServer::start_with_hub(hub, config).await, node));
    }
    let mut alice = nodes[0].0.connect("alice").await;
    alice.subscribe("cursors:1").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while nodes[0].0.hub.backplane_status().unwrap().routed_channels != Some(1) {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut bob = nodes[1].0.connect("bob").await;
    let ack = bob
        .request(json!({"type": "publish", "channel": "cursors:1", "payload": {"x": 1}}))
        .await;
    assert!(matches!(ack, ServerFrame::Ack { seq: None, .. }), "{ack:?}");
    let frame = loop {
        match alice.recv().await {
            ServerFrame::Join { .. } | ServerFrame::Leave { .. } => {}
            frame => break frame,
        }
    };
    assert!(
        matches!(&frame, ServerFrame::Message { seq: None, from: Some(u), .. } if u.as_str() == "bob"),
        "{frame:?}"
    );
}

#[test]
fn nats_with_the_memory_store_needs_every_namespace_ephemeral_only() {
    let mut config = relay_server::Config {
        cluster: ClusterMode::Nats,
        ..relay_server::Config::default()
    };
    let error = config.validate().unwrap_err().to_string();
    assert!(
        error.contains("--database-url") && error.contains("ephemeral"),
        "{error}"
    );
    config.default_policy = relay_server::Config::from_toml(
        "[default_policy]\npersistence = \"ephemeral\"\n[namespaces.chat]\npresence = true\n",
    )
    .unwrap()
    .default_policy;
    config.namespaces =
        relay_server::Config::from_toml("[namespaces.chat]\npersistence = \"mixed\"\n")
            .unwrap()
            .namespaces;
    assert!(
        config.validate().is_err(),
        "one persistent namespace is enough to refuse"
    );
    config.namespaces.clear();
    config.validate().unwrap();
    config.nats.subject_prefix = "bad prefix".into();
    assert!(config.validate().is_err());
}

#[tokio::test]
#[cfg_attr(
    not(all(pg_tests, nats_tests)),
    ignore = "NATS cluster tests need DATABASE_URL and a nats-server binary"
)]
async fn a_member_removed_while_nats_is_down_loses_access_everywhere_once_it_is_back() {
    let mut cluster = Cluster::new(Backplane::Nats).await;
    let (a, b) = (cluster.node("node-a").await, cluster.node("node-b").await);
    let alice = a.server.http(&a.server.token("alice"));
    let (status, body) = alice
        .post(
            "/api/channels",
            json!({"name": "group:7", "members": ["bob"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let mut bob = b.server.connect("bob").await;
    assert!(matches!(
        bob.subscribe("group:7").await,
        ServerFrame::Subscribed { .. }
    ));
    let nats = cluster.nats.as_mut().unwrap();
    nats.stop();
    await_readiness(&a.server, "degraded").await;
    // Committed while no node can hear it: kept, and sent once NATS is back.
    let (status, body) = alice.delete("/api/channels/group:7/members/bob").await;
    assert_eq!(status, 200, "{body}");
    nats.start_again();
    let frame = tokio::time::timeout(Duration::from_secs(15), bob.recv())
        .await
        .expect("the eviction reaches node B once NATS is back");
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
}
