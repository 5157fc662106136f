//! `/sse`: the Server-Sent Events transport, for browsers whose network blocks WebSockets.
//!
//! `GET /sse?token=…` opens a session on a hub [`Connection`], exactly as `/ws` does (same
//! token check, caps, frames, limits and recovery with `since`): every server frame is one
//! event whose `data` is the frame's JSON, starting with `welcome`, whose `connection_id` is
//! a random name for the session. The client sends its frames with
//! `POST /sse/{connection_id}` (same token), a JSON array of client frames per
//! request, handled in order; their replies arrive on the event stream. A named `heartbeat`
//! event comes every heartbeat, and the end of a session is a named `close` event carrying
//! the close code and reason a WebSocket would have got (4001, 4008, 1001, …).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use relay_core::{Batch, Connection};
use relay_proto::{ClientFrame, CloseCode, ErrorCode};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::app::{ApiError, App, Body};
use crate::serve::ConnectionAbort;
use crate::ws;

/// Chunks buffered between a session's writer and the response body: one. The writer takes
/// frames from the outbox only once the body took the last chunk, so frames a slow client
/// has not read stay in the outbox, under its limits (4008) and the replay budget.
const CHUNKS: usize = 1;
/// `POST`s of one session at once: the one being handled and one waiting; more get `429`.
const POSTS_IN_FLIGHT: usize = 2;
/// Frames accepted in one `POST /sse/{id}`, like the WebSocket reader's read-ahead.
const MAX_FRAMES_PER_POST: usize = 32;
/// A `POST /sse/{id}` body may hold this many frames of the largest size.
const POST_BODY_FRAMES: usize = 4;
const HEARTBEAT_EVENT: &[u8] = b"event: heartbeat\ndata: {}\n\n";

/// The open SSE sessions, by connection id, for the `POST`s that feed them.
#[derive(Default)]
pub(crate) struct Sessions(parking_lot::Mutex<HashMap<String, Arc<Session>>>);

pub(crate) struct Session {
    conn: Connection,
    /// Held while a `POST`'s frames are handled, so that the frames of concurrent requests
    /// never interleave.
    handling: tokio::sync::Mutex<()>,
    /// Bounds the `POST`s holding a body for this session.
    posts: Arc<tokio::sync::Semaphore>,
}

pub(crate) async fn route<B>(app: &App, req: Request<B>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let path = req.uri().path().to_owned();
    let result = match (req.method(), path.strip_prefix("/sse")) {
        (&Method::GET, Some("")) => Ok(open(app, &req).await),
        (&Method::POST, Some(id)) if id.len() > 1 && id.starts_with('/') => {
            post(app, &id[1..], req).await
        }
        _ => Err(ApiError::new(
            ErrorCode::BadRequest,
            "GET /sse opens a session; POST /sse/{connection_id} sends its frames",
        )),
    };
    result.unwrap_or_else(ApiError::into_response)
}

/// An event stream response over `chunks`, holding `guard` for as long as the body exists.
fn event_stream(
    chunks: mpsc::Receiver<Bytes>,
    guard: impl Send + Sync + 'static,
) -> Response<Body> {
    let mut response = Response::new(Body::stream(chunks, guard));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Proxies such as nginx would otherwise buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The named `close` event that ends a session.
fn close_event(code: CloseCode, reason: &str) -> Bytes {
    let data = serde_json::json!({ "code": code.code(), "reason": reason });
    Bytes::from(format!("event: close\ndata: {data}\n\n"))
}

/// `GET /sse`: authenticates, admits and starts the session's writer.
async fn open<B>(app: &App, req: &Request<B>) -> Response<Body> {
    if app.inner.shutdown.is_cancelled() {
        return ApiError::new(ErrorCode::Unavailable, "server is shutting down").into_response();
    }
    let auth = match app.authenticate(req).await {
        Ok(auth) => auth,
        Err(e) => return e.into_response(),
    };
    let slot = match ws::admit(app, req, &auth) {
        Ok(slot) => slot,
        Err(e) => return e.into_response(),
    };
    let abort = req.extensions().get::<ConnectionAbort>().cloned();
    let (chunks, body) = mpsc::channel(CHUNKS);
    // The slot is held by the body: while hyper still writes to the client, it counts
    // against the connection caps.
    let response = event_stream(body, slot);
    let (identity, expires) = match auth {
        Ok((identity, expires)) => {
            let expires = expires.checked_add(app.inner.auth.leeway());
            (identity, expires.unwrap_or_else(crate::auth::far_future))
        }
        // As on `/ws`: a bad token gets a stream that says 4001, which a browser can read.
        Err(e) => {
            app.inner.metrics.close(CloseCode::Unauthorized);
            let _ = chunks.try_send(close_event(CloseCode::Unauthorized, &e.to_string()));
            return response;
        }
    };
    let conn = app.inner.hub.connect(identity);
    // The session's name for its POSTs: random, so that it is unique across the nodes of a
    // cluster (a POST that reaches another node finds nothing, never another session) and
    // cannot be guessed.
    let id = uuid::Uuid::new_v4().simple().to_string();
    conn.send(&relay_proto::ServerFrame::Welcome {
        connection_id: id.clone(),
        user: conn.identity().user.clone(),
        heartbeat_ms: app.inner.config.heartbeat_ms,
    });
    let session = Arc::new(Session {
        conn,
        handling: tokio::sync::Mutex::new(()),
        posts: Arc::new(tokio::sync::Semaphore::new(POSTS_IN_FLIGHT)),
    });
    app.inner.sse.0.lock().insert(id.clone(), session.clone());
    let app = app.clone();
    app.inner.sessions.clone().spawn(async move {
        if write(&app, &session, chunks, expires).await == End::Stalled
            && let Some(abort) = abort
        {
            abort.abort();
        }
        app.inner.sse.0.lock().remove(&id);
        // POSTs still waiting find the session closed and handle nothing more.
        session
            .conn
            .outbox()
            .close(CloseCode::Normal, "stream ended");
        ws::cool_down_if_abusive(&app, &session.conn);
    });
    response
}

/// How a session's event stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The close event was sent, or the client went away.
    Done,
    /// The client stopped reading: nothing was taken for two heartbeats.
    Stalled,
}

