//! The publish pipeline: size and persistence rules, commit, then fan-out to local
//! subscribers (persistent messages in seq order, ephemeral ones and signals live).
//!
//! Fast path: a committed message is encoded once and every subscriber's outbox gets a
//! reference to the same bytes, under one channel shard lock and never across an `.await`.

use relay_proto::{
    ChannelName, DELETE_EVENT, EDIT_EVENT, EncodedFrame, IdempotencyKey, MemberRole, MessageId,
    Payload, Revision, Seq, ServerFrame, Timestamp, UserId,
};
use relay_store::{Appended, HistoryQuery, NewMessage, StoredMessage};

use crate::error::HubError;
use crate::hub::{Action, Hub};
use crate::identity::Identity;
use crate::policy::Persistence;
use crate::subscriber::ConnId;

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
    /// Makes a persistent publish safe to retry: a repeat by the same publisher on the same
    /// channel within the store's window stores nothing and gets the first one's
    /// [`Published`]. Ignored for ephemeral publishes.
    pub idempotency_key: Option<IdempotencyKey>,
    /// With the event `"edit"` or `"delete"`: the seq of the message it edits or deletes
    /// (see [`Publish::edit`] and [`Publish::delete`]).
    pub reference: Option<Seq>,
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
            idempotency_key: None,
            reference: None,
        }
    }

    /// An edit of message `seq`: `payload` replaces its payload in the current view of the
    /// history, and subscribers get it as a message with `event: "edit"` and `ref: seq`.
    pub fn edit(channel: ChannelName, seq: Seq, payload: Payload) -> Self {
        Self {
            event: Some(EDIT_EVENT.to_owned()),
            reference: Some(seq),
            ..Self::new(channel, payload)
        }
    }

    /// A delete of message `seq`: the stored payloads of that message and of its edits are
    /// replaced with `null`, and subscribers get a message with `event: "delete"` and
    /// `ref: seq` (payload `null`).
    pub fn delete(channel: ChannelName, seq: Seq) -> Self {
        Self {
            event: Some(DELETE_EVENT.to_owned()),
            reference: Some(seq),
            ..Self::new(channel, Payload::null())
        }
    }

    /// Sets the user it is published as.
    pub fn from(mut self, user: UserId) -> Self {
        self.from = Some(user);
        self
    }

    /// Sets the event name.
    pub fn event(mut self, event: impl Into<String>) -> Self {
        self.event = Some(event.into());
        self
    }

    /// Sets the idempotency key.
    pub fn idempotency_key(mut self, key: IdempotencyKey) -> Self {
        self.idempotency_key = Some(key);
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
    /// Whether this answers a repeat of an earlier publish with the same idempotency key
    /// (nothing was stored or delivered now).
    pub repeat: bool,
    /// Whether the message was stored with a `null` payload instead of its own: an edit of
    /// a message deleted meanwhile.
    pub scrubbed: bool,
}

impl Published {
    /// The answer to a repeat of the append that stored `original`.
    fn repeat(channel: ChannelName, original: relay_store::Original) -> Self {
        Self {
            channel,
            id: original.id,
            seq: Some(original.seq),
            ts: original.ts,
            repeat: true,
            scrubbed: false,
        }
    }
}

impl Hub {
    /// Publishes as `identity` (REST `POST …/messages`): the publish right is checked as for
    /// a client frame, and the message is `from` the identity's user. An edit or delete also
    /// needs the right to change the message: its sender, an `owner` or `admin` of the
    /// channel's record, or a service.
    pub async fn publish_as(
        &self,
        identity: &Identity,
        publish: Publish,
    ) -> Result<Published, HubError> {
        self.authorize(identity, &publish.channel, Action::Publish)
            .await?;
        let publish = Publish {
            from: Some(identity.user.clone()),
            ..publish
        };
        self.publish_from(publish, None, Some(identity)).await
    }

    /// The server-side publish API (`POST /api/publish`): only service identities may use
    /// it, and then without channel authorization, like [`Self::publish`].
    pub async fn publish_for_service(
        &self,
        identity: &Identity,
        publish: Publish,
    ) -> Result<Published, HubError> {
        if !identity.is_service() {
            return Err(HubError::Forbidden(
                "the server-side publish needs a token with role \"service\"".into(),
            ));
        }
        self.publish(publish).await
    }

    /// Publishes from trusted code: no authorization, but the namespace's size limit and
    /// persistence rules apply. Resolves once the message is stored (persistent) and handed to
    /// every local subscriber. An edit or delete may change any message, but the message must
    /// exist (not trimmed) and not be deleted.
    pub async fn publish(&self, publish: Publish) -> Result<Published, HubError> {
        self.publish_from(publish, None, None).await
    }

