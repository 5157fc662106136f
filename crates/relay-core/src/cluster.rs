//! The backplane seam: how hubs on several nodes behave as one.
//!
//! What crosses nodes, and how:
//! - **Persistent messages** do not travel through the hub at all: the store tells the other
//!   nodes which channels a commit appended to (the Postgres store does it in the commit's
//!   own transaction), and each node calls [`Hub::remote_commit`], which brings its local
//!   subscribers up to that seq from the store through gap repair. The store is the truth;
//!   a lost notification costs latency, never a message, because [`Hub::resync`] catches up
//!   every channel after the transport may have lost some.
//! - **Live events** (ephemeral messages and signals) are not stored: the hub encodes them and
//!   hands them to a [`Backplane`], and a receiving node passes them to [`Hub::receive`].
//!
//! - **Presence** is cluster-wide: each node announces its local first joins and last leaves
//!   through the backplane, and keeps, per channel it has local subscribers for, who is
//!   online on the other nodes. A channel's remote presence is loaded when its first local
//!   subscriber joins ([`Backplane::online_elsewhere`]) and reconciled periodically
//!   ([`Hub::reconcile_presence`]), which is also how a dead node's users leave.
//!
//! - **Interest.** A transport that routes by channel (NATS) learns through
//!   [`Backplane::interest`] when this node starts or stops serving a channel (its first local
//!   subscriber joined, its last one left), and asks [`Hub::serves`] which it is now.
//! - **Committed messages, carried whole.** A transport whose store does not announce commits
//!   gets each commit of this node through [`Backplane::committed`], as an event holding the
//!   seq and the encoded frame; a receiving node hands it to [`Hub::receive`], which delivers
//!   it without reading the store. Subscribers' seq tracking repairs a lost or repeated one
//!   from the store, so the transport may lose events: that costs latency, never a message.
//!
//! A hub without a backplane (`Hub::new`, a single node) pays one `None` check per ephemeral
//! publish, signal and presence change, and one per persistent commit.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use relay_proto::{ChannelName, EncodedFrame, MessageId, Seq, ServerFrame, UserId};
use relay_store::StoredMessage;
use serde_json::value::RawValue;

use crate::error::HubError;
use crate::hub::Hub;

/// Carries this node's live events to the other nodes of a cluster.
pub trait Backplane: Send + Sync + 'static {
    /// The largest encoded event the transport carries; a larger one is refused with
    /// `too_large` before anything is delivered.
    fn max_event_bytes(&self) -> usize;

    /// Sends an encoded event about `channel` to the other nodes (those serving the channel,
    /// for a transport that routes by interest), without waiting. Live events are
    /// best-effort by nature: a transport that cannot keep up drops them.
    fn send(&self, channel: &ChannelName, event: &str);

    /// `user`'s first connection on this node subscribed to `channel` (`online`), or its
    /// last one here left. `event` announces it to the other nodes; a transport that keeps a
    /// presence table records the change with it. Called only for namespaces with presence
    /// or join/leave.
    fn presence(&self, channel: &ChannelName, user: &UserId, online: bool, event: &str) {
        let _ = (user, online);
        self.send(channel, event);
    }

    /// `user` lost access to `channel`: `event` ends its subscriptions there on every node.
    /// Unlike live events, an eviction must reach every node, whatever it serves: a
    /// transport that routes by interest sends it to all of them, and keeps it for later when
    /// it cannot send it now. The default sends it like any event.
    fn evict(&self, channel: &ChannelName, event: &str) {
        self.send(channel, event);
    }

    /// Whether this transport carries this node's commits ([`committed`](Self::committed)).
    /// False by default (the store announces them): the hub then encodes nothing for it on
    /// the publish path.
    fn carries_commits(&self) -> bool {
        false
    }

    /// This node committed `channel`'s message `seq`; `event` carries it whole (or, when it
    /// would not fit [`max_event_bytes`](Self::max_event_bytes), only its seq: receivers read
    /// the message from the store). A transport whose store announces commits itself
    /// (Postgres `NOTIFY`) ignores it, which is the default.
    fn committed(&self, channel: &ChannelName, seq: Seq, event: &str) {
        let _ = (channel, seq, event);
    }

    /// `channel` gained its first local subscriber or lost its last one. The call is a
    /// hint, made under no lock the transport may rely on: a transport that routes by
    /// interest asks [`Hub::serves`] what holds now, later, and (un)subscribes to match.
    fn interest(&self, channel: &ChannelName) {
        let _ = channel;
    }

    /// The transport's health and counters, for `/readyz` and metrics.
    fn status(&self) -> BackplaneStatus {
        BackplaneStatus::default()
    }

    /// Who is online in `channel` on the other live nodes, as (user, node id). A transport
    /// that cannot tell (its database is down) answers what it can, an empty list at worst:
    /// the periodic reconciliation repairs it.
    fn online_elsewhere<'a>(
        &'a self,
        channel: &'a ChannelName,
    ) -> BoxFuture<'a, Vec<(UserId, String)>> {
        let _ = channel;
        Box::pin(async { Vec::new() })
    }
}

