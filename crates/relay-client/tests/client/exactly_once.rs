//! Exactly-once publishing through the SDK: a publish whose ack is lost (the server goes away
//! between the commit and the ack) is sent again with its idempotency key after the
//! reconnect, and stored once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use relay_client::{ClientError, ConnectionEvent};
use relay_proto::{ChannelName, Seq};
use relay_store::conformance::AppendHook;
use relay_store::{Appended, HistoryQuery, MemoryStore, NewMessage, Store, StoreResult};
use serde_json::json;
use tokio::sync::Notify;

use crate::support::*;

/// Commits the first keyed append, then never answers it, as a server that dies between
/// the commit and the ack; every later append goes through.
struct LoseFirstAck<S> {
    inner: S,
    armed: AtomicBool,
    committed: Notify,
}

impl<S> LoseFirstAck<S> {
    fn new(inner: S) -> Arc<Self> {
        Arc::new(Self {
            inner,
            armed: AtomicBool::new(true),
            committed: Notify::new(),
        })
    }
}

#[async_trait::async_trait]
impl<S: Store> AppendHook for LoseFirstAck<S> {
    type Inner = S;

    fn inner(&self) -> &S {
        &self.inner
    }

    async fn append(&self, message: NewMessage) -> StoreResult<Appended> {
        let keyed = message.idempotency_key.is_some();
        let appended = self.inner.append(message).await?;
        if keyed && self.armed.swap(false, Ordering::SeqCst) {
            self.committed.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(appended)
    }
}

async fn lost_ack_is_resent_and_stored_once<S: Store>(hook: Arc<LoseFirstAck<S>>) {
    let mut server = Server::start_with_store(hook.clone(), |c| c.shutdown_timeout_ms = 500).await;
    let client = server.client("alice").await;
    let mut events = client.connection_events();
    let publishing = tokio::spawn({
        let client = client.clone();
        async move { client.publish("orders:1", &json!({"order": 17})).await }
    });
    tokio::time::timeout(Duration::from_secs(10), hook.committed.notified())
        .await
        .expect("the publish reaches the store");

    // Committed, not acked: the server goes away now.
    server.stop().await;
    wait_for(&mut events, |e| {
        matches!(e, ConnectionEvent::Disconnected { .. })
    })
    .await;
    server.serve().await;

    let ack = tokio::time::timeout(Duration::from_secs(10), publishing)
        .await
        .expect("the publish resolves after the reconnect")
        .unwrap()
        .expect("acked");
    assert_eq!(ack.seq, Some(Seq(1)));
    let channel = ChannelName::parse("orders:1").unwrap();
    let stored = hook
        .history(&channel, HistoryQuery::latest(10))
        .await
        .unwrap();
    assert_eq!(stored.len(), 1, "stored exactly once");
    assert_eq!(
        stored[0].id, ack.message_id,
        "the ack names the stored message"
    );

    // And the connection serves on.
    let next = client
        .publish("orders:1", &json!({"order": 18}))
        .await
        .unwrap();
    assert_eq!(next.seq, Some(Seq(2)));
}

#[tokio::test]
async fn a_publish_whose_ack_was_lost_is_stored_once() {
    lost_ack_is_resent_and_stored_once(LoseFirstAck::new(MemoryStore::new())).await;
}

#[tokio::test]
#[cfg_attr(not(pg_tests), ignore = "Postgres tests need DATABASE_URL")]
async fn the_same_on_postgres() {
    let db = relay_store::testing::TestDatabase::create().await;
    lost_ack_is_resent_and_stored_once(LoseFirstAck::new(db.store().await)).await;
}

#[tokio::test]
async fn an_unconfirmed_publish_names_its_key_and_a_retry_with_it_settles_it() {
    let hook = LoseFirstAck::new(MemoryStore::new());
    let server = Server::start_with_store(hook.clone(), |_| {}).await;
    let client = relay_client::Client::builder(server.ws_endpoint())
        .token(server.token("alice"))
        .request_timeout(Duration::from_millis(300))
        .connect()
        .await
        .unwrap();
    let err = client
        .publish("orders:2", &json!({"order": 1}))
        .await
        .unwrap_err();
    let ClientError::Unconfirmed { idempotency_key } = err else {
        panic!("expected Unconfirmed, got {err:?}");
    };
    // It was stored; the retry with its key (here from a restarted application, as this
    // connection's publishes still queue behind the stuck one) says so and stores nothing.
    let client = server.client("alice").await;
    let ack = client
        .publish_with_key("orders:2", &idempotency_key, None, &json!({"order": 1}))
        .await
        .unwrap();
    assert_eq!(ack.seq, Some(Seq(1)));
    let channel = ChannelName::parse("orders:2").unwrap();
    assert_eq!(hook.count(&channel).await.unwrap(), 1);
    let err = client
        .publish_with_key("orders:2", "not a key", None, &1)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Server { .. }), "{err:?}");
}
