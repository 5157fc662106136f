//! `GET /ws`: the WebSocket transport. Upgrades the request, authenticates, then runs one
//! session: a reader that feeds client frames to the hub connection, and a writer that
//! drains the connection's outbox, sends heartbeats and enforces the connection's deadlines.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use relay_core::{Batch, Connection, Identity};
use relay_proto::{ClientFrame, CloseCode, ErrorCode, SUBPROTOCOL};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::app::{ApiError, App, Body};
use crate::auth::AuthError;
use crate::limits::{Refusal, Slot};
use crate::{frame, wire};

/// Read buffer of a connection. Small on purpose: tungstenite's 128 KiB default would cost
/// over a gigabyte at 10k idle connections; frames larger than this still arrive, in pieces.
const READ_BUFFER: usize = 512;
/// A writer keeps its write buffer (bytes) and its batch vector (frames; it goes back to the
/// outbox as its next queue) between batches up to these sizes, and gives back the memory of
/// larger bursts, so that busy connections do not reallocate per batch and idle ones stay
/// small.
const KEEP_WRITE_BUFFER: usize = 16 * 1024;
const KEEP_BATCH: usize = 256;
/// How often a blocked write checks whether to give up on its client.
const STALL_CHECK: Duration = Duration::from_secs(1);
/// How long a closing session waits for the peer's close reply.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Frames read ahead while an earlier one is handled, and their bytes: past either, reading
/// waits (TCP pushes back on the client).
const READ_AHEAD: usize = 32;
const READ_AHEAD_BYTES: usize = 256 * 1024;

/// A client frame being handled. Boxed: the handling future is large and rarely alive, and
/// inline it would sit in every idle connection's task.
type Handling<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

/// Decoded frames waiting for their turn.
#[derive(Default)]
struct ReadAhead {
    frames: std::collections::VecDeque<(ClientFrame, usize)>,
    bytes: usize,
}

impl ReadAhead {
    fn has_room(&self) -> bool {
        self.frames.len() < READ_AHEAD && self.bytes < READ_AHEAD_BYTES
    }

    fn push(&mut self, frame: ClientFrame, bytes: usize) {
        self.bytes += bytes;
        self.frames.push_back((frame, bytes));
    }

    fn pop(&mut self) -> Option<ClientFrame> {
        let (frame, bytes) = self.frames.pop_front()?;
        self.bytes -= bytes;
        Some(frame)
    }
}

/// Client pings answered at most per wake of the writer; a client that pings faster gets
/// pongs for the latest ones only.
const OWED_PONGS: usize = 16;

/// `Retry-After` of a connection refused by a cap.
const ADMISSION_RETRY_SECS: u64 = 5;

