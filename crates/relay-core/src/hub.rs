//! [`Hub`]: the engine's shared state (configuration, store, channels with local
//! subscribers, connections, counters), connecting, and the authorization of channel rights.
//!
//! The hub's behaviour is split by concern: the publish pipeline and fan-out in `publish`,
//! subscribers and presence in `subscribers`, gap repair in `repair`, channel records and
//! membership in `channels`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use relay_proto::{ChannelName, CloseCode, ErrorCode};
use relay_store::Store;

use crate::cluster::Backplane;
use crate::connection::{Connection, Peer};
use crate::error::HubError;
use crate::identity::Identity;
use crate::outbox::{Outbox, ReplayBudget};
use crate::policy::{NamespacePolicy, Policies, PublishRule, SubscribeRule};
use crate::rate::FrameLimits;
use crate::subscriber::{ChannelState, ConnId};

/// Tuning of a [`Hub`].
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Per-namespace policies.
    pub policies: Policies,
    /// Frames a connection may have queued before it is closed as a slow consumer (4008).
    pub outbox_capacity: usize,
    /// Bytes a connection may have queued before it is closed as a slow consumer (4008).
    pub outbox_max_bytes: usize,
    /// Subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Most messages a `subscribe {since}` replays; further behind answers `recovered: false`.
    pub max_recovery: usize,
    /// How long a subscriber waits on a gap in the sequence (messages that arrived out of
    /// order) before the hub reads the missing ones from the store.
    pub repair_delay: Duration,
    /// Frame rate limits of user connections (a namespace may set its own).
    pub user_limits: FrameLimits,
    /// Frame rate limits of service connections.
    pub service_limits: FrameLimits,
    /// A connection sending past this many times its rate limit (and burst) is closed with
    /// 4029.
    pub close_multiple: u32,
    /// Bytes of history one connection may have replayed and not yet written; a
    /// `subscribe {since}` whose replay would pass it answers `recovered: false`.
    pub max_replay_bytes: usize,
    /// Bytes of replayed history the whole hub holds at once; past it, recoveries answer
    /// `recovered: false` until replays in flight are written.
    pub replay_budget_bytes: usize,
    /// Channel records one user may create (services are not counted); `None`: no quota.
    pub max_channels_per_user: Option<u64>,
    /// Signals (sent with a receipt or a `ttl_ms`) this node holds at once for targets that
    /// are not connected; past it, such a signal is refused with `rate_limited`.
    pub max_held_signals: usize,
    /// The longest `ttl_ms` a signal may ask for.
    pub max_signal_ttl: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            policies: Policies::default(),
            outbox_capacity: 4096,
            outbox_max_bytes: 16 * 1024 * 1024,
            max_subscriptions: 1024,
            max_recovery: 1000,
            repair_delay: Duration::from_millis(20),
            user_limits: FrameLimits::USERS,
            service_limits: FrameLimits::SERVICES,
            close_multiple: 4,
            max_replay_bytes: 8 * 1024 * 1024,
            replay_budget_bytes: 256 * 1024 * 1024,
            max_channels_per_user: Some(1000),
            max_held_signals: 10_000,
            max_signal_ttl: Duration::from_secs(300),
        }
    }
}

/// Counts of what the hub holds; all zero once every connection is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HubStats {
    /// Open connections.
    pub connections: usize,
    /// Channels with at least one local subscriber.
    pub channels: usize,
    /// Subscriptions across all connections.
    pub subscriptions: usize,
    /// Online (user, channel) pairs.
    pub presence_entries: usize,
    /// Bytes of replayed history held (read for recoveries, or queued and not yet written).
    pub replay_bytes: usize,
    /// Signals held for targets not connected (or waiting for another node's `delivered`).
    pub held_signals: usize,
}

/// What a caller wants to do with a channel, for [`Hub::authorize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Subscribe, read history, see presence.
    Subscribe,
    /// Publish (or signal) from a client.
    Publish,
}

