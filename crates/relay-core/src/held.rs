//! Signals sent with a receipt or a time to live (`signal {receipt, ttl_ms}`).
//!
//! Such a signal gets a server id. Delivered at once to a connection of the target here, it is
//! done (its receipt says `delivered`). Otherwise it is *held* on this node, the one its
//! sender is connected to, bounded in number: delivered to the target's first connection that
//! subscribes here, or, in a cluster, offered to the other nodes (at once, on the target's
//! presence elsewhere, and again after 1, 2, 4 and then every 8 s), where a node that
//! delivers it answers with a receipt routed back like a signal to the sender. The first
//! `delivered` settles it; when its time runs out first, it expires. Receipts go to the
//! sending connection only. A node remembers the tracked signals it delivered lately, so
//! that an offer repeated before its answer arrived is answered again, not delivered again.
//!
//! Held signals live in memory: a node that stops loses its held signals, and with it the
//! sending connections their receipts would go to.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use parking_lot::Mutex;
use relay_proto::{
    ChannelName, EncodedFrame, FrameId, MessageId, ReceiptStatus, ServerFrame, UserId,
};

use crate::error::HubError;
use crate::hub::Hub;
use crate::subscriber::ConnId;

/// The first pause before a held signal is offered to the other nodes of a cluster again;
/// it doubles after each offer, up to [`REOFFER_MAX`].
pub(crate) const REOFFER: Duration = Duration::from_secs(1);

/// The longest pause between two offers of a held signal.
pub(crate) const REOFFER_MAX: Duration = Duration::from_secs(8);

/// How long, in a cluster, a signal with a receipt and no `ttl_ms` waits for a `delivered`
/// from another node before it expires.
pub(crate) const CLUSTER_GRACE: Duration = Duration::from_secs(2);

/// Signals held for one target in one channel, at most.
pub const MAX_HELD_PER_TARGET: usize = 64;

/// Signals one connection may have held at once, at most.
pub const MAX_HELD_PER_CONNECTION: usize = 256;

/// Tracked signals a node remembers having delivered (the newest), to answer a repeated
/// offer without delivering it again.
const DELIVERED_MEMORY: usize = 4096;

/// A signal sent with a receipt or a time to live.
#[derive(Clone)]
pub(crate) struct Tracked {
    /// Its server id.
    pub(crate) id: MessageId,
    /// The channel.
    pub(crate) channel: ChannelName,
    /// The target.
    pub(crate) to: UserId,
    /// The `signal` frame, carrying `id`.
    pub(crate) frame: EncodedFrame,
    /// The sending connection, which gets the receipts, and its frame's id.
    pub(crate) origin: ConnId,
    pub(crate) frame_id: Option<FrameId>,
    /// Whether the sender asked for receipts.
    pub(crate) receipt: bool,
    /// How long it may be held.
    pub(crate) ttl: Option<Duration>,
}

/// The held signals of a hub, by id, by (channel, target) and by sending connection, and the
/// ids of the tracked signals it delivered lately.
#[derive(Default)]
pub(crate) struct HeldSignals {
    inner: Mutex<HeldInner>,
    delivered: Mutex<Delivered>,
}

#[derive(Default)]
struct HeldInner {
    by_id: HashMap<MessageId, Tracked>,
    /// The timer task of each held signal, stopped when the signal is settled otherwise.
    timers: HashMap<MessageId, tokio::task::AbortHandle>,
    by_target: HashMap<(ChannelName, UserId), HashSet<MessageId>>,
    by_origin: HashMap<ConnId, usize>,
}

impl HeldInner {
    fn insert(&mut self, signal: Tracked) {
        let key = (signal.channel.clone(), signal.to.clone());
        self.by_target.entry(key).or_default().insert(signal.id);
        *self.by_origin.entry(signal.origin).or_default() += 1;
        self.by_id.insert(signal.id, signal);
    }

    fn remove(&mut self, id: &MessageId) -> Option<Tracked> {
        let signal = self.by_id.remove(id)?;
        if let Some(timer) = self.timers.remove(id) {
            timer.abort();
        }
        let key = (signal.channel.clone(), signal.to.clone());
        if let Some(ids) = self.by_target.get_mut(&key) {
            ids.remove(id);
            if ids.is_empty() {
                self.by_target.remove(&key);
            }
        }
        if let Some(count) = self.by_origin.get_mut(&signal.origin) {
            *count -= 1;
            if *count == 0 {
                self.by_origin.remove(&signal.origin);
            }
        }
        Some(signal)
    }

