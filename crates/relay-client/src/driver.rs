//! The connection driver: one background task that owns the WebSocket. It connects, restores
//! every live subscription with `since` = the last seq its application saw, routes frames to
//! subscriptions (see `subs`) and pending requests, watches the heartbeat and reconnects with
//! backoff. It never waits on the application.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use relay_proto::{ChannelName, ClientFrame, CloseCode, ErrorCode, FrameId, Seq, ServerFrame};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::backoff::Backoff;
use crate::client::{ConnectionEvent, Settings};
use crate::error::ClientError;
use crate::subs::Subs;
use crate::subscription::{Event, Message};

/// How often subscriptions that fell behind are checked for a resubscribe.
const MAINTENANCE: Duration = Duration::from_millis(50);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Sink = SplitSink<Ws, WsMessage>;

/// What the client asks of the driver.
pub(crate) enum Command {
    /// Send `frame` (carrying `id`) and hand the reply to `reply`.
    Request {
        id: u64,
        frame: ClientFrame,
        reply: oneshot::Sender<Result<ServerFrame, ClientError>>,
    },
    /// Send a persistent publish (it carries an idempotency key) and hand the ack to
    /// `reply`; sent again after a reconnect until it is answered. `sent` records that it
    /// went out at least once.
    Publish {
        id: u64,
        frame: ClientFrame,
        reply: oneshot::Sender<Result<ServerFrame, ClientError>>,
        sent: Arc<AtomicBool>,
    },
    /// Send a signal, then a ping; the signal succeeded if no error for it precedes the pong.
    Signal {
        id: u64,
        fence: u64,
        frame: ClientFrame,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    /// Subscribe and route the channel's events to `events`.
    Subscribe {
        id: u64,
        channel: ChannelName,
        since: Option<Seq>,
        mode: relay_proto::SubscribeMode,
        events: mpsc::Sender<Event>,
        reply: oneshot::Sender<Result<Seq, ClientError>>,
    },
    /// Forget a subscription (its `Subscription` was dropped).
    Unsubscribe { channel: ChannelName },
    /// Close the connection for good.
    Close,
}

enum Pending {
    Reply(oneshot::Sender<Result<ServerFrame, ClientError>>),
    /// A persistent publish, kept whole so that it can be sent again.
    Publish {
        frame: ClientFrame,
        reply: oneshot::Sender<Result<ServerFrame, ClientError>>,
        sent: Arc<AtomicBool>,
    },
    Subscribe {
        channel: ChannelName,
        since: Option<Seq>,
        reply: Option<oneshot::Sender<Result<Seq, ClientError>>>,
    },
    Signal(oneshot::Sender<Result<(), ClientError>>),
    Fence {
        signal: u64,
    },
}

/// How a session ended.
enum End {
    /// The application closed the client.
    Closed,
    /// The connection was lost or closed by the server.
    Lost { code: Option<u16>, reason: String },
}

/// The server's `welcome`.
pub(crate) struct Welcome {
    pub(crate) connection_id: String,
    pub(crate) heartbeat: Duration,
}

/// Connects once: the upgrade, then the `welcome` (or the server's close).
pub(crate) async fn connect(
    settings: &Settings,
    token: &str,
) -> Result<(Ws, Welcome), ClientError> {
    let mut request = settings
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| ClientError::InvalidUrl(e.to_string()))?;
    let bearer = format!("Bearer {token}")
        .parse()
        .map_err(|_| ClientError::Token("the token is not a valid header value".into()))?;
    request.headers_mut().insert("authorization", bearer);
    let handshake = tokio_tungstenite::connect_async(request);
    let (mut ws, _) = tokio::time::timeout(settings.connect_timeout, handshake)
        .await
        .map_err(|_| ClientError::Timeout)?
        .map_err(|e| ClientError::Connect(Box::new(e)))?;
    let first = tokio::time::timeout(settings.connect_timeout, ws.next())
        .await
        .map_err(|_| ClientError::Timeout)?;
    match first {
        Some(Ok(WsMessage::Text(text))) => match ServerFrame::decode(text.as_bytes()) {
            Ok(ServerFrame::Welcome {
                connection_id,
                heartbeat_ms,
                ..
            }) => {
                let heartbeat = Duration::from_millis(heartbeat_ms.max(100));
                Ok((
                    ws,
                    Welcome {
                        connection_id,
                        heartbeat,
                    },
                ))
            }
            other => Err(ClientError::Protocol(format!(
                "expected welcome, got {other:?}"
            ))),
        },
        Some(Ok(WsMessage::Close(Some(frame))))
            if u16::from(frame.code) == CloseCode::Unauthorized.code() =>
        {
            Err(ClientError::Unauthorized(frame.reason.to_string()))
        }
        Some(Ok(other)) => Err(ClientError::Protocol(format!(
            "expected welcome, got {other:?}"
        ))),
        Some(Err(e)) => Err(ClientError::Connect(Box::new(e))),
        None => Err(ClientError::Disconnected),
    }
}