/// The engine: connections, subscriptions, presence, the publish pipeline and recovery.
/// Cheap to clone; every clone is the same hub.
#[derive(Clone)]
pub struct Hub {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: HubConfig,
    pub(crate) store: Arc<dyn Store>,
    /// Sharded map: fan-out to one channel locks one shard, never the whole registry.
    pub(crate) channels: DashMap<ChannelName, ChannelState>,
    pub(crate) connections: DashMap<ConnId, Arc<Peer>>,
    next_connection: AtomicU64,
    pub(crate) counters: Counters,
    /// Other nodes of a cluster; `None` on a single node.
    pub(crate) backplane: Option<Arc<dyn Backplane>>,
    /// Replayed history held across the hub.
    pub(crate) replay_budget: Arc<ReplayBudget>,
    /// Signals waiting for their target (or, in a cluster, for another node's `delivered`).
    pub(crate) held: crate::held::HeldSignals,
}

/// Running totals kept with relaxed atomics: one increment per publish or error, never per
/// subscriber.
#[derive(Default)]
pub(crate) struct Counters {
    delivered: AtomicU64,
    replays_refused: AtomicU64,
    cluster_received: AtomicU64,
    errors: [AtomicU64; ERROR_CODES.len()],
}

const ERROR_CODES: [ErrorCode; 9] = [
    ErrorCode::BadRequest,
    ErrorCode::Unauthorized,
    ErrorCode::Forbidden,
    ErrorCode::NotFound,
    ErrorCode::Conflict,
    ErrorCode::TooLarge,
    ErrorCode::RateLimited,
    ErrorCode::Unavailable,
    ErrorCode::Internal,
];

