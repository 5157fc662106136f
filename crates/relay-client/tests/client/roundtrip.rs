//! Publish and subscribe with typed payloads; presence, signals, errors.

use relay_client::{ClientError, Event};
use relay_proto::{ErrorCode, Seq};
use serde::{Deserialize, Serialize};

use crate::support::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u32,
    items: Vec<String>,
    note: Option<String>,
}

#[tokio::test]
async fn typed_payloads_round_trip_through_publish_and_subscribe() {
    let server = Server::start().await;
    let alice = server.client("alice").await;
    let bob = server.client("bob").await;
    let mut orders = bob.subscribe("orders:eu").await.unwrap();
    assert_eq!(orders.start_seq(), Seq(0));

    let order = Order {
        id: 7,
        items: vec!["tea".into(), "scone".into()],
        note: None,
    };
    let ack = alice
        .publish_event("orders:eu", "ADDED", &order)
        .await
        .unwrap();
    assert_eq!(ack.seq, Some(Seq(1)));

    let message = next_message(&mut orders).await;
    assert_eq!(message.payload::<Order>().unwrap(), order);
    assert_eq!((message.seq, message.id), (Some(Seq(1)), ack.message_id));
    assert_eq!(message.event.as_deref(), Some("ADDED"));
    assert_eq!(message.from.unwrap().as_str(), "alice");
}

#[tokio::test]
async fn refusals_are_typed_errors() {
    let server = Server::start().await;
    let carol = server.client("carol").await;
    let err = carol.subscribe("dm:#alice,bob").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    let err = carol.publish("dm:#alice,bob", &1).await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Server {
                code: ErrorCode::Forbidden,
                ..
            }
        ),
        "{err:?}"
    );
    let _sub = carol.subscribe("chat:1").await.unwrap();
    assert!(matches!(
        carol.subscribe("chat:1").await,
        Err(ClientError::AlreadySubscribed(_))
    ));
}

#[tokio::test]
async fn signals_reach_the_peer_and_reveal_nothing_about_absent_ones() {
    let server = Server::start().await;
    let alice = server.client("alice").await;
    let bob = server.client("bob").await;
    let _a = alice.subscribe("dm:#alice,bob").await.unwrap();
    let mut b = bob.subscribe("dm:#alice,bob").await.unwrap();
    alice
        .signal(
            "dm:#alice,bob",
            "bob",
            Some("offer"),
            &serde_json::json!({"sdp": "v=0"}),
        )
        .await
        .unwrap();
    let event = tokio::time::timeout(std::time::Duration::from_secs(5), b.next_event())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(event, Event::Signal { ref from, event: Some(ref e), .. } if from.as_str() == "alice" && e == "offer")
    );
    drop(b);
    bob.ping().await.unwrap(); // the unsubscribe has been processed
    // Presence is off here: a signal to someone not there is answered like one delivered,
    // so signals cannot probe who is online.
    alice
        .signal("dm:#alice,bob", "bob", None, &1)
        .await
        .unwrap();
    // Only subscribers of the channel may signal in it.
    let err = bob
        .signal("dm:#alice,bob", "alice", None, &1)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
}

#[tokio::test]
async fn dropping_a_subscription_unsubscribes() {
    let server = Server::start().await;
    let alice = server.client("alice").await;
    let sub = alice.subscribe("chat:1").await.unwrap();
    assert_eq!(server.hub.stats().subscriptions, 1);
    drop(sub);
    alice.ping().await.unwrap();
    assert_eq!(server.hub.stats().subscriptions, 0);
}

#[tokio::test]
async fn read_markers_keep_a_user_s_devices_in_step() {
    let server = Server::start().await;
    let bob = server.client("bob").await;
    let phone = server.client("alice").await;
    let laptop = server.client("alice").await;
    let _p = phone.subscribe("room:7").await.unwrap();
    let mut l = laptop.subscribe("room:7").await.unwrap();
    for n in 0..4 {
        bob.publish("room:7", &n).await.unwrap();
    }
    assert_eq!(phone.mark_read("room:7", Seq(3)).await.unwrap(), Seq(3));
    assert_eq!(
        phone.mark_read("room:7", Seq(1)).await.unwrap(),
        Seq(3),
        "markers never move back"
    );
    let deadline = std::time::Duration::from_secs(5);
    loop {
        let event = tokio::time::timeout(deadline, l.next_event())
            .await
            .unwrap()
            .unwrap();
        match event {
            Event::Message(_) => {}
            Event::Read(seq) => {
                assert_eq!(seq, Seq(3));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn a_latest_subscription_starts_from_the_newest_and_restarts_from_it_after_a_reconnect() {
    let mut server = Server::start().await;
    let backend = server.client("backend").await;
    for price in 1..=3 {
        backend.publish("prices:eur", &price).await.unwrap();
    }
    let viewer = server.client("viewer").await;
    let mut prices = viewer.subscribe_latest("prices:eur").await.unwrap();
    let first = next_message(&mut prices).await;
    assert_eq!(first.seq, Some(Seq(3)), "the current value first");
    assert_eq!(first.payload.as_str(), "3");
    let mut events = viewer.connection_events();
    server.stop().await;
    server.serve().await;
    wait_for(&mut events, |e| {
        matches!(e, relay_client::ConnectionEvent::Connected { .. })
    })
    .await;
    let backend = server.client("backend2").await;
    backend.publish("prices:eur", &4).await.unwrap();
    // Restored without `since`: the newest again (seq 3 or 4, depending on the race with
    // the publish), then 4; never a gap.
    let mut last = 0;
    while last < 4 {
        match tokio::time::timeout(std::time::Duration::from_secs(10), prices.next_event())
            .await
            .unwrap()
            .unwrap()
        {
            Event::Message(m) => last = m.seq.unwrap().0,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(last, 4);
}
