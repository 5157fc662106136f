//! An in-process server for tests (feature `testing`): the real [`Relay`] on `127.0.0.1:0`
//! over a [`Hub`] that outlives it, with a known HS256 secret so that tests mint their own
//! tokens. The server's and the client SDK's test suites both use it.
//!
//! The hub outlives the transport: [`TestServer::stop`] and [`TestServer::serve`] stop and
//! restart the listener on the same address while the store keeps every message, which is
//! how reconnect tests take a server away and bring it back.
//!
//! ```no_run
//! # #[tokio::main] async fn main() {
//! use relay_server::testing::TestServer;
//!
//! let server = TestServer::start().await;
//! let token = server.token("alice");
//! let url = server.ws_url(&token); // ws://127.0.0.1:PORT/ws?token=…
//! # let _ = url; }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use relay_core::Hub;
use relay_store::{MemoryStore, Store};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{Authenticator, Claims, Config, Relay};

/// The HS256 secret test servers sign with.
pub const TEST_SECRET: &str = "integration-test-secret-0123456789";

/// A running in-process server. Dropping it stops the listener at once (abruptly, as a
/// crash would); [`stop`](Self::stop) shuts it down gracefully.
pub struct TestServer {
    /// The hub behind the server; it outlives restarts.
    pub hub: Hub,
    /// Where it listens (the same address across restarts).
    pub addr: SocketAddr,
    /// The configuration it runs with.
    pub config: Config,
    /// Verifies and mints tokens with [`TEST_SECRET`].
    pub auth: Authenticator,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    /// A server with the default configuration over a memory store.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A server over a memory store; `configure` edits the configuration first.
    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> Self {
        Self::start_with_store(Arc::new(MemoryStore::new()), configure).await
    }

    /// A server over `store`; `configure` edits the configuration first.
    ///
    /// # Panics
    /// When the configuration is invalid or the listener cannot bind: a test setup error.
    pub async fn start_with_store(
        store: Arc<dyn Store>,
        configure: impl FnOnce(&mut Config),
    ) -> Self {
        let config = Self::config(configure);
        let hub = Hub::new(store, config.hub_config());
        Self::start_with_hub(hub, config).await
    }

    /// The configuration a test server starts from (an ephemeral port on loopback, the test
    /// secret), edited by `configure`.
    pub fn config(configure: impl FnOnce(&mut Config)) -> Config {
        let mut config = Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Config::default()
        };
        config.auth.secret = Some(TEST_SECRET.into());
        configure(&mut config);
        config
    }

    /// A server over a hub built by the caller (a cluster node's, say), with `config` (see
    /// [`config`](Self::config)).
    ///
    /// # Panics
    /// When the configuration is invalid or the listener cannot bind.
    pub async fn start_with_hub(hub: Hub, config: Config) -> Self {
        let auth = Authenticator::from_config(&config.auth).expect("test auth config");
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

    /// (Re)starts the transport on the same address, over the same hub.
    ///
    /// # Panics
    /// When the address cannot be bound.
    pub async fn serve(&mut self) {
        let mut config = self.config.clone();
        config.listen = self.addr;
        let relay = Relay::bind(config, self.hub.clone(), self.auth.clone())
            .await
            .expect("bind the test server");
        self.addr = relay.local_addr().expect("a bound address");
        let (stop, stopped) = oneshot::channel::<()>();
        self.stop = Some(stop);
        self.task = Some(tokio::spawn(relay.serve(async move {
            let _ = stopped.await;
        })));
    }

    /// Shuts the transport down gracefully (clients get 1001) and waits until it stopped;
    /// the hub and its store stay.
    ///
    /// # Panics
    /// When the server does not stop within 10 s.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("the server stops within 10 s")
                .expect("the server task ends cleanly");
        }
    }

    /// A user token valid for an hour.
    pub fn token(&self, user: &str) -> String {
        self.mint(Claims::new(user, Duration::from_secs(3600)))
    }

    /// A service token (`role: "service"`) valid for an hour.
    pub fn service_token(&self, user: &str) -> String {
        self.mint(Claims {
            role: Some("service".into()),
            ..Claims::new(user, Duration::from_secs(3600))
        })
    }

    /// A token with these claims.
    ///
    /// # Panics
    /// When the claims cannot be signed.
    pub fn mint(&self, claims: Claims) -> String {
        self.auth.mint(&claims).expect("mint a test token")
    }

    /// The WebSocket endpoint, without a token (`ws://…/ws`).
    pub fn ws_endpoint(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// The WebSocket URL with `token` in the query.
    pub fn ws_url(&self, token: &str) -> String {
        format!("{}?token={token}", self.ws_endpoint())
    }

    /// An HTTP URL on the server.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A `nats-server` process of a test's own, on its own loopback port (never the machine's
/// shared server): stopped and started again on the same port by [`stop`](Self::stop) and
/// [`start_again`](Self::start_again), killed when dropped.
pub struct NatsServer {
    binary: std::path::PathBuf,
    child: Option<std::process::Child>,
    port: u16,
}

impl NatsServer {
    /// The `nats-server` binary: `$NATS_SERVER`, else the first found on `PATH` or in
    /// `/usr/sbin`, `/usr/local/bin`, `/usr/bin`.
    pub fn binary() -> Option<std::path::PathBuf> {
        if let Some(path) = std::env::var_os("NATS_SERVER").filter(|p| !p.is_empty()) {
            return Some(path.into());
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/usr/local/bin", "/usr/bin"].map(Into::into))
            .map(|dir| dir.join("nats-server"))
            .find(|candidate| candidate.is_file())
    }

    /// Starts a server on a free loopback port.
    ///
    /// # Panics
    /// When there is no `nats-server` binary or it does not start within 10 s.
    pub fn start() -> Self {
        let binary = Self::binary()
            .expect("no nats-server binary (install Debian's nats-server, or set NATS_SERVER)");
        let mut server = Self {
            binary,
            child: None,
            port: 0,
        };
        server.launch("-1");
        server
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash would) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on its port.
    pub fn start_again(&mut self) {
        self.stop();
        let port = self.port.to_string();
        self.launch(&port);
    }

    fn launch(&mut self, port: &str) {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(&self.binary)
            .args(["-a", "127.0.0.1", "-p", port])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        let stderr = child.stderr.take().expect("piped stderr");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut port = None;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some((_, addr)) = line.split_once("Listening for client connections on ") {
                    port = addr
                        .trim()
                        .rsplit_once(':')
                        .and_then(|(_, p)| p.parse::<u16>().ok());
                }
                if line.contains("Server is ready") {
                    let _ = ready_tx.send(port);
                }
            }
        });
        let port = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .ok()
            .flatten()
            .expect("nats-server reports its port and readiness within 10 s");
        self.port = port;
        self.child = Some(child);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