/// A backplane's health and counters ([`Backplane::status`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackplaneStatus {
    /// What is degraded (the transport is disconnected, say), for `/readyz`; `None` when
    /// healthy. Local delivery and commits go on while degraded.
    pub degraded: Option<String>,
    /// Channels this node receives cluster traffic for; `None` for a transport that sends
    /// everything to every node.
    pub routed_channels: Option<u64>,
    /// Messages the transport received for this node (all kinds, its own heartbeats aside).
    pub received_messages: u64,
    /// Bytes the transport received for this node.
    pub received_bytes: u64,
    /// Events the transport dropped (its queue was full, or it was disconnected).
    pub dropped_events: u64,
}

/// A boxed future, for [`Backplane::online_elsewhere`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A live event from another node, as [`Hub::receive`] takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RemoteEvent {
    /// An ephemeral `message` frame for the channel's subscribers.
    Ephemeral(EncodedFrame, ChannelName),
    /// A `signal` frame for the connections of one user subscribed to the channel.
    Signal(EncodedFrame, ChannelName, UserId),
    /// A signal with a receipt or a time to live, held on its sender's node, which wants a
    /// `delivered` back: frame, channel, target, sender, the signal's id.
    Tracked(EncodedFrame, ChannelName, UserId, UserId, MessageId),
    /// A connection on another node received the tracked signal with this id (for this
    /// target).
    Delivered(ChannelName, UserId, MessageId),
    /// A user came online in a channel on the sending node (`true`), or went offline there.
    Presence(ChannelName, UserId, bool),
    /// A user lost access to a channel: its subscriptions there end on every node.
    Evict(ChannelName, UserId),
    /// A persistent message another node committed, whole.
    Committed(Box<StoredMessage>),
    /// Another node committed a channel's messages up to a seq (read them from the store).
    Pointer(ChannelName, Seq),
}

/// The event announcing that `channel` has messages up to `seq`, for a transport to send
/// when it could not carry a commit itself (it was disconnected, say): receivers catch up
/// from the store.
pub fn commit_pointer(channel: &ChannelName, seq: Seq) -> String {
    format!(
        r#"{{"k":"commit","ch":{},"seq":{}}}"#,
        quote(channel.as_str()),
        seq.0
    )
}

