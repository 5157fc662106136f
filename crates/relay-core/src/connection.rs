//! [`Connection`]: one client's session with the hub, independent of any transport.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;
use relay_proto::{
    ChannelName, ClientFrame, DecodeError, ErrorCode, FrameId, Payload, Seq, ServerFrame, UserId,
};
use relay_store::HistoryQuery;

use crate::error::HubError;
use crate::hub::{Action, Hub, Publish};
use crate::identity::Identity;
use crate::outbox::Outbox;
use crate::policy::Persistence;
use crate::registry::ConnId;

/// A client session. Frames go in through [`handle`](Self::handle) (one at a time, in
/// order); everything the client should receive comes out of [`outbox`](Self::outbox).
/// Dropping it unsubscribes everything and announces `leave`s.
pub struct Connection {
    hub: Hub,
    id: ConnId,
    identity: Arc<Identity>,
    outbox: Arc<Outbox>,
    subscriptions: Mutex<HashSet<ChannelName>>,
}

impl Connection {
    pub(crate) fn new(hub: Hub, id: ConnId, identity: Identity, outbox: Arc<Outbox>) -> Self {
        Self {
            hub,
            id,
            identity: Arc::new(identity),
            outbox,
            subscriptions: Mutex::new(HashSet::new()),
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
        self.subscriptions.lock().iter().cloned().collect()
    }

    /// Decodes one text frame and handles it; a frame that does not decode gets an `error`
    /// reply (`bad_request`) and changes nothing else.
    pub async fn handle_text(&self, text: &[u8]) {
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
        let result = match frame {
            ClientFrame::Subscribe { id, channel, since } => {
                self.subscribe(id, channel, since).await
            }
            ClientFrame::Unsubscribe { id, channel } => self.unsubscribe(id, channel),
            ClientFrame::Publish {
                id,
                channel,
                payload,
                event,
                ephemeral,
            } => self.publish(id, channel, payload, event, ephemeral).await,
            ClientFrame::Signal {
                channel,
                to,
                payload,
                event,
                ..
            } => self.signal(channel, to, payload, event).await,
            ClientFrame::Presence { id, channel } => self.presence(id, channel).await,
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
    ) -> Result<(), HubError> {
        self.hub
            .authorize(&self.identity, &channel, Action::Subscribe)
            .await?;
        {
            let mut subscriptions = self.subscriptions.lock();
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
        self.hub
            .add_subscriber(&channel, self.id, &self.identity.user, self.outbox.clone());
        match self.recover(&channel, since).await {
            Ok((latest, recovered, cursor, history)) => {
                let started = self
                    .hub
                    .start(&channel, self.id, cursor, history, |presence| {
                        ServerFrame::Subscribed {
                            id,
                            channel: channel.clone(),
                            seq: latest,
                            recovered,
                            presence,
                        }
                    });
                if !started {
                    self.subscriptions.lock().remove(&channel);
                }
                Ok(())
            }
            Err(e) => {
                self.hub.remove_subscriber(&channel, self.id);
                self.subscriptions.lock().remove(&channel);
                Err(e)
            }
        }
    }

    /// Reads what a new subscription starts from: the channel's latest seq, whether `since`
    /// can be honoured, the cursor, and the messages to replay.
    #[allow(clippy::type_complexity)]
    async fn recover(
        &self,
        channel: &ChannelName,
        since: Option<Seq>,
    ) -> Result<
        (
            Seq,
            Option<bool>,
            Seq,
            Vec<(Seq, relay_proto::EncodedFrame)>,
        ),
        HubError,
    > {
        if self.hub.policy(channel).persistence == Persistence::EphemeralOnly {
            return Ok((
                Seq::ZERO,
                since.map(|s| s == Seq::ZERO),
                Seq::ZERO,
                Vec::new(),
            ));
        }
        let store = self.hub.store();
        let latest = store.latest_seq(channel).await?;
        let Some(since) = since else {
            return Ok((latest, None, latest, Vec::new()));
        };
        if since > latest {
            return Ok((latest, Some(false), latest, Vec::new()));
        }
        if since == latest {
            return Ok((latest, Some(true), latest, Vec::new()));
        }
        let limit = self.hub.config().max_recovery;
        let missed = (latest.0 - since.0) as usize;
        if missed > limit {
            return Ok((latest, Some(false), latest, Vec::new()));
        }
        let history = store
            .history(channel, HistoryQuery::after(since, limit))
            .await?;
        let complete = history.first().is_some_and(|m| m.seq == since.next())
            && history.last().is_some_and(|m| m.seq >= latest);
        if !complete {
            return Ok((latest, Some(false), latest, Vec::new()));
        }
        let frames = history
            .iter()
            .map(|m| (m.seq, m.to_frame().encode()))
            .collect();
        Ok((latest, Some(true), since, frames))
    }

    fn unsubscribe(&self, id: Option<FrameId>, channel: ChannelName) -> Result<(), HubError> {
        if !self.subscriptions.lock().remove(&channel) {
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

    async fn publish(
        &self,
        id: Option<FrameId>,
        channel: ChannelName,
        payload: Payload,
        event: Option<String>,
        ephemeral: bool,
    ) -> Result<(), HubError> {
        self.hub
            .authorize(&self.identity, &channel, Action::Publish)
            .await?;
        let publish = Publish {
            channel,
            payload,
            event,
            ephemeral,
            from: Some(self.identity.user.clone()),
        };
        let published = self.hub.publish_from(publish, Some(self.id)).await?;
        self.send(&ServerFrame::Ack {
            id,
            channel: published.channel,
            message_id: published.id,
            seq: published.seq,
        });
        Ok(())
    }

    async fn signal(
        &self,
        channel: ChannelName,
        to: UserId,
        payload: Payload,
        event: Option<String>,
    ) -> Result<(), HubError> {
        self.hub
            .authorize(&self.identity, &channel, Action::Publish)
            .await?;
        let limit = self.hub.policy(&channel).max_payload_bytes;
        if payload.len() > limit {
            return Err(HubError::TooLarge {
                size: payload.len(),
                limit,
                namespace: channel.namespace().to_owned(),
            });
        }
        let frame = ServerFrame::Signal {
            channel: channel.clone(),
            from: self.identity.user.clone(),
            payload,
            event,
        }
        .encode();
        if self.hub.signal(&channel, &to, &frame, self.id) == 0 {
            return Err(HubError::NotFound(format!(
                "user {to} is not subscribed to {channel}"
            )));
        }
        Ok(())
    }

    async fn presence(&self, id: Option<FrameId>, channel: ChannelName) -> Result<(), HubError> {
        self.hub
            .authorize(&self.identity, &channel, Action::Subscribe)
            .await?;
        if !self.hub.policy(&channel).presence {
            return Err(HubError::forbidden(&channel, "presence is disabled"));
        }
        let users = self.hub.presence(&channel);
        self.send(&ServerFrame::Presence { id, channel, users });
        Ok(())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        for channel in self.subscriptions.get_mut().drain() {
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