    /// Why `signal` cannot be held now, if it cannot.
    fn refusal(&self, signal: &Tracked, max: usize) -> Option<String> {
        if self.by_id.len() >= max {
            return Some(format!(
                "this server holds {max} signals already; retry later"
            ));
        }
        let key = (signal.channel.clone(), signal.to.clone());
        if self.by_target.get(&key).map_or(0, HashSet::len) >= MAX_HELD_PER_TARGET {
            return Some(format!(
                "{MAX_HELD_PER_TARGET} signals for {} in {} are held already; retry later",
                signal.to, signal.channel
            ));
        }
        if self.by_origin.get(&signal.origin).copied().unwrap_or(0) >= MAX_HELD_PER_CONNECTION {
            return Some(format!(
                "this connection has {MAX_HELD_PER_CONNECTION} signals held already; retry later"
            ));
        }
        None
    }
}

/// The newest tracked signals this node delivered, oldest first.
#[derive(Default)]
struct Delivered {
    ids: HashSet<MessageId>,
    order: VecDeque<MessageId>,
}

impl Delivered {
    /// Records `id`; false if it was delivered already.
    fn first_time(&mut self, id: MessageId) -> bool {
        if !self.ids.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > DELIVERED_MEMORY
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
        true
    }
}

impl HeldSignals {
    /// How many signals are held.
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().by_id.len()
    }
}

impl Hub {
    /// Sends a signal with a receipt or a time to live; see the [module docs](self).
    pub(crate) fn signal_tracked(&self, signal: Tracked) -> Result<(), HubError> {
        let clustered = self.inner.backplane.is_some();
        // Refused for the transport before anything is delivered anywhere.
        self.check_signal_size(&signal.channel, &signal.to, &signal.frame)?;
        if self.deliver_signal_here(&signal) > 0 {
            // The target may have connections on other nodes too; none of them needs to
            // answer. Its size was checked above, so this cannot fail.
            let _ = self.forward_signal(&signal.channel, &signal.to, &signal.frame);
            self.send_receipt(&signal, ReceiptStatus::Delivered);
            return Ok(());
        }
        let runtime = tokio::runtime::Handle::try_current().ok();
        let wait = match (signal.ttl, clustered) {
            // Nothing could time a held signal out without a runtime: it is not held.
            (_, _) if runtime.is_none() => None,
            (Some(ttl), _) => Some(ttl),
            (None, true) => Some(CLUSTER_GRACE),
            (None, false) => None,
        };
        let (Some(wait), Some(runtime)) = (wait, runtime) else {
            if signal.receipt {
                self.send_receipt(&signal, ReceiptStatus::Expired);
                return Ok(());
            }
            return Err(HubError::NotFound(format!(
                "user {} is not subscribed to {}",
                signal.to, signal.channel
            )));
        };
        let (id, channel, to, frame) = (
            signal.id,
            signal.channel.clone(),
            signal.to.clone(),
            signal.frame.clone(),
        );
        {
            let mut held = self.inner.held.inner.lock();
            if let Some(why) = held.refusal(&signal, self.inner.config.max_held_signals) {
                return Err(HubError::Busy(why));
            }
            // Under the lock, so that `held` goes out before any final receipt.
            self.send_receipt(&signal, ReceiptStatus::Held);
            held.insert(signal);
        }
        if clustered {
            // Its size was checked above: this cannot fail.
            let _ = self.forward_tracked(&channel, &to, &frame);
        }
        // The target may have started here between the attempt above and the insert.
        self.deliver_held(&channel, &to);
        let hub = std::sync::Arc::downgrade(&self.inner);
        let deadline = tokio::time::Instant::now() + wait;
        let timer = runtime.spawn(async move {
            let mut pause = REOFFER;
            loop {
                let next = if clustered {
                    deadline.min(tokio::time::Instant::now() + pause)
                } else {
                    deadline
                };
                tokio::time::sleep_until(next).await;
                let Some(inner) = hub.upgrade() else {
                    return;
                };
                let hub = Hub { inner };
                if tokio::time::Instant::now() >= deadline {
                    hub.expire(&id);
                    return;
                }
                if !hub.reoffer(&id) {
                    return;
                }
                pause = (pause * 2).min(REOFFER_MAX);
            }
        });
        let mut held = self.inner.held.inner.lock();
        if held.by_id.contains_key(&id) {
            held.timers.insert(id, timer.abort_handle());
        } else {
            // Delivered already (just above): its timer has nothing to do.
            timer.abort();
        }
        Ok(())
    }

    /// Delivers a tracked signal to the target's started connections here, except the
    /// sender's own; returns how many got it.
    fn deliver_signal_here(&self, signal: &Tracked) -> usize {
        let sent = self.inner.channels.get(&signal.channel).map_or(0, |state| {
            state.broadcast(&signal.frame, |id, sub| {
                id != signal.origin && sub.user == signal.to
            })
        });
        self.inner.counters.delivered(sent);
        sent
    }