/// Drains the session's outbox into the event stream, sends heartbeats and ends the session
/// on its close, shutdown, the token's expiry, its maximum age or the client's departure.
async fn write(
    app: &App,
    session: &Session,
    chunks: mpsc::Sender<Bytes>,
    token_expires: SystemTime,
) -> End {
    let config = &app.inner.config;
    let metrics = &app.inner.metrics;
    let outbox = session.conn.outbox();
    let heartbeat = config.heartbeat();
    // A client that stops reading is given up on after this long, as on `/ws`.
    let stall = heartbeat * 2;
    let now = tokio::time::Instant::now();
    let deadlines = ws::Deadlines::new(config, token_expires, now);
    let mut beats = tokio::time::interval_at(now + heartbeat, heartbeat);
    let mut batch = Vec::new();
    loop {
        // Room for the next chunk first: until the client took the last one, frames wait in
        // the outbox.
        let permit = match tokio::time::timeout(stall, chunks.reserve()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return End::Done,
            Err(_) => {
                tracing::debug!(
                    connection = session.conn.id(),
                    "dropping an SSE client that stopped reading"
                );
                metrics.close(CloseCode::SlowConsumer);
                return End::Stalled;
            }
        };
        tokio::select! {
            biased;
            next = outbox.next_batch(&mut batch) => match next {
                Batch::Frames => {
                    let count = batch.len() as u64;
                    let mut chunk = Vec::with_capacity(batch.iter().map(|f| f.len() + 8).sum());
                    for frame in batch.drain(..) {
                        // Encoded frames are compact JSON: no raw newline can end the field.
                        chunk.extend_from_slice(b"data: ");
                        chunk.extend_from_slice(frame.as_bytes());
                        chunk.extend_from_slice(b"\n\n");
                    }
                    permit.send(Bytes::from(chunk));
                    metrics.frames_out.inc_by(count);
                }
                Batch::Closed(reason) => {
                    metrics.close(reason.code);
                    permit.send(close_event(reason.code, reason.reason));
                    return End::Done;
                }
            },
            () = chunks.closed() => return End::Done,
            // A session opened while the server began shutting down missed `close_all`.
            () = app.inner.shutdown.cancelled() => {
                outbox.close(CloseCode::GoingAway, "server shutting down");
            }
            () = tokio::time::sleep_until(deadlines.first()) => {
                deadlines.enforce(outbox, tokio::time::Instant::now());
            }
            _ = beats.tick() => permit.send(Bytes::from_static(HEARTBEAT_EVENT)),
        }
    }
}

/// `POST /sse/{id}`: hands a JSON array of client frames to the session, in order, and
/// answers `204` once they were handled (their replies are on the event stream).
async fn post<B>(app: &App, id: &str, req: Request<B>) -> Result<Response<Body>, ApiError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let identity = match app.authenticate(&req).await? {
        Ok((identity, _)) => identity,
        Err(e) => return Err(ApiError::new(ErrorCode::Unauthorized, e.to_string())),
    };
    // Another user's session is as unknown as a finished one.
    let session = app
        .inner
        .sse
        .0
        .lock()
        .get(id)
        .filter(|s| {
            let own = s.conn.identity();
            own.user == identity.user && own.role == identity.role
        })
        .cloned()
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                "no such SSE session (it ended): open a new one with GET /sse",
            )
        })?;
    let Ok(_in_flight) = session.posts.clone().try_acquire_owned() else {
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            "another POST for this session is still waiting: send one at a time",
        )
        .retry_after(1));
    };
    let conn = &session.conn;
    let max_frame = app.inner.config.max_frame_bytes;
    let body = app
        .read_body_limited(req.into_body(), max_frame.saturating_mul(POST_BODY_FRAMES))
        .await?;
    let frames: Vec<&RawValue> = match serde_json::from_slice(&body) {
        Ok(frames) => frames,
        Err(e) => {
            // Garbage costs a frame, as on `/ws`: enough of it closes the session (4029).
            conn.charge_frame();
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("the body must be a JSON array of client frames: {e}"),
            ));
        }
    };
    if frames.is_empty() {
        conn.charge_frame();
    }
    if frames.len() > MAX_FRAMES_PER_POST {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("at most {MAX_FRAMES_PER_POST} frames per request"),
        ));
    }
    let _turn = session.handling.lock().await;
    for raw in frames {
        if conn.outbox().closed().is_some() {
            break;
        }
        app.inner.metrics.frames_in.inc();
        if !conn.charge_frame() {
            continue;
        }
        let text = raw.get().as_bytes();
        if text.len() > max_frame {
            let message = format!("frame over {max_frame} bytes");
            conn.error(ErrorCode::TooLarge, message);
            continue;
        }
        match ClientFrame::decode(text) {
            Ok(frame) => conn.handle(frame).await,
            Err(e) => conn.reject(e),
        }
    }
    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}
