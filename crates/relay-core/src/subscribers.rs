//! Subscribers and presence: joining, starting, leaving and eviction of a channel's local
//! subscribers, and the online users they make up.

use std::sync::Arc;

use relay_proto::{ChannelName, EncodedFrame, Seq, ServerFrame, UserId};

use crate::hub::Hub;
use crate::outbox::Outbox;
use crate::subscriber::{ChannelState, ConnId, Subscriber};

/// Whether [`Hub::start`] started a joining subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// Started: its `subscribed` reply and replay are queued.
    Started,
    /// It was gone (its connection closed, or it was evicted while joining).
    Gone,
}

impl Hub {
    /// Registers a joining subscriber: it collects live messages until [`Self::start`]. It
    /// is not online (presence, `join`) until then, so a subscribe that fails while reading
    /// the store leaves no trace.
    pub(crate) fn add_subscriber(
        &self,
        channel: &ChannelName,
        id: ConnId,
        user: &UserId,
        service: bool,
        latest: bool,
        outbox: Arc<Outbox>,
    ) {
        let subscriber = Subscriber {
            service,
            latest: latest.then(|| channel.clone()),
            ..Subscriber::joining(outbox, user.clone())
        };
        let created = match self.inner.channels.entry(channel.clone()) {
            dashmap::Entry::Occupied(mut state) => {
                state.get_mut().subscribers.insert(id, subscriber);
                false
            }
            dashmap::Entry::Vacant(vacant) => {
                let mut state = ChannelState::default();
                state.subscribers.insert(id, subscriber);
                vacant.insert(state);
                true
            }
        };
        if created {
            self.interest_changed(channel);
        }
    }

    /// Starts a joining subscriber: marks its user online (announcing `join` to the others if
    /// this is the user's first connection here), pushes its `subscribed` reply (built under
    /// the channel lock, so its presence list is exact), replays `history`, then whatever
    /// arrived while it was joining.
    pub(crate) fn start(
        &self,
        channel: &ChannelName,
        id: ConnId,
        cursor: Seq,
        history: Vec<(Seq, EncodedFrame)>,
        reply: impl FnOnce(Option<Vec<UserId>>) -> ServerFrame,
    ) -> Start {
        let policy = self.policy(channel);
        let Some(mut guard) = self.inner.channels.get_mut(channel) else {
            return Start::Gone;
        };
        let state = &mut *guard;
        let Some(user) = state.subscribers.get(&id).map(|s| s.user.clone()) else {
            return Start::Gone;
        };
        let first_here = !state.online.contains_key(&user);
        let first_anywhere = !state.is_online(&user);
        *state.online.entry(user.clone()).or_insert(0) += 1;
        if first_here {
            self.announce_presence(channel, &user, true);
        }
        if first_anywhere && policy.join_leave {
            let frame = ServerFrame::Join {
                channel: channel.clone(),
                user,
            }
            .encode();
            state.broadcast(&frame, |other, _| other != id);
        }
        let users = policy.presence.then(|| state.online_users());
        let Some(sub) = state.subscribers.get_mut(&id) else {
            return Start::Gone;
        };
        let _ = sub.outbox.push(reply(users).encode());
        let mut gap = sub.start(cursor, history);
        // Another node announced a commit this subscriber's read of the store may have
        // missed (it arrived while the subscribe was joining): catch up.
        if sub.cursor().is_some_and(|at| at < state.announced) {
            state.tail_check = true;
            gap = true;
        }
        let schedule = gap && !state.repair_scheduled;
        state.repair_scheduled |= gap;
        drop(guard);
        if schedule {
            self.schedule_repair(channel.clone());
        }
        Start::Started
    }

    /// Removes a subscriber; announces `leave` when it was the user's last started
    /// connection and frees the channel's state when nobody is left. Returns whether it was
    /// subscribed.
    pub(crate) fn remove_subscriber(&self, channel: &ChannelName, id: ConnId) -> bool {
        let join_leave = self.policy(channel).join_leave;
        let Some(mut state) = self.inner.channels.get_mut(channel) else {
            return false;
        };
        let removed = self.leave(&mut state, channel, id, join_leave).is_some();
        drop(state);
        self.free_if_empty(channel);
        removed
    }

