//! [`Client`] and its builder.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use relay_proto::{
    ChannelName, ClientFrame, DELETE_EVENT, EDIT_EVENT, IdempotencyKey, MessageId, Payload,
    ReceiptStatus, Seq, ServerFrame, SubscribeMode, UserId,
};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::driver::{self, Command, Driver};
use crate::error::{BoxError, ClientError};
use crate::rest::RestClient;
use crate::subscription::Subscription;

/// Produces a token for each (re)connection: an async closure, so that a reconnect after a
/// 4001 (expired token) can fetch a fresh one.
pub type TokenProvider =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, BoxError>> + Send>> + Send + Sync>;

/// Connection lifecycle, for applications that show "reconnecting…" (and for tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionEvent {
    /// Connected (again); subscriptions are being restored.
    Connected {
        /// The server's id for the connection.
        connection_id: String,
    },
    /// The connection was lost or closed by the server; a reconnect follows.
    Disconnected {
        /// The close code, if the server sent one (1001, 4001, 4002, 4008, …).
        code: Option<u16>,
        /// The close reason or the transport error.
        reason: String,
    },
    /// The client was closed.
    Closed,
}

/// What the server acknowledged for a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// The stored message's id.
    pub message_id: MessageId,
    /// Its seq (`None` for an ephemeral publish).
    pub seq: Option<Seq>,
}

/// The server's first answer to [`Client::signal_with_receipt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalReceipt {
    /// The server's id of the signal: later receipts ([`Event::Receipt`](crate::Event)) and
    /// its deliveries carry it.
    pub signal: MessageId,
    /// `delivered`, `held` (`delivered` or `expired` follows), or `expired`.
    pub status: ReceiptStatus,
}

pub(crate) struct Settings {
    pub(crate) url: String,
    pub(crate) token_provider: TokenProvider,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) subscription_buffer: usize,
}

/// Configures and connects a [`Client`].
pub struct ClientBuilder {
    url: String,
    token_provider: Option<TokenProvider>,
    backoff_min: Duration,
    backoff_max: Duration,
    request_timeout: Duration,
    connect_timeout: Duration,
    subscription_buffer: usize,
}

impl ClientBuilder {
    /// A fixed token (it cannot be renewed after it expires; prefer a provider).
    pub fn token(self, token: impl Into<String>) -> Self {
        let token: String = token.into();
        self.token_provider(move || {
            let token = token.clone();
            async move { Ok::<_, BoxError>(token) }
        })
    }

    /// An async function returning a token, called for the first connection and after the
    /// server refuses a token (4001, typically expiry).
    pub fn token_provider<F, Fut, E>(mut self, provider: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let provider: TokenProvider = Arc::new(move || {
            let future = provider();
            Box::pin(async move { future.await.map_err(Into::into) })
        });
        self.token_provider = Some(provider);
        self
    }

    /// Reconnect delays: full jitter between zero and `min * 2^attempt`, capped at `max`
    /// (defaults 250 ms and 30 s).
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max;
        self
    }

    /// How long `publish`, `subscribe`, `presence` and `signal` wait for the server
    /// (default 10 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long one connection attempt (upgrade and `welcome`) may take (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Events buffered per subscription (default 1024). When an application falls further
    /// behind, that subscription's messages are dropped without moving its cursor, and once
    /// the application has read half of the buffer the client subscribes again with `since`:
    /// the server replays what was dropped. A slow subscription loses nothing and never holds
    /// up the connection or other subscriptions.
    pub fn subscription_buffer(mut self, events: usize) -> Self {
        self.subscription_buffer = events.max(1);
        self
    }

    /// Connects (once; the first failure is returned) and starts the background driver,
    /// which reconnects on its own from then on.
    pub async fn connect(self) -> Result<Client, ClientError> {
        let token_provider = self
            .token_provider
            .ok_or_else(|| ClientError::Token("no token or token provider given".into()))?;
        let settings = Arc::new(Settings {
            url: self.url,
            token_provider,
            backoff_min: self.backoff_min,
            backoff_max: self.backoff_max,
            request_timeout: self.request_timeout,
            connect_timeout: self.connect_timeout,
            subscription_buffer: self.subscription_buffer,
        });
        let token = (settings.token_provider)()
            .await
            .map_err(ClientError::Token)?;
        let (ws, welcome) = driver::connect(&settings, &token).await?;
        let connection_id = welcome.connection_id.clone();
        let (commands, queue) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(64);
        let ids = Arc::new(AtomicU64::new(1));
        let driver = Driver::new(settings.clone(), queue, events.clone(), ids.clone(), token);
        tokio::spawn(driver.run(ws, welcome));
        let inner = Inner {
            commands,
            ids,
            settings,
            events,
            connection_id,
        };
        Ok(Client {
            inner: Arc::new(inner),
        })
    }
}

