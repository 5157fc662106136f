//! A terminal chat: type a line to send it, see everyone's messages as they arrive. Every
//! message shown is marked read, so the user's other devices (another run of this example
//! with the same user) follow: they print where the reading got to.
//!
//! ```sh
//! export RELAY_JWT_SECRET=dev-secret-change-me-0123456789abcdef
//! cargo run -p relay-server &
//! TOKEN=$(cargo run -q -p relay-server -- gentoken --user alice)
//! cargo run -p relay-client --example chat -- --url ws://127.0.0.1:8080/ws --channel chat:lobby --token "$TOKEN"
//! ```

#![allow(clippy::print_stdout)]

use clap::Parser;
use relay_client::{Client, Event};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Parser)]
struct Args {
    /// WebSocket URL of the server.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Channel to chat in.
    #[arg(long, default_value = "chat:lobby")]
    channel: String,
    /// Token (or set RELAY_TOKEN).
    #[arg(long, env = "RELAY_TOKEN", hide_env_values = true)]
    token: String,
}

#[derive(Serialize, Deserialize)]
struct Line {
    text: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let client = Client::builder(&args.url)
        .token(args.token)
        .connect()
        .await?;
    let mut room = client.subscribe(&args.channel).await?;
    println!(
        "joined {} (type and press enter; ctrl-d to quit)",
        args.channel
    );

    let (reader, channel) = (client.clone(), args.channel.clone());
    let printer = tokio::spawn(async move {
        while let Some(event) = room.next_event().await {
            match event {
                Event::Message(m) => {
                    // Shown: read. A failure (the connection is down) is retried by the
                    // next message's mark, markers being monotonic.
                    if let Some(seq) = m.seq {
                        let _ = reader.mark_read(&channel, seq).await;
                    }
                    let who = m
                        .from
                        .as_ref()
                        .map_or_else(|| "server".to_owned(), |u| u.to_string());
                    match m.payload::<Line>() {
                        Ok(line) => println!("[{}] {who}: {}", m.seq.map_or(0, |s| s.0), line.text),
                        Err(_) => println!(
                            "[{}] {who}: {}",
                            m.seq.map_or(0, |s| s.0),
                            m.payload.as_str()
                        ),
                    }
                }
                Event::Gap { since, resumed_at } => {
                    println!("(missed {}..={resumed_at})", since.0 + 1)
                }
                Event::Read(seq) => println!("* read up to {} on another device", seq.0),
                Event::Join(user) => println!("* {user} joined"),
                Event::Leave(user) => println!("* {user} left"),
                _ => {}
            }
        }
    });

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(text) = lines.next_line().await? {
        if !text.trim().is_empty() {
            client.publish(&args.channel, &Line { text }).await?;
        }
    }
    client.close();
    printer.abort();
    Ok(())
}
