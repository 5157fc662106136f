//! [`App`]: the HTTP service. Routes `/ws`, the REST API and the probes; embedders mount it
//! in their own hyper (or axum) server.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use relay_core::{Hub, Identity};
use relay_proto::ErrorCode;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{AuthError, Authenticator};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::{rest, ws};

/// The body type of every response.
pub type Body = Full<Bytes>;

/// The HTTP service: cheap to clone, every clone serves the same hub.
#[derive(Clone)]
pub struct App {
    pub(crate) inner: Arc<AppInner>,
}

pub(crate) struct AppInner {
    pub(crate) hub: Hub,
    pub(crate) auth: Authenticator,
    pub(crate) config: Config,
    pub(crate) metrics: Metrics,
    /// Cancelled when the server shuts down.
    pub(crate) shutdown: CancellationToken,
    /// WebSocket sessions, awaited on shutdown.
    pub(crate) sessions: TaskTracker,
}

impl App {
    /// A service over `hub`, verifying tokens with `auth`.
    pub fn new(config: Config, hub: Hub, auth: Authenticator) -> Self {
        let metrics = Metrics::new();
        if config.cluster == crate::ClusterMode::Postgres
            && let Some(node_id) = &config.node_id
        {
            metrics.node_id(node_id);
        }
        let inner = AppInner {
            hub,
            auth,
            config,
            metrics,
            shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The hub behind the service.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// The metrics, rendered in Prometheus text format.
    pub fn metrics_text(&self) -> String {
        self.inner.metrics.render(&self.inner.hub)
    }

    /// Starts a graceful shutdown: WebSocket sessions are closed with 1001.
    pub fn begin_shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.sessions.close();
        self.inner
            .hub
            .close_all(relay_proto::CloseCode::GoingAway, "server shutting down");
    }

    /// Waits until every WebSocket session has ended.
    pub async fn sessions_closed(&self) {
        self.inner.sessions.wait().await;
    }

    /// Handles one request.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let path = req.uri().path().to_owned();
        let response = match (req.method(), path.as_str()) {
            (&Method::GET, "/healthz") => {
                json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
            }
            (&Method::GET, "/readyz") => self.ready().await,
            (&Method::GET, "/metrics") => {
                let mut response = Response::new(Body::from(self.metrics_text()));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                response
            }
            (_, "/ws") => ws::upgrade(self, req).await,
            (_, p) if p == "/api" || p.starts_with("/api/") => rest::route(self, req).await,
            _ => ApiError::new(ErrorCode::NotFound, "no such endpoint").into_response(),
        };
        if let Some(code) = response.extensions().get::<ErrorCode>() {
            self.inner.metrics.rest_error(*code);
        }
        response
    }

    async fn ready(&self) -> Response<Body> {
        match self.inner.hub.store().ping().await {
            Ok(()) => json(StatusCode::OK, &serde_json::json!({"status": "ready"})),
            Err(e) => ApiError::new(ErrorCode::Unavailable, format!("store not reachable: {e}"))
                .into_response(),
        }
    }

    /// Verifies the request's token: `Authorization: Bearer …` or `?token=…`.
    pub(crate) fn authenticate<B>(
        &self,
        req: &Request<B>,
    ) -> Result<(Identity, std::time::SystemTime), AuthError> {
        let result = bearer(req)
            .or_else(|| query_param(req, "token"))
            .ok_or(AuthError::Missing)
            .and_then(|token| self.inner.auth.verify_claims(&token));
        if result.is_err() {
            self.inner.metrics.handshakes_refused.inc();
        }
        result
    }

    /// Reads a whole request body, at most `max_frame_bytes`.
    pub(crate) async fn read_body<B>(&self, body: B) -> Result<Bytes, ApiError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let limit = self.inner.config.max_frame_bytes;
        match Limited::new(body, limit).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
                ErrorCode::TooLarge,
                format!("request body over {limit} bytes"),
            )),
            Err(e) => Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("cannot read body: {e}"),
            )),
        }
    }
}

fn bearer<B>(req: &Request<B>) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// One query-string parameter, decoded.
pub(crate) fn query_param<B>(req: &Request<B>, name: &str) -> Option<String> {
    let query = req.uri().query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A JSON response.
pub(crate) fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(bytes) => {
            let mut response = Response::new(Body::from(bytes));
            *response.status_mut() = status;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(e) => {
            ApiError::new(ErrorCode::Internal, format!("encoding failed: {e}")).into_response()
        }
    }
}

/// A REST error: `{"error": {"code", "message"}}` with the code's HTTP status.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn into_response(self) -> Response<Body> {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut response = json(status, &body);
        response.extensions_mut().insert(self.code);
        response
    }
}

impl From<relay_core::HubError> for ApiError {
    fn from(e: relay_core::HubError) -> Self {
        Self::new(e.code(), e.to_string())
    }
}

impl From<relay_store::StoreError> for ApiError {
    fn from(e: relay_store::StoreError) -> Self {
        relay_core::HubError::from(e).into()
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        Self::new(ErrorCode::Unauthorized, e.to_string())
    }
}