    /// `by`: who asks, for the right to edit or delete a message; `None` for trusted code.
    pub(crate) async fn publish_from(
        &self,
        publish: Publish,
        origin: Option<ConnId>,
        by: Option<&Identity>,
    ) -> Result<Published, HubError> {
        let Publish {
            channel,
            payload,
            event,
            ephemeral,
            from,
            idempotency_key,
            reference,
        } = publish;
        let revision = Revision::check(event.as_deref(), reference, ephemeral)
            .map_err(|(field, why)| HubError::BadRequest(format!("{field}: {why}")))?;
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
        if let (Some(revision), Some(target)) = (revision, reference) {
            if ephemeral {
                return Err(HubError::forbidden(
                    &channel,
                    "messages are not stored (so never edited or deleted)",
                ));
            }
            // A retry of a revision already stored gets its first ack, whatever happened to
            // the message since (deleted, trimmed); nothing is appended without the checks.
            let publisher = from.as_ref().map_or("", UserId::as_str);
            let repeat_of = async |key: &Option<IdempotencyKey>| match key {
                Some(key) => self.inner.store.repeat_of(&channel, publisher, key).await,
                None => Ok(None),
            };
            if let Some(original) = repeat_of(&idempotency_key).await? {
                return Ok(Published::repeat(channel.clone(), original));
            }
            if let Err(refused) = self.check_revision(&channel, target, revision, by).await {
                // The first attempt may have committed meanwhile (its own delete is why this
                // one is refused): a retry still gets its ack.
                if matches!(refused, HubError::Conflict(_) | HubError::NotFound(_))
                    && let Some(original) = repeat_of(&idempotency_key).await?
                {
                    return Ok(Published::repeat(channel.clone(), original));
                }
                return Err(refused);
            }
        }
        let message = NewMessage {
            from,
            event,
            idempotency_key: idempotency_key.filter(|_| !ephemeral),
            reference,
            ..NewMessage::new(channel, payload)
        };
        if ephemeral {
            let published = Published {
                channel: message.channel.clone(),
                id: message.id,
                seq: None,
                ts: message.ts,
                repeat: false,
                scrubbed: false,
            };
            let channel = message.channel.clone();
            if self.inner.backplane.is_none() && !self.inner.channels.contains_key(&channel) {
                // Nobody here to deliver to, and no other node: nothing to encode.
                return Ok(published);
            }
            let frame = ServerFrame::Message {
                channel: message.channel,
                id: message.id,
                seq: None,
                from: message.from,
                event: message.event,
                payload: message.payload,
                ts: message.ts,
                reference: None,
            }
            .encode();
            self.forward_ephemeral(&channel, &frame)?;
            self.deliver_ephemeral(&channel, &frame, origin);
            return Ok(published);
        }
        let max_history = policy.max_history;
        let channel = message.channel.clone();
        let payload_was_null = message.reference.is_some() && message.payload.is_null();
        let published = match self.commit_and_deliver(message, origin).await? {
            Appended::New(stored) => Published {
                scrubbed: stored.reference.is_some()
                    && stored.payload.is_null()
                    && !payload_was_null,
                channel: stored.channel,
                id: stored.id,
                seq: Some(stored.seq),
                ts: stored.ts,
                repeat: false,
            },
            // Stored (and delivered) the first time; nothing to do now.
            Appended::Repeat(original) => return Ok(Published::repeat(channel, original)),
        };
        if let Some(keep) = max_history
            && let Err(e) = self.inner.store.trim(&channel, keep).await
        {
            tracing::warn!(%channel, error = %e, "trimming history failed");
        }
        Ok(published)
    }

    /// Checks that message `target` of `channel` can be revised, and by `by` (`None`: trusted
    /// code): it must be stored (not trimmed), not an edit or delete itself, and not deleted;
    /// a user must be its sender, or an `owner` or `admin` of the channel's record.
    async fn check_revision(
        &self,
        channel: &ChannelName,
        target: Seq,
        revision: Revision,
        by: Option<&Identity>,
    ) -> Result<(), HubError> {
        let verb = match revision {
            Revision::Edit => "edit",
            Revision::Delete => "delete",
        };
        let query = HistoryQuery {
            after: Some(Seq(target.0.saturating_sub(1))),
            before: Some(Seq(target.0.saturating_add(1))),
            limit: 1,
        };
        let Some(current) = self
            .inner
            .store
            .history_current(channel, query)
            .await?
            .into_iter()
            .next()
        else {
            return Err(HubError::NotFound(format!(
                "no message {target} in {channel} to {verb} (never stored, trimmed, or itself an edit or delete)"
            )));
        };
        if let Some(deleted) = current.deleted {
            return Err(HubError::Conflict(format!(
                "message {target} in {channel} was deleted (by message {deleted})"
            )));
        }
        let Some(identity) = by.filter(|identity| !identity.is_service()) else {
            return Ok(());
        };
        if current.message.from.as_ref() == Some(&identity.user) {
            return Ok(());
        }
        match self
            .inner
            .store
            .member_role(channel, &identity.user)
            .await?
        {
            Some(MemberRole::Owner | MemberRole::Admin) => Ok(()),
            _ => Err(HubError::Forbidden(format!(
                "only its sender, an owner or admin of {channel}, or a service may {verb} message {target}"
            ))),
        }
    }