fn encode_committed(frame: &EncodedFrame) -> String {
    format!(r#"{{"k":"msg","f":{}}}"#, frame.as_str())
}

fn encode_evict(channel: &ChannelName, user: &UserId) -> String {
    format!(
        r#"{{"k":"evict","ch":{},"u":{}}}"#,
        quote(channel.as_str()),
        quote(user.as_str())
    )
}

fn encode_presence(channel: &ChannelName, user: &UserId, online: bool) -> String {
    format!(
        r#"{{"k":"presence","ch":{},"u":{},"on":{online}}}"#,
        quote(channel.as_str()),
        quote(user.as_str())
    )
}

/// `s` as a JSON string literal.
fn quote(s: &str) -> String {
    // Serializing a `str` cannot fail; the fallback only keeps the output valid JSON.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn encode_ephemeral(frame: &EncodedFrame) -> String {
    format!(r#"{{"k":"ephemeral","f":{}}}"#, frame.as_str())
}

fn encode_signal(frame: &EncodedFrame, to: &UserId, answer: bool) -> String {
    format!(
        r#"{{"k":"signal","to":{},"f":{}{}}}"#,
        quote(to.as_str()),
        frame.as_str(),
        if answer { r#","r":true"# } else { "" }
    )
}

fn decode(event: &str) -> Option<RemoteEvent> {
    let fields: HashMap<&str, &RawValue> = serde_json::from_str(event).ok()?;
    let kind: &str = serde_json::from_str(fields.get("k")?.get()).ok()?;
    if kind == "evict" {
        let channel: String = serde_json::from_str(fields.get("ch")?.get()).ok()?;
        let user: String = serde_json::from_str(fields.get("u")?.get()).ok()?;
        return Some(RemoteEvent::Evict(
            ChannelName::parse(&channel).ok()?,
            UserId::parse(&user).ok()?,
        ));
    }
    if kind == "presence" {
        let channel: String = serde_json::from_str(fields.get("ch")?.get()).ok()?;
        let user: String = serde_json::from_str(fields.get("u")?.get()).ok()?;
        let online: bool = serde_json::from_str(fields.get("on")?.get()).ok()?;
        return Some(RemoteEvent::Presence(
            ChannelName::parse(&channel).ok()?,
            UserId::parse(&user).ok()?,
            online,
        ));
    }
    if kind == "commit" {
        let channel: String = serde_json::from_str(fields.get("ch")?.get()).ok()?;
        let seq: u64 = serde_json::from_str(fields.get("seq")?.get()).ok()?;
        return Some(RemoteEvent::Pointer(
            ChannelName::parse(&channel).ok()?,
            Seq(seq),
        ));
    }
    // The frame is decoded, not trusted: whatever another node sent is validated here like
    // anything else that reaches a subscriber.
    let frame = ServerFrame::decode(fields.get("f")?.get().as_bytes()).ok()?;
    if kind == "msg" {
        let ServerFrame::Message {
            channel,
            id,
            seq: Some(seq),
            from,
            event,
            payload,
            ts,
            reference,
        } = frame
        else {
            return None;
        };
        return Some(RemoteEvent::Committed(Box::new(StoredMessage {
            channel,
            seq,
            id,
            from,
            event,
            payload,
            ts,
            reference,
        })));
    }
    match (kind, &frame) {
        (
            "ephemeral",
            ServerFrame::Message {
                channel, seq: None, ..
            },
        ) => {
            let channel = channel.clone();
            Some(RemoteEvent::Ephemeral(frame.encode(), channel))
        }
        // A receipt travels like a signal to the sender, and settles it on the sender's node.
        (
            "signal",
            ServerFrame::Receipt {
                channel,
                to,
                signal,
                status: relay_proto::ReceiptStatus::Delivered,
                ..
            },
        ) => Some(RemoteEvent::Delivered(channel.clone(), to.clone(), *signal)),
        // A read marker travels like a signal to its user's connections.
        ("signal", ServerFrame::Signal { channel, .. } | ServerFrame::Read { channel, .. }) => {
            let to: String = serde_json::from_str(fields.get("to")?.get()).ok()?;
            let to = UserId::parse(&to).ok()?;
            let channel = channel.clone();
            let answer = fields
                .get("r")
                .and_then(|r| serde_json::from_str::<bool>(r.get()).ok())
                .unwrap_or(false);
            if let (
                true,
                ServerFrame::Signal {
                    from,
                    signal: Some(id),
                    ..
                },
            ) = (answer, &frame)
            {
                let (from, id) = (from.clone(), *id);
                return Some(RemoteEvent::Tracked(frame.encode(), channel, to, from, id));
            }
            Some(RemoteEvent::Signal(frame.encode(), channel, to))
        }
        _ => None,
    }
}

impl Hub {
    /// Delivers a live event node `node` sent through its [`Backplane`]. Returns false (and
    /// delivers nothing) for an event that does not decode.
    pub fn receive(&self, node: &str, event: &str) -> bool {
        let Some(event) = decode(event) else {
            warn_undecodable(event);
            return false;
        };
        let (frame, channel, to) = match event {
            RemoteEvent::Ephemeral(frame, channel) => (frame, channel, None),
            RemoteEvent::Signal(frame, channel, to) => (frame, channel, Some(to)),
            RemoteEvent::Tracked(frame, channel, to, from, id) => {
                self.inner.counters.cluster_received();
                self.receive_tracked(&frame, &channel, &to, &from, id);
                return true;
            }
            RemoteEvent::Delivered(channel, to, id) => {
                self.inner.counters.cluster_received();
                self.settle(&channel, &to, &id);
                return true;
            }
            RemoteEvent::Presence(channel, user, online) => {
                self.remote_presence(node, &channel, &user, online);
                return true;
            }
            RemoteEvent::Evict(channel, user) => {
                self.evict(&channel, &user, crate::channels::REMOVED);
                return true;
            }
            RemoteEvent::Committed(message) => {
                self.inner.counters.cluster_received();
                self.deliver(&message);
                return true;
            }
            RemoteEvent::Pointer(channel, seq) => {
                self.inner.counters.cluster_received();
                self.remote_commit(&channel, seq);
                return true;
            }
        };
        self.inner.counters.cluster_received();
        if let Some(state) = self.inner.channels.get(&channel) {
            let sent = match &to {
                None => state.broadcast_message(&frame, |_, _| true),
                Some(to) => state.broadcast(&frame, |_, sub| &sub.user == to),
            };
            self.inner.counters.delivered(sent);
        }
        true
    }

    /// Delivers an event a transport received on `channel`'s own route (its NATS subject):
    /// only messages, commit pointers and signals of that very channel are accepted; anything
    /// else (another channel's event, presence, an eviction) is refused, so that a garbled or
    /// misrouted event cannot act beyond the channel it came for.
    pub fn receive_routed(&self, channel: &ChannelName, event: &str) -> bool {
        let Some(decoded) = decode(event) else {
            warn_undecodable(event);
            return false;
        };
        let routed = match &decoded {
            RemoteEvent::Ephemeral(_, c)
            | RemoteEvent::Signal(_, c, _)
            | RemoteEvent::Tracked(_, c, ..)
            | RemoteEvent::Delivered(c, ..)
            | RemoteEvent::Pointer(c, _) => c == channel,
            RemoteEvent::Committed(message) => &message.channel == channel,
            RemoteEvent::Presence(..) | RemoteEvent::Evict(..) => false,
        };
        if !routed {
            tracing::warn!(%channel, "cluster event for another channel or kind on this channel's route");
            return false;
        }
        self.receive("", event)
    }

    /// Another node committed messages to `channel` up to `seq`: local subscribers catch up
    /// from the store at once. Cheap when the channel has no local subscribers, or when they
    /// already have `seq`.
    pub fn remote_commit(&self, channel: &ChannelName, seq: Seq) {
        let Some(mut state) = self.inner.channels.get_mut(channel) else {
            return;
        };
        state.announced = state.announced.max(seq);
        let behind = state
            .subscribers
            .values()
            .any(|sub| sub.cursor().is_some_and(|cursor| cursor < seq));
        drop(state);
        if behind {
            self.schedule_tail_check(channel, Duration::ZERO);
        }
    }

    /// Another node committed messages to `channel` up to `seq`: where the messages after
    /// which this node's subscribers need them from, so that the caller reads them (many
    /// channels in one query) and hands them to [`Hub::deliver`]. `None` when the channel has
    /// no local subscriber behind `seq`. A gap too long for one read (over `max_recovery`) is
    /// left to gap repair instead, and answers `None` too.
    pub fn wanted_after(&self, channel: &ChannelName, seq: Seq) -> Option<Seq> {
        let mut state = self.inner.channels.get_mut(channel)?;
        state.announced = state.announced.max(seq);
        let from = state
            .subscribers
            .values()
            .filter_map(|sub| sub.cursor())
            .min()
            .filter(|cursor| *cursor < seq)?;
        let limit = self.inner.config.max_recovery.max(1) as u64;
        if seq.0 - from.0 > limit {
            drop(state);
            self.remote_commit(channel, seq);
            return None;
        }
        Some(from)
    }

    /// Whether this node serves `channel` now: it has local subscribers there (joining or
    /// started). What a transport that routes by interest subscribes to.
    pub fn serves(&self, channel: &ChannelName) -> bool {
        self.inner.channels.contains_key(channel)
    }

    /// The channels this node serves now ([`serves`](Self::serves)).
    pub fn served_channels(&self) -> Vec<ChannelName> {
        self.inner
            .channels
            .iter()
            .map(|entry| entry.key().clone())
            .collect()
    }

    /// Notifications for `channel` may have been lost (a transport subscribed to it only
    /// now): its local subscribers catch up from the store, those still joining included
    /// (the store's latest seq counts as announced, so they catch up once started).
    pub fn catch_up(&self, channel: &ChannelName) {
        if self.serves(channel) {
            self.catch_up_all(vec![channel.clone()]);
        }
    }

    /// Reads the latest seq of each channel from the store and treats it as announced
    /// ([`remote_commit`](Self::remote_commit)), in one task.
    fn catch_up_all(&self, channels: Vec<ChannelName>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let hub = std::sync::Arc::downgrade(&self.inner);
        runtime.spawn(async move {
            for channel in channels {
                let Some(inner) = hub.upgrade() else { return };
                let hub = Hub { inner };
                if !hub.serves(&channel) {
                    continue;
                }
                match hub.inner.store.latest_seq(&channel).await {
                    Ok(seq) => hub.remote_commit(&channel, seq),
                    // The store is down: a tail check retries until it answers.
                    Err(_) => hub.schedule_tail_check(&channel, Duration::ZERO),
                }
            }
        });
    }

    /// The backplane's health and counters; `None` on a single node.
    pub fn backplane_status(&self) -> Option<BackplaneStatus> {
        self.inner.backplane.as_ref().map(|b| b.status())
    }

    /// Notifications from other nodes may have been lost: every channel with local
    /// subscribers catches up from the store (see [`catch_up`](Self::catch_up)).
    pub fn resync(&self) {
        self.catch_up_all(self.served_channels());
    }

    /// Hands an ephemeral `message` frame to the backplane, if there is one. Refused with
    /// `too_large` (before anything is delivered) when it does not fit the transport.
    pub(crate) fn forward_ephemeral(
        &self,
        channel: &ChannelName,
        frame: &EncodedFrame,
    ) -> Result<(), HubError> {
        match &self.inner.backplane {
            None => Ok(()),
            Some(backplane) => forward(&**backplane, channel, encode_ephemeral(frame)),
        }
    }

    /// Hands a message this node committed to the backplane, whole when it fits the
    /// transport and as a pointer otherwise. Nothing on a single node.
    pub(crate) fn forward_commit(&self, message: &StoredMessage, frame: &EncodedFrame) {
        let Some(backplane) = self.commit_carrier() else {
            return;
        };
        let mut event = encode_committed(frame);
        if event.len() > backplane.max_event_bytes() {
            event = commit_pointer(&message.channel, message.seq);
        }
        backplane.committed(&message.channel, message.seq, &event);
    }

    /// A commit to `channel` may have landed without this node learning its seq (the append
    /// failed or was abandoned): after `delay`, the store's latest seq is announced to the
    /// other nodes as a pointer. Nothing on a single node.
    pub(crate) fn announce_tail_after(&self, channel: &ChannelName, delay: Duration) {
        if self.commit_carrier().is_none() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (hub, channel) = (std::sync::Arc::downgrade(&self.inner), channel.clone());
        runtime.spawn(async move {
            tokio::time::sleep(delay).await;
            let Some(inner) = hub.upgrade() else { return };
            let Ok(seq) = inner.store.latest_seq(&channel).await else {
                return;
            };
            if seq.0 > 0
                && let Some(backplane) = &inner.backplane
            {
                backplane.committed(&channel, seq, &commit_pointer(&channel, seq));
            }
        });
    }

    /// The backplane, when it carries this node's commits.
    pub(crate) fn commit_carrier(&self) -> Option<&Arc<dyn Backplane>> {
        self.inner
            .backplane
            .as_ref()
            .filter(|backplane| backplane.carries_commits())
    }

    /// Tells the backplane that this node may have started or stopped serving `channel`.
    pub(crate) fn interest_changed(&self, channel: &ChannelName) {
        if let Some(backplane) = &self.inner.backplane {
            backplane.interest(channel);
        }
    }

    /// Hands a `signal` frame for `to` to the backplane; false on a single node.
    pub(crate) fn forward_signal(
        &self,
        channel: &ChannelName,
        to: &UserId,
        frame: &EncodedFrame,
    ) -> Result<bool, HubError> {
        match &self.inner.backplane {
            None => Ok(false),
            Some(backplane) => {
                forward(&**backplane, channel, encode_signal(frame, to, false)).map(|()| true)
            }
        }
    }

    /// Refuses a signal too large for the backplane (as a tracked one, the larger), before
    /// it is delivered anywhere. Nothing on a single node.
    pub(crate) fn check_signal_size(
        &self,
        channel: &ChannelName,
        to: &UserId,
        frame: &EncodedFrame,
    ) -> Result<(), HubError> {
        let Some(backplane) = &self.inner.backplane else {
            return Ok(());
        };
        let size = encode_signal(frame, to, true).len();
        let limit = backplane.max_event_bytes();
        if size > limit {
            return Err(HubError::EventTooLarge {
                size,
                limit,
                channel: channel.clone(),
            });
        }
        Ok(())
    }

    /// Hands a tracked `signal` frame (one carrying its server id) for `to` to the
    /// backplane, asking the node that delivers it to answer `delivered`.
    pub(crate) fn forward_tracked(
        &self,
        channel: &ChannelName,
        to: &UserId,
        frame: &EncodedFrame,
    ) -> Result<(), HubError> {
        match &self.inner.backplane {
            None => Ok(()),
            Some(backplane) => forward(&**backplane, channel, encode_signal(frame, to, true)),
        }
    }
}

impl Hub {
    /// Tells the other nodes that `user` lost access to `channel`, so that its subscriptions
    /// there end on every node. Nothing on a single node.
    pub(crate) fn forward_evict(&self, channel: &ChannelName, user: &UserId) {
        if let Some(backplane) = &self.inner.backplane {
            backplane.evict(channel, &encode_evict(channel, user));
        }
    }

    /// Tells the other nodes that `user`'s first local connection joined `channel` (or its
    /// last one left). Nothing on a single node or where the namespace has no presence.
    pub(crate) fn announce_presence(&self, channel: &ChannelName, user: &UserId, online: bool) {
        let Some(backplane) = &self.inner.backplane else {
            return;
        };
        let policy = self.policy(channel);
        if policy.presence || policy.join_leave {
            backplane.presence(
                channel,
                user,
                online,
                &encode_presence(channel, user, online),
            );
        }
    }

    /// Applies another node's presence change to a channel with local subscribers, with
    /// `join`/`leave` when the user's cluster-wide presence changes.
    fn remote_presence(&self, node: &str, channel: &ChannelName, user: &UserId, online: bool) {
        let join_leave = self.policy(channel).join_leave;
        let Some(mut state) = self.inner.channels.get_mut(channel) else {
            return;
        };
        let was_online = state.is_online(user);
        if online {
            state
                .remote
                .entry(user.clone())
                .or_default()
                .insert(node.to_owned());
        } else if let Some(nodes) = state.remote.get_mut(user) {
            nodes.remove(node);
            if nodes.is_empty() {
                state.remote.remove(user);
            }
        }
        if join_leave && was_online != state.is_online(user) {
            let frame = if online {
                ServerFrame::Join {
                    channel: channel.clone(),
                    user: user.clone(),
                }
            } else {
                ServerFrame::Leave {
                    channel: channel.clone(),
                    user: user.clone(),
                }
            };
            state.broadcast(&frame.encode(), |_, _| true);
        }
        drop(state);
        if online {
            // Signals held here for this user go to its node at once.
            self.offer_held(channel, user);
        }
    }

    /// Loads who is online in `channel` on the other nodes, once per channel state, before a
    /// subscriber starts there (so its `subscribed.presence` is cluster-wide).
    pub(crate) async fn load_remote_presence(&self, channel: &ChannelName) {
        let Some(backplane) = &self.inner.backplane else {
            return;
        };
        let policy = self.policy(channel);
        if !(policy.presence || policy.join_leave) {
            return;
        }
        let loaded = self
            .inner
            .channels
            .get(channel)
            .is_none_or(|state| state.remote_loaded);
        if loaded {
            return;
        }
        let online = backplane.online_elsewhere(channel).await;
        if let Some(mut state) = self.inner.channels.get_mut(channel) {
            for (user, node) in online {
                state.remote.entry(user).or_default().insert(node);
            }
            state.remote_loaded = true;
        }
    }

    /// Who is online in `channel` across the cluster, for a channel without local
    /// subscribers (with local ones, the channel's state knows).
    pub(crate) async fn online_in_cluster(&self, channel: &ChannelName) -> Vec<UserId> {
        if self.inner.channels.contains_key(channel) {
            return self.online_users(channel);
        }
        let Some(backplane) = &self.inner.backplane else {
            return Vec::new();
        };
        let mut users: Vec<UserId> = backplane
            .online_elsewhere(channel)
            .await
            .into_iter()
            .map(|(user, _)| user)
            .collect();
        users.sort();
        users.dedup();
        users
    }

    /// The channels with local subscribers whose presence is kept (presence or join/leave
    /// on), for a periodic [`reconcile_presence`](Self::reconcile_presence).
    pub fn presence_channels(&self) -> Vec<ChannelName> {
        self.inner
            .channels
            .iter()
            .filter(|entry| {
                let policy = self.policy(entry.key());
                policy.presence || policy.join_leave
            })
            .map(|entry| entry.key().clone())
            .collect()
    }

    /// This node's online (channel, user) pairs in channels whose presence is kept.
    pub fn local_presence(&self) -> Vec<(ChannelName, UserId)> {
        let mut pairs = Vec::new();
        for entry in self.inner.channels.iter() {
            let policy = self.policy(entry.key());
            if policy.presence || policy.join_leave {
                pairs.extend(
                    entry
                        .online
                        .keys()
                        .map(|u| (entry.key().clone(), u.clone())),
                );
            }
        }
        pairs
    }

    /// Replaces the remote presence of `channels` with `online` (channel, user, node) as the
    /// cluster's table holds it now, announcing `join`/`leave` for every user whose
    /// cluster-wide presence changed: users of a node that died leave here. Channels in
    /// `channels` with no row in `online` have nobody online elsewhere.
    pub fn reconcile_presence(
        &self,
        channels: &[ChannelName],
        online: Vec<(ChannelName, UserId, String)>,
    ) {
        let mut by_channel: HashMap<ChannelName, HashMap<UserId, HashSet<String>>> = HashMap::new();
        for (channel, user, node) in online {
            by_channel
                .entry(channel)
                .or_default()
                .entry(user)
                .or_default()
                .insert(node);
        }
        for channel in channels {
            let remote = by_channel.remove(channel).unwrap_or_default();
            let join_leave = self.policy(channel).join_leave;
            let Some(mut state) = self.inner.channels.get_mut(channel) else {
                continue;
            };
            let before: HashSet<UserId> = state.online_users().into_iter().collect();
            state.remote = remote;
            state.remote_loaded = true;
            if !join_leave {
                continue;
            }
            let after: HashSet<UserId> = state.online_users().into_iter().collect();
            for user in after.difference(&before) {
                let frame = ServerFrame::Join {
                    channel: channel.clone(),
                    user: user.clone(),
                };
                state.broadcast(&frame.encode(), |_, _| true);
            }
            for user in before.difference(&after) {
                let frame = ServerFrame::Leave {
                    channel: channel.clone(),
                    user: user.clone(),
                };
                state.broadcast(&frame.encode(), |_, _| true);
            }
        }
    }
}

/// Logs an event that does not decode, shortened: it may be large, and it is not ours.
fn warn_undecodable(event: &str) {
    let end = (0..=event.len().min(200))
        .rev()
        .find(|i| event.is_char_boundary(*i))
        .unwrap_or(0);
    tracing::warn!(
        event = &event[..end],
        bytes = event.len(),
        "undecodable event from the cluster"
    );
}

fn forward(
    backplane: &dyn Backplane,
    channel: &ChannelName,
    event: String,
) -> Result<(), HubError> {
    let limit = backplane.max_event_bytes();
    if event.len() > limit {
        return Err(HubError::EventTooLarge {
            size: event.len(),
            limit,
            channel: channel.clone(),
        });
    }
    backplane.send(channel, &event);
    Ok(())
}

#[cfg(test)]
mod tests {
    use relay_proto::{Payload, Timestamp};

    use super::*;

    #[test]
    fn events_round_trip_and_foreign_ones_are_refused() {
        let channel = ChannelName::parse("chat:1").unwrap();
        let message = ServerFrame::Message {
            channel: channel.clone(),
            id: MessageId::now_v7(),
            seq: None,
            from: Some(UserId::parse("alice").unwrap()),
            event: Some("typing".into()),
            payload: Payload::from_json("{}").unwrap(),
            ts: Timestamp::now(),
            reference: None,
        }
        .encode();
        assert_eq!(
            decode(&encode_ephemeral(&message)),
            Some(RemoteEvent::Ephemeral(message.clone(), channel.clone()))
        );
        let signal = ServerFrame::Signal {
            channel: channel.clone(),
            from: UserId::parse("alice").unwrap(),
            payload: Payload::from_json(r#"{"sdp":"x"}"#).unwrap(),
            event: Some("offer".into()),
            signal: None,
        }
        .encode();
        let bob = UserId::parse("bob").unwrap();
        assert_eq!(
            decode(&encode_signal(&signal, &bob, false)),
            Some(RemoteEvent::Signal(
                signal.clone(),
                channel.clone(),
                bob.clone()
            ))
        );
        // A tracked signal asks for an answer; its receipt settles it on the sender's node.
        let id = MessageId::now_v7();
        let alice = UserId::parse("alice").unwrap();
        let tracked = ServerFrame::Signal {
            channel: channel.clone(),
            from: alice.clone(),
            payload: Payload::from_json("1").unwrap(),
            event: None,
            signal: Some(id),
        }
        .encode();
        assert_eq!(
            decode(&encode_signal(&tracked, &bob, true)),
            Some(RemoteEvent::Tracked(
                tracked.clone(),
                channel.clone(),
                bob.clone(),
                alice.clone(),
                id
            ))
        );
        assert_eq!(
            decode(&encode_signal(&tracked, &bob, false)),
            Some(RemoteEvent::Signal(
                tracked.clone(),
                channel.clone(),
                bob.clone()
            )),
            "delivered elsewhere already: nobody answers"
        );
        let receipt = ServerFrame::Receipt {
            id: None,
            channel: channel.clone(),
            to: bob.clone(),
            signal: id,
            status: relay_proto::ReceiptStatus::Delivered,
        }
        .encode();
        assert_eq!(
            decode(&encode_signal(&receipt, &alice, false)),
            Some(RemoteEvent::Delivered(channel.clone(), bob.clone(), id))
        );
        assert_eq!(
            decode(&encode_ephemeral(&signal)),
            None,
            "kind and frame must agree"
        );
        assert_eq!(decode(r#"{"k":"ephemeral","f":{"type":"nope"}}"#), None);
        assert_eq!(decode("[]"), None);
    }
}
