//! A live dashboard on a high-rate state channel: a `latest` subscriber that cannot keep up
//! is never closed and always ends on the newest value, while a reliable subscriber as slow
//! is closed with 4008 and recovers with `since`.

use relay_proto::ServerFrame;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn a_latest_subscriber_too_slow_to_read_ends_on_the_newest_value() {
    let server = TestServer::start_with(|config| {
        config.outbox_capacity = 16;
        config.outbox_max_bytes = 64 * 1024;
    })
    .await;
    let mut dashboard = server.connect("dashboard").await;
    let frame = dashboard
        .request(json!({"type": "subscribe", "id": 1, "channel": "prices:eur", "mode": "latest"}))
        .await;
    assert!(
        matches!(
            frame,
            ServerFrame::Subscribed {
                recovered: None,
                ..
            }
        ),
        "{frame:?}"
    );
    let mut reliable = server.connect("reliable").await;
    reliable.subscribe("prices:eur").await;
    let mut backend = WsClient::connect(&server.ws_url(&server.service_token("backend"))).await;
    assert!(matches!(backend.recv().await, ServerFrame::Welcome { .. }));
    // Neither reader reads while 20 MB of prices go out: far more than the socket buffers.
    const PRICES: u64 = 2000;
    let pad = "x".repeat(10_000);
    for n in 1..=PRICES {
        let ack = backend
            .request(json!({"type": "publish", "channel": "prices:eur", "payload": {"n": n, "pad": pad}}))
            .await;
        assert!(matches!(ack, ServerFrame::Ack { .. }), "{ack:?}");
    }
    // The dashboard reads now: fewer frames than published, never closed, ending on the
    // newest price.
    let mut received = 0;
    let mut last = 0;
    while last < PRICES {
        match dashboard.recv().await {
            ServerFrame::Message { seq: Some(seq), .. } => {
                assert!(seq.0 > last, "newer each time");
                last = seq.0;
                received += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(received < PRICES, "older prices were skipped: {received}");
    dashboard.expect_nothing_pending().await;
    // The reliable reader as slow overflowed: its connection was dropped (its writer was
    // stuck on a full socket, so no close frame could be sent).
    assert!(
        reliable.is_dropped_by_the_server().await,
        "the reliable reader as slow is cut off"
    );
}
