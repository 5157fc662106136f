//! [`Connection`]: one client's session with the hub, independent of any transport.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;
use relay_proto::{
    ChannelName, ClientFrame, CloseCode, DecodeError, EncodedFrame, ErrorCode, FrameId, MessageId,
    Payload, Seq, ServerFrame, SubscribeMode, UserId,
};
use relay_store::HistoryQuery;

use crate::error::HubError;
use crate::held::Tracked;
use crate::hub::{Action, Hub};
use crate::identity::{Identity, Role};
use crate::outbox::{Outbox, ReplayBudget};
use crate::policy::Persistence;
use crate::publish::Publish;
use crate::rate::{FrameKind, FrameLimits, Limiter, Verdict};
use crate::subscriber::ConnId;
use crate::subscribers::Start;

/// A client session. Frames go in through [`handle`](Self::handle) (one at a time, in
/// order); everything the client should receive comes out of [`outbox`](Self::outbox).
/// Dropping it unsubscribes everything and announces `leave`s.
pub struct Connection {
    hub: Hub,
    id: ConnId,
    identity: Arc<Identity>,
    peer: Arc<Peer>,
    outbox: Arc<Outbox>,
    /// Rate-limit buckets, allocated on the first limited frame.
    limiter: Mutex<Option<Box<Limiter>>>,
}

/// The hub's handle on a connection: its outbox, and the channels it is subscribed to (which
/// the hub edits when it ends a subscription itself, on a member's removal).
pub(crate) struct Peer {
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) subscriptions: Mutex<HashSet<ChannelName>>,
}

impl Peer {
    pub(crate) fn new(outbox: Outbox) -> Self {
        Self {
            outbox: Arc::new(outbox),
            subscriptions: Mutex::new(HashSet::new()),
        }
    }
}

/// A `signal` frame's fields.
struct SignalFrame {
    id: Option<FrameId>,
    channel: ChannelName,
    to: UserId,
    payload: Payload,
    event: Option<String>,
    receipt: bool,
    ttl_ms: Option<u64>,
}

/// Where a new subscription starts, as read from the store.
struct Recovery<'a> {
    /// The channel's latest seq (the `subscribed` reply's `seq`).
    latest: Seq,
    /// Whether `since` could be honoured; `None` without `since`.
    recovered: Option<bool>,
    /// The last seq the subscriber counts as handed (before the replay).
    cursor: Seq,
    /// The messages to replay, consecutive from `cursor + 1`.
    replay: Vec<(Seq, EncodedFrame)>,
    /// The replay's bytes in the hub's budget, until the replay is in the outbox (which
    /// counts them until they are written).
    reservation: Option<Reservation<'a>>,
}

/// Messages read per page of a recovery replay.
const REPLAY_PAGE: usize = 100;

/// Bytes reserved in the hub's replay budget; given back on drop.
struct Reservation<'a> {
    budget: &'a ReplayBudget,
    bytes: usize,
}

impl Reservation<'_> {
    fn grow(&mut self, bytes: usize) -> bool {
        let granted = self.budget.try_reserve(bytes);
        if granted {
            self.bytes += bytes;
        }
        granted
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

impl Recovery<'_> {
    /// Nothing to replay: the subscription starts live at `latest`.
    fn live(latest: Seq, recovered: Option<bool>) -> Self {
        Self {
            latest,
            recovered,
            cursor: latest,
            replay: Vec::new(),
            reservation: None,
        }
    }
}

impl Connection {
    pub(crate) fn new(hub: Hub, id: ConnId, identity: Identity, peer: Arc<Peer>) -> Self {
        Self {
            hub,
            id,
            identity: Arc::new(identity),
            outbox: peer.outbox.clone(),
            peer,
            limiter: Mutex::new(None),
        }
    }

    /// The connection's id within the hub.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Who is connected.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The outbound queue the transport drains.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// The `welcome` frame for this connection.
    pub fn welcome(&self, heartbeat_ms: u64) -> ServerFrame {
        ServerFrame::Welcome {
            connection_id: self.id.to_string(),
            user: self.identity.user.clone(),
            heartbeat_ms,
        }
    }

