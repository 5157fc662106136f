//! A connection that never drains is closed with 4008; nobody else notices.

use relay_core::{Batch, HubConfig};
use relay_proto::CloseCode;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn slow_consumer_is_closed_with_4008_while_others_get_everything() {
    let t = TestHub::with_config(HubConfig {
        outbox_capacity: 32,
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