pub(crate) async fn upgrade<B>(app: &App, mut req: Request<B>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
{
    let key = match handshake_key(&req) {
        Ok(key) => key,
        Err(e) => return e.into_response(),
    };
    let protocol = match negotiate_protocol(&req) {
        Ok(protocol) => protocol,
        Err(e) => return e.into_response(),
    };
    if app.inner.shutdown.is_cancelled() {
        return ApiError::new(ErrorCode::Unavailable, "server is shutting down").into_response();
    }
    // A bad token still completes the upgrade, then closes with 4001: browsers cannot read
    // the HTTP status of a failed upgrade.
    let auth = match app.authenticate(&req).await {
        Ok(auth) => auth,
        Err(e) => return e.into_response(),
    };
    let slot = match admit(app, &req, &auth) {
        Ok(slot) => slot,
        Err(e) => return e.into_response(),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let session_app = app.clone();
    let mode = Mode::Relay;
    app.inner.sessions.spawn(async move {
        let _slot = slot;
        match on_upgrade.await {
            // Served by our own accept loop, the upgraded IO is a plain TCP stream: take it
            // back from hyper, so that reads and writes skip hyper's boxed IO and the split
            // lock (each write is one syscall with nothing in between). Embedders' IO types
            // take the generic path.
            Ok(upgraded) => match upgraded.downcast::<TokioIo<tokio::net::TcpStream>>() {
                Ok(parts) => {
                    // Copy what hyper read ahead and let go of its read buffer now, or the
                    // whole buffer would live as long as the connection.
                    let already_read = parts.read_buf.to_vec();
                    drop(parts.read_buf);
                    let (read, write) = parts.io.into_inner().into_split();
                    session(session_app, (read, already_read), write, auth, mode).await;
                }
                Err(upgraded) => {
                    let (read, write) = tokio::io::split(TokioIo::new(upgraded));
                    session(session_app, (read, Vec::new()), write, auth, mode).await;
                }
            },
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    switching_protocols(&key, protocol)
}

/// `GET /echo` (feature `autobahn`, never in production builds): a WebSocket that echoes
/// every message, for the Autobahn|Testsuite run (`cargo xtask autobahn`). No token; the
/// session runs the real reader and writer with a service identity and sends no `welcome`.
#[cfg(feature = "autobahn")]
pub(crate) async fn echo<B>(app: &App, mut req: Request<B>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
{
    let key = match handshake_key(&req) {
        Ok(key) => key,
        Err(e) => return e.into_response(),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let session_app = app.clone();
    let identity = match relay_proto::UserId::parse("autobahn") {
        Ok(user) => Identity::service(user),
        Err(e) => return ApiError::new(ErrorCode::Internal, e.to_string()).into_response(),
    };
    app.inner.sessions.spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let (read, write) = tokio::io::split(TokioIo::new(upgraded));
            let auth = Ok((identity, crate::auth::far_future()));
            session(session_app, (read, Vec::new()), write, auth, Mode::Echo).await;
        }
    });
    switching_protocols(&key, None)
}

/// The `101 Switching Protocols` answer to an upgrade.
fn switching_protocols(key: &str, protocol: Option<HeaderValue>) -> Response<Body> {
    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(key) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(protocol) = protocol {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    response
}

/// Counts the session against the connection caps, or refuses it before the upgrade: 503
/// when the process is full, 429 when the user or the client IP is. Service tokens count
/// only against the process cap.
pub(crate) fn admit<B>(
    app: &App,
    req: &Request<B>,
    auth: &Result<(Identity, SystemTime), AuthError>,
) -> Result<Slot, ApiError> {
    let service = matches!(auth, Ok((identity, _)) if identity.role == relay_core::Role::Service);
    let user = match auth {
        Ok((identity, _)) if !service => Some(&identity.user),
        _ => None,
    };
    if let Some(user) = user
        && let Some(retry) = app.inner.cooldowns.remaining(user)
    {
        return Err(app
            .refuse(
                "abuse_cooldown",
                ErrorCode::RateLimited,
                "this user's last connection was closed for abuse: wait before reconnecting",
            )
            .retry_after(retry));
    }
    let ip = if service { None } else { app.client_ip(req) };
    if let Some(ip) = ip
        && let Err(retry) = app.inner.connects.take(&ip)
    {
        return Err(app
            .refuse(
                "connect_rate",
                ErrorCode::RateLimited,
                "too many new connections from this address",
            )
            .retry_after(retry));
    }
    app.inner
        .counts
        .admit(app.inner.config.caps(), user, ip)
        .map_err(|refusal| {
            let code = match refusal {
                Refusal::Process => ErrorCode::Unavailable,
                Refusal::User | Refusal::Ip => ErrorCode::RateLimited,
            };
            let message = format!("connection limit reached ({})", refusal.label());
            app.refuse(refusal.label(), code, message)
                .retry_after(ADMISSION_RETRY_SECS)
        })
}

/// Whether `key` is a valid `Sec-WebSocket-Key`: the base64 encoding of 16 bytes (RFC 6455
/// section 4.1): 22 characters of the base64 alphabet, the last of them carrying no bits past
/// the 128th, then `==`.
fn valid_key(key: &[u8]) -> bool {
    let is_base64 = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/');
    key.len() == 24
        && key[..22].iter().all(is_base64)
        && matches!(key[21], b'A' | b'Q' | b'g' | b'w')
        && &key[22..] == b"=="
}

/// Validates the upgrade request and returns the `Sec-WebSocket-Accept` value.
fn handshake_key<B>(req: &Request<B>) -> Result<String, ApiError> {
    let bad = |m: &str| ApiError::new(ErrorCode::BadRequest, m);
    if req.method() != http::Method::GET {
        return Err(bad("/ws needs a GET WebSocket upgrade"));
    }
    let has_token = |name: header::HeaderName, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Err(bad(
            "/ws needs `Connection: upgrade` and `Upgrade: websocket`",
        ));
    }
    if req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return Err(bad("only WebSocket version 13 is supported"));
    }
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| bad("missing Sec-WebSocket-Key"))?;
    if !valid_key(key.as_bytes()) {
        return Err(bad(
            "Sec-WebSocket-Key must be the base64 encoding of 16 bytes",
        ));
    }
    Ok(tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// `relay.v1.json` is the only subprotocol; it is the default when none is requested.
fn negotiate_protocol<B>(req: &Request<B>) -> Result<Option<HeaderValue>, ApiError> {
    let mut requested = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .peekable();
    if requested.peek().is_none() {
        return Ok(None);
    }
    if requested.any(|p| p == SUBPROTOCOL) {
        return Ok(Some(HeaderValue::from_static(SUBPROTOCOL)));
    }
    Err(ApiError::new(
        ErrorCode::BadRequest,
        format!("unsupported subprotocol; this server speaks {SUBPROTOCOL}"),
    ))
}

/// When a session ends whatever happens on it: its token's expiry and its maximum age
/// (`max_connection_age_secs`). Shared by the WebSocket and SSE writers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadlines {
    expires_at: tokio::time::Instant,
    too_old_at: Option<tokio::time::Instant>,
}

impl Deadlines {
    /// The deadlines of a session that starts `now` with a token valid until `token_expires`.
    pub(crate) fn new(
        config: &crate::Config,
        token_expires: SystemTime,
        now: tokio::time::Instant,
    ) -> Self {
        let left = token_expires
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        Self {
            expires_at: now + left,
            too_old_at: config
                .max_connection_age_secs
                .map(|secs| now + Duration::from_secs(secs)),
        }
    }

    /// The earlier one.
    pub(crate) fn first(&self) -> tokio::time::Instant {
        self.too_old_at
            .map_or(self.expires_at, |t| t.min(self.expires_at))
    }

    /// Closes `outbox` (4001 for the token, 4002 for the age) when a deadline has passed at
    /// `now`; whether one had.
    pub(crate) fn enforce(&self, outbox: &relay_core::Outbox, now: tokio::time::Instant) -> bool {
        if now >= self.expires_at {
            outbox.close(CloseCode::Unauthorized, "token expired");
        } else if self.too_old_at.is_some_and(|t| now >= t) {
            outbox.close(CloseCode::Idle, "maximum connection age reached");
        } else {
            return false;
        }
        true
    }
}

/// What a session does with the data frames it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The Relay protocol: text frames are client frames for the hub.
    Relay,
    /// Echo every data frame back as it came (text or binary), through the same reader
    /// and writer: the endpoint the Autobahn|Testsuite conformance run talks to (feature
    /// `autobahn` only).
    #[cfg_attr(not(feature = "autobahn"), allow(dead_code))]
    Echo,
}

/// One WebSocket session over the two halves of a connection; `already_read` holds bytes
/// that arrived with the upgrade request.
async fn session<R, W>(
    app: App,
    (read_half, already_read): (R, Vec<u8>),
    mut write_half: W,
    auth: Result<(Identity, SystemTime), AuthError>,
    mode: Mode,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let config = &app.inner.config;
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(config.max_frame_bytes))
        .max_frame_size(Some(config.max_frame_bytes));
    let mut ws = WebSocketStream::from_partially_read(
        wire::ReadOnly(read_half),
        already_read,
        Role::Server,
        Some(ws_config),
    )
    .await;
    let (identity, expires) = match auth {
        // The token stays usable for the same leeway its verification allowed.
        Ok((identity, expires)) => {
            let expires = expires.checked_add(app.inner.auth.leeway());
            (identity, expires.unwrap_or_else(crate::auth::far_future))
        }
        Err(e) => {
            tracing::debug!(reason = %e, "websocket refused");
            app.inner.metrics.close(CloseCode::Unauthorized);
            let mut frame = Vec::new();
            frame::close(&mut frame, CloseCode::Unauthorized.code(), &e.to_string());
            if write_half.write_all(&frame).await.is_ok() {
                let _ = tokio::time::timeout(CLOSE_GRACE, ws.next()).await;
            }
            return;
        }
    };
    let conn = app.inner.hub.connect(identity);
    tracing::debug!(connection = conn.id(), user = %conn.identity().user, "connected");
    if mode == Mode::Relay {
        conn.send(&conn.welcome(config.heartbeat_ms));
    }
    let session = Session {
        app: &app,
        conn: &conn,
        started: Instant::now(),
        last_seen: AtomicU64::new(0),
        heard: AtomicBool::new(false),
        pongs: parking_lot::Mutex::default(),
        control: tokio::sync::Notify::new(),
        closing: std::sync::atomic::AtomicBool::new(false),
        echo: (mode == Mode::Echo).then(Default::default),
    };

    let writer = session.write(write_half, expires);
    let reader = session.read(ws);
    tokio::pin!(writer, reader);
    tokio::select! {
        (code, reason) = &mut reader => {
            // The peer closed or broke the protocol: let the writer send our close frame.
            conn.outbox().close(code, reason);
            let _ = tokio::time::timeout(CLOSE_GRACE, &mut writer).await;
        }
        () = &mut writer => {
            // We sent a close frame: wait (bounded) for the peer's reply.
            let _ = tokio::time::timeout(CLOSE_GRACE, &mut reader).await;
        }
    }
    cool_down_if_abusive(&app, &conn);
    tracing::debug!(connection = conn.id(), "disconnected");
}

/// A user whose connection was closed for abuse waits before coming back: reconnecting
/// must not refill the buckets the close was for.
pub(crate) fn cool_down_if_abusive(app: &App, conn: &Connection) {
    let abusive = conn.outbox().closed().is_some_and(|r| {
        matches!(
            r.code,
            CloseCode::RateLimited
                | CloseCode::TooBig
                | CloseCode::ProtocolError
                | CloseCode::InvalidPayload
        )
    });
    if abusive && conn.identity().role == relay_core::Role::User {
        app.inner.cooldowns.start(conn.identity().user.clone());
    }
}

struct Session<'a> {
    app: &'a App,
    conn: &'a Connection,
    started: Instant,
    /// Milliseconds since `started` when the peer was last heard from.
    last_seen: AtomicU64,
    /// The peer has sent a frame.
    heard: AtomicBool,
    /// Payloads of client pings still to be answered, oldest first, at most [`OWED_PONGS`]:
    /// past that the oldest are dropped (RFC 6455 section 5.5.3 owes only the latest).
    pongs: parking_lot::Mutex<std::collections::VecDeque<Bytes>>,
    /// Wakes the writer for a pong.
    control: tokio::sync::Notify,
    /// The writer has sent (or is sending) the close frame.
    closing: std::sync::atomic::AtomicBool,
    /// In [`Mode::Echo`], data frames (opcode, payload) the writer still owes the peer.
    echo: Option<parking_lot::Mutex<std::collections::VecDeque<(u8, Bytes)>>>,
}