    /// Queues a frame for this client (a `welcome`, say).
    pub fn send(&self, frame: &ServerFrame) {
        let _ = self.outbox.push(frame.encode());
    }

    /// Channels this connection is subscribed to.
    pub fn subscriptions(&self) -> Vec<ChannelName> {
        self.peer.subscriptions.lock().iter().cloned().collect()
    }

    /// Charges one incoming frame, of any type, to the connection's `frames` rate limit
    /// before the transport decodes it. `false`: do not handle it (an `error` frame with
    /// `rate_limited` was sent, or, past the close multiple, the connection is closing with
    /// 4029).
    pub fn charge_frame(&self) -> bool {
        let verdict = self.charge(FrameKind::Any, self.own_limits(), None);
        self.enforce(verdict, None, None, "too many frames: slow down")
    }

    /// The frame limits of this connection's kind of token.
    fn own_limits(&self) -> &FrameLimits {
        let config = self.hub.config();
        match self.identity.role {
            Role::Service => &config.service_limits,
            Role::User => &config.user_limits,
        }
    }

    /// Charges one `kind` frame to its bucket under `limits` (a namespace's own buckets when
    /// `namespace` is given); the buckets are allocated on the first limited frame.
    fn charge(&self, kind: FrameKind, limits: &FrameLimits, namespace: Option<&str>) -> Verdict {
        if limits.get(kind).is_none() {
            return Verdict::Allow;
        }
        self.limiter.lock().get_or_insert_with(Box::default).check(
            kind,
            limits,
            namespace,
            self.hub.config().close_multiple,
        )
    }

    /// Acts on a rate-limit verdict; `true` when the frame may be handled.
    fn enforce(
        &self,
        verdict: Verdict,
        id: Option<FrameId>,
        channel: Option<ChannelName>,
        message: &str,
    ) -> bool {
        match verdict {
            Verdict::Allow => true,
            Verdict::Refuse => {
                self.reply_error(id, ErrorCode::RateLimited, message.to_owned(), channel);
                false
            }
            Verdict::Close => {
                self.hub.inner.counters.error(ErrorCode::RateLimited);
                self.outbox
                    .close(CloseCode::RateLimited, "rate limit exceeded repeatedly");
                false
            }
        }
    }

    /// Decodes one text frame and handles it; a frame that does not decode gets an `error`
    /// reply (`bad_request`) and changes nothing else.
    pub async fn handle_text(&self, text: &[u8]) {
        if !self.charge_frame() {
            return;
        }
        match ClientFrame::decode(text) {
            Ok(frame) => self.handle(frame).await,
            Err(e) => self.reject(e),
        }
    }

    /// Sends an `error` frame (counted in the hub's error totals), for refusals the
    /// transport decides itself, such as a binary frame.
    pub fn error(&self, code: ErrorCode, message: impl Into<String>) {
        self.reply_error(None, code, message.into(), None);
    }

    /// Answers a frame that did not decode with a `bad_request` error echoing its id.
    pub fn reject(&self, error: DecodeError) {
        let message = error.to_string();
        self.reply_error(error.id, ErrorCode::BadRequest, message, None);
    }

