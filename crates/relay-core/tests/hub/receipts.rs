//! Signals with a receipt or a time to live: `delivered` at once, `held` until the target
//! subscribes, `expired` when its time runs out; bounds on what is held.

use std::time::Duration;

use relay_proto::{ErrorCode, MessageId, ReceiptStatus, ServerFrame};
use serde_json::{Value, json};

use crate::support::*;

fn offer(extra: Value) -> Value {
    let mut frame = json!({"type": "signal", "id": 7, "channel": "call:1", "to": "bob", "event": "offer", "payload": {"sdp": "v=0"}});
    if let (Some(frame), Some(extra)) = (frame.as_object_mut(), extra.as_object()) {
        frame.extend(extra.clone());
    }
    frame
}

/// The receipts among `frames`: (frame id echoed, signal id, status).
fn receipts(frames: &[ServerFrame]) -> Vec<(bool, MessageId, ReceiptStatus)> {
    frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Receipt {
                id, signal, status, ..
            } => Some((id.is_some(), *signal, *status)),
            _ => None,
        })
        .collect()
}

/// The server ids of the signals among `frames`.
fn signal_ids(frames: &[ServerFrame]) -> Vec<Option<MessageId>> {
    frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Signal { signal, .. } => Some(*signal),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_signal_received_at_once_is_delivered() {
    let t = TestHub::new();
    let (alice, bob) = (t.connect("alice"), t.connect("bob"));
    alice.subscribe("call:1").await;
    bob.subscribe("call:1").await;
    alice.send(offer(json!({"receipt": true}))).await;
    let got = receipts(&alice.frames());
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].0, got[0].2), (true, ReceiptStatus::Delivered));
    assert_eq!(signal_ids(&bob.frames()), [Some(got[0].1)]);
    // Without receipt nor ttl: no id, no receipt, as before.
    alice.send(offer(json!({}))).await;
    assert!(alice.frames().is_empty());
    assert_eq!(signal_ids(&bob.frames()), [None]);
}

#[tokio::test]
async fn a_held_signal_is_delivered_when_the_target_subscribes() {
    let t = TestHub::new();
    let alice = t.connect("alice");
    alice.subscribe("call:1").await;
    alice
        .send(offer(json!({"receipt": true, "ttl_ms": 60_000})))
        .await;
    let held = receipts(&alice.frames());
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].2, ReceiptStatus::Held);
    assert_eq!(t.hub.stats().held_signals, 1);
    // A second one, without a receipt: held all the same, and nothing said.
    alice.send(offer(json!({"ttl_ms": 60_000}))).await;
    assert!(alice.frames().is_empty());

    let bob = t.connect("bob");
    let frames = bob.subscribe("call:1").await;
    assert!(
        matches!(frames.first(), Some(ServerFrame::Subscribed { .. })),
        "subscribed comes first: {frames:?}"
    );
    let ids = signal_ids(&frames);
    assert_eq!(ids.len(), 2, "both held signals, in order: {frames:?}");
    assert_eq!(ids[0], Some(held[0].1));
    let done = receipts(&alice.frames());
    assert_eq!(done, [(true, held[0].1, ReceiptStatus::Delivered)]);
    assert_eq!(t.hub.stats().held_signals, 0);
    // Delivered once: another connection of bob's gets nothing.
    let phone = t.connect("bob");
    assert!(signal_ids(&phone.subscribe("call:1").await).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_held_signal_nobody_takes_expires() {
    let t = TestHub::new();
    let alice = t.connect("alice");
    alice.subscribe("call:1").await;
    alice
        .send(offer(json!({"receipt": true, "ttl_ms": 500})))
        .await;
    assert_eq!(receipts(&alice.frames())[0].2, ReceiptStatus::Held);
    let expired = receipts(&alice.next_batch().await);
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].2, ReceiptStatus::Expired);
    assert_eq!(t.hub.stats().held_signals, 0);
    // Too late: bob gets nothing.
    let bob = t.connect("bob");
    assert!(signal_ids(&bob.subscribe("call:1").await).is_empty());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(alice.frames().is_empty(), "one final receipt only");
}

#[tokio::test]
async fn without_a_ttl_a_receipt_says_expired_at_once() {
    let t = TestHub::new();
    let alice = t.connect("alice");
    alice.subscribe("call:1").await;
    alice.send(offer(json!({"receipt": true}))).await;
    let got = receipts(&alice.frames());
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].2, ReceiptStatus::Expired);
    assert_eq!(t.hub.stats().held_signals, 0);
}

#[tokio::test]
async fn held_signals_are_bounded_and_so_is_their_ttl() {
    // No frame rate limit: the bounds looked at are those of held signals.
    let t = TestHub::with_config(relay_core::HubConfig {
        user_limits: relay_core::FrameLimits::UNLIMITED,
        repair_delay: Duration::ZERO,
        ..relay_core::HubConfig::default()
    });
    let alice = t.connect("alice");
    alice.subscribe("call:1").await;
    let too_long = offer(json!({"ttl_ms": 301_000}));
    alice.send(too_long).await;
    assert_eq!(error_code(&alice.frames()), Some(ErrorCode::BadRequest));
    for _ in 0..relay_core::MAX_HELD_PER_TARGET {
        alice.send(offer(json!({"ttl_ms": 60_000}))).await;
    }
    assert!(alice.frames().is_empty());
    alice.send(offer(json!({"ttl_ms": 60_000}))).await;
    assert_eq!(error_code(&alice.frames()), Some(ErrorCode::RateLimited));
    // Another target still has room.
    alice
        .send(json!({"type": "signal", "channel": "call:1", "to": "carol", "payload": 1, "ttl_ms": 60_000}))
        .await;
    assert!(alice.frames().is_empty());
    assert_eq!(
        t.hub.stats().held_signals,
        relay_core::MAX_HELD_PER_TARGET + 1
    );
    // One connection holds at most MAX_HELD_PER_CONNECTION, whatever the targets.
    let mut held = relay_core::MAX_HELD_PER_TARGET + 1;
    let mut target = 0;
    while held < relay_core::MAX_HELD_PER_CONNECTION {
        target += 1;
        let to = format!("user{}", target / 60);
        alice
            .send(json!({"type": "signal", "channel": "call:1", "to": to, "payload": 1, "ttl_ms": 60_000}))
            .await;
        assert!(alice.frames().is_empty(), "{held}");
        held += 1;
    }
    alice
        .send(json!({"type": "signal", "channel": "call:1", "to": "zed", "payload": 1, "ttl_ms": 60_000}))
        .await;
    assert_eq!(error_code(&alice.frames()), Some(ErrorCode::RateLimited));
    // Another connection has its own room.
    let other = t.connect("alice");
    other.subscribe("call:1").await;
    other
        .send(json!({"type": "signal", "channel": "call:1", "to": "zed", "payload": 1, "ttl_ms": 60_000}))
        .await;
    assert!(other.frames().is_empty());
}
