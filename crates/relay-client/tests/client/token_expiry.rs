//! An expired token: the server closes with 4001, the client asks its token provider for a
//! new one and carries on.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use relay_client::{Client, ConnectionEvent};
use relay_core::Publish;
use relay_proto::{ChannelName, Payload, Seq};
use relay_server::Claims;
use relay_store::MemoryStore;

use crate::support::*;

#[tokio::test]
async fn an_expired_token_is_renewed_through_the_provider() {
    let server = Server::start_with_store(Arc::new(MemoryStore::new()), |config| {
        config.auth.leeway_secs = Some(0)
    })
    .await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // The first token expires in two seconds; every later one is good for an hour.
    let short = server.mint(Claims {
        exp: now + 2,
        ..Claims::new("alice", Duration::ZERO)
    });
    let long = server.token("alice");
    let calls = Arc::new(AtomicUsize::new(0));
    let provider_calls = calls.clone();
    let client = Client::builder(server.ws_endpoint())
        .token_provider(move || {
            let token = if provider_calls.fetch_add(1, Ordering::SeqCst) == 0 {
                short.clone()
            } else {
                long.clone()
            };
            async move { Ok::<_, std::io::Error>(token) }
        })
        .backoff(Duration::from_millis(10), Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    let mut events = client.connection_events();
    let mut feed = client.subscribe("feed:auth").await.unwrap();

    let closed = wait_for(&mut events, |e| {
        matches!(e, ConnectionEvent::Disconnected { .. })
    })
    .await;
    assert!(
        matches!(
            closed,
            ConnectionEvent::Disconnected {
                code: Some(4001),
                ..
            }
        ),
        "{closed:?}"
    );
    wait_for(&mut events, |e| {
        matches!(e, ConnectionEvent::Connected { .. })
    })
    .await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one fresh token, no retry loop"
    );

    let channel = ChannelName::parse("feed:auth").unwrap();
    server
        .hub
        .publish(Publish::new(channel, Payload::from_json("1").unwrap()))
        .await
        .unwrap();
    assert_eq!(next_message(&mut feed).await.seq, Some(Seq(1)));
}
