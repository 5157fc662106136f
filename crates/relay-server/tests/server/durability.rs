//! Durability on Postgres: nothing acked is lost across `kill -9`, and a Postgres outage gives
//! `unavailable` errors, then service resumes by itself. Each test has its own database.
//! These run when `DATABASE_URL` is set at build time; otherwise they are listed as ignored.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use relay_proto::ChannelName;
use relay_proto::{Seq, ServerFrame};
use relay_store::testing::TestDatabase;
use relay_store::{HistoryQuery, PgStore, PgStoreOptions, Store};
use serde_json::json;

use crate::support::*;

const CHANNELS: [&str; 2] = ["orders:1", "orders:2"];

/// Publishes in a closed loop, recording every ack, until the connection dies.
async fn publish_until_killed(
    mut client: WsClient,
    publisher: usize,
) -> Vec<(String, u64, String)> {
    let mut acked = Vec::new();
    for n in 0.. {
        let channel = CHANNELS[n % CHANNELS.len()];
        let frame = json!({"type": "publish", "channel": channel, "payload": {"publisher": publisher, "n": n}});
        if client.ws_send(frame).await.is_err() {
            break;
        }
        match client.try_recv().await {
            Some(ServerFrame::Ack {
                channel,
                seq: Some(seq),
                message_id,
                ..
            }) => {
                acked.push((channel.as_str().to_owned(), seq.0, message_id.to_string()));
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => break,
        }
    }
    acked
}

#[tokio::test]
#[cfg_attr(not(pg_tests), ignore = "Postgres tests need DATABASE_URL")]
async fn every_acked_message_survives_kill_9_and_since_recovers_the_rest() {
    let db = TestDatabase::create().await;
    let server = ChildServer::spawn(&["--database-url", db.url()]);

    let mut watcher = server.connect("watcher").await;
    for channel in CHANNELS {
        watcher.subscribe(channel).await;
    }
    let mut publishers = Vec::new();
    for p in 0..4 {
        let client = server.connect(&format!("publisher{p}")).await;
        publishers.push(tokio::spawn(publish_until_killed(client, p)));
    }
    // Let the stream run until the watcher has seen a good number of messages, then kill.
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    while seen.values().sum::<u64>() < 300 {
        if let ServerFrame::Message {
            channel,
            seq: Some(seq),
            ..
        } = watcher.recv().await
        {
            let last = seen.entry(channel.as_str().to_owned()).or_default();
            assert_eq!(seq.0, *last + 1, "live delivery is gap-free");
            *last = seq.0;
        }
    }
    server.signal("-KILL");
    let mut acked = Vec::new();
    for p in publishers {
        acked.extend(p.await.unwrap());
    }
    assert!(
        acked.len() >= 300,
        "acks recorded before the kill: {}",
        acked.len()
    );
    drop(server);

    // Restart on the same database.
    let server = ChildServer::spawn(&["--database-url", db.url()]);
    let store = PgStore::connect(db.url()).await.unwrap();
    let mut latest = BTreeMap::new();
    for channel in CHANNELS {
        let name = ChannelName::parse(channel).unwrap();
        let history = store
            .history(&name, HistoryQuery::after(Seq::ZERO, 100_000))
            .await
            .unwrap();
        let seqs: Vec<u64> = history.iter().map(|m| m.seq.0).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "{channel}: seqs gap-free"
        );
        let by_seq: BTreeMap<u64, String> = history
            .iter()
            .map(|m| (m.seq.0, m.id.to_string()))
            .collect();
        for (c, seq, id) in acked.iter().filter(|(c, ..)| c == channel) {
            assert_eq!(
                by_seq.get(seq),
                Some(id),
                "acked {c} #{seq} is stored with its acked seq"
            );
        }
        latest.insert(channel.to_owned(), seqs.len() as u64);
    }

    // The watcher reconnects with `since` and gets exactly what it missed.
    let mut watcher = server.connect("watcher").await;
    for channel in CHANNELS {
        let since = seen.get(channel).copied().unwrap_or(0);
        let frame = watcher
            .request(json!({"type": "subscribe", "channel": channel, "since": since}))
            .await;
        assert!(
            matches!(
                frame,
                ServerFrame::Subscribed {
                    recovered: Some(true),
                    ..
                }
            ),
            "{frame:?}"
        );
        for expected in since + 1..=latest[channel] {
            let frame = watcher.recv().await;
            assert!(
                matches!(&frame, ServerFrame::Message { seq: Some(s), channel: c, .. } if s.0 == expected && c.as_str() == channel),
                "expected {channel} #{expected}, got {frame:?}"
            );
        }
    }
    watcher.expect_nothing_pending().await;
}

