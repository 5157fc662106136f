//! `autobahn-echo` (feature `autobahn`): the server with its `/echo` WebSocket endpoint on
//! `127.0.0.1:PORT` (first argument, default `0`: any free port), configured for a protocol
//! conformance run: 32 MiB messages, no heartbeat pings and no rate limits in the way of the
//! Autobahn|Testsuite cases. Prints `listening on ADDR` once it accepts connections. Run by
//! `cargo xtask autobahn`; never deployed.

#![allow(clippy::print_stdout)] // The address on stdout is how the runner finds the server.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use relay_core::Hub;
use relay_server::{Authenticator, Config, Relay};
use relay_store::MemoryStore;

#[tokio::main]
async fn main() -> ExitCode {
    let port: u16 = match std::env::args().nth(1).map(|p| p.parse()) {
        None => 0,
        Some(Ok(port)) => port,
        Some(Err(e)) => {
            eprintln!("autobahn-echo: bad port: {e}");
            return ExitCode::from(2);
        }
    };
    let mut config = Config {
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        // Case 9 sends messages of up to 16 MiB and expects them back whole.
        max_frame_bytes: 32 * 1024 * 1024,
        outbox_max_bytes: 256 * 1024 * 1024,
        // Unsolicited pings would show up in the cases' expected frame sequences.
        heartbeat_ms: 3_600_000,
        handshake_timeout_ms: 3_600_000,
        ..Config::default()
    };
    config.auth.secret = Some(uuid::Uuid::new_v4().to_string() + "-unused-by-the-echo");
    let auth = match Authenticator::from_config(&config.auth) {
        Ok(auth) => auth,
        Err(e) => {
            eprintln!("autobahn-echo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let hub = Hub::new(Arc::new(MemoryStore::new()), config.hub_config());
    let relay = match Relay::bind(config, hub, auth).await {
        Ok(relay) => relay,
        Err(e) => {
            eprintln!("autobahn-echo: cannot listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    match relay.local_addr() {
        Ok(addr) => println!("listening on {addr}"),
        Err(e) => {
            eprintln!("autobahn-echo: {e}");
            return ExitCode::FAILURE;
        }
    }
    relay
        .serve(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    ExitCode::SUCCESS
}
