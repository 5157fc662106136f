//! The in-process server (`relay_server::testing`: a real server over a hub that outlives
//! it, so that a test can stop and restart the transport while the messages stay), and SDK
//! clients for it.

use std::time::Duration;

use relay_client::{Client, ConnectionEvent};
pub use relay_server::testing::TestServer as Server;

/// SDK clients of a test server.
pub trait SdkClients {
    /// A connected client for `user`, with fast backoff for tests.
    async fn client(&self, user: &str) -> Client;
}

impl SdkClients for Server {
    async fn client(&self, user: &str) -> Client {
        Client::builder(self.ws_endpoint())
            .token(self.token(user))
            .backoff(Duration::from_millis(10), Duration::from_millis(200))
            .request_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap()
    }
}

/// Waits (bounded) for a connection event matching `want`.
pub async fn wait_for(
    events: &mut tokio::sync::broadcast::Receiver<ConnectionEvent>,
    want: impl Fn(&ConnectionEvent) -> bool,
) -> ConnectionEvent {
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let event = events.recv().await.unwrap();
            if want(&event) {
                return event;
            }
        }
    })
    .await
    .expect("the connection event within 15 s")
}

/// The next message's seq and payload, within 10 s.
pub async fn next_message(sub: &mut relay_client::Subscription) -> relay_client::Message {
    tokio::time::timeout(Duration::from_secs(10), sub.next_message())
        .await
        .expect("a message within 10 s")
        .unwrap()
}
