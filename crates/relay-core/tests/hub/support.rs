//! Test helpers: a hub over a memory store and clients that speak JSON to it.

use std::sync::Arc;
use std::time::Duration;

use relay_core::{Batch, Connection, Hub, HubConfig, Identity, Policies};
use relay_proto::{ChannelName, Seq, ServerFrame, UserId};
use relay_store::{MemoryStore, Store};
use serde_json::{Value, json};

pub struct TestHub {
    pub hub: Hub,
    pub store: Arc<MemoryStore>,
}

impl TestHub {
    pub fn new() -> Self {
        Self::with_config(HubConfig {
            repair_delay: Duration::ZERO,
            ..HubConfig::default()
        })
    }

    pub fn with_policies(policies: Policies) -> Self {
        Self::with_config(HubConfig {
            policies,
            repair_delay: Duration::ZERO,
            ..HubConfig::default()
        })
    }

    pub fn with_config(config: HubConfig) -> Self {
        let store = Arc::new(MemoryStore::new());
        let hub = Hub::new(store.clone(), config);
        Self { hub, store }
    }

    pub fn connect(&self, user: &str) -> Client {
        Client {
            conn: self
                .hub
                .connect(Identity::user(UserId::parse(user).unwrap())),
        }
    }

    pub fn connect_as(&self, identity: Identity) -> Client {
        Client {
            conn: self.hub.connect(identity),
        }
    }

    pub async fn latest(&self, channel: &str) -> Seq {
        self.store.latest_seq(&ch(channel)).await.unwrap()
    }
}

pub fn ch(name: &str) -> ChannelName {
    ChannelName::parse(name).unwrap()
}

pub fn user(id: &str) -> UserId {
    UserId::parse(id).unwrap()
}

pub struct Client {
    pub conn: Connection,
}

impl Client {
    /// Sends one JSON frame and waits until the hub has handled it.
    pub async fn send(&self, frame: Value) {
        self.conn.handle_text(frame.to_string().as_bytes()).await;
    }

    /// Everything queued for this client so far, decoded.
    pub fn frames(&self) -> Vec<ServerFrame> {
        let mut out = Vec::new();
        self.conn.outbox().try_drain(&mut out);
        out.iter()
            .map(|f| ServerFrame::decode(f.as_bytes()).unwrap())
            .collect()
    }

    /// Waits (bounded) for the next batch of frames, for paths that finish in a background
    /// task.
    pub async fn next_batch(&self) -> Vec<ServerFrame> {
        let mut out = Vec::new();
        let batch = tokio::time::timeout(
            Duration::from_secs(5),
            self.conn.outbox().next_batch(&mut out),
        )
        .await
        .expect("a frame within 5 s");
        assert_eq!(batch, Batch::Frames);
        out.iter()
            .map(|f| ServerFrame::decode(f.as_bytes()).unwrap())
            .collect()
    }

    pub async fn subscribe(&self, channel: &str) -> Vec<ServerFrame> {
        self.send(json!({"type": "subscribe", "channel": channel}))
            .await;
        self.frames()
    }

    pub async fn publish(&self, channel: &str, payload: Value) -> Vec<ServerFrame> {
        self.send(json!({"type": "publish", "channel": channel, "payload": payload}))
            .await;
        self.frames()
    }
}

/// The seqs of the `message` frames among `frames`.
pub fn message_seqs(frames: &[ServerFrame]) -> Vec<u64> {
    frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Message { seq: Some(seq), .. } => Some(seq.0),
            _ => None,
        })
        .collect()
}

/// The payloads (as JSON values) of the `message` frames among `frames`.
pub fn payloads(frames: &[ServerFrame]) -> Vec<Value> {
    frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Message { payload, .. } => Some(payload.to_value::<Value>().unwrap()),
            _ => None,
        })
        .collect()
}

pub fn error_code(frames: &[ServerFrame]) -> Option<relay_proto::ErrorCode> {
    frames.iter().find_map(|f| match f {
        ServerFrame::Error { code, .. } => Some(*code),
        _ => None,
    })
}
