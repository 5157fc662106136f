//! [`Hub`]: the registry of channels and connections, and the publish pipeline.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use relay_proto::{
    ChannelName, CloseCode, EncodedFrame, ErrorCode, MessageId, Payload, Seq, ServerFrame,
    Timestamp, UserId,
};
use relay_store::{HistoryQuery, NewMessage, Store, StoredMessage};

use crate::connection::Connection;
use crate::error::HubError;
use crate::identity::Identity;
use crate::outbox::Outbox;
use crate::policy::{NamespacePolicy, Persistence, Policies, PublishRule, SubscribeRule};
use crate::registry::{ChannelState, ConnId, Subscriber};

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
        }
    }
}

/// A publish from trusted code embedding the hub (a backend broadcasting "ADDED" events).
#[derive(Debug, Clone)]
pub struct Publish {
    /// The channel.
    pub channel: ChannelName,
    /// Opaque JSON.
    pub payload: Payload,
    /// Event name.
    pub event: Option<String>,
    /// Live-only.
    pub ephemeral: bool,
    /// The user it is published as; `None` for the server itself.
    pub from: Option<UserId>,
}

impl Publish {
    /// A persistent server publish with no event.
    pub fn new(channel: ChannelName, payload: Payload) -> Self {
        Self {
            channel,
            payload,
            event: None,
            ephemeral: false,
            from: None,
        }
    }

    /// Sets the event name.
    pub fn event(mut self, event: impl Into<String>) -> Self {
        self.event = Some(event.into());
        self
    }
}

/// The outcome of a publish: what the `ack` carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The channel.
    pub channel: ChannelName,
    /// The message id.
    pub id: MessageId,
    /// Its seq; `None` for an ephemeral message.
    pub seq: Option<Seq>,
    /// Server time of the publish.
    pub ts: Timestamp,
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
    pub(crate) connections: DashMap<ConnId, Arc<Outbox>>,
    next_connection: AtomicU64,
    pub(crate) counters: Counters,
}

/// Running totals kept with relaxed atomics: one increment per publish or error, never per
/// subscriber.
#[derive(Default)]
pub(crate) struct Counters {
    delivered: AtomicU64,
    errors: [AtomicU64; ERROR_CODES.len()],
}