impl Counters {
    pub(crate) fn error(&self, code: ErrorCode) {
        if let Some(i) = ERROR_CODES.iter().position(|c| *c == code) {
            self.errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn replay_refused(&self) {
        self.replays_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn cluster_received(&self) {
        self.cluster_received.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn delivered(&self, n: usize) {
        self.delivered.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Totals since the hub started, for metrics.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HubCounters {
    /// Messages handed to subscribers' outboxes (one per subscriber per message).
    pub delivered: u64,
    /// Channel traffic other nodes sent this one through the backplane (messages, commit
    /// pointers carried as events, signals; presence and evictions aside), whether or not
    /// anyone here wanted it.
    pub cluster_received: u64,
    /// `subscribe {since}` answered `recovered: false` because the replay was over the
    /// connection's byte allowance or the hub's replay budget.
    pub replays_refused: u64,
    /// `error` frames sent, by code.
    pub errors: Vec<(ErrorCode, u64)>,
}

impl Hub {
    /// A hub over `store`: a single node.
    pub fn new(store: Arc<dyn Store>, config: HubConfig) -> Self {
        Self::build(store, config, None)
    }

    /// A hub that is one node of a cluster: live events go to the other nodes through
    /// `backplane`; see [`Backplane`] for what else the node must feed in.
    pub fn with_backplane(
        store: Arc<dyn Store>,
        config: HubConfig,
        backplane: Arc<dyn Backplane>,
    ) -> Self {
        Self::build(store, config, Some(backplane))
    }

    fn build(
        store: Arc<dyn Store>,
        config: HubConfig,
        backplane: Option<Arc<dyn Backplane>>,
    ) -> Self {
        let inner = Inner {
            replay_budget: Arc::new(ReplayBudget::new(config.replay_budget_bytes)),
            config,
            store,
            channels: DashMap::new(),
            connections: DashMap::new(),
            held: Default::default(),
            next_connection: AtomicU64::new(1),
            counters: Counters::default(),
            backplane,
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The store behind the hub.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The hub's configuration.
    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// The policy that applies to `channel`.
    pub fn policy(&self, channel: &ChannelName) -> &NamespacePolicy {
        self.inner.config.policies.get(channel.namespace())
    }

    /// Opens an in-process connection for an authenticated identity. The transport sends the
    /// `welcome` frame, feeds client frames to [`Connection::handle`] and drains
    /// [`Connection::outbox`]. Dropping the connection removes every trace of it.
    pub fn connect(&self, identity: Identity) -> Connection {
        let id = self.inner.next_connection.fetch_add(1, Ordering::Relaxed);
        let config = &self.inner.config;
        // A few full recoveries may queue at once; more means the client is not reading.
        let replay_limit = config
            .max_recovery
            .saturating_mul(4)
            .max(config.outbox_capacity);
        let outbox = Outbox::with_limits(config.outbox_capacity, config.outbox_max_bytes)
            .with_replay_limit(replay_limit)
            .with_replay_budget(self.inner.replay_budget.clone());
        let peer = Arc::new(Peer::new(outbox));
        self.inner.connections.insert(id, peer.clone());
        Connection::new(self.clone(), id, identity, peer)
    }

    /// Closes every connection's outbox (graceful shutdown: 1001).
    pub fn close_all(&self, code: CloseCode, reason: &'static str) {
        for entry in self.inner.connections.iter() {
            entry.value().outbox.close(code, reason);
        }
    }

    /// Counts of what the hub holds.
    pub fn stats(&self) -> HubStats {
        let mut stats = HubStats {
            connections: self.inner.connections.len(),
            replay_bytes: self.inner.replay_budget.used(),
            held_signals: self.inner.held.len(),
            ..HubStats::default()
        };
        for channel in self.inner.channels.iter() {
            stats.channels += 1;
            stats.subscriptions += channel.subscribers.len();
            stats.presence_entries += channel.online.len();
        }
        stats
    }

    /// Totals since the hub started.
    pub fn counters(&self) -> HubCounters {
        let c = &self.inner.counters;
        HubCounters {
            delivered: c.delivered.load(Ordering::Relaxed),
            cluster_received: c.cluster_received.load(Ordering::Relaxed),
            replays_refused: c.replays_refused.load(Ordering::Relaxed),
            errors: ERROR_CODES
                .iter()
                .zip(&c.errors)
                .map(|(code, n)| (*code, n.load(Ordering::Relaxed)))
                .collect(),
        }
    }

    /// Checks that `identity` may perform `action` on `channel`: the user limit first (it
    /// binds services too), then the namespace rule (which may read stored membership), which
    /// services pass.
    pub async fn authorize(
        &self,
        identity: &Identity,
        channel: &ChannelName,
        action: Action,
    ) -> Result<(), HubError> {
        // The user limit comes first, for services too.
        check_user_limit(identity, channel)?;
        if identity.is_service() {
            return Ok(());
        }
        let policy = self.policy(channel);
        let members_only = match action {
            Action::Subscribe => policy.subscribe == SubscribeRule::Members,
            Action::Publish => match policy.publish {
                PublishRule::None => {
                    return Err(HubError::forbidden(channel, "clients may not publish"));
                }
                PublishRule::Members => true,
                PublishRule::Subscribers => policy.subscribe == SubscribeRule::Members,
            },
        };
        let claim_needed = match action {
            Action::Subscribe => policy.subscribe == SubscribeRule::Claim,
            Action::Publish => {
                policy.publish == PublishRule::Subscribers
                    && policy.subscribe == SubscribeRule::Claim
            }
        };
        if claim_needed && !identity.claims(channel) {
            return Err(HubError::forbidden(
                channel,
                "token's channels claim does not allow it",
            ));
        }
        if members_only && !self.inner.store.is_member(channel, &identity.user).await? {
            return Err(HubError::forbidden(channel, "not a member"));
        }
        Ok(())
    }
}

/// The user limit of a name (`dm:#alice,bob`): it binds everyone, services too, and is
/// checked before any other right.
pub(crate) fn check_user_limit(identity: &Identity, channel: &ChannelName) -> Result<(), HubError> {
    if channel.admits(&identity.user) {
        Ok(())
    } else {
        Err(HubError::forbidden(
            channel,
            "user is not listed in the channel name",
        ))
    }
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("stats", &self.stats()).finish()
    }
}
