//! Micro-benchmarks without sockets: fan-out of one message to 10,000 in-process subscribers
//! (publish, store append, encode once, push to every outbox, then drain them as writers
//! would), and frame decode/encode. `cargo bench -p relay-core --bench hub`.

#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use relay_core::{Connection, FrameLimits, Hub, HubConfig, Identity, Publish, RateLimit};
use relay_proto::{
    ChannelName, ClientFrame, MessageId, Payload, Seq, ServerFrame, Timestamp, UserId,
};
use relay_store::{MemoryRetention, MemoryStore};

const PUBLISH: &[u8] = br#"{"type":"publish","id":17,"channel":"chat:42","payload":{"t":1763719200123456,"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}"#;

fn fanout(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("fanout");
    for subscribers in [1_000usize, 10_000] {
        let hub = Hub::new(Arc::new(MemoryStore::new()), HubConfig::default());
        let channel = ChannelName::parse("bench:fanout").unwrap();
        let connections: Vec<Connection> = (0..subscribers)
            .map(|i| hub.connect(Identity::user(UserId::parse(&format!("u{i}")).unwrap())))
            .collect();
        runtime.block_on(async {
            for conn in &connections {
                conn.handle(ClientFrame::Subscribe {
                    id: None,
                    channel: channel.clone(),
                    since: None,
                    mode: relay_proto::SubscribeMode::Reliable,
                })
                .await;
            }
        });
        let payload = Payload::from_json(r#"{"t":1763719200123456,"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#).unwrap();
        let mut drained = Vec::new();
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_function(
            format!("publish_to_{subscribers}_subscribers_and_drain"),
            |b| {
                b.iter(|| {
                    runtime
                        .block_on(hub.publish(Publish::new(channel.clone(), payload.clone())))
                        .unwrap();
                    for conn in &connections {
                        drained.clear();
                        conn.outbox().try_drain(&mut drained);
                    }
                })
            },
        );
    }
    group.finish();
}

fn frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("frames");
    group.throughput(Throughput::Bytes(PUBLISH.len() as u64));
    group.bench_function("decode_publish", |b| {
        b.iter(|| ClientFrame::decode(std::hint::black_box(PUBLISH)).unwrap())
    });
    let message = ServerFrame::Message {
        channel: ChannelName::parse("chat:42").unwrap(),
        id: MessageId::now_v7(),
        seq: Some(Seq(123_456)),
        from: Some(UserId::parse("alice").unwrap()),
        event: None,
        payload: Payload::from_json(r#"{"t":1763719200123456,"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#).unwrap(),
        ts: Timestamp::now(),
        reference: None,
    };
    group.bench_function("encode_message", |b| {
        b.iter(|| std::hint::black_box(&message).encode())
    });
    group.bench_function("decode_message", |b| {
        b.iter_batched(
            || message.encode(),
            |f| ServerFrame::decode(f.as_bytes()).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// The cost of rate limiting on a client's publish: the same frame handled by a service
/// connection under the default service limits and with no limits (the token buckets are
/// checked per client frame, never per delivery).
fn limits(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("limits");
    for (name, limits) in [
        ("handle_publish_limited", FrameLimits::SERVICES),
        ("handle_publish_unlimited", FrameLimits::UNLIMITED),
    ] {
        let store = MemoryStore::with_retention(MemoryRetention {
            max_messages_per_channel: Some(1000),
            ..MemoryRetention::default()
        });
        let config = HubConfig {
            service_limits: FrameLimits {
                // Far above what the loop reaches, so that every frame is allowed.
                publish: limits.publish.map(|_| RateLimit::new(u32::MAX, u32::MAX)),
                frames: limits.frames.map(|_| RateLimit::new(u32::MAX, u32::MAX)),
                ..limits
            },
            ..HubConfig::default()
        };
        let hub = Hub::new(Arc::new(store), config);
        let conn = hub.connect(Identity::service(UserId::parse("backend").unwrap()));
        let mut drained = Vec::new();
        group.bench_function(name, |b| {
            b.iter(|| {
                runtime.block_on(conn.handle_text(PUBLISH));
                drained.clear();
                conn.outbox().try_drain(&mut drained);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, fanout, frames, limits);
criterion_main!(benches);
