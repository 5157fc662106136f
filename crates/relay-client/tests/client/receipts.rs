//! Signal receipts and held signals through the SDK: `signal_with_receipt` answers
//! `delivered` or `held`, and a held signal's outcome arrives as `Event::Receipt`.

use std::time::Duration;

use relay_client::Event;
use relay_proto::ReceiptStatus;

use crate::support::*;

async fn next_event(sub: &mut relay_client::Subscription) -> Event {
    tokio::time::timeout(Duration::from_secs(5), sub.next_event())
        .await
        .expect("an event within 5 s")
        .expect("subscription open")
}

#[tokio::test]
async fn receipts_say_delivered_at_once_or_after_the_target_subscribes() {
    let server = Server::start().await;
    let alice = server.client("alice").await;
    let bob = server.client("bob").await;
    let mut call = alice.subscribe("call:9").await.unwrap();

    // Bob is not there: held for up to a minute.
    let held = alice
        .signal_with_receipt(
            "call:9",
            "bob",
            Some("offer"),
            &serde_json::json!({"sdp": "v=0"}),
            Some(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert_eq!(held.status, ReceiptStatus::Held);
    let mut bobs = bob.subscribe("call:9").await.unwrap();
    match next_event(&mut bobs).await {
        Event::Signal { from, signal, .. } => {
            assert_eq!((from.as_str(), signal), ("alice", Some(held.signal)));
        }
        other => panic!("{other:?}"),
    }
    match next_event(&mut call).await {
        Event::Receipt { to, signal, status } => {
            assert_eq!(
                (to.as_str(), signal, status),
                ("bob", held.signal, ReceiptStatus::Delivered)
            );
        }
        other => panic!("{other:?}"),
    }

    // Bob is there now: delivered at once.
    let now = alice
        .signal_with_receipt("call:9", "bob", Some("ice"), &1, None)
        .await
        .unwrap();
    assert_eq!(now.status, ReceiptStatus::Delivered);
    assert_ne!(now.signal, held.signal);

    // Nobody, no ttl: expired at once.
    let nobody = alice
        .signal_with_receipt("call:9", "carol", None, &1, None)
        .await
        .unwrap();
    assert_eq!(nobody.status, ReceiptStatus::Expired);
}
