//! Slow readers: a server-side 4008 and an application that falls behind both end with every
//! message seen exactly once, in order.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use relay_client::{Client, ConnectionEvent, Event, Subscription};
use relay_core::Publish;
use relay_proto::{ChannelName, Payload};
use relay_store::MemoryStore;

use crate::support::*;

async fn read_all(sub: &mut Subscription, total: u64) -> Vec<u64> {
    let mut seen = Vec::new();
    while (seen.len() as u64) < total {
        match tokio::time::timeout(Duration::from_secs(20), sub.next_event())
            .await
            .unwrap()
            .unwrap()
        {
            Event::Message(m) => seen.push(m.seq.unwrap().0),
            Event::Recovered { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    seen
}

#[tokio::test]
async fn a_burst_that_overflows_the_server_queue_is_cut_with_4008_and_nothing_is_lost() {
    let server = Server::start_with_store(Arc::new(MemoryStore::new()), |config| {
        config.outbox_capacity = 4
    })
    .await;
    let client = Client::builder(server.ws_endpoint())
        .token(server.token("slow"))
        .backoff(Duration::from_millis(10), Duration::from_millis(100))
        .subscription_buffer(8)
        .connect()
        .await
        .unwrap();
    let mut events = client.connection_events();
    let mut feed = client.subscribe("feed:big").await.unwrap();

    // A burst published all at once: far more than the server queue of 4 frames holds
    // before the connection's writer gets to run.
    let total = 300u64;
    let body = "x".repeat(16 * 1024);
    let channel = ChannelName::parse("feed:big").unwrap();
    let publishes = (1..=total).map(|n| {
        let payload = Payload::from_value(&serde_json::json!({"n": n, "body": body})).unwrap();
        server.hub.publish(Publish::new(channel.clone(), payload))
    });
    for result in join_all(publishes).await {
        result.unwrap();
    }
    let cut = wait_for(&mut events, |e| {
        matches!(e, ConnectionEvent::Disconnected { .. })
    })
    .await;
    assert!(
        matches!(
            cut,
            ConnectionEvent::Disconnected {
                code: Some(4008),
                ..
            }
        ),
        "{cut:?}"
    );

    assert_eq!(
        read_all(&mut feed, total).await,
        (1..=total).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn an_application_that_falls_behind_loses_nothing_and_holds_up_nothing() {
    let server = Server::start().await;
    let client = Client::builder(server.ws_endpoint())
        .token(server.token("reader"))
        .subscription_buffer(4)
        .connect()
        .await
        .unwrap();
    let mut ignored = client.subscribe("feed:a").await.unwrap();
    let mut read = client.subscribe("feed:b").await.unwrap();
    let publisher = server.client("publisher").await;
    let total = 100u64;
    for n in 1..=total {
        publisher.publish("feed:a", &n).await.unwrap();
        publisher.publish("feed:b", &n).await.unwrap();
    }
    // Nobody reads feed:a yet; feed:b and requests still flow.
    assert_eq!(
        read_all(&mut read, total).await,
        (1..=total).collect::<Vec<_>>()
    );
    client.ping().await.unwrap();
    // Now the application catches up on feed:a: every message, once, in order.
    assert_eq!(
        read_all(&mut ignored, total).await,
        (1..=total).collect::<Vec<_>>()
    );
}
