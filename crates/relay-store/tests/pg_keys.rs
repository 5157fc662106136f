//! Idempotency keys on Postgres, beyond the conformance suite: they hold across nodes (two
//! stores on one database), across a restart of the store, expire after the window and are
//! pruned.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use relay_proto::{ChannelName, IdempotencyKey, Payload, Seq, UserId};
use relay_store::testing::TestDatabase;
use relay_store::{Appended, NewMessage, PgStore, PgStoreOptions, Store};

fn keyed(channel: &ChannelName, key: &str, n: u64) -> NewMessage {
    NewMessage {
        from: Some(UserId::parse("alice").unwrap()),
        ..NewMessage::new(channel.clone(), Payload::from_json(&n.to_string()).unwrap())
            .keyed(IdempotencyKey::parse(key).unwrap())
    }
}

async fn key_rows(store: &PgStore) -> i64 {
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM publish_keys")
        .fetch_one(store.pool())
        .await
        .unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(pg_tests), ignore = "Postgres tests need DATABASE_URL")]
async fn two_nodes_racing_the_same_keys_store_each_once() {
    let db = TestDatabase::create().await;
    let (a, b) = (Arc::new(db.store().await), Arc::new(db.store().await));
    let nodes: Vec<Arc<dyn Store>> = vec![a.clone(), b];
    let channel = ChannelName::parse("race:keys").unwrap();
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let (store, channel) = (nodes[t as usize % 2].clone(), channel.clone());
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for k in 0..20u64 {
                // Other traffic on the channel interleaves with the retries.
                store
                    .append(NewMessage::new(
                        channel.clone(),
                        Payload::from_json("0").unwrap(),
                    ))
                    .await
                    .unwrap();
                let appended = store
                    .append(keyed(&channel, &format!("k{k}"), t))
                    .await
                    .unwrap();
                got.push((k, appended.seq(), appended.id()));
            }
            got
        }));
    }
    let mut first = std::collections::BTreeMap::new();
    for task in tasks {
        for (k, seq, id) in task.await.unwrap() {
            assert_eq!(*first.entry(k).or_insert((seq, id)), (seq, id), "key k{k}");
        }
    }
    // 160 unkeyed appends plus 20 keys, gap-free.
    let store = &nodes[0];
    assert_eq!(store.count(&channel).await.unwrap(), 180);
    assert_eq!(store.latest_seq(&channel).await.unwrap(), Seq(180));
    assert_eq!(key_rows(&a).await, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(pg_tests), ignore = "Postgres tests need DATABASE_URL")]
async fn keys_survive_a_restart_and_expire_after_the_window() {
    let db = TestDatabase::create().await;
    let channel = ChannelName::parse("restart:keys").unwrap();
    let first = {
        let store = db.store().await;
        store.append(keyed(&channel, "k", 1)).await.unwrap()
    };
    let store = db.store().await;
    let again = store.append(keyed(&channel, "k", 2)).await.unwrap();
    assert_eq!(again.seq(), first.seq());
    assert!(
        again.is_repeat(),
        "a new store on the same database knows the key"
    );

    // Age the key past the window: a retry now is a new message, and its row is replaced.
    sqlx::query("UPDATE publish_keys SET created_at = created_at - interval '11 minutes'")
        .execute(store.pool())
        .await
        .unwrap();
    let late = store.append(keyed(&channel, "k", 3)).await.unwrap();
    assert!(
        matches!(late, Appended::New(ref m) if m.seq == Seq(2)),
        "{late:?}"
    );
    let repeat = store.append(keyed(&channel, "k", 4)).await.unwrap();
    assert_eq!(repeat.seq(), Seq(2));
    assert_eq!(key_rows(&store).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(pg_tests), ignore = "Postgres tests need DATABASE_URL")]
async fn expired_keys_are_pruned() {
    let db = TestDatabase::create().await;
    let store = db
        .store_with(PgStoreOptions {
            idempotency_window: Duration::from_secs(4),
            ..PgStoreOptions::default()
        })
        .await;
    let channel = ChannelName::parse("prune:keys").unwrap();
    for k in 0..10 {
        store
            .append(keyed(&channel, &format!("k{k}"), k))
            .await
            .unwrap();
    }
    sqlx::query(
        "UPDATE publish_keys SET created_at = created_at - interval '1 hour' WHERE key < 'k5'",
    )
    .execute(store.pool())
    .await
    .unwrap();
    // The pruner runs every second with this window.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while key_rows(&store).await > 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expired keys were not pruned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(key_rows(&store).await, 5, "keys inside the window stay");
    assert_eq!(store.count(&channel).await.unwrap(), 10, "messages stay");
}