fn numeric(id: &Option<FrameId>) -> Option<u64> {
    match id {
        Some(FrameId::Number(n)) => n.as_u64(),
        _ => None,
    }
}

pub(crate) struct Driver {
    settings: Arc<Settings>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Commands that arrived while disconnected, replayed on the next connection.
    backlog: VecDeque<Command>,
    events: broadcast::Sender<ConnectionEvent>,
    subs: Subs,
    pending: HashMap<u64, Pending>,
    ids: Arc<std::sync::atomic::AtomicU64>,
    token: String,
    token_refused: bool,
}

impl Driver {
    pub(crate) fn new(
        settings: Arc<Settings>,
        commands: mpsc::UnboundedReceiver<Command>,
        events: broadcast::Sender<ConnectionEvent>,
        ids: Arc<std::sync::atomic::AtomicU64>,
        token: String,
    ) -> Self {
        Self {
            settings,
            commands,
            backlog: VecDeque::new(),
            events,
            subs: Subs::default(),
            pending: HashMap::new(),
            ids,
            token,
            token_refused: false,
        }
    }

    /// Runs sessions until the client is closed, reconnecting in between.
    pub(crate) async fn run(mut self, ws: Ws, welcome: Welcome) {
        let mut backoff = Backoff::new(self.settings.backoff_min, self.settings.backoff_max);
        let mut next = Some((ws, welcome));
        loop {
            let (ws, welcome) = match next.take() {
                Some(connected) => connected,
                None => match self.reconnect(&mut backoff).await {
                    Some(connected) => connected,
                    None => break,
                },
            };
            backoff.reset();
            let _ = self.events.send(ConnectionEvent::Connected {
                connection_id: welcome.connection_id.clone(),
            });
            let end = self.session(ws, welcome.heartbeat).await;
            self.fail_pending();
            match end {
                End::Closed => break,
                End::Lost { code, reason } => {
                    tracing::debug!(?code, %reason, "connection lost; reconnecting");
                    self.token_refused = code == Some(CloseCode::Unauthorized.code());
                    let _ = self
                        .events
                        .send(ConnectionEvent::Disconnected { code, reason });
                }
            }
        }
        let _ = self.events.send(ConnectionEvent::Closed);
    }