    /// Handles one client frame. Replies (and errors) go to the outbox, echoing the frame id.
    pub async fn handle(&self, frame: ClientFrame) {
        let channel = frame.channel().cloned();
        let id = frame.id().cloned();
        let verdict = self.rate_check(&frame);
        if !self.enforce(
            verdict,
            id.clone(),
            channel.clone(),
            "rate limit exceeded: slow down",
        ) {
            return;
        }
        let result = match frame {
            ClientFrame::Subscribe {
                id,
                channel,
                since,
                mode,
            } => self.subscribe(id, channel, since, mode).await,
            ClientFrame::Unsubscribe { id, channel } => self.unsubscribe(id, channel),
            ClientFrame::Publish {
                id,
                channel,
                payload,
                event,
                ephemeral,
                idempotency_key,
                reference,
            } => {
                let publish = Publish {
                    channel,
                    payload,
                    event,
                    ephemeral,
                    from: Some(self.identity.user.clone()),
                    idempotency_key,
                    reference,
                };
                self.publish(id, publish).await
            }
            ClientFrame::Signal {
                id,
                channel,
                to,
                payload,
                event,
                receipt,
                ttl_ms,
            } => {
                let signal = SignalFrame {
                    id,
                    channel,
                    to,
                    payload,
                    event,
                    receipt,
                    ttl_ms,
                };
                self.signal(signal).await
            }
            ClientFrame::Presence { id, channel } => self.presence(id, channel).await,
            ClientFrame::Read { id, channel, seq } => self
                .hub
                .mark_read_from(&self.identity, &channel, seq, Some(self.id))
                .await
                .map(|seq| self.send(&ServerFrame::Read { id, channel, seq })),
            ClientFrame::Ping { id } => {
                self.send(&ServerFrame::Pong { id });
                Ok(())
            }
        };
        if let Err(e) = result {
            if matches!(e, HubError::Unavailable(_) | HubError::Internal(_)) {
                tracing::warn!(connection = self.id, error = %e, source = ?std::error::Error::source(&e), "frame failed");
            }
            self.reply_error(id, e.code(), e.to_string(), channel);
        }
    }

    /// Charges a `publish`, `subscribe` or `signal` frame to its bucket.
    fn rate_check(&self, frame: &ClientFrame) -> Verdict {
        let (kind, channel) = match frame {
            ClientFrame::Publish { channel, .. } => (FrameKind::Publish, channel),
            ClientFrame::Subscribe { channel, .. } => (FrameKind::Subscribe, channel),
            ClientFrame::Signal { channel, .. } => (FrameKind::Signal, channel),
            // A stored write, like a publish.
            ClientFrame::Read { channel, .. } => (FrameKind::Publish, channel),
            _ => return Verdict::Allow,
        };
        match (&self.hub.policy(channel).rate_limits, self.identity.role) {
            (Some(own), Role::User) => self.charge(kind, own, Some(channel.namespace())),
            _ => self.charge(kind, self.own_limits(), None),
        }
    }

    fn reply_error(
        &self,
        id: Option<FrameId>,
        code: ErrorCode,
        message: String,
        channel: Option<ChannelName>,
    ) {
        self.hub.inner.counters.error(code);
        self.send(&ServerFrame::Error {
            id,
            code,
            message,
            channel,
        });
    }

    async fn subscribe(
        &self,
        id: Option<FrameId>,
        channel: ChannelName,
        since: Option<Seq>,
        mode: SubscribeMode,
    ) -> Result<(), HubError> {
        let latest_mode = mode == SubscribeMode::Latest;
        if latest_mode && since.is_some() {
            return Err(HubError::BadRequest(
                "`since` does not apply to mode \"latest\": it starts from the newest message"
                    .into(),
            ));
        }
        {
            let mut subscriptions = self.peer.subscriptions.lock();
            let limit = self.hub.config().max_subscriptions;
            if subscriptions.contains(&channel) {
                return Err(HubError::BadRequest(format!(
                    "already subscribed to {channel}"
                )));
            }
            if subscriptions.len() >= limit {
                return Err(HubError::BadRequest(format!(
                    "subscription limit reached: at most {limit} per connection"
                )));
            }
            subscriptions.insert(channel.clone());
        }
        // Joining before the rights are read: a membership removal that commits after that
        // read finds the joining subscriber and ends it, so no subscription outlives access.
        self.hub.add_subscriber(
            &channel,
            self.id,
            &self.identity.user,
            self.identity.is_service(),
            latest_mode,
            self.outbox.clone(),
        );
        let recovery = match self
            .authorize_and_recover(&channel, since, latest_mode)
            .await
        {
            Ok(recovery) => recovery,
            Err(e) => {
                self.hub.remove_subscriber(&channel, self.id);
                self.peer.subscriptions.lock().remove(&channel);
                return Err(e);
            }
        };
        let Recovery {
            latest,
            recovered,
            cursor,
            replay,
            reservation: _held_until_queued,
        } = recovery;
        // A `latest` subscription asked for no recovery: its first message is the newest.
        let recovered = recovered.filter(|_| !latest_mode);
        let reply = |presence| ServerFrame::Subscribed {
            id: id.clone(),
            channel: channel.clone(),
            seq: latest,
            recovered,
            presence,
        };
        match self.hub.start(&channel, self.id, cursor, replay, reply) {
            Start::Started => {
                self.hub.deliver_held(&channel, &self.identity.user);
                Ok(())
            }
            Start::Gone => {
                self.peer.subscriptions.lock().remove(&channel);
                // Evicted while joining (a closed connection drops this error unseen).
                Err(HubError::forbidden(&channel, "access was revoked"))
            }
        }
    }