const ERROR_CODES: [ErrorCode; 8] = [
    ErrorCode::BadRequest,
    ErrorCode::Unauthorized,
    ErrorCode::Forbidden,
    ErrorCode::NotFound,
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

    fn delivered(&self, n: usize) {
        self.delivered.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Totals since the hub started, for metrics.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HubCounters {
    /// Messages handed to subscribers' outboxes (one per subscriber per message).
    pub delivered: u64,
    /// `error` frames sent, by code.
    pub errors: Vec<(ErrorCode, u64)>,
}

impl Hub {
    /// A hub over `store`.
    pub fn new(store: Arc<dyn Store>, config: HubConfig) -> Self {
        let inner = Inner {
            config,
            store,
            channels: DashMap::new(),
            connections: DashMap::new(),
            next_connection: AtomicU64::new(1),
            counters: Counters::default(),
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
            .with_replay_limit(replay_limit);
        let outbox = Arc::new(outbox);
        self.inner.connections.insert(id, outbox.clone());
        Connection::new(self.clone(), id, identity, outbox)
    }

    /// Closes every connection's outbox (graceful shutdown: 1001).
    pub fn close_all(&self, code: CloseCode, reason: &'static str) {
        for entry in self.inner.connections.iter() {
            entry.value().close(code, reason);
        }
    }

    /// Counts of what the hub holds.
    pub fn stats(&self) -> HubStats {
        let mut stats = HubStats {
            connections: self.inner.connections.len(),
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
            errors: ERROR_CODES
                .iter()
                .zip(&c.errors)
                .map(|(code, n)| (*code, n.load(Ordering::Relaxed)))
                .collect(),
        }
    }

    /// Users with a connection subscribed to `channel` on this hub, sorted.
    pub fn presence(&self, channel: &ChannelName) -> Vec<UserId> {
        self.inner
            .channels
            .get(channel)
            .map(|c| c.online_users())
            .unwrap_or_default()
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
        if !channel.admits(&identity.user) {
            return Err(HubError::forbidden(
                channel,
                "user is not listed in the channel name",
            ));
        }
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

    /// Publishes from trusted code: no authorization, but the namespace's size limit and
    /// persistence rules apply. Resolves once the message is stored (persistent) and handed to
    /// every local subscriber.
    pub async fn publish(&self, publish: Publish) -> Result<Published, HubError> {
        self.publish_from(publish, None).await
    }

    pub(crate) async fn publish_from(
        &self,
        publish: Publish,
        origin: Option<ConnId>,
    ) -> Result<Published, HubError> {
        let Publish {
            channel,
            payload,
            event,
            ephemeral,
            from,
        } = publish;
        let policy = self.policy(&channel);
        if payload.len() > policy.max_payload_bytes {
            return Err(HubError::TooLarge {
                size: payload.len(),
                limit: policy.max_payload_bytes,
                namespace: channel.namespace().to_owned(),
            });
        }
        let ephemeral = match policy.persistence {
            Persistence::EphemeralOnly => true,
            Persistence::PersistentOnly if ephemeral => {
                return Err(HubError::forbidden(
                    &channel,
                    "ephemeral messages are not allowed",
                ));
            }
            _ => ephemeral,
        };
        let message = NewMessage {
            from,
            event,
            ..NewMessage::new(channel, payload)
        };
        if ephemeral {
            let published = Published {
                channel: message.channel.clone(),
                id: message.id,
                seq: None,
                ts: message.ts,
            };
            self.deliver_ephemeral(message, origin);
            return Ok(published);
        }
        let max_history = policy.max_history;
        let stored = self.commit_and_deliver(message, origin).await?;
        if let Some(keep) = max_history
            && let Err(e) = self.inner.store.trim(&stored.channel, keep).await
        {
            tracing::warn!(channel = %stored.channel, error = %e, "trimming history failed");
        }
        Ok(Published {
            channel: stored.channel,
            id: stored.id,
            seq: Some(stored.seq),
            ts: stored.ts,
        })
    }

    async fn commit_and_deliver(
        &self,
        message: NewMessage,
        origin: Option<ConnId>,
    ) -> Result<StoredMessage, relay_store::StoreError> {
        // Until the delivery below has happened, this guard stands for it: if the append
        // fails (it may still have committed: the connection broke on the way back) or the
        // caller goes away mid-append (its connection closed), dropping the guard checks the
        // channel's tail from the store, so no subscriber waits for a message nobody
        // delivers. Cheaper than a task per publish, which would also break the batching of
        // a publisher's frames.
        let mut guard = TailGuard {
            hub: self,
            channel: message.channel.clone(),
            armed: true,
        };
        let stored = self.inner.store.append(message).await?;
        self.deliver_from(&stored, origin);
        guard.armed = false;
        Ok(stored)
    }

    /// Schedules a repair that also brings live subscribers up to the store's latest seq.
    /// Cheap when the channel has no local subscribers (nothing to do).
    fn check_tail(&self, channel: &ChannelName) {
        if let Some(mut state) = self.inner.channels.get_mut(channel) {
            state.tail_check = true;
            let schedule = !state.repair_scheduled;
            state.repair_scheduled = true;
            drop(state);
            if schedule {
                self.schedule_repair(channel.clone());
            }
        }
    }

    /// Delivers a committed message to local subscribers, in seq order.
    ///
    /// This is the seam for multi-node fan-out: a backplane that learns of a message
    /// committed by another node calls this. Messages may arrive in any order and more than
    /// once; each subscriber still sees every seq exactly once, in order, with gaps filled
    /// from the store.
    pub fn deliver(&self, message: &StoredMessage) {
        self.deliver_from(message, None);
    }

    fn deliver_from(&self, message: &StoredMessage, origin: Option<ConnId>) {
        if !self.inner.channels.contains_key(&message.channel) {
            return;
        }
        // Encode once, outside the lock; every subscriber gets a reference to the same bytes.
        let frame = message.to_frame().encode();
        let echo = self.policy(&message.channel).echo;
        let Some(mut state) = self.inner.channels.get_mut(&message.channel) else {
            return;
        };
        let mut gap = false;
        for (id, sub) in state.subscribers.iter_mut() {
            let frame = (echo || origin != Some(*id)).then_some(&frame);
            gap |= sub.offer(message.seq, frame);
        }
        self.inner.counters.delivered(state.subscribers.len());
        if gap && !state.repair_scheduled {
            state.repair_scheduled = true;
            drop(state);
            self.schedule_repair(message.channel.clone());
        }
    }

    fn deliver_ephemeral(&self, message: NewMessage, origin: Option<ConnId>) {
        let Some(state) = self.inner.channels.get(&message.channel) else {
            return;
        };
        let frame = ServerFrame::Message {
            channel: message.channel,
            id: message.id,
            seq: None,
            from: message.from,
            event: message.event,
            payload: message.payload,
            ts: message.ts,
        }
        .encode();
        let sent = state.broadcast(&frame, |id, _| origin != Some(id));
        self.inner.counters.delivered(sent);
    }

    /// Sends a signal to every started connection of `to` subscribed to `channel`, except the
    /// sender's own; returns how many got it.
    pub(crate) fn signal(
        &self,
        channel: &ChannelName,
        to: &UserId,
        frame: &EncodedFrame,
        origin: ConnId,
    ) -> usize {
        let Some(state) = self.inner.channels.get(channel) else {
            return 0;
        };
        state.broadcast(frame, |id, sub| id != origin && &sub.user == to)
    }

    /// Registers a joining subscriber: it collects live messages until [`Self::start`]. It
    /// is not online (presence, `join`) until then, so a subscribe that fails while reading
    /// the store leaves no trace.
    pub(crate) fn add_subscriber(
        &self,
        channel: &ChannelName,
        id: ConnId,
        user: &UserId,
        outbox: Arc<Outbox>,
    ) {
        let mut state = self.inner.channels.entry(channel.clone()).or_default();
        state
            .subscribers
            .insert(id, Subscriber::joining(outbox, user.clone()));
    }

    /// Starts a joining subscriber: marks its user online (announcing `join` to the others if
    /// this is the user's first connection here), pushes its `subscribed` reply (built under
    /// the channel lock, so its presence list is exact), replays `history`, then whatever
    /// arrived while it was joining. Returns false if the subscriber is gone (the connection
    /// closed meanwhile).
    pub(crate) fn start(
        &self,
        channel: &ChannelName,
        id: ConnId,
        cursor: Seq,
        history: Vec<(Seq, EncodedFrame)>,
        reply: impl FnOnce(Option<Vec<UserId>>) -> ServerFrame,
    ) -> bool {
        let policy = self.policy(channel);
        let Some(mut guard) = self.inner.channels.get_mut(channel) else {
            return false;
        };
        let state = &mut *guard;
        let Some(user) = state.subscribers.get(&id).map(|s| s.user.clone()) else {
            return false;
        };
        let count = state.online.entry(user.clone()).or_insert(0);
        *count += 1;
        if *count == 1 && policy.join_leave {
            let frame = ServerFrame::Join {
                channel: channel.clone(),
                user,
            }
            .encode();
            state.broadcast(&frame, |other, _| other != id);
        }
        let users = policy.presence.then(|| state.online_users());
        let Some(sub) = state.subscribers.get_mut(&id) else {
            return false;
        };
        let _ = sub.outbox.push(reply(users).encode());
        let gap = sub.start(cursor, history);
        let schedule = gap && !state.repair_scheduled;
        state.repair_scheduled |= gap;
        drop(guard);
        if schedule {
            self.schedule_repair(channel.clone());
        }
        true
    }

    /// Removes a subscriber; announces `leave` when it was the user's last started
    /// connection and frees the channel's state when nobody is left. Returns whether it was
    /// subscribed.
    pub(crate) fn remove_subscriber(&self, channel: &ChannelName, id: ConnId) -> bool {
        let join_leave = self.policy(channel).join_leave;
        let Some(mut state) = self.inner.channels.get_mut(channel) else {
            return false;
        };
        let Some(sub) = state.subscribers.remove(&id) else {
            return false;
        };
        if sub.is_started()
            && let Some(count) = state.online.get_mut(&sub.user)
        {
            *count -= 1;
            if *count == 0 {
                state.online.remove(&sub.user);
                if join_leave {
                    let frame = ServerFrame::Leave {
                        channel: channel.clone(),
                        user: sub.user,
                    }
                    .encode();
                    state.broadcast(&frame, |_, _| true);
                }
            }
        }
        drop(state);
        self.inner
            .channels
            .remove_if(channel, |_, state| state.subscribers.is_empty());
        true
    }

    pub(crate) fn forget_connection(&self, id: ConnId) {
        self.inner.connections.remove(&id);
    }

    fn schedule_repair(&self, channel: ChannelName) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(%channel, "no tokio runtime: cannot repair a delivery gap");
            // Let a later delivery made on a runtime schedule the repair.
            if let Some(mut state) = self.inner.channels.get_mut(&channel) {
                state.repair_scheduled = false;
            }
            return;
        };
        let hub = Arc::downgrade(&self.inner);
        let delay = self.inner.config.repair_delay;
        runtime.spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(inner) = hub.upgrade() {
                Hub { inner }.repair(channel).await;
            }
        });
    }

    /// Fills the gaps of a channel's subscribers from the store.
    async fn repair(&self, channel: ChannelName) {
        let (from, tail) = {
            let Some(mut state) = self.inner.channels.get_mut(&channel) else {
                return;
            };
            state.repair_scheduled = false;
            let tail = std::mem::take(&mut state.tail_check);
            let from = state
                .subscribers
                .values()
                .filter_map(|s| if tail { s.cursor() } else { s.gap_cursor() })
                .min();
            (from, tail)
        };
        let Some(from) = from else {
            return;
        };
        let limit = self.inner.config.max_recovery.max(1);
        let store = &self.inner.store;
        let read = async {
            let committed = store.latest_seq(&channel).await?;
            let history = store
                .history(&channel, HistoryQuery::after(from, limit))
                .await?;
            Ok::<_, relay_store::StoreError>((committed, history))
        };
        let (mut committed, history) = match read.await {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(%channel, error = %e, "gap repair could not read the store; retrying");
                self.retry_repair(&channel);
                return;
            }
        };
        if history.len() == limit {
            // The page may have stopped short of what is committed: only trust what it holds.
            committed = committed.min(history.last().map_or(from, |m| m.seq));
        }
        let frames: Vec<(Seq, EncodedFrame)> = history
            .iter()
            .map(|m| (m.seq, m.to_frame().encode()))
            .collect();
        let mut gap = false;
        if let Some(mut state) = self.inner.channels.get_mut(&channel) {
            for sub in state.subscribers.values_mut() {
                // Only subscribers at or after `from` can trust this read to hold everything
                // they miss; one that fell behind it meanwhile waits for the next repair.
                match sub.cursor() {
                    Some(cursor) if cursor >= from => {
                        if sub.gap_cursor().is_some() {
                            gap |= sub.fill(&frames, committed);
                        } else if tail {
                            gap |= sub.catch_up(&frames, committed);
                        }
                    }
                    Some(_) => gap |= sub.gap_cursor().is_some(),
                    None => {}
                }
            }
        }
        if gap {
            self.retry_repair(&channel);
        }
    }

    fn retry_repair(&self, channel: &ChannelName) {
        if let Some(mut state) = self.inner.channels.get_mut(channel)
            && !state.repair_scheduled
        {
            state.repair_scheduled = true;
            drop(state);
            self.schedule_repair(channel.clone());
        }
    }
}

/// Checks a channel's tail when dropped armed; see `Hub::commit_and_deliver`.
struct TailGuard<'a> {
    hub: &'a Hub,
    channel: ChannelName,
    armed: bool,
}

impl Drop for TailGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.hub.check_tail(&self.channel);
        }
    }
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("stats", &self.stats()).finish()
    }
}
