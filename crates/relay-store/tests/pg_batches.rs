//! Group commit on Postgres: a message the database refuses fails alone, not its batch.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use relay_proto::{ChannelName, Payload, Seq};
use relay_store::testing::TestDatabase;
use relay_store::{HistoryQuery, NewMessage, Store, StoreError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(pg_tests), ignore = "Postgres tests need DATABASE_URL")]
async fn a_refused_message_fails_alone_and_its_batch_commits() {
    let db = TestDatabase::create().await;
    let store = Arc::new(db.store().await);
    let channel = ChannelName::parse("batch:1").unwrap();
    let mut tasks = Vec::new();
    for n in 0..20 {
        let (store, channel) = (store.clone(), channel.clone());
        tasks.push(tokio::spawn(async move {
            let mut message = NewMessage::new(channel, Payload::from_json(&n.to_string()).unwrap());
            if n == 7 {
                // Postgres cannot store a NUL character in text.
                message.event = Some("bad\0event".into());
            }
            (n, store.append(message).await)
        }));
    }
    let mut ok = 0;
    for task in tasks {
        let (n, result) = task.await.unwrap();
        if n == 7 {
            assert!(matches!(result, Err(StoreError::Invalid(_))), "{result:?}");
        } else {
            result.unwrap();
            ok += 1;
        }
    }
    assert_eq!(ok, 19);
    let stored = store
        .history(&channel, HistoryQuery::after(Seq::ZERO, 100))
        .await
        .unwrap();
    let seqs: Vec<u64> = stored.iter().map(|m| m.seq.0).collect();
    assert_eq!(
        seqs,
        (1..=19).collect::<Vec<_>>(),
        "gap-free: the refused one took no seq"
    );
}