    async fn authorize_and_recover(
        &self,
        channel: &ChannelName,
        since: Option<Seq>,
        latest_mode: bool,
    ) -> Result<Recovery<'_>, HubError> {
        self.hub
            .authorize(&self.identity, channel, Action::Subscribe)
            .await?;
        self.hub.load_remote_presence(channel).await;
        self.recover(channel, since, latest_mode).await
    }

    /// Reads what a new subscription starts from: the channel's latest seq, whether `since`
    /// can be honoured, the cursor, and the messages to replay.
    async fn recover(
        &self,
        channel: &ChannelName,
        since: Option<Seq>,
        latest_mode: bool,
    ) -> Result<Recovery<'_>, HubError> {
        if self.hub.policy(channel).persistence == Persistence::EphemeralOnly {
            return Ok(Recovery::live(Seq::ZERO, since.map(|s| s == Seq::ZERO)));
        }
        let store = self.hub.store();
        let latest = store.latest_seq(channel).await?;
        if latest_mode {
            // The newest stored message first (the current state), then what follows; read
            // on its own, outside the recovery limits, which concern replays of many.
            let newest = store.history(channel, HistoryQuery::latest(1)).await?;
            return Ok(match newest.into_iter().next() {
                Some(message) => Recovery {
                    latest,
                    recovered: None,
                    cursor: Seq(message.seq.0.saturating_sub(1)),
                    replay: vec![(message.seq, message.to_frame().encode())],
                    reservation: None,
                },
                None => Recovery::live(latest, None),
            });
        }
        let Some(since) = since else {
            return Ok(Recovery::live(latest, None));
        };
        if since > latest {
            return Ok(Recovery::live(latest, Some(false)));
        }
        if since == latest {
            return Ok(Recovery::live(latest, Some(true)));
        }
        let config = self.hub.config();
        let limit = config.max_recovery;
        let missed = (latest.0 - since.0) as usize;
        if missed > limit {
            return Ok(Recovery::live(latest, Some(false)));
        }
        // Read in pages, counting bytes as they arrive: a replay over this connection's
        // allowance or the hub's budget stops at the page that crosses it, so the memory a
        // recovery can pin is bounded in bytes, not only in messages.
        let allowance = config
            .max_replay_bytes
            .saturating_sub(self.outbox.replayed_bytes());
        let mut reservation = Reservation {
            budget: &self.hub.inner.replay_budget,
            bytes: 0,
        };
        let mut replay = Vec::with_capacity(missed.min(REPLAY_PAGE));
        let mut cursor = since;
        while cursor < latest {
            let page = store
                .history(channel, HistoryQuery::after(cursor, REPLAY_PAGE))
                .await?;
            if page.is_empty() {
                break;
            }
            let mut page_bytes = 0;
            for message in &page {
                if message.seq != cursor.next() {
                    // Trimmed meanwhile: the replay would have a hole.
                    return Ok(Recovery::live(latest, Some(false)));
                }
                let frame = message.to_frame().encode();
                page_bytes += frame.len();
                cursor = message.seq;
                replay.push((message.seq, frame));
            }
            if reservation.bytes + page_bytes > allowance || !reservation.grow(page_bytes) {
                self.hub.inner.counters.replay_refused();
                return Ok(Recovery::live(latest, Some(false)));
            }
        }
        if cursor < latest {
            return Ok(Recovery::live(latest, Some(false)));
        }
        Ok(Recovery {
            latest,
            recovered: Some(true),
            cursor: since,
            replay,
            reservation: Some(reservation),
        })
    }

    fn unsubscribe(&self, id: Option<FrameId>, channel: ChannelName) -> Result<(), HubError> {
        if !self.peer.subscriptions.lock().remove(&channel) {
            return Err(HubError::BadRequest(format!("not subscribed to {channel}")));
        }
        self.hub.remove_subscriber(&channel, self.id);
        self.send(&ServerFrame::Unsubscribed {
            id,
            channel,
            reason: None,
        });
        Ok(())
    }

    async fn publish(&self, id: Option<FrameId>, publish: Publish) -> Result<(), HubError> {
        self.hub
            .authorize(&self.identity, &publish.channel, Action::Publish)
            .await?;
        let published = self
            .hub
            .publish_from(publish, Some(self.id), Some(&self.identity))
            .await?;
        self.send(&ServerFrame::Ack {
            id,
            channel: published.channel,
            message_id: published.id,
            seq: published.seq,
        });
        Ok(())
    }

    async fn signal(&self, signal: SignalFrame) -> Result<(), HubError> {
        let SignalFrame {
            id,
            channel,
            to,
            payload,
            event,
            receipt,
            ttl_ms,
        } = signal;
        // Only a subscriber may signal in a channel: knowing a user's name is not enough to
        // reach them.
        if !self.peer.subscriptions.lock().contains(&channel) {
            return Err(HubError::Forbidden(format!(
                "subscribe to {channel} before signalling in it"
            )));
        }
        self.hub
            .authorize(&self.identity, &channel, Action::Publish)
            .await?;
        let policy = self.hub.policy(&channel);
        let limit = policy.max_payload_bytes;
        if payload.len() > limit {
            return Err(HubError::TooLarge {
                size: payload.len(),
                limit,
                namespace: channel.namespace().to_owned(),
            });
        }
        let ttl = ttl_ms.map(std::time::Duration::from_millis);
        let max_ttl = self.hub.inner.config.max_signal_ttl;
        if ttl.is_some_and(|ttl| ttl > max_ttl) {
            return Err(HubError::BadRequest(format!(
                "ttl_ms: at most {} on this server",
                max_ttl.as_millis()
            )));
        }
        let tracked = receipt || ttl.is_some();
        let signal_id = tracked.then(MessageId::now_v7);
        let frame = ServerFrame::Signal {
            channel: channel.clone(),
            from: self.identity.user.clone(),
            payload,
            event,
            signal: signal_id,
        }
        .encode();
        let reveals_presence = policy.presence;
        let result = match signal_id {
            Some(signal_id) => self.hub.signal_tracked(Tracked {
                id: signal_id,
                channel,
                to,
                frame,
                origin: self.id,
                frame_id: id,
                receipt,
                ttl,
            }),
            None => self.hub.signal(&channel, &to, &frame, self.id),
        };
        match result {
            // Where presence is off, "not online" is not revealed: a signal to nobody is
            // answered like one that was delivered (with nothing).
            Err(HubError::NotFound(_)) if !reveals_presence => Ok(()),
            result => result,
        }
    }

    async fn presence(&self, id: Option<FrameId>, channel: ChannelName) -> Result<(), HubError> {
        let users = self.hub.presence(&self.identity, &channel).await?;
        self.send(&ServerFrame::Presence { id, channel, users });
        Ok(())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let channels = std::mem::take(&mut *self.peer.subscriptions.lock());
        for channel in channels {
            self.hub.remove_subscriber(&channel, self.id);
        }
        self.hub.forget_connection(self.id);
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("user", &self.identity.user)
            .finish_non_exhaustive()
    }
}
