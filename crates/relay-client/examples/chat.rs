//! A terminal chat: type a line to send it, see everyone's messages as they arrive. Every
//! message shown is marked read, so the user's other devices (another run of this example
//! with the same user) follow: they print where the reading got to. `/edit 3 new text` edits
//! message 3 and `/delete 3` deletes it (your own messages; an owner or admin of the
//! channel's record may change anyone's), and everyone sees the change.
//!
//! ```sh
//! export RELAY_JWT_SECRET=dev-secret-change-me-0123456789abcdef
//! cargo run -p relay-server &
//! TOKEN=$(cargo run -q -p relay-server -- gentoken --user alice)
//! cargo run -p relay-client --example chat -- --url ws://127.0.0.1:8080/ws --channel chat:lobby --token "$TOKEN"
//! ```

#![allow(clippy::print_stdout)]

use clap::Parser;
use relay_client::proto::{Revision, Seq};
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

/// `/edit <seq> <text>` and `/delete <seq>`.
enum Command {
    Edit(Seq, String),
    Delete(Seq),
}

impl Command {
    fn parse(line: &str) -> Option<Self> {
        let (verb, rest) = line.trim().split_once(' ')?;
        let (seq, text) = rest.trim().split_once(' ').unwrap_or((rest.trim(), ""));
        let seq = Seq(seq.parse().ok()?);
        match verb {
            "/edit" if !text.trim().is_empty() => Some(Self::Edit(seq, text.trim().to_owned())),
            "/delete" => Some(Self::Delete(seq)),
            _ => None,
        }
    }
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
                    match (m.revision(), m.reference) {
                        (Some(Revision::Delete), Some(seq)) => {
                            println!("* {who} deleted message {}", seq.0);
                            continue;
                        }
                        (Some(Revision::Edit), Some(seq)) => {
                            let text = m
                                .payload::<Line>()
                                .map_or_else(|_| m.payload.as_str().to_owned(), |l| l.text);
                            println!("* {who} edited message {}: {text}", seq.0);
                            continue;
                        }
                        _ => {}
                    }
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
        let result = match Command::parse(&text) {
            Some(Command::Edit(seq, text)) => client.edit(&args.channel, seq, &Line { text }).await,
            Some(Command::Delete(seq)) => client.delete(&args.channel, seq).await,
            None if text.trim().is_empty() => continue,
            None => client.publish(&args.channel, &Line { text }).await,
        };
        // A refusal (not yours to edit, already deleted) is shown; the chat goes on.
        if let Err(e) = result {
            println!("! {e}");
        }
    }
    client.close();
    printer.abort();
    Ok(())
}
