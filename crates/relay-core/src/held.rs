//! Signals sent with a receipt or a time to live (`signal {receipt, ttl_ms}`).
//!
//! Such a signal gets a server id. Delivered at once to a connection of the target here, it is
//! done (its receipt says `delivered`). Otherwise it is *held* on this node, the one its
//! sender is connected to, bounded in number: delivered to the target's first connection that
//! subscribes here, or, in a cluster, offered to the other nodes (at once, on the target's
//! presence elsewhere, and every [`REOFFER`]), where a node that delivers it answers with a
//! receipt routed back like a signal to the sender. The first `delivered` settles it; when
//! its time runs out first, it expires. Receipts go to the sending connection only.
//!
//! Held signals live in memory: a node that stops loses its held signals, and with it the
//! sending connections their receipts would go to.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use parking_lot::Mutex;
use relay_proto::{
    ChannelName, EncodedFrame, FrameId, MessageId, ReceiptStatus, ServerFrame, UserId,
};

use crate::error::HubError;
use crate::hub::Hub;
use crate::subscriber::ConnId;

/// How often a held signal is offered to the other nodes of a cluster again.
pub(crate) const REOFFER: Duration = Duration::from_secs(1);

/// How long, in a cluster, a signal with a receipt and no `ttl_ms` waits for a `delivered`
/// from another node before it expires.
pub(crate) const CLUSTER_GRACE: Duration = Duration::from_secs(2);

/// Signals held for one target in one channel, at most.
pub const MAX_HELD_PER_TARGET: usize = 64;

/// A signal sent with a receipt or a time to live.
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

struct Held {
    signal: Tracked,
}

/// The held signals of a hub, by id and by (channel, target).
#[derive(Default)]
pub(crate) struct HeldSignals {
    inner: Mutex<HeldInner>,
}

#[derive(Default)]
struct HeldInner {
    by_id: HashMap<MessageId, Held>,
    by_target: HashMap<(ChannelName, UserId), HashSet<MessageId>>,
}

impl HeldInner {
    fn remove(&mut self, id: &MessageId) -> Option<Held> {
        let held = self.by_id.remove(id)?;
        let key = (held.signal.channel.clone(), held.signal.to.clone());
        if let Some(ids) = self.by_target.get_mut(&key) {
            ids.remove(id);
            if ids.is_empty() {
                self.by_target.remove(&key);
            }
        }
        Some(held)
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
        let sent = self.deliver_signal_here(&signal);
        if sent > 0 {
            // The target may have connections on other nodes too; none of them needs to answer.
            self.forward_signal(&signal.channel, &signal.to, &signal.frame)?;
            self.send_receipt(&signal, ReceiptStatus::Delivered);
            return Ok(());
        }
        let wait = match (signal.ttl, clustered) {
            (Some(ttl), _) => ttl,
            (None, true) => CLUSTER_GRACE,
            (None, false) if signal.receipt => {
                self.send_receipt(&signal, ReceiptStatus::Expired);
                return Ok(());
            }
            (None, false) => {
                return Err(HubError::NotFound(format!(
                    "user {} is not subscribed to {}",
                    signal.to, signal.channel
                )));
            }
        };
        if clustered {
            self.forward_tracked(&signal.channel, &signal.to, &signal.frame)?;
        }
        self.hold(signal, wait, clustered)
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

    fn hold(&self, signal: Tracked, wait: Duration, clustered: bool) -> Result<(), HubError> {
        let max = self.inner.config.max_held_signals;
        let id = signal.id;
        {
            let mut held = self.inner.held.inner.lock();
            if held.by_id.len() >= max {
                return Err(HubError::Busy(format!(
                    "this server holds {max} signals already; retry later"
                )));
            }
            let key = (signal.channel.clone(), signal.to.clone());
            let for_target = held.by_target.get(&key).map_or(0, HashSet::len);
            if for_target >= MAX_HELD_PER_TARGET {
                return Err(HubError::Busy(format!(
                    "{MAX_HELD_PER_TARGET} signals for {} in {} are held already; retry later",
                    signal.to, signal.channel
                )));
            }
            held.by_target.entry(key).or_default().insert(id);
            self.send_receipt(&signal, ReceiptStatus::Held);
            held.by_id.insert(id, Held { signal });
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Ok(());
        };
        let hub = std::sync::Arc::downgrade(&self.inner);
        let deadline = tokio::time::Instant::now() + wait;
        runtime.spawn(async move {
            loop {
                let next = if clustered {
                    deadline.min(tokio::time::Instant::now() + REOFFER)
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
            }
        });
        Ok(())
    }

    /// Offers a held signal to the other nodes again; false once it is no longer held.
    fn reoffer(&self, id: &MessageId) -> bool {
        let offer = {
            let held = self.inner.held.inner.lock();
            held.by_id.get(id).map(|h| {
                (
                    h.signal.channel.clone(),
                    h.signal.to.clone(),
                    h.signal.frame.clone(),
                )
            })
        };
        let Some((channel, to, frame)) = offer else {
            return false;
        };
        // Too large for the transport was refused when it was sent; nothing new can fail.
        let _ = self.forward_tracked(&channel, &to, &frame);
        true
    }

    fn expire(&self, id: &MessageId) {
        let held = self.inner.held.inner.lock().remove(id);
        if let Some(held) = held {
            self.send_receipt(&held.signal, ReceiptStatus::Expired);
        }
    }

    /// `user` started a subscription to `channel` here: the signals held for it there are
    /// delivered (to each of its started connections here).
    pub(crate) fn deliver_held(&self, channel: &ChannelName, user: &UserId) {
        let ids: Vec<MessageId> = {
            let held = self.inner.held.inner.lock();
            if held.by_id.is_empty() {
                return;
            }
            match held.by_target.get(&(channel.clone(), user.clone())) {
                Some(ids) => ids.iter().copied().collect(),
                None => return,
            }
        };
        // In the order they were sent: ids are UUID v7, ordered by time.
        let mut ordered = ids;
        ordered.sort();
        for id in ordered {
            let held = self.inner.held.inner.lock().remove(&id);
            let Some(held) = held else {
                continue;
            };
            if self.deliver_signal_here(&held.signal) > 0 {
                self.send_receipt(&held.signal, ReceiptStatus::Delivered);
            } else {
                // Not started after all: put it back.
                let mut inner = self.inner.held.inner.lock();
                let key = (held.signal.channel.clone(), held.signal.to.clone());
                inner.by_target.entry(key).or_default().insert(id);
                inner.by_id.insert(id, held);
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

    /// Another node delivered the tracked signal `id`: it is settled, and its sender gets
    /// `delivered` if it asked. A receipt for a signal not held here is dropped.
    pub(crate) fn settle(&self, id: &MessageId) {
        let held = self.inner.held.inner.lock().remove(id);
        if let Some(held) = held {
            self.send_receipt(&held.signal, ReceiptStatus::Delivered);
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
    /// node when a connection here got it.
    pub(crate) fn receive_tracked(
        &self,
        frame: &EncodedFrame,
        channel: &ChannelName,
        to: &UserId,
        from: &UserId,
        id: MessageId,
    ) {
        let sent = self
            .inner
            .channels
            .get(channel)
            .map_or(0, |state| state.broadcast(frame, |_, sub| &sub.user == to));
        self.inner.counters.delivered(sent);
        if sent > 0 {
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
}
