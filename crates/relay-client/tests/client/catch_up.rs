//! Catch-up without a cap: a client further behind than the server replays (`max_recovery`)
//! reads the missed history over REST, page by page, then goes on live; nothing is missed
//! and its queue stays small while it catches up.

use std::time::Duration;

use relay_client::{Client, Event};
use relay_core::Publish;
use relay_proto::{ChannelName, Payload, Seq};

use crate::support::*;

async fn publish(server: &Server, channel: &str, n: u64) {
    let channel = ChannelName::parse(channel).unwrap();
    server
        .hub
        .publish(Publish::new(
            channel,
            Payload::from_json(&n.to_string()).unwrap(),
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_client_a_week_behind_pages_through_history_then_goes_on_live() {
    let server = Server::start_with(|config| config.max_recovery = 10).await;
    const MISSED: u64 = 450;
    for n in 1..=MISSED {
        publish(&server, "room:1", n).await;
    }
    // A queue of 8 events: the catch-up waits on the application rather than holding pages.
    let client = Client::builder(server.ws_endpoint())
        .token(server.token("alice"))
        .subscription_buffer(8)
        .request_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    let mut sub = client.subscribe_since("room:1", Seq(0)).await.unwrap();
    let mut published = MISSED;
    for expected in 1..=MISSED {
        let event = tokio::time::timeout(Duration::from_secs(10), sub.next_event())
            .await
            .expect("an event within 10 s")
            .unwrap();
        let Event::Message(message) = event else {
            panic!("only messages, in order, no gap: {event:?}");
        };
        assert_eq!(message.seq, Some(Seq(expected)));
        assert_eq!(message.payload.as_str(), expected.to_string());
        if expected % 100 == 0 {
            // Published while the client catches up: delivered after, in order.
            published += 1;
            publish(&server, "room:1", published).await;
        }
    }
    for expected in MISSED + 1..=published {
        let event = tokio::time::timeout(Duration::from_secs(10), sub.next_event())
            .await
            .expect("an event within 10 s")
            .unwrap();
        match event {
            Event::Message(message) => assert_eq!(message.seq, Some(Seq(expected))),
            Event::Recovered { .. } => {
                let message = next_message(&mut sub).await;
                assert_eq!(message.seq, Some(Seq(expected)));
            }
            other => panic!("{other:?}"),
        }
    }
    publish(&server, "room:1", published + 1).await;
    let live = loop {
        match tokio::time::timeout(Duration::from_secs(10), sub.next_event())
            .await
            .expect("the live message within 10 s")
            .unwrap()
        {
            Event::Recovered { .. } => {}
            event => break event,
        }
    };
    assert!(
        matches!(&live, Event::Message(m) if m.seq == Some(Seq(published + 1))),
        "live again: {live:?}"
    );
}

#[tokio::test]
async fn history_trimmed_away_is_reported_as_a_gap_and_the_rest_arrives() {
    let server = Server::start_with(|config| {
        config.max_recovery = 5;
        config.namespaces =
            relay_server::Config::from_toml("[namespaces.feed]\nmax_history = 30\n")
                .unwrap()
                .namespaces;
    })
    .await;
    for n in 1..=100 {
        publish(&server, "feed:1", n).await;
    }
    let client = server.client("alice").await;
    let mut sub = client.subscribe_since("feed:1", Seq(10)).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), sub.next_event())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            first,
            Event::Gap {
                since: Seq(10),
                resumed_at: Seq(70)
            }
        ),
        "seqs 11..=70 were trimmed: {first:?}"
    );
    for expected in 71..=100 {
        assert_eq!(next_message(&mut sub).await.seq, Some(Seq(expected)));
    }
}

#[tokio::test]
async fn a_since_past_the_latest_seq_is_a_gap_not_a_catch_up() {
    // A wiped store, or a cursor persisted by a buggy app: nothing to page.
    let server = Server::start_with(|config| config.max_recovery = 10).await;
    for n in 1..=5 {
        publish(&server, "room:2", n).await;
    }
    let client = server.client("alice").await;
    let mut sub = client.subscribe_since("room:2", Seq(100)).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), sub.next_event())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            first,
            Event::Gap {
                since: Seq(100),
                resumed_at: Seq(5)
            }
        ),
        "{first:?}"
    );
    publish(&server, "room:2", 6).await;
    assert_eq!(next_message(&mut sub).await.seq, Some(Seq(6)));
}
