//! One node of a cluster on Postgres (`--cluster postgres`): the hub's backplane is the
//! store's notifier and presence table, and a feed task turns the other nodes'
//! notifications into `Hub::remote_commit`, `Hub::receive` and `Hub::resync`. The node holds
//! an expiring registration row while it runs (which also refuses a second live node with
//! its id), and every quarter of its lifetime renews it and reconciles presence with the
//! table: that is how the users of a node that died leave, within the lifetime plus a
//! quarter of it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use relay_core::{Backplane, BoxFuture, Hub, HubConfig};
use relay_proto::{ChannelName, Seq, UserId};
use relay_store::{FeedItem, NoticeBody, PgNotifier, PgStore, StoreError, Wanted};
use tokio::task::JoinHandle;

/// Why a node could not join its cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Another live node holds this node id.
    #[error("node id {0:?} is held by another live node; give each node its own --node-id")]
    DuplicateNodeId(String),
    /// The database failed.
    #[error("cannot register the node: {0}")]
    Store(#[from] StoreError),
}

/// A running cluster node. Dropping it stops its tasks at once; [`leave`](Self::leave)
/// also removes its registration.
pub struct ClusterNode {
    store: PgStore,
    node_id: String,
    tasks: Vec<JoinHandle<()>>,
}

struct PgBackplane {
    notifier: PgNotifier,
    store: PgStore,
    node_id: String,
}

impl Backplane for PgBackplane {
    fn max_event_bytes(&self) -> usize {
        self.notifier.max_event_bytes()
    }

    fn send(&self, _channel: &ChannelName, event: &str) {
        if !self.notifier.send(event) {
            tracing::warn!("cluster event queue full: a live event was dropped");
        }
    }

    fn presence(&self, channel: &ChannelName, user: &UserId, online: bool, event: &str) {
        if !self.notifier.send_presence(channel, user, online, event) {
            tracing::warn!("cluster event queue full: a presence change waits for reconciliation");
        }
    }

    fn online_elsewhere<'a>(
        &'a self,
        channel: &'a ChannelName,
    ) -> BoxFuture<'a, Vec<(UserId, String)>> {
        Box::pin(async move {
            match self
                .store
                .online_elsewhere(&self.node_id, std::slice::from_ref(channel))
                .await
            {
                Ok(rows) => rows
                    .into_iter()
                    .map(|(_, user, node)| (user, node))
                    .collect(),
                Err(e) => {
                    tracing::warn!(error = %e, %channel, "cluster presence unavailable; reconciling later");
                    Vec::new()
                }
            }
        })
    }
}

impl ClusterNode {
    /// Registers node `node_id` (its row lives `ttl`, renewed every third of it) and builds
    /// its hub over `store`, which must have been opened with this node id as its
    /// `cluster_node` so that its commits are announced.
    pub async fn join(
        store: PgStore,
        config: HubConfig,
        node_id: &str,
        ttl: Duration,
    ) -> Result<(Hub, Self), ClusterError> {
        if !store.register_node(node_id, ttl).await? {
            return Err(ClusterError::DuplicateNodeId(node_id.to_owned()));
        }
        let backplane = Arc::new(PgBackplane {
            notifier: store.notifier(node_id),
            store: store.clone(),
            node_id: node_id.to_owned(),
        });
        let hub = Hub::with_backplane(Arc::new(store.clone()), config, backplane);
        let feed = tokio::spawn(follow(
            hub.clone(),
            store.clone(),
            store.cluster_feed(node_id),
        ));
        let heartbeat = tokio::spawn(maintain(
            hub.clone(),
            store.clone(),
            node_id.to_owned(),
            ttl,
        ));
        let node = Self {
            store,
            node_id: node_id.to_owned(),
            tasks: vec![feed, heartbeat],
        };
        Ok((hub, node))
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Stops the node's tasks and removes its registration (a clean shutdown).
    pub async fn leave(mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        if let Err(e) = self.store.unregister_node(&self.node_id).await {
            tracing::warn!(error = %e, "could not unregister the node");
        }
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Most feed items handled together: their commit pointers are read in one query.
const FEED_BATCH: usize = 256;

/// Feeds the other nodes' notifications into the hub. Commit pointers of everything queued
/// are merged (the highest seq per channel) and the messages local subscribers miss are read
/// in one query, then delivered; live events are delivered as they come.
async fn follow(hub: Hub, store: PgStore, mut feed: tokio::sync::mpsc::Receiver<FeedItem>) {
    let mut items = Vec::with_capacity(FEED_BATCH);
    while feed.recv_many(&mut items, FEED_BATCH).await > 0 {
        let mut commits: HashMap<ChannelName, Seq> = HashMap::new();
        for item in items.drain(..) {
            match item {
                FeedItem::Resync => {
                    hub.resync();
                    // Evictions announced while the listener was away never arrived.
                    let hub = hub.clone();
                    tokio::spawn(async move {
                        hub.revalidate_members().await;
                    });
                }
                FeedItem::Notice(notice) => match notice.body {
                    NoticeBody::Commits(pointers) => {
                        for (channel, seq) in pointers {
                            let last = commits.entry(channel).or_default();
                            *last = (*last).max(seq);
                        }
                    }
                    NoticeBody::Event(event) => {
                        hub.receive(&notice.node, &event);
                    }
                },
            }
        }
        let wanted: Vec<Wanted> = commits
            .into_iter()
            .filter_map(|(channel, up_to)| {
                let after = hub.wanted_after(&channel, up_to)?;
                Some(Wanted {
                    channel,
                    after,
                    up_to,
                })
            })
            .collect();
        if wanted.is_empty() {
            continue;
        }
        match store.committed(&wanted).await {
            Ok(messages) => {
                for message in &messages {
                    hub.deliver(message);
                }
            }
            Err(e) => {
                // Gap repair reads (and retries) per channel instead.
                tracing::warn!(error = %e, "cannot read other nodes' commits; repairing per channel");
                for w in wanted {
                    hub.remote_commit(&w.channel, w.up_to);
                }
            }
        }
    }
}

/// Every quarter of the node's lifetime: renews its registration, rewrites its presence
/// rows from the hub, and reconciles the hub's view of the other nodes' presence.
async fn maintain(hub: Hub, store: PgStore, node_id: String, ttl: Duration) {
    let mut every = tokio::time::interval(ttl / 4);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        if let Err(e) = store.renew_node(&node_id, ttl).await {
            tracing::warn!(error = %e, "could not renew the node's registration");
            continue;
        }
        if let Err(e) = store
            .replace_presence(&node_id, &hub.local_presence())
            .await
        {
            tracing::warn!(error = %e, "could not record this node's presence");
        }
        let channels = hub.presence_channels();
        match store.online_elsewhere(&node_id, &channels).await {
            Ok(online) => hub.reconcile_presence(&channels, online),
            Err(e) => tracing::warn!(error = %e, "could not read the cluster's presence"),
        }
    }
}