    /// Offers a held signal to the other nodes again; false once it is no longer held.
    fn reoffer(&self, id: &MessageId) -> bool {
        let offer = {
            let held = self.inner.held.inner.lock();
            held.by_id
                .get(id)
                .map(|s| (s.channel.clone(), s.to.clone(), s.frame.clone()))
        };
        let Some((channel, to, frame)) = offer else {
            return false;
        };
        // Its size was checked when it was sent: this cannot fail.
        let _ = self.forward_tracked(&channel, &to, &frame);
        true
    }

    fn expire(&self, id: &MessageId) {
        let held = self.inner.held.inner.lock().remove(id);
        if let Some(signal) = held {
            self.send_receipt(&signal, ReceiptStatus::Expired);
        }
    }

    /// `user` started a subscription to `channel` here: the signals held for it there are
    /// delivered (to each of its started connections here), in the order they were sent.
    pub(crate) fn deliver_held(&self, channel: &ChannelName, user: &UserId) {
        let mut waiting: Vec<(MessageId, Tracked)> = {
            let held = self.inner.held.inner.lock();
            let Some(ids) = held.by_target.get(&(channel.clone(), user.clone())) else {
                return;
            };
            ids.iter()
                .filter_map(|id| held.by_id.get(id).map(|s| (*id, s.clone())))
                .collect()
        };
        // Ids are UUID v7: ordered by time.
        waiting.sort_by_key(|(id, _)| *id);
        for (id, signal) in waiting {
            // Delivered first, removed after: a signal that could not be delivered (the
            // target's only connection here is the sender's) stays held, with its timer.
            if self.deliver_signal_here(&signal) == 0 {
                continue;
            }
            let settled = self.inner.held.inner.lock().remove(&id);
            if let Some(signal) = settled {
                self.send_receipt(&signal, ReceiptStatus::Delivered);
            }
        }
    }

    /// `user` came online in `channel` on another node: the signals held for it there are
    /// offered at once rather than at the next round.
    pub(crate) fn offer_held(&self, channel: &ChannelName, user: &UserId) {
        let ids: Vec<MessageId> = {
            let held = self.inner.held.inner.lock();
            match held.by_target.get(&(channel.clone(), user.clone())) {
                Some(ids) => ids.iter().copied().collect(),
                None => return,
            }
        };
        for id in ids {
            self.reoffer(&id);
        }
    }

    /// Another node delivered the tracked signal `id` (for `to` in `channel`): it is
    /// settled, and its sender gets `delivered` if it asked. A receipt for a signal not held
    /// here, or held for another channel or target, is dropped.
    pub(crate) fn settle(&self, channel: &ChannelName, to: &UserId, id: &MessageId) {
        let settled = {
            let mut held = self.inner.held.inner.lock();
            match held.by_id.get(id) {
                Some(s) if &s.channel == channel && &s.to == to => held.remove(id),
                _ => None,
            }
        };
        if let Some(signal) = settled {
            self.send_receipt(&signal, ReceiptStatus::Delivered);
        }
    }

    /// Sends the sender a receipt, if it asked for receipts and is still connected.
    fn send_receipt(&self, signal: &Tracked, status: ReceiptStatus) {
        if !signal.receipt {
            return;
        }
        let frame = ServerFrame::Receipt {
            id: signal.frame_id.clone(),
            channel: signal.channel.clone(),
            to: signal.to.clone(),
            signal: signal.id,
            status,
        };
        if let Some(peer) = self.inner.connections.get(&signal.origin) {
            let _ = peer.outbox.push(frame.encode());
        }
    }

    /// Delivers a tracked signal another node sent, and answers `delivered` to its sender's
    /// node when a connection here got it (now, or lately: a repeated offer is answered
    /// again, not delivered again).
    pub(crate) fn receive_tracked(
        &self,
        frame: &EncodedFrame,
        channel: &ChannelName,
        to: &UserId,
        from: &UserId,
        id: MessageId,
    ) {
        let seen = self.inner.held.delivered.lock().ids.contains(&id);
        if !seen {
            let sent = self
                .inner
                .channels
                .get(channel)
                .map_or(0, |state| state.broadcast(frame, |_, sub| &sub.user == to));
            self.inner.counters.delivered(sent);
            if sent == 0 || !self.inner.held.delivered.lock().first_time(id) {
                return;
            }
        }
        let receipt = ServerFrame::Receipt {
            id: None,
            channel: channel.clone(),
            to: to.clone(),
            signal: id,
            status: ReceiptStatus::Delivered,
        }
        .encode();
        let _ = self.forward_signal(channel, from, &receipt);
    }
}