    /// Waits (with backoff) and connects again; `None` when the client was closed meanwhile.
    async fn reconnect(&mut self, backoff: &mut Backoff) -> Option<(Ws, Welcome)> {
        loop {
            let delay = tokio::time::sleep(backoff.next_delay());
            tokio::pin!(delay);
            loop {
                tokio::select! {
                    () = &mut delay => break,
                    command = self.commands.recv() => match command {
                        None | Some(Command::Close) => return None,
                        Some(command) => self.backlog.push_back(command),
                    },
                }
            }
            if self.token_refused {
                // Never retry with a token the server refused: ask for a fresh one first.
                match (self.settings.token_provider)().await {
                    Ok(token) if token != self.token => {
                        self.token = token;
                        self.token_refused = false;
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "token provider failed");
                        continue;
                    }
                }
            }
            match connect(&self.settings, &self.token).await {
                Ok(connected) => return Some(connected),
                Err(ClientError::Unauthorized(reason)) => {
                    tracing::warn!(%reason, "token refused; waiting for a new one");
                    self.token_refused = true;
                }
                Err(e) => tracing::debug!(error = %e, "reconnect failed"),
            }
        }
    }

    async fn session(&mut self, ws: Ws, heartbeat: Duration) -> End {
        let (mut sink, mut stream) = ws.split();
        // Restore every subscription where the application left off.
        let ids = self.ids.clone();
        let restore = self
            .subs
            .restore_all(|| ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        for (id, channel, since, mode) in restore {
            if let Err(end) = self
                .request_subscribe(&mut sink, id, channel, since, mode, None)
                .await
            {
                return end;
            }
        }
        while let Some(command) = self.backlog.pop_front() {
            match self.on_command(&mut sink, command).await {
                Ok(Flow::Continue) => {}
                Ok(Flow::Close) => return self.close(&mut sink).await,
                Err(end) => return end,
            }
        }
        let idle = heartbeat * 2;
        let mut deadline = tokio::time::Instant::now() + idle;
        let mut maintenance = tokio::time::interval(MAINTENANCE);
        loop {
            tokio::select! {
                message = stream.next() => {
                    deadline = tokio::time::Instant::now() + idle;
                    match message {
                        Some(Ok(WsMessage::Text(text))) => match ServerFrame::decode(text.as_bytes()) {
                            Ok(frame) => {
                                if let Err(end) = self.on_frame(&mut sink, frame).await {
                                    return end;
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "undecodable frame from the server"),
                        },
                        Some(Ok(WsMessage::Close(frame))) => {
                            let code = frame.as_ref().map(|f| u16::from(f.code));
                            let reason = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                            return End::Lost { code, reason };
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return End::Lost { code: None, reason: e.to_string() },
                        None => return End::Lost { code: None, reason: "connection closed".into() },
                    }
                }
                command = self.commands.recv() => {
                    let Some(command) = command else { return self.close(&mut sink).await };
                    match self.on_command(&mut sink, command).await {
                        Ok(Flow::Continue) => {}
                        Ok(Flow::Close) => return self.close(&mut sink).await,
                        Err(end) => return end,
                    }
                }
                _ = maintenance.tick(), if self.subs.needs_maintenance() => {
                    if let Err(end) = self.resubscribe_due(&mut sink).await {
                        return end;
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    return End::Lost { code: None, reason: "no frame within two heartbeats".into() };
                }
            }
        }
    }

    /// Subscribes again what fell behind (once its application caught up) or was refused for
    /// a passing reason.
    async fn resubscribe_due(&mut self, sink: &mut Sink) -> Result<(), End> {
        let ids = self.ids.clone();
        for (id, again) in self
            .subs
            .due(|| ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
        {
            let channel = again.channel;
            if again.unsubscribe_first {
                send(
                    sink,
                    &ClientFrame::Unsubscribe {
                        id: None,
                        channel: channel.clone(),
                    },
                )
                .await?;
            }
            self.request_subscribe(sink, id, channel, again.since, again.mode, None)
                .await?;
        }
        Ok(())
    }

    /// Registers a pending subscribe under `id` (with the caller's `reply`, or none for a
    /// restore) and sends it.
    async fn request_subscribe(
        &mut self,
        sink: &mut Sink,
        id: u64,
        channel: ChannelName,
        since: Option<Seq>,
        mode: relay_proto::SubscribeMode,
        reply: Option<oneshot::Sender<Result<Seq, ClientError>>>,
    ) -> Result<(), End> {
        self.pending.insert(
            id,
            Pending::Subscribe {
                channel: channel.clone(),
                since,
                reply,
            },
        );
        send(
            sink,
            &ClientFrame::Subscribe {
                id: Some(id.into()),
                channel,
                since,
                mode,
            },
        )
        .await
    }

    async fn close(&mut self, sink: &mut Sink) -> End {
        let _ = sink.send(WsMessage::Close(None)).await;
        End::Closed
    }

    /// Handles one command.
    async fn on_command(&mut self, sink: &mut Sink, command: Command) -> Result<Flow, End> {
        match command {
            Command::Request { id, frame, reply } => {
                if reply.is_closed() {
                    return Ok(Flow::Continue); // The caller gave up (timeout); do not act on it late.
                }
                self.pending.insert(id, Pending::Reply(reply));
                send(sink, &frame).await?;
            }
            Command::Publish {
                id,
                frame,
                reply,
                sent,
            } => {
                if reply.is_closed() {
                    return Ok(Flow::Continue);
                }
                // Set before the write: a write that fails may still have reached the server.
                sent.store(true, Ordering::Relaxed);
                let result = send(sink, &frame).await;
                self.pending
                    .insert(id, Pending::Publish { frame, reply, sent });
                result?;
            }
            Command::Signal {
                id,
                fence,
                frame,
                reply,
            } => {
                if reply.is_closed() {
                    return Ok(Flow::Continue);
                }
                self.pending.insert(id, Pending::Signal(reply));
                self.pending.insert(fence, Pending::Fence { signal: id });
                send(sink, &frame).await?;
                send(
                    sink,
                    &ClientFrame::Ping {
                        id: Some(fence.into()),
                    },
                )
                .await?;
            }
            Command::Subscribe {
                id,
                channel,
                since,
                mode,
                events,
                reply,
            } => {
                if reply.is_closed() {
                    return Ok(Flow::Continue);
                }
                if self.subs.contains(&channel) {
                    let _ = reply.send(Err(ClientError::AlreadySubscribed(channel.to_string())));
                    return Ok(Flow::Continue);
                }
                self.subs.insert(channel.clone(), events, since, id, mode);
                self.request_subscribe(sink, id, channel, since, mode, Some(reply))
                    .await?;
            }
            Command::Unsubscribe { channel } => {
                if self.subs.remove(&channel) {
                    send(sink, &ClientFrame::Unsubscribe { id: None, channel }).await?;
                }
            }
            Command::Close => return Ok(Flow::Close),
        }
        Ok(Flow::Continue)
    }

    /// Routes one server frame to the handler of its type.
    async fn on_frame(&mut self, sink: &mut Sink, frame: ServerFrame) -> Result<(), End> {
        match frame {
            ServerFrame::Subscribed {
                id, seq, recovered, ..
            } => {
                self.on_subscribed(sink, numeric(&id), seq, recovered)
                    .await?
            }
            ServerFrame::Message {
                channel,
                id,
                seq,
                from,
                event,
                payload,
                ts,
                reference,
            } => self.subs.on_message(Message {
                channel,
                id,
                seq,
                from,
                event,
                payload,
                ts,
                reference,
            }),
            ServerFrame::Join { channel, user } => self.subs.on_event(&channel, Event::Join(user)),
            ServerFrame::Leave { channel, user } => {
                self.subs.on_event(&channel, Event::Leave(user))
            }
            ServerFrame::Signal {
                channel,
                from,
                payload,
                event,
                signal,
            } => self.subs.on_event(
                &channel,
                Event::Signal {
                    from,
                    event,
                    payload,
                    signal,
                },
            ),
            // The first receipt answers the signal; later ones (after `held`) are events.
            ServerFrame::Receipt { ref id, .. }
                if numeric(id).is_some_and(|id| self.pending.contains_key(&id)) =>
            {
                self.on_reply(frame)
            }
            ServerFrame::Receipt {
                channel,
                to,
                signal,
                status,
                ..
            } => self
                .subs
                .on_event(&channel, Event::Receipt { to, signal, status }),
            ServerFrame::Error {
                id, code, message, ..
            } => self.on_error(numeric(&id), code, message),
            ServerFrame::Pong { id } => self.on_pong(id),
            ServerFrame::Read {
                id: None,
                channel,
                seq,
            } => self.subs.on_read(&channel, seq),
            ServerFrame::Unsubscribed {
                id: None,
                channel,
                reason,
            } => self.subs.on_ended(&channel, reason.unwrap_or_default()),
            frame @ (ServerFrame::Ack { .. }
            | ServerFrame::Presence { .. }
            | ServerFrame::Read { .. }
            | ServerFrame::Unsubscribed { .. }) => self.on_reply(frame),
            ServerFrame::Welcome { .. } => {}
        }
        Ok(())
    }

    /// A subscribe succeeded: the subscription goes live, and its caller (if any still
    /// waits) gets the seq.
    async fn on_subscribed(
        &mut self,
        sink: &mut Sink,
        id: Option<u64>,
        seq: Seq,
        recovered: Option<bool>,
    ) -> Result<(), End> {
        let Some(id) = id else {
            return Ok(());
        };
        let Some(Pending::Subscribe {
            channel,
            since,
            reply,
        }) = self.pending.remove(&id)
        else {
            return Ok(());
        };
        let notify = reply.is_none();
        let current = match since {
            // Further behind than the server replays: read the history over REST. (A `since`
            // at or past the latest seq has nothing to page: a gap, as before.)
            Some(since) if recovered == Some(false) && since < seq => {
                self.catch_up(&channel, id, since, seq)
            }
            _ => self
                .subs
                .on_subscribed(&channel, id, since, recovered, seq, notify),
        };
        if let Some(reply) = reply
            && (!current || reply.send(Ok(seq)).is_err())
        {
            // Nobody waits for this subscription any more (the caller timed out): do not
            // leave it subscribed.
            if current && self.subs.remove(&channel) {
                send(sink, &ClientFrame::Unsubscribe { id: None, channel }).await?;
            }
        }
        Ok(())
    }

    /// Starts paging `channel` from `since` up to (at least) `latest` over REST; false when
    /// the reply to subscribe frame `id` is stale.
    fn catch_up(&mut self, channel: &ChannelName, id: u64, since: Seq, latest: Seq) -> bool {
        let Some(events) = self.subs.begin_paging(channel, id, since) else {
            return false;
        };
        let cursor = Arc::new(std::sync::atomic::AtomicU64::new(since.0));
        let done = Arc::new(AtomicBool::new(false));
        let rest =
            crate::rest::RestClient::new(&self.settings.url, self.settings.token_provider.clone())
                .map(|rest| rest.with_timeout(self.settings.request_timeout));
        let task = tokio::spawn(page_history(
            rest,
            channel.clone(),
            since,
            latest,
            events,
            cursor.clone(),
            done.clone(),
        ));
        self.subs.set_paging(
            channel,
            crate::subs::Paging {
                cursor,
                done,
                task: task.abort_handle(),
                subscribed: true,
            },
        );
        true
    }

    /// An `error` frame: fails the request it answers, or ends or retries a subscription.
    fn on_error(&mut self, id: Option<u64>, code: ErrorCode, message: String) {
        let error = || ClientError::Server {
            code,
            message: message.clone(),
        };
        match id.and_then(|id| self.pending.remove(&id).map(|p| (id, p))) {
            Some((_, Pending::Reply(reply) | Pending::Publish { reply, .. })) => {
                let _ = reply.send(Err(error()));
            }
            Some((_, Pending::Signal(reply))) => {
                let _ = reply.send(Err(error()));
            }
            Some((
                id,
                Pending::Subscribe {
                    channel,
                    reply: Some(reply),
                    ..
                },
            )) => {
                self.subs.remove_if_awaiting(&channel, id);
                let _ = reply.send(Err(error()));
            }
            Some((
                id,
                Pending::Subscribe {
                    channel,
                    reply: None,
                    ..
                },
            )) => {
                tracing::warn!(%channel, %code, %message, "resubscribe refused");
                self.subs.on_refused(&channel, id, code, message.clone());
            }
            Some((_, Pending::Fence { .. })) | None => {
                tracing::warn!(%code, %message, "error from the server");
            }
        }
    }

    /// A `pong`: the fence after a signal (the signal was accepted), or a ping's reply.
    fn on_pong(&mut self, id: Option<FrameId>) {
        match numeric(&id).and_then(|id| self.pending.remove(&id)) {
            Some(Pending::Fence { signal }) => {
                if let Some(Pending::Signal(reply)) = self.pending.remove(&signal) {
                    let _ = reply.send(Ok(()));
                }
            }
            Some(Pending::Reply(reply)) => {
                let _ = reply.send(Ok(ServerFrame::Pong { id }));
            }
            _ => {}
        }
    }

    /// A reply to a request (`ack`, `presence`, `unsubscribed`), handed to its caller.
    fn on_reply(&mut self, frame: ServerFrame) {
        let id = match &frame {
            ServerFrame::Ack { id, .. }
            | ServerFrame::Presence { id, .. }
            | ServerFrame::Read { id, .. }
            | ServerFrame::Receipt { id, .. }
            | ServerFrame::Unsubscribed { id, .. } => numeric(id),
            _ => None,
        };
        if let Some(Pending::Reply(reply) | Pending::Publish { reply, .. }) =
            id.and_then(|id| self.pending.remove(&id))
        {
            let _ = reply.send(Ok(frame));
        }
    }

    /// The connection is gone: nobody will answer what is pending. Persistent publishes
    /// whose callers still wait go first on the next connection, in their original order;
    /// their idempotency keys make the repeat safe.
    fn fail_pending(&mut self) {
        let mut again = Vec::new();
        for (id, pending) in self.pending.drain() {
            match pending {
                Pending::Reply(reply) => {
                    let _ = reply.send(Err(ClientError::Disconnected));
                }
                Pending::Publish { frame, reply, sent } => {
                    if !reply.is_closed() {
                        again.push((
                            id,
                            Command::Publish {
                                id,
                                frame,
                                reply,
                                sent,
                            },
                        ));
                    }
                }
                Pending::Signal(reply) => {
                    let _ = reply.send(Err(ClientError::Disconnected));
                }
                Pending::Subscribe {
                    channel,
                    reply: Some(reply),
                    ..
                } => {
                    self.subs.remove_if_awaiting(&channel, id);
                    let _ = reply.send(Err(ClientError::Disconnected));
                }
                Pending::Subscribe { reply: None, .. } | Pending::Fence { .. } => {}
            }
        }
        again.sort_by_key(|(id, _)| *id);
        for (_, command) in again.into_iter().rev() {
            self.backlog.push_front(command);
        }
    }
}

/// Whether the driver goes on after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

async fn send(sink: &mut Sink, frame: &ClientFrame) -> Result<(), End> {
    sink.send(WsMessage::Text(frame.encode().into()))
        .await
        .map_err(|e| End::Lost {
            code: None,
            reason: e.to_string(),
        })
}

/// Messages per history page of a catch-up (the server's maximum).
const CATCH_UP_PAGE: usize = 200;
/// Failed history reads in a row before a catch-up gives up on the rest (a gap); with the
/// backoff (100 ms doubling to 5 s) about half a minute of outage.
const CATCH_UP_ATTEMPTS: u32 = 10;

/// Reads `channel`'s history after `since` page by page and hands it to the subscription,
/// waiting on the application (one page in memory at most), until a page comes back short.
/// Messages trimmed away before they could be read are reported as a gap; a history that
/// cannot be read is given up on after [`CATCH_UP_ATTEMPTS`] failures in a row, or at once
/// when refused for good (a gap up to `latest`). History that ends before `latest` (emptied
/// by retention) is a gap up to `latest` too, so the subscription never pages from the same
/// place twice. Publishes its progress in `cursor`, then sets `done`.
async fn page_history(
    rest: Result<crate::rest::RestClient, ClientError>,
    channel: ChannelName,
    since: Seq,
    latest: Seq,
    events: mpsc::Sender<Event>,
    cursor: Arc<std::sync::atomic::AtomicU64>,
    done: Arc<AtomicBool>,
) {
    let mut at = since;
    let mut failures = 0;
    let mut backoff = Duration::from_millis(100);
    loop {
        let page = match &rest {
            Ok(rest) => {
                rest.history(
                    channel.as_str(),
                    crate::rest::HistoryPage {
                        after: Some(at),
                        before: None,
                        limit: Some(CATCH_UP_PAGE),
                    },
                )
                .await
            }
            Err(e) => Err(ClientError::InvalidUrl(e.to_string())),
        };
        match page {
            Ok(messages) => {
                failures = 0;
                let full = messages.len() == CATCH_UP_PAGE;
                for message in messages {
                    let Some(seq) = message.seq.filter(|seq| *seq > at) else {
                        continue;
                    };
                    if seq.0 > at.0 + 1 {
                        let gap = Event::Gap {
                            since: at,
                            resumed_at: Seq(seq.0 - 1),
                        };
                        if events.send(gap).await.is_err() {
                            return;
                        }
                    }
                    if events.send(Event::Message(message)).await.is_err() {
                        return;
                    }
                    at = seq;
                    cursor.store(at.0, Ordering::Release);
                }
                if !full {
                    if at < latest {
                        let gap = Event::Gap {
                            since: at,
                            resumed_at: latest,
                        };
                        if events.send(gap).await.is_err() {
                            return;
                        }
                        cursor.store(latest.0, Ordering::Release);
                    }
                    break;
                }
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(%channel, error = %e, failures, "catch-up: history read failed");
                let final_refusal = matches!(
                    e.code(),
                    Some(ErrorCode::Forbidden | ErrorCode::NotFound | ErrorCode::BadRequest)
                );
                if final_refusal || failures >= CATCH_UP_ATTEMPTS {
                    if latest > at {
                        let gap = Event::Gap {
                            since: at,
                            resumed_at: latest,
                        };
                        if events.send(gap).await.is_err() {
                            return;
                        }
                        cursor.store(latest.0, Ordering::Release);
                    }
                    break;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    done.store(true, Ordering::Release);
}