#[tokio::test]
#[cfg_attr(not(pg_tests), ignore = "Postgres tests need DATABASE_URL")]
async fn a_postgres_outage_gives_unavailable_then_service_resumes() {
    let db = TestDatabase::create().await;
    let options = PgStoreOptions {
        acquire_timeout: Duration::from_millis(300),
        ..PgStoreOptions::default()
    };
    let store: Arc<dyn Store> = Arc::new(db.store_with(options).await);
    let server = TestServer::start_with_store(store.clone(), |_| {}).await;
    let mut alice = server.connect("alice").await;
    let publish = json!({"type": "publish", "channel": "orders:1", "payload": {}});
    assert!(matches!(
        alice.request(publish.clone()).await,
        ServerFrame::Ack { .. }
    ));

    let mut admin = db.admin().await;
    let outage = [
        format!("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false", db.name()),
        format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
            db.name()
        ),
    ];
    for sql in &outage {
        sqlx::query(sql).execute(&mut admin).await.unwrap();
    }

    let frame = alice.request(publish.clone()).await;
    assert_eq!(error_code(&frame), Some("unavailable"), "{frame:?}");
    assert_eq!(
        reqwest::get(server.url("/readyz")).await.unwrap().status(),
        503
    );
    let (status, body) = server
        .http(&server.token("alice"))
        .get("/api/channels/orders:1/messages")
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("unavailable"))
    );

    let sql = format!("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true", db.name());
    sqlx::query(&sql).execute(&mut admin).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match alice.request(publish.clone()).await {
            ServerFrame::Ack { .. } => break,
            frame => assert_eq!(error_code(&frame), Some("unavailable"), "{frame:?}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "service did not resume"
        );
    }
    assert_eq!(
        reqwest::get(server.url("/readyz")).await.unwrap().status(),
        200
    );
    let name = ChannelName::parse("orders:1").unwrap();
    let history = store
        .history(&name, HistoryQuery::latest(100))
        .await
        .unwrap();
    let seqs: Vec<u64> = history.iter().map(|m| m.seq.0).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "no gap from the failed publishes"
    );
}

#[tokio::test]
#[cfg_attr(not(pg_tests), ignore = "Postgres tests need DATABASE_URL")]
async fn a_stuck_transaction_turns_into_unavailable_in_time_and_nobody_is_closed_for_silence() {
    use sqlx::Connection;
    let db = TestDatabase::create().await;
    let config = TestServer::config(|c| {
        c.database_timeout_ms = 500;
        c.heartbeat_ms = 150;
    });
    let store = db.store_with(config.store_options()).await;
    let hub = relay_core::Hub::new(std::sync::Arc::new(store), config.hub_config());
    let server = TestServer::start_with_hub(hub, config).await;
    let mut alice = server.connect("alice").await;
    alice.subscribe("room").await;
    let mut bob = server.connect("bob").await;
    let ack = bob
        .request(serde_json::json!({"type": "publish", "id": 0, "channel": "room", "payload": 0}))
        .await;
    assert!(matches!(ack, ServerFrame::Ack { .. }), "{ack:?}");
    assert!(matches!(alice.recv().await, ServerFrame::Message { .. }));
    // Alice keeps reading (and answering pings) in the background, as any live client does.
    let alice = tokio::spawn(async move {
        loop {
            if let ServerFrame::Message { seq: Some(seq), .. } = alice.recv().await {
                return seq.0;
            }
        }
    });

    // Another client of the database holds a lock on the messages table.
    let mut locker = sqlx::PgConnection::connect(db.url()).await.unwrap();
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .unwrap();

    let started = std::time::Instant::now();
    let publish = |id: u64| serde_json::json!({"type": "publish", "id": id, "channel": "room", "payload": id});
    bob.send(publish(1)).await;
    bob.send(publish(2)).await;
    bob.send(serde_json::json!({"type": "ping", "id": "still-there"}))
        .await;
    let mut unavailable = 0;
    let mut pong = false;
    while unavailable < 2 || !pong {
        match bob.recv().await {
            ServerFrame::Error { code, .. } => {
                assert_eq!(code, relay_proto::ErrorCode::Unavailable);
                unavailable += 1;
            }
            ServerFrame::Pong { .. } => pong = true,
            other => panic!("unexpected {other:?}"),
        }
    }
    let waited = started.elapsed();
    // Each publish gives up within the database timeout (500 ms), the second not held
    // behind the first for longer than that.
    assert!(
        waited < std::time::Duration::from_millis(2_000),
        "{waited:?}"
    );
    // More than two heartbeats passed while bob's publishes waited: his pongs were read
    // all along, so neither he nor alice was closed for silence.
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    let ack = bob.request(publish(3)).await;
    assert!(
        matches!(ack, ServerFrame::Ack { seq: Some(seq), .. } if seq.0 == 2),
        "full service after the lock, and the publishes that failed were not stored: {ack:?}"
    );
    assert_eq!(
        alice.await.unwrap(),
        2,
        "alice was not closed, and sees the next message"
    );
}