/// How a write to the socket ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    /// Every byte was written.
    Done,
    /// The socket failed, or the client stopped reading: drop the connection.
    Abandoned,
}

impl From<std::io::Result<()>> for Write {
    fn from(result: std::io::Result<()>) -> Self {
        match result {
            Ok(()) => Self::Done,
            Err(_) => Self::Abandoned,
        }
    }
}

impl Session<'_> {
    fn touch(&self) {
        self.heard.store(true, Ordering::Relaxed);
        self.last_seen
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Writes `bytes`. The fast path is one
    /// write that completes at once. A write that blocks (the client stopped reading and
    /// its TCP window is shut) is abandoned when the outbox overflows meanwhile or after two
    /// heartbeats, so a stalled client cannot pin its connection, subscriptions and
    /// presence forever; its close frame could not be sent anyway.
    async fn send<W: AsyncWrite + Unpin>(&self, out: &mut W, bytes: &[u8]) -> Write {
        let write = out.write_all(bytes);
        tokio::pin!(write);
        if let Some(result) = futures_util::FutureExt::now_or_never(&mut write) {
            return Write::from(result);
        }
        let give_up = tokio::time::Instant::now() + self.app.inner.config.heartbeat() * 2;
        loop {
            tokio::select! {
                result = &mut write => return Write::from(result),
                () = tokio::time::sleep(STALL_CHECK) => {
                    let overflowed = self.conn.outbox().closed().is_some_and(|r| r.code == CloseCode::SlowConsumer);
                    if overflowed || tokio::time::Instant::now() >= give_up {
                        let code = if overflowed { CloseCode::SlowConsumer } else { CloseCode::Idle };
                        tracing::debug!(connection = self.conn.id(), ?code, "dropping a connection whose client stopped reading");
                        self.app.inner.metrics.close(code);
                        return Write::Abandoned;
                    }
                }
            }
        }
    }

    /// Reads client frames until the peer closes; returns the close code to answer with.
    ///
    /// Frames are handled one at a time, in order, but reading does not wait for them: while
    /// a frame waits (a publish for its commit), the next ones are read ahead (up to
    /// [`READ_AHEAD`] frames and [`READ_AHEAD_BYTES`]), and pings, pongs and closes keep
    /// flowing, so a slow database never makes a healthy client look silent.
    async fn read<R: AsyncRead + Unpin>(
        &self,
        mut stream: WebSocketStream<wire::ReadOnly<R>>,
    ) -> (CloseCode, &'static str) {
        let mut ahead = ReadAhead::default();
        let mut current: Option<Handling<'_>> = None;
        let end = loop {
            if current.is_none()
                && let Some(frame) = ahead.pop()
            {
                current = Some(Box::pin(self.handle(frame)));
            }
            let step = tokio::select! {
                () = async {
                    if let Some(handling) = current.as_mut() {
                        handling.await;
                    }
                }, if current.is_some() => None,
                message = stream.next(), if ahead.has_room() => Some(message),
            };
            match step {
                None => current = None,
                Some(None) => break (CloseCode::Normal, "connection lost"),
                Some(Some(message)) => {
                    if let Some(end) = self.on_message(message, &mut ahead) {
                        break end;
                    }
                }
            }
        };
        // Frames that arrived before the peer's close are still handled, in order (each
        // bounded by the database timeout); after our own close nothing more is.
        if !self.closing.load(Ordering::Relaxed) {
            if let Some(handling) = current {
                handling.await;
            }
            while let Some(frame) = ahead.pop() {
                self.handle(frame).await;
            }
        }
        end
    }

    /// Handles one client frame, timing publishes.
    async fn handle(&self, frame: ClientFrame) {
        let publish = matches!(frame, ClientFrame::Publish { .. });
        let started = Instant::now();
        self.conn.handle(frame).await;
        if publish {
            self.app
                .inner
                .metrics
                .publish_latency(started.elapsed().as_secs_f64());
        }
    }

    /// Takes one message off the socket: control frames are answered at once, data frames
    /// decoded and queued; `Some` ends the session with that close.
    fn on_message(
        &self,
        message: Result<Message, WsError>,
        ahead: &mut ReadAhead,
    ) -> Option<(CloseCode, &'static str)> {
        let metrics = &self.app.inner.metrics;
        self.touch();
        if self.closing.load(Ordering::Relaxed) {
            // Our close frame is out: nothing more is handled, only the reply awaited.
            return matches!(message, Ok(Message::Close(_)) | Err(_))
                .then_some((CloseCode::Normal, "bye"));
        }
        if let Some(echo) = &self.echo {
            let data = match &message {
                Ok(Message::Text(text)) => Some((frame::opcode::TEXT, Bytes::from(text.clone()))),
                Ok(Message::Binary(data)) => Some((frame::opcode::BINARY, data.clone())),
                _ => None,
            };
            if let Some(data) = data {
                echo.lock().push_back(data);
                self.control.notify_one();
                return None;
            }
        }
        match message {
            Ok(Message::Text(text)) => {
                metrics.frames_in.inc();
                if self.conn.charge_frame() {
                    match ClientFrame::decode(text.as_bytes()) {
                        Ok(frame) => ahead.push(frame, text.len()),
                        Err(e) => self.conn.reject(e),
                    }
                }
                None
            }
            Ok(Message::Binary(_)) => {
                metrics.frames_in.inc();
                if self.conn.charge_frame() {
                    let message = "binary frames are not supported: send JSON in text frames";
                    self.conn.error(ErrorCode::BadRequest, message);
                }
                None
            }
            Ok(Message::Ping(payload)) => {
                let mut pongs = self.pongs.lock();
                if pongs.len() == OWED_PONGS {
                    pongs.pop_front();
                }
                pongs.push_back(payload);
                drop(pongs);
                self.control.notify_one();
                None
            }
            // A close code the peer may not send (RFC 6455 section 7.4) arrives here as 1002
            // (tungstenite's substitute); it is answered with 1002 too.
            Ok(Message::Close(Some(frame)))
                if frame.code == tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Protocol =>
            {
                Some((CloseCode::ProtocolError, "invalid close code"))
            }
            Ok(Message::Close(_)) => Some((CloseCode::Normal, "bye")),
            Ok(Message::Pong(_) | Message::Frame(_)) => None,
            Err(WsError::Capacity(e)) => {
                tracing::debug!(connection = self.conn.id(), error = %e, "frame over the size limit");
                Some((CloseCode::TooBig, "frame over the size limit"))
            }
            Err(WsError::Utf8(_)) => Some((CloseCode::InvalidPayload, "text frame is not UTF-8")),
            // The peer went away without a close frame: gone, not misbehaving.
            Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => {
                Some((CloseCode::Normal, "connection lost"))
            }
            Err(WsError::Protocol(e)) => {
                tracing::debug!(connection = self.conn.id(), error = %e, "protocol error");
                Some((CloseCode::ProtocolError, "websocket protocol error"))
            }
            Err(_) => Some((CloseCode::Normal, "connection lost")),
        }
    }

    /// Drains the outbox to the socket, pings every heartbeat, answers pings, and closes on
    /// silence, token expiry or maximum age.
    ///
    /// Fast path: everything queued is taken at once and framed into one buffer (the JSON of
    /// each frame was encoded once for all subscribers), then written with one call.
    async fn write<W: AsyncWrite + Unpin>(&self, mut out: W, token_expires: SystemTime) {
        let config = &self.app.inner.config;
        let metrics = &self.app.inner.metrics;
        let outbox = self.conn.outbox();
        let heartbeat = config.heartbeat();
        // One timer for the heartbeat, the token's expiry and the maximum age (a timer per
        // concern would cost every idle connection three timer entries).
        let now = tokio::time::Instant::now();
        let deadlines = Deadlines::new(config, token_expires, now);
        // The first ping goes out early, so that a client that never sends a frame (nor
        // answers that ping) is gone within the handshake timeout.
        let handshake = config.handshake_timeout();
        let first_frame_by = now + handshake;
        let mut next_ping = now + heartbeat.min(handshake / 2);
        let next_deadline = |next_ping, heard: bool| {
            let deadline = deadlines.first().min(next_ping);
            if heard {
                deadline
            } else {
                deadline.min(first_frame_by)
            }
        };
        let timer = tokio::time::sleep_until(next_deadline(next_ping, false));
        tokio::pin!(timer);
        let mut batch = Vec::new();
        let mut buffer = Vec::new();
        loop {
            buffer.clear();
            tokio::select! {
                next = outbox.next_batch(&mut batch) => match next {
                    Batch::Frames => {
                        let count = batch.len() as u64;
                        buffer.reserve(batch.iter().map(|f| f.len() + 4).sum());
                        for frame in batch.drain(..) {
                            frame::text(&mut buffer, frame.as_bytes());
                        }
                        if self.send(&mut out, &buffer).await == Write::Abandoned {
                            return;
                        }
                        metrics.frames_out.inc_by(count);
                        if buffer.capacity() > KEEP_WRITE_BUFFER {
                            buffer = Vec::new();
                        }
                        if batch.capacity() > KEEP_BATCH {
                            batch = Vec::new();
                        }
                    }
                    Batch::Closed(reason) => {
                        // From here on the reader only waits for the peer's close.
                        self.closing.store(true, Ordering::Relaxed);
                        metrics.close(reason.code);
                        frame::close(&mut buffer, reason.code.code(), reason.reason);
                        if self.send(&mut out, &buffer).await == Write::Done {
                            let _ = out.flush().await;
                        }
                        return;
                    }
                },
                () = self.control.notified() => {
                    for payload in self.pongs.lock().drain(..) {
                        frame::pong(&mut buffer, &payload);
                    }
                    if let Some(echo) = &self.echo {
                        for (opcode, data) in echo.lock().drain(..) {
                            frame::header(&mut buffer, opcode, data.len(), None);
                            buffer.extend_from_slice(&data);
                        }
                    }
                    if !buffer.is_empty() && self.send(&mut out, &buffer).await == Write::Abandoned {
                        return;
                    }
                }
                () = &mut timer => {
                    let now = tokio::time::Instant::now();
                    let heard = self.heard.load(Ordering::Relaxed);
                    if deadlines.enforce(outbox, now) {
                        // Closed: the outbox ends the loop.
                    } else if !heard && now >= first_frame_by {
                        outbox.close(CloseCode::Idle, "no frame within the handshake timeout");
                    } else if now >= next_ping {
                        next_ping = now + heartbeat;
                        let silent = self.started.elapsed().as_millis() as u64 - self.last_seen.load(Ordering::Relaxed);
                        if silent > 2 * config.heartbeat_ms {
                            outbox.close(CloseCode::Idle, "no frame or pong within two heartbeats");
                        } else {
                            frame::ping(&mut buffer);
                            if self.send(&mut out, &buffer).await == Write::Abandoned {
                                return;
                            }
                        }
                    }
                    // After a close the timer is not needed again: the outbox ends the loop.
                    let heard = self.heard.load(Ordering::Relaxed);
                    timer.as_mut().reset(next_deadline(next_ping, heard).max(now + heartbeat.min(handshake) / 4));
                }
            }
        }
    }
}