    /// Ends every local subscription of `user` to `channel`, because the user lost access
    /// (removed from the record's members). Each started one gets `unsubscribed` with
    /// `reason`; one still joining makes its subscribe fail instead. Presence leaves as for
    /// an unsubscribe. Returns how many subscriptions ended.
    pub(crate) fn evict(&self, channel: &ChannelName, user: &UserId, reason: &str) -> usize {
        let join_leave = self.policy(channel).join_leave;
        let Some(mut state) = self.inner.channels.get_mut(channel) else {
            return 0;
        };
        let ids: Vec<ConnId> = state
            .subscribers
            .iter()
            .filter(|(_, sub)| &sub.user == user)
            .map(|(id, _)| *id)
            .collect();
        let frame = ServerFrame::Unsubscribed {
            id: None,
            channel: channel.clone(),
            reason: Some(reason.to_owned()),
        }
        .encode();
        for id in &ids {
            if let Some(sub) = self.leave(&mut state, channel, *id, join_leave)
                && sub.is_started()
            {
                // Under the channel lock: ordered after every message it was handed.
                let _ = sub.outbox.push(frame.clone());
            }
        }
        drop(state);
        self.free_if_empty(channel);
        // Outside the channel lock: the connection forgets the subscription, so that it may
        // subscribe again once it regains access.
        for id in &ids {
            if let Some(peer) = self.inner.connections.get(id) {
                peer.subscriptions.lock().remove(channel);
            }
        }
        ids.len()
    }

    /// Users with a connection subscribed to `channel` on this hub, sorted. Trusted: no
    /// authorization (see [`Hub::presence`] for the checked form).
    pub fn online_users(&self, channel: &ChannelName) -> Vec<UserId> {
        self.inner
            .channels
            .get(channel)
            .map(|c| c.online_users())
            .unwrap_or_default()
    }

    /// Ends the local subscriptions of users who are no longer members of a members-only
    /// channel they subscribed to: for a transport that may have lost evictions (it was cut
    /// off from the other nodes). Services are not bound by membership. A channel whose
    /// store read fails is left alone. Returns how many subscriptions ended.
    pub async fn revalidate_members(&self) -> usize {
        let mut ended = 0;
        for channel in self.served_channels() {
            if !self.policy(&channel).membership_grants_access() {
                continue;
            }
            let users: std::collections::BTreeSet<UserId> = match self.inner.channels.get(&channel)
            {
                Some(state) => state
                    .subscribers
                    .values()
                    .filter(|sub| !sub.service)
                    .map(|sub| sub.user.clone())
                    .collect(),
                None => continue,
            };
            for user in users {
                if let Ok(false) = self.inner.store.is_member(&channel, &user).await {
                    ended += self.evict(&channel, &user, crate::channels::REMOVED);
                }
            }
        }
        ended
    }

    fn free_if_empty(&self, channel: &ChannelName) {
        let freed = self
            .inner
            .channels
            .remove_if(channel, |_, state| state.subscribers.is_empty());
        if freed.is_some() {
            self.interest_changed(channel);
        }
    }

    pub(crate) fn forget_connection(&self, id: ConnId) {
        self.inner.connections.remove(&id);
    }
}

impl Hub {
    /// Takes subscriber `id` out of a channel's state; announces `leave` when it was its
    /// user's last started connection in the cluster (on a single node: here).
    fn leave(
        &self,
        state: &mut ChannelState,
        channel: &ChannelName,
        id: ConnId,
        join_leave: bool,
    ) -> Option<Subscriber> {
        let sub = state.subscribers.remove(&id)?;
        if sub.latest.is_some() {
            // Nothing of an ended subscription goes out after its `unsubscribed`.
            sub.outbox.clear_latest(channel);
        }
        if sub.is_started()
            && let Some(count) = state.online.get_mut(&sub.user)
        {
            *count -= 1;
            if *count == 0 {
                state.online.remove(&sub.user);
                self.announce_presence(channel, &sub.user, false);
                if join_leave && !state.is_online(&sub.user) {
                    let frame = ServerFrame::Leave {
                        channel: channel.clone(),
                        user: sub.user.clone(),
                    }
                    .encode();
                    state.broadcast(&frame, |_, _| true);
                }
            }
        }
        Some(sub)
    }
}
