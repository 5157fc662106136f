//! A subscription survives a server restart: what was published during the outage arrives
//! exactly once, in seq order, after the reconnect.

use std::sync::Arc;

use relay_client::{ConnectionEvent, Event};
use relay_core::Publish;
use relay_proto::{ChannelName, Payload, Seq};
use relay_store::{MemoryStore, Store};

use crate::support::*;

async fn survive_restart(store: Arc<dyn Store>) {
    let mut server = Server::start_with_store(store, |_| {}).await;
    let publisher_hub = server.hub.clone();
    let channel = ChannelName::parse("feed:restart").unwrap();
    let publish = |n: u64| {
        let (hub, channel) = (publisher_hub.clone(), channel.clone());
        async move {
            let payload = Payload::from_json(&n.to_string()).unwrap();
            hub.publish(Publish::new(channel, payload)).await.unwrap();
        }
    };

    let client = server.client("reader").await;
    let mut events = client.connection_events();
    let mut feed = client.subscribe("feed:restart").await.unwrap();
    for n in 1..=3 {
        publish(n).await;
    }
    for n in 1..=3 {
        assert_eq!(next_message(&mut feed).await.seq, Some(Seq(n)));
    }

    server.stop().await;
    let lost = wait_for(&mut events, |e| {
        matches!(e, ConnectionEvent::Disconnected { .. })
    })
    .await;
    assert!(
        matches!(
            lost,
            ConnectionEvent::Disconnected {
                code: Some(1001),
                ..
            }
        ),
        "{lost:?}"
    );
    // Published while no transport runs: only the store has them.
    for n in 4..=10 {
        publish(n).await;
    }
    server.serve().await;
    wait_for(&mut events, |e| {
        matches!(e, ConnectionEvent::Connected { .. })
    })
    .await;
    for n in 11..=12 {
        publish(n).await;
    }

    let mut seqs = Vec::new();
    while seqs.len() < 9 {
        match tokio::time::timeout(std::time::Duration::from_secs(10), feed.next_event())
            .await
            .unwrap()
            .unwrap()
        {
            Event::Message(m) => {
                assert_eq!(
                    m.payload::<u64>().unwrap(),
                    m.seq.unwrap().0,
                    "payload matches its seq"
                );
                seqs.push(m.seq.unwrap().0);
            }
            Event::Recovered { since } => assert_eq!(since, Seq(3)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seqs, (4..=12).collect::<Vec<_>>(), "exactly once, in order");
    client.ping().await.unwrap();
    assert!(feed.events_pending() == 0, "nothing more");
}

#[tokio::test]
async fn messages_published_while_the_server_is_down_arrive_exactly_once_in_order() {
    survive_restart(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
#[cfg_attr(not(pg_tests), ignore = "Postgres tests need DATABASE_URL")]
async fn the_same_across_a_restart_on_postgres() {
    let db = relay_store::testing::TestDatabase::create().await;
    survive_restart(Arc::new(db.store().await)).await;
}