struct Inner {
    commands: mpsc::UnboundedSender<Command>,
    ids: Arc<AtomicU64>,
    settings: Arc<Settings>,
    events: broadcast::Sender<ConnectionEvent>,
    connection_id: String,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Close);
    }
}

/// A connection to a Relay server that survives disconnects. Cheap to clone; the connection
/// closes when the last clone is dropped (or on [`close`](Self::close)).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

fn channel_name(channel: &str) -> Result<ChannelName, ClientError> {
    ChannelName::parse(channel).map_err(|e| ClientError::Server {
        code: relay_proto::ErrorCode::BadRequest,
        message: format!("bad channel name: {e}"),
    })
}

impl Client {
    /// Starts configuring a client for `url` (`ws://host:port/ws`).
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            token_provider: None,
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            subscription_buffer: 1024,
        }
    }

    fn next_id(&self) -> u64 {
        self.inner.ids.fetch_add(1, Ordering::Relaxed)
    }

    fn command(&self, command: Command) -> Result<(), ClientError> {
        self.inner
            .commands
            .send(command)
            .map_err(|_| ClientError::Closed)
    }

    async fn wait<T>(
        &self,
        reply: oneshot::Receiver<Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        match tokio::time::timeout(self.inner.settings.request_timeout, reply).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout),
        }
    }

    async fn request(
        &self,
        frame: impl FnOnce(u64) -> ClientFrame,
    ) -> Result<ServerFrame, ClientError> {
        let id = self.next_id();
        let (reply, answer) = oneshot::channel();
        self.command(Command::Request {
            id,
            frame: frame(id),
            reply,
        })?;
        self.wait(answer).await
    }

    /// The server's id for the first connection.
    pub fn connection_id(&self) -> &str {
        &self.inner.connection_id
    }

    /// Connection lifecycle events from now on.
    pub fn connection_events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.inner.events.subscribe()
    }

    /// Subscribes to `channel`, starting with the next message.
    pub async fn subscribe(&self, channel: &str) -> Result<Subscription, ClientError> {
        self.subscribe_from(channel, None, SubscribeMode::Reliable)
            .await
    }

    /// Subscribes to `channel` in `latest` mode, for state where only the newest value
    /// matters (prices, cursors, dashboards): the channel's newest message comes first, and
    /// a reader slower than the channel skips older messages instead of falling behind.
    /// Seqs increase with holes; no [`Event::Gap`](crate::Event::Gap) is raised for them.
    /// After a reconnect it starts from the newest message again.
    pub async fn subscribe_latest(&self, channel: &str) -> Result<Subscription, ClientError> {
        self.subscribe_from(channel, None, SubscribeMode::Latest)
            .await
    }

    /// Subscribes to `channel`, first replaying every message after `since` (the last seq
    /// the application saw, e.g. persisted across restarts).
    pub async fn subscribe_since(
        &self,
        channel: &str,
        since: Seq,
    ) -> Result<Subscription, ClientError> {
        self.subscribe_from(channel, Some(since), SubscribeMode::Reliable)
            .await
    }

    async fn subscribe_from(
        &self,
        channel: &str,
        since: Option<Seq>,
        mode: SubscribeMode,
    ) -> Result<Subscription, ClientError> {
        let channel = channel_name(channel)?;
        let (events_tx, events) = mpsc::channel(self.inner.settings.subscription_buffer);
        let (reply, answer) = oneshot::channel();
        let id = self.next_id();
        self.command(Command::Subscribe {
            id,
            channel: channel.clone(),
            since,
            mode,
            events: events_tx,
            reply,
        })?;
        let start = self.wait(answer).await?;
        Ok(Subscription {
            channel,
            start,
            events,
            commands: self.inner.commands.clone(),
        })
    }

    /// Publishes a persistent message; resolves once it is stored, with its seq.
    ///
    /// Exactly once: the publish carries a fresh idempotency key, and if the connection drops
    /// before its ack arrives, it is sent again (same key) after the reconnect, so the server
    /// stores it once however often it arrives. It either resolves with the seq or fails
    /// explicitly: a server refusal ([`ClientError::Server`]), [`ClientError::Timeout`] (never
    /// sent, so not stored), or [`ClientError::Unconfirmed`] (sent, no ack in time: retry
    /// with [`publish_with_key`](Self::publish_with_key) and its key to settle it).
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        payload: &T,
    ) -> Result<Ack, ClientError> {
        self.publish_with(channel, None, false, None, payload).await
    }

    /// Like [`publish`](Self::publish) with the application's own idempotency key (1 to 128
    /// visible ASCII characters, e.g. the id of a row in its outbox), so that a retry after a
    /// restart or an [`Unconfirmed`](ClientError::Unconfirmed) is stored at most once. The
    /// server remembers a key for its `idempotency_window_secs` (10 minutes by default).
    pub async fn publish_with_key<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        key: &str,
        event: Option<&str>,
        payload: &T,
    ) -> Result<Ack, ClientError> {
        let key = IdempotencyKey::parse(key).map_err(|e| ClientError::Server {
            code: relay_proto::ErrorCode::BadRequest,
            message: e.to_string(),
        })?;
        self.publish_with(channel, event, false, Some(key), payload)
            .await
    }

    /// Publishes a persistent message with an event name (`"ADDED"`, …).
    pub async fn publish_event<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        event: &str,
        payload: &T,
    ) -> Result<Ack, ClientError> {
        self.publish_with(channel, Some(event), false, None, payload)
            .await
    }

    /// Publishes a live-only message: not stored, no seq, not echoed to this connection.
    pub async fn publish_ephemeral<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        event: Option<&str>,
        payload: &T,
    ) -> Result<Ack, ClientError> {
        self.publish_with(channel, event, true, None, payload).await
    }

    /// Tells the channel this user is typing (an ephemeral `typing` event).
    pub async fn typing(&self, channel: &str) -> Result<(), ClientError> {
        self.publish_ephemeral(channel, Some("typing"), &serde_json::json!({}))
            .await
            .map(|_| ())
    }

    async fn publish_with<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        event: Option<&str>,
        ephemeral: bool,
        key: Option<IdempotencyKey>,
        payload: &T,
    ) -> Result<Ack, ClientError> {
        let payload = Payload::from_value(payload)?;
        self.publish_frame(channel, event, ephemeral, key, payload, None)
            .await
    }

    /// Edits message `seq` of `channel`: `payload` replaces its payload in the current view
    /// of the history, and subscribers get an `event: "edit"` message with `reference`
    /// `seq`. Allowed to the message's sender, an owner or admin of the channel, and
    /// services. Exactly once, like [`publish`](Self::publish); resolves with the edit's own
    /// seq.
    pub async fn edit<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        seq: Seq,
        payload: &T,
    ) -> Result<Ack, ClientError> {
        let payload = Payload::from_value(payload)?;
        self.publish_frame(channel, Some(EDIT_EVENT), false, None, payload, Some(seq))
            .await
    }

    /// Deletes message `seq` of `channel`: the server replaces the stored payloads of the
    /// message and of its edits with `null`, and subscribers get an `event: "delete"`
    /// message with `reference` `seq`. Allowed like [`edit`](Self::edit); exactly once.
    pub async fn delete(&self, channel: &str, seq: Seq) -> Result<Ack, ClientError> {
        self.publish_frame(
            channel,
            Some(DELETE_EVENT),
            false,
            None,
            Payload::null(),
            Some(seq),
        )
        .await
    }

    async fn publish_frame(
        &self,
        channel: &str,
        event: Option<&str>,
        ephemeral: bool,
        key: Option<IdempotencyKey>,
        payload: Payload,
        reference: Option<Seq>,
    ) -> Result<Ack, ClientError> {
        let channel = channel_name(channel)?;
        let event = event.map(str::to_owned);
        let reply = if ephemeral {
            self.request(|id| ClientFrame::Publish {
                id: Some(id.into()),
                channel,
                payload,
                event,
                ephemeral,
                idempotency_key: None,
                reference,
            })
            .await?
        } else {
            let key = key.unwrap_or_else(IdempotencyKey::random);
            let id = self.next_id();
            let frame = ClientFrame::Publish {
                id: Some(id.into()),
                channel,
                payload,
                event,
                ephemeral,
                idempotency_key: Some(key.clone()),
                reference,
            };
            let sent = Arc::new(AtomicBool::new(false));
            let (reply, answer) = oneshot::channel();
            self.command(Command::Publish {
                id,
                frame,
                reply,
                sent: sent.clone(),
            })?;
            match self.wait(answer).await {
                Err(ClientError::Timeout) if sent.load(Ordering::Relaxed) => {
                    return Err(ClientError::Unconfirmed {
                        idempotency_key: key.to_string(),
                    });
                }
                reply => reply?,
            }
        };
        match reply {
            ServerFrame::Ack {
                message_id, seq, ..
            } => Ok(Ack { message_id, seq }),
            other => Err(ClientError::Protocol(format!(
                "expected ack, got {other:?}"
            ))),
        }
    }

    /// Sends a signal (WebRTC offer/answer/ICE) to every connection of `to` subscribed to
    /// `channel`. Resolves once the server has relayed it; `forbidden` unless this client is
    /// subscribed to `channel`. Where the namespace shows presence, `not_found` if `to` has
    /// no such connection; elsewhere that is not revealed (the signal resolves all the same).
    pub async fn signal<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        to: &str,
        event: Option<&str>,
        payload: &T,
    ) -> Result<(), ClientError> {
        let channel = channel_name(channel)?;
        let to = UserId::parse(to).map_err(|e| ClientError::Server {
            code: relay_proto::ErrorCode::BadRequest,
            message: format!("bad user id: {e}"),
        })?;
        let payload = Payload::from_value(payload)?;
        let (id, fence) = (self.next_id(), self.next_id());
        let frame = ClientFrame::Signal {
            id: Some(id.into()),
            channel,
            to,
            payload,
            event: event.map(str::to_owned),
            receipt: false,
            ttl_ms: None,
        };
        let (reply, answer) = oneshot::channel();
        self.command(Command::Signal {
            id,
            fence,
            frame,
            reply,
        })?;
        self.wait(answer).await
    }

    /// Sends a signal and asks what becomes of it: resolves with its server id and
    /// `delivered` (a connection of `to` received it) or `held` (none could; with `ttl`, the
    /// server holds it that long, at most its `max_signal_ttl`, and delivers it when `to`
    /// subscribes). After `held`, the channel's [`Subscription`] yields one
    /// [`Event::Receipt`](crate::Event::Receipt) with `delivered` or `expired`. Without a
    /// `ttl`, a signal nobody can take resolves with `expired` (on a cluster, after a short
    /// wait for the other nodes).
    pub async fn signal_with_receipt<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        to: &str,
        event: Option<&str>,
        payload: &T,
        ttl: Option<Duration>,
    ) -> Result<SignalReceipt, ClientError> {
        let channel = channel_name(channel)?;
        let to = UserId::parse(to).map_err(|e| ClientError::Server {
            code: relay_proto::ErrorCode::BadRequest,
            message: format!("bad user id: {e}"),
        })?;
        let payload = Payload::from_value(payload)?;
        // Whole milliseconds; a zero `ttl` holds nothing, like none.
        let ttl_ms = ttl
            .map(|ttl| u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
            .filter(|ms| *ms > 0);
        let reply = self
            .request(|id| ClientFrame::Signal {
                id: Some(id.into()),
                channel,
                to,
                payload,
                event: event.map(str::to_owned),
                receipt: true,
                ttl_ms,
            })
            .await?;
        match reply {
            ServerFrame::Receipt { signal, status, .. } => Ok(SignalReceipt { signal, status }),
            other => Err(ClientError::Protocol(format!(
                "unexpected reply to a signal: {other:?}"
            ))),
        }
    }

    /// The users online in `channel`.
    pub async fn presence(&self, channel: &str) -> Result<Vec<UserId>, ClientError> {
        let channel = channel_name(channel)?;
        match self
            .request(|id| ClientFrame::Presence {
                id: Some(id.into()),
                channel,
            })
            .await?
        {
            ServerFrame::Presence { users, .. } => Ok(users),
            other => Err(ClientError::Protocol(format!(
                "expected presence, got {other:?}"
            ))),
        }
    }

    /// Marks `channel` read up to `seq` for this user; returns the stored marker (markers
    /// never move back, nor past the channel's latest seq). The user's other subscribed
    /// connections get [`Event::Read`](crate::Event::Read).
    pub async fn mark_read(&self, channel: &str, seq: Seq) -> Result<Seq, ClientError> {
        let channel = channel_name(channel)?;
        match self
            .request(|id| ClientFrame::Read {
                id: Some(id.into()),
                channel,
                seq,
            })
            .await?
        {
            ServerFrame::Read { seq, .. } => Ok(seq),
            other => Err(ClientError::Protocol(format!(
                "expected read, got {other:?}"
            ))),
        }
    }

    /// Round-trips an application-level ping.
    pub async fn ping(&self) -> Result<(), ClientError> {
        self.request(|id| ClientFrame::Ping {
            id: Some(id.into()),
        })
        .await
        .map(|_| ())
    }

    /// The REST half (history, channels, members) with the same URL and token provider.
    pub fn rest(&self) -> Result<RestClient, ClientError> {
        RestClient::new(
            &self.inner.settings.url,
            self.inner.settings.token_provider.clone(),
        )
    }

    /// Closes the connection; subscriptions end.
    pub fn close(&self) {
        let _ = self.inner.commands.send(Command::Close);
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.inner.settings.url)
            .finish_non_exhaustive()
    }
}
