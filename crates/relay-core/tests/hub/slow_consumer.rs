//! A connection that never drains is closed with 4008; nobody else notices.

use relay_core::{Batch, FrameLimits, HubConfig, RateLimit};
use relay_proto::{CloseCode, ErrorCode, ServerFrame};
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn slow_consumer_is_closed_with_4008_while_others_get_everything() {
    let t = TestHub::with_config(HubConfig {
        outbox_capacity: 32,
        // The publisher floods on purpose: what is measured is the readers' side.
        user_limits: FrameLimits::UNLIMITED,
        ..HubConfig::default()
    });
    let slow = t.connect("slow");
    let fast = t.connect("fast");
    let publisher = t.connect("publisher");
    slow.subscribe("feed:1").await;
    fast.subscribe("feed:1").await;

    let mut received = Vec::new();
    for i in 0..500 {
        // Every publish completes without waiting on the slow reader.
        publisher
            .send(json!({"type": "publish", "channel": "feed:1", "payload": i}))
            .await;
        publisher.frames();
        received.extend(message_seqs(&fast.frames()));
    }
    assert_eq!(received, (1..=500).collect::<Vec<_>>());

    let mut out = Vec::new();
    let Batch::Closed(reason) = slow.conn.outbox().next_batch(&mut out).await else {
        panic!("slow consumer should be closed")
    };
    assert_eq!(reason.code, CloseCode::SlowConsumer);
}

#[tokio::test]
async fn a_flooding_publisher_is_refused_then_closed_with_4029_and_readers_see_only_what_passed() {
    let t = TestHub::with_config(HubConfig {
        user_limits: FrameLimits {
            publish: Some(RateLimit::new(1, 10)),
            ..FrameLimits::UNLIMITED
        },
        close_multiple: 3,
        ..HubConfig::default()
    });
    let reader = t.connect("reader");
    let flooder = t.connect("flooder");
    reader.subscribe("feed:1").await;
    for i in 0..100 {
        flooder
            .send(json!({"type": "publish", "channel": "feed:1", "payload": i}))
            .await;
    }
    let frames = flooder.frames();
    let acks = frames
        .iter()
        .filter(|f| matches!(f, ServerFrame::Ack { .. }))
        .count();
    let refused = frames
        .iter()
        .filter(|f| {
            matches!(
                f,
                ServerFrame::Error {
                    code: ErrorCode::RateLimited,
                    ..
                }
            )
        })
        .count();
    assert_eq!((acks, refused), (10, 10), "{frames:?}");
    let mut out = Vec::new();
    let Batch::Closed(reason) = flooder.conn.outbox().next_batch(&mut out).await else {
        panic!("the flooder should be closed")
    };
    assert_eq!(reason.code, CloseCode::RateLimited);
    assert_eq!(message_seqs(&reader.frames()), (1..=10).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_latest_subscriber_that_never_drains_holds_one_message_and_is_never_closed() {
    let t = TestHub::with_config(HubConfig {
        outbox_capacity: 8,
        user_limits: FrameLimits::UNLIMITED,
        ..HubConfig::default()
    });
    let publisher = t.connect("publisher");
    for i in 1..=3 {
        publisher
            .send(json!({"type": "publish", "channel": "prices:eur", "payload": i}))
            .await;
    }
    let dashboard = t.connect("dashboard");
    let reliable = t.connect("reliable");
    dashboard
        .send(json!({"type": "subscribe", "id": 1, "channel": "prices:eur", "mode": "latest"}))
        .await;
    reliable.subscribe("prices:eur").await;
    let first = dashboard.frames();
    assert!(
        matches!(&first[..], [ServerFrame::Subscribed { recovered: None, .. }, ServerFrame::Message { seq: Some(s), .. }] if s.0 == 3),
        "the newest message first, the current state: {first:?}"
    );
    for i in 4..=500 {
        publisher
            .send(json!({"type": "publish", "channel": "prices:eur", "payload": i}))
            .await;
        publisher
            .send(json!({"type": "publish", "channel": "prices:eur", "ephemeral": true, "event": "tick", "payload": i}))
            .await;
        publisher.frames();
        assert!(
            dashboard.conn.outbox().len() <= 1,
            "one message waiting at most"
        );
    }
    assert_eq!(
        reliable.conn.outbox().closed().map(|r| r.code),
        Some(CloseCode::SlowConsumer),
        "a reliable subscriber that never drains is closed"
    );
    assert_eq!(dashboard.conn.outbox().closed(), None);
    let last = dashboard.frames();
    assert!(
        matches!(&last[..], [ServerFrame::Message { seq: None, event: Some(e), payload, .. }] if e == "tick" && payload.as_str() == "500"),
        "only the newest, whatever its kind: {last:?}"
    );
    dashboard.send(json!({"type": "subscribe", "id": 2, "channel": "prices:usd", "mode": "latest", "since": 4})).await;
    let refused = dashboard.frames();
    assert!(
        matches!(
            &refused[..],
            [ServerFrame::Error {
                code: ErrorCode::BadRequest,
                ..
            }]
        ),
        "{refused:?}"
    );
    dashboard
        .send(json!({"type": "subscribe", "id": 3, "channel": "prices:usd", "mode": "fast"}))
        .await;
    let refused = dashboard.frames();
    assert!(
        matches!(
            &refused[..],
            [ServerFrame::Error {
                code: ErrorCode::BadRequest,
                ..
            }]
        ),
        "{refused:?}"
    );
    dashboard
        .send(json!({"type": "unsubscribe", "id": 4, "channel": "prices:eur"}))
        .await;
    publisher
        .send(json!({"type": "publish", "channel": "prices:eur", "payload": 501}))
        .await;
    assert!(
        matches!(&dashboard.frames()[..], [ServerFrame::Unsubscribed { .. }]),
        "nothing after the unsubscribe"
    );
}

#[tokio::test]
async fn a_latest_subscriber_takes_a_newer_seq_at_once_and_starts_from_the_newest_whatever_the_recovery_limits()
 {
    // No replay allowed at all: the newest message is still sent first.
    let t = TestHub::with_config(HubConfig {
        max_recovery: 0,
        max_replay_bytes: 0,
        ..HubConfig::default()
    });
    let publisher = t.connect("publisher");
    for i in 1..=3 {
        publisher
            .send(json!({"type": "publish", "channel": "cursor:1", "payload": i}))
            .await;
    }
    let viewer = t.connect("viewer");
    viewer
        .send(json!({"type": "subscribe", "id": 1, "channel": "cursor:1", "mode": "latest"}))
        .await;
    assert_eq!(message_seqs(&viewer.frames()), [3]);
    // Seq 5 from another node before 4: taken at once, nothing waits for 4.
    let five = relay_store::StoredMessage {
        channel: ch("cursor:1"),
        seq: relay_proto::Seq(5),
        id: relay_proto::MessageId::now_v7(),
        from: None,
        event: None,
        payload: relay_proto::Payload::from_json("5").unwrap(),
        ts: relay_proto::Timestamp::now(),
        reference: None,
    };
    t.hub.deliver(&five);
    assert_eq!(message_seqs(&viewer.frames()), [5]);
    publisher
        .send(json!({"type": "publish", "channel": "cursor:1", "payload": 4}))
        .await;
    assert!(
        viewer.frames().is_empty(),
        "seq 4 is older than what the viewer has"
    );
}