    async fn commit_and_deliver(
        &self,
        message: NewMessage,
        origin: Option<ConnId>,
    ) -> Result<Appended, relay_store::StoreError> {
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
        let appended = self.inner.store.append(message).await?;
        if let Appended::New(stored) = &appended {
            let local = self.inner.channels.contains_key(&stored.channel);
            if local || self.commit_carrier().is_some() {
                // Encoded once, for the local subscribers and the other nodes alike.
                let frame = stored.to_frame().encode();
                self.forward_commit(stored, &frame);
                if local {
                    self.deliver_encoded(stored, &frame, origin);
                }
            }
        }
        guard.armed = false;
        Ok(appended)
    }

    /// Schedules a repair that also brings live subscribers up to the store's latest seq.
    /// Cheap when the channel has no local subscribers (nothing to do).
    fn check_tail(&self, channel: &ChannelName) {
        self.schedule_tail_check(channel, self.inner.config.repair_delay);
    }

    /// Checks the channel's tail after `delay`, whatever repair is scheduled meanwhile.
    fn check_tail_after(&self, channel: &ChannelName, delay: std::time::Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (hub, channel) = (std::sync::Arc::downgrade(&self.inner), channel.clone());
        runtime.spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(inner) = hub.upgrade() {
                Hub { inner }.schedule_tail_check(&channel, std::time::Duration::ZERO);
            }
        });
    }

    /// Delivers a committed message to local subscribers, in seq order.
    ///
    /// For code that learns of committed messages by its own means (a cluster on Postgres uses
    /// [`Hub::remote_commit`] instead, which reads the messages from the store). Messages may
    /// arrive in any order and more than once; each subscriber still sees every seq exactly
    /// once, in order, with gaps filled from the store.
    pub fn deliver(&self, message: &StoredMessage) {
        self.deliver_from(message, None);
    }

    fn deliver_from(&self, message: &StoredMessage, origin: Option<ConnId>) {
        if !self.inner.channels.contains_key(&message.channel) {
            return;
        }
        // Encode once, outside the lock; every subscriber gets a reference to the same bytes.
        let frame = message.to_frame().encode();
        self.deliver_encoded(message, &frame, origin);
    }

    /// Delivers a committed message already encoded as `frame`.
    fn deliver_encoded(
        &self,
        message: &StoredMessage,
        frame: &EncodedFrame,
        origin: Option<ConnId>,
    ) {
        let echo = self.policy(&message.channel).echo;
        let Some(mut state) = self.inner.channels.get_mut(&message.channel) else {
            return;
        };
        let mut gap = false;
        for (id, sub) in state.subscribers.iter_mut() {
            let frame = (echo || origin != Some(*id)).then_some(frame);
            gap |= sub.offer(message.seq, frame);
        }
        self.inner.counters.delivered(state.subscribers.len());
        if gap && !state.repair_scheduled {
            state.repair_scheduled = true;
            drop(state);
            self.schedule_repair(message.channel.clone());
        }
    }

    fn deliver_ephemeral(
        &self,
        channel: &ChannelName,
        frame: &EncodedFrame,
        origin: Option<ConnId>,
    ) {
        let Some(state) = self.inner.channels.get(channel) else {
            return;
        };
        let sent = state.broadcast_message(frame, |id, _| origin != Some(id));
        self.inner.counters.delivered(sent);
    }

    /// Sends a signal to every started connection of `to` subscribed to `channel`, except the
    /// sender's own, on this node and (in a cluster) on the others. On a single node, a
    /// target with no such connection is `NotFound`; in a cluster, where this node cannot
    /// know the others' connections, the signal is forwarded and not refused.
    pub(crate) fn signal(
        &self,
        channel: &ChannelName,
        to: &UserId,
        frame: &EncodedFrame,
        origin: ConnId,
    ) -> Result<(), HubError> {
        let forwarded = self.forward_signal(channel, to, frame)?;
        let sent = self.inner.channels.get(channel).map_or(0, |state| {
            state.broadcast(frame, |id, sub| id != origin && &sub.user == to)
        });
        if sent == 0 && !forwarded {
            return Err(HubError::NotFound(format!(
                "user {to} is not subscribed to {channel}"
            )));
        }
        Ok(())
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
            // A store whose commits run on their own may land this one as late as its
            // commit deadline: look again then, so that a committed message reaches live
            // subscribers however late its commit lands.
            let mut delay = self.hub.inner.config.repair_delay;
            if let Some(deadline) = self.hub.inner.store.commit_deadline() {
                delay += deadline;
                self.hub.check_tail_after(&self.channel, delay);
            }
            // The other nodes hear of a commit through this node: tell them where the
            // channel's tail is once it has certainly landed.
            self.hub.announce_tail_after(&self.channel, delay);
        }
    }
}
