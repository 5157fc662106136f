//! A real server over a hub that outlives it, so that a test can stop and restart the
//! transport while the messages (memory or Postgres store) stay.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use relay_client::{Client, ConnectionEvent};
use relay_core::Hub;
use relay_server::{Authenticator, Claims, Config, Relay};
use relay_store::{MemoryStore, Store};

pub const SECRET: &str = "client-tests-secret-0123456789";

pub struct Server {
    pub hub: Hub,
    pub addr: SocketAddr,
    pub config: Config,
    pub auth: Authenticator,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    pub async fn start() -> Self {
        Self::start_with(Arc::new(MemoryStore::new()), |_| {}).await
    }

    pub async fn start_with(store: Arc<dyn Store>, configure: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..Config::default()
        };
        config.auth.secret = Some(SECRET.into());
        configure(&mut config);
        let auth = Authenticator::from_config(&config.auth).unwrap();
        let hub = Hub::new(store, config.hub_config());
        let mut server = Self {
            hub,
            addr: config.listen,
            config,
            auth,
            stop: None,
            task: None,
        };
        server.serve().await;
        server
    }

    /// (Re)starts the transport on the same address over the same hub.
    pub async fn serve(&mut self) {
        let mut config = self.config.clone();
        config.listen = self.addr;
        let relay = Relay::bind(config, self.hub.clone(), self.auth.clone())
            .await
            .unwrap();
        self.addr = relay.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        self.stop = Some(stop);
        self.task = Some(tokio::spawn(relay.serve(async move {
            let _ = stopped.await;
        })));
    }

    /// Stops the transport gracefully (clients get 1001); the hub and its store stay.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .unwrap()
                .unwrap();
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn token(&self, user: &str) -> String {
        self.token_with(Claims::new(user, Duration::from_secs(3600)))
    }

    pub fn token_with(&self, claims: Claims) -> String {
        self.auth.mint(&claims).unwrap()
    }

    pub async fn client(&self, user: &str) -> Client {
        Client::builder(self.url())
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
