//! An application that stops reading: the server closes the client with 4008, the client
//! recovers with `since`, and the application still sees every message exactly once.

use std::sync::Arc;
use std::time::Duration;

use relay_client::{Client, ConnectionEvent, Event};
use relay_core::Publish;
use relay_proto::{ChannelName, Payload};
use relay_store::MemoryStore;

use crate::support::*;

#[tokio::test]
async fn a_slow_application_is_cut_with_4008_and_still_sees_everything_once() {
    let server = Server::start_with(Arc::new(MemoryStore::new()), |config| {
        config.outbox_capacity = 16
    })
    .await;
    let client = Client::builder(server.url())
        .token(server.token("slow"))
        .backoff(Duration::from_millis(10), Duration::from_millis(100))
        .subscription_buffer(4)
        .connect()
        .await
        .unwrap();
    let mut events = client.connection_events();
    let mut feed = client.subscribe("feed:big").await.unwrap();

    // Large payloads fill the socket buffers quickly once the application stops reading.
    let total = 400u64;
    let body = "x".repeat(16 * 1024);
    let channel = ChannelName::parse("feed:big").unwrap();
    for n in 1..=total {
        let payload = Payload::from_value(&serde_json::json!({"n": n, "body": body})).unwrap();
        server
            .hub
            .publish(Publish::new(channel.clone(), payload))
            .await
            .unwrap();
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

    let mut seen = Vec::new();
    while (seen.len() as u64) < total {
        match tokio::time::timeout(Duration::from_secs(20), feed.next_event())
            .await
            .unwrap()
            .unwrap()
        {
            Event::Message(m) => seen.push(m.seq.unwrap().0),
            Event::Recovered { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, (1..=total).collect::<Vec<_>>());
}
