//! A backend service that publishes topic events ("ADDED", "UPDATED") to list channels over
//! the REST API, with a service token.
//!
//! ```sh
//! TOKEN=$(cargo run -q -p relay-server -- gentoken --user inventory --role service)
//! cargo run -p relay-client --example backend -- --server http://127.0.0.1:8080 --token "$TOKEN" \
//!     --topic list:123 --topic list:456 --count 5
//! ```

#![allow(clippy::print_stdout)]

use std::time::Duration;

use clap::Parser;
use relay_client::RestClient;

#[derive(Parser)]
struct Args {
    /// HTTP base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// A service token (`gentoken --role service`), or set RELAY_TOKEN.
    #[arg(long, env = "RELAY_TOKEN", hide_env_values = true)]
    token: String,
    /// Topics to publish to (repeat the flag).
    #[arg(long = "topic", default_value = "list:123")]
    topics: Vec<String>,
    /// How many events.
    #[arg(long, default_value_t = 3)]
    count: u32,
    /// Pause between events, in milliseconds.
    #[arg(long, default_value_t = 500)]
    interval_ms: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let rest = RestClient::with_token(args.server, args.token);
    let topics: Vec<&str> = args.topics.iter().map(String::as_str).collect();
    for n in 1..=args.count {
        let event = if n == 1 { "ADDED" } else { "UPDATED" };
        let seqs = rest
            .publish_topics(
                &topics,
                Some(event),
                &serde_json::json!({"item": 42, "version": n}),
            )
            .await?;
        println!(
            "{event} item 42 v{n} -> seqs {:?}",
            seqs.iter().map(|s| s.0).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
    }
    Ok(())
}
