//! [`App`]: the HTTP service. Routes `/ws`, the REST API and the probes; embedders mount it
//! in their own hyper (or axum) server.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use relay_core::{Hub, Identity, Role};
use relay_proto::ErrorCode;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{AuthError, Authenticator};
use crate::config::Config;
use crate::limits::{AllowedOrigins, ConnectionCounts, Cooldowns, KeyedBuckets, RemoteAddr};
use crate::metrics::Metrics;
use crate::{assets, rest, sse, ws};

pub use crate::body::Body;

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
    /// Open sessions per process, user and IP, against the connection caps.
    pub(crate) counts: Arc<ConnectionCounts>,
    /// Browser origins allowed in.
    pub(crate) origins: AllowedOrigins,
    /// REST requests per user token.
    rest_users: KeyedBuckets<relay_proto::UserId>,
    /// REST requests per service token.
    rest_services: KeyedBuckets<relay_proto::UserId>,
    /// Bad tokens per client IP.
    auth_failures: KeyedBuckets<std::net::IpAddr>,
    /// New WebSocket connections per client IP.
    pub(crate) connects: KeyedBuckets<std::net::IpAddr>,
    /// Users whose last connection was closed for abuse, barred for a while.
    pub(crate) cooldowns: Cooldowns<relay_proto::UserId>,
    /// Open Server-Sent Events sessions.
    pub(crate) sse: sse::Sessions,
}

impl App {
    /// A service over `hub`, verifying tokens with `auth`.
    pub fn new(config: Config, hub: Hub, auth: Authenticator) -> Self {
        let metrics = Metrics::new();
        if config.cluster != crate::ClusterMode::Single
            && let Some(node_id) = &config.node_id
        {
            metrics.node_id(node_id);
        }
        // `Config::validate` refuses a bad list; an embedder who skipped it gets no browser
        // access rather than any.
        let origins = AllowedOrigins::new(config.allowed_origins.as_deref()).unwrap_or_else(|e| {
            tracing::error!(error = %e, "allowed_origins is invalid: refusing every browser origin");
            AllowedOrigins::new(Some(&[])).unwrap_or_default()
        });
        let (rest_users, rest_services) = config.rest_limits();
        let auth_failures = KeyedBuckets::new(config.auth_failure_limit());
        let inner = AppInner {
            rest_users: KeyedBuckets::new(rest_users),
            rest_services: KeyedBuckets::new(rest_services),
            auth_failures,
            connects: KeyedBuckets::new(config.connect_rate_limit()),
            cooldowns: Cooldowns::new(std::time::Duration::from_secs(config.abuse_cooldown_secs)),
            hub,
            auth,
            config,
            metrics,
            shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
            counts: Arc::new(ConnectionCounts::default()),
            origins,
            sse: sse::Sessions::default(),
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
            (&Method::GET, "/readyz") => self.ready(&req).await,
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
            #[cfg(feature = "autobahn")]
            (_, "/echo") => ws::echo(self, req).await,
            (&Method::GET, "/client/relay.js" | "/client/relay.d.ts") => {
                let asset = if path.ends_with(".js") {
                    &assets::CLIENT
                } else {
                    &assets::CLIENT_TYPES
                };
                let mut response = asset.serve(&req);
                // Public, without credentials: any page may import it.
                response.headers_mut().insert(
                    header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    HeaderValue::from_static("*"),
                );
                response
            }
            (&Method::GET, "/" | "/demo.css" | "/demo.js") if self.inner.config.demo => {
                match path.as_str() {
                    "/demo.css" => assets::DEMO_STYLE.serve(&req),
                    "/demo.js" => assets::DEMO_SCRIPT.serve(&req),
                    _ => assets::DEMO_PAGE.serve(&req),
                }
            }
            (&Method::POST, "/demo/token") if self.inner.config.demo => {
                assets::demo_token(self, req)
                    .await
                    .unwrap_or_else(ApiError::into_response)
            }
            (_, "/ws") => match self.check_origin(&req) {
                Ok(_) => ws::upgrade(self, req).await,
                Err(e) => e.into_response(),
            },
            (_, p) if under(p, "/api") || under(p, "/sse") => match self.check_origin(&req) {
                Ok(origin) => {
                    let mut response = if req.method() == Method::OPTIONS {
                        cors_preflight()
                    } else if under(p, "/sse") {
                        sse::route(self, req).await
                    } else {
                        rest::route(self, req).await
                    };
                    if let Some(origin) = origin {
                        self.cors_headers(&origin, &mut response);
                    }
                    response
                }
                Err(e) => e.into_response(),
            },
            _ => ApiError::new(ErrorCode::NotFound, "no such endpoint").into_response(),
        };
        if let Some(code) = response.extensions().get::<ErrorCode>() {
            self.inner.metrics.rest_error(*code);
        }
        response
    }

    /// Ready when the store answers and token keys are loaded. Unauthenticated callers (load
    /// balancers) learn only ready or not; a service token also gets the reason.
    async fn ready<B>(&self, req: &Request<B>) -> Response<Body> {
        let problem = if !self.inner.auth.has_keys() {
            Some("no token verification keys loaded (JWKS not fetched yet)".to_owned())
        } else {
            self.inner
                .hub
                .store()
                .ping()
                .await
                .err()
                .map(|e| format!("store not reachable: {e}"))
        };
        let service = || match bearer(req) {
            Some(token) => self
                .inner
                .auth
                .verify(&token)
                .is_ok_and(|identity| identity.role == Role::Service),
            None => false,
        };
        let Some(problem) = problem else {
            // Serving, but without part of the cluster: still ready (local delivery and
            // commits go on), and said so.
            let degraded = self
                .inner
                .hub
                .backplane_status()
                .and_then(|status| status.degraded);
            let body = match degraded {
                None => serde_json::json!({"status": "ready"}),
                Some(reason) if service() => {
                    serde_json::json!({"status": "degraded", "reason": reason})
                }
                Some(_) => serde_json::json!({"status": "degraded"}),
            };
            return json(StatusCode::OK, &body);
        };
        let body = if service() {
            serde_json::json!({"status": "unready", "reason": problem})
        } else {
            serde_json::json!({"status": "unready"})
        };
        json(StatusCode::SERVICE_UNAVAILABLE, &body)
    }

    /// Refuses a browser request from an origin not in `allowed_origins` (403); returns the
    /// request's origin, if it has one.
    fn check_origin<B>(&self, req: &Request<B>) -> Result<Option<HeaderValue>, ApiError> {
        let Some(origin) = req.headers().get(header::ORIGIN) else {
            return Ok(None);
        };
        let allowed = origin.to_str().is_ok_and(|o| self.inner.origins.allows(o));
        if !allowed {
            return Err(self.refuse(
                "origin",
                ErrorCode::Forbidden,
                "this origin is not in the server's allowed_origins",
            ));
        }
        Ok(Some(origin.clone()))
    }

    /// CORS headers of a REST response to an allowed origin.
    fn cors_headers(&self, origin: &HeaderValue, response: &mut Response<Body>) {
        let headers = response.headers_mut();
        if self.inner.origins.any() {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        } else {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            headers.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Retry-After, Location, Idempotent-Replayed"),
        );
    }

    /// The client's IP: the TCP peer's, or behind a trusted proxy the forwarded one; `None`
    /// when the server that received the request did not record its peer.
    pub(crate) fn client_ip<B>(&self, req: &Request<B>) -> Option<std::net::IpAddr> {
        let RemoteAddr(peer) = req.extensions().get::<RemoteAddr>()?;
        Some(crate::limits::client_ip(
            peer.ip(),
            req.headers(),
            &self.inner.config.trusted_proxies,
            self.inner.config.forwarded_header,
        ))
    }

    /// Verifies the request's token: `Authorization: Bearer …` or `?token=…`. The outer
    /// error (429) refuses a client IP that sent too many bad tokens, before its token is
    /// even read; each bad token counts against its IP.
    pub(crate) async fn authenticate<B>(
        &self,
        req: &Request<B>,
    ) -> Result<Result<(Identity, std::time::SystemTime), AuthError>, ApiError> {
        let ip = self.client_ip(req);
        if let Some(ip) = ip
            && let Err(retry) = self.inner.auth_failures.check(&ip)
        {
            return Err(self
                .refuse(
                    "auth_failures",
                    ErrorCode::RateLimited,
                    "too many requests with bad tokens from this address",
                )
                .retry_after(retry));
        }
        let result = match bearer(req).or_else(|| query_param(req, "token")) {
            Some(token) => self.inner.auth.verify_fresh(&token).await,
            None => Err(AuthError::Missing),
        };
        if result.is_err() {
            self.inner.metrics.handshakes_refused.inc();
            if let Some(ip) = ip {
                let _ = self.inner.auth_failures.take(&ip);
            }
        }
        Ok(result)
    }

    /// Authenticates a REST request and charges it to its token's bucket (429 with
    /// `Retry-After` past the rate).
    pub(crate) async fn authenticate_rest<B>(
        &self,
        req: &Request<B>,
    ) -> Result<Identity, ApiError> {
        let (identity, _) = self.authenticate(req).await??;
        let buckets = match identity.role {
            Role::Service => &self.inner.rest_services,
            Role::User => &self.inner.rest_users,
        };
        if let Err(retry) = buckets.take(&identity.user) {
            return Err(self
                .refuse(
                    "rest_rate",
                    ErrorCode::RateLimited,
                    "REST rate limit exceeded: slow down",
                )
                .retry_after(retry));
        }
        Ok(identity)
    }

    /// A refusal by a limit or check, counted in `relay_refusals_total{reason}`.
    pub(crate) fn refuse(
        &self,
        reason: &'static str,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> ApiError {
        self.inner.metrics.connection_refused(reason);
        ApiError::new(code, message)
    }

    /// Reads a whole request body, at most `max_frame_bytes`.
    pub(crate) async fn read_body<B>(&self, body: B) -> Result<Bytes, ApiError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        self.read_body_limited(body, self.inner.config.max_frame_bytes)
            .await
    }

    /// Reads a request body of at most `limit` bytes, within the request timeout.
    pub(crate) async fn read_body_limited<B>(
        &self,
        body: B,
        limit: usize,
    ) -> Result<Bytes, ApiError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let timeout = std::time::Duration::from_millis(self.inner.config.request_timeout_ms);
        let read = tokio::time::timeout(timeout, Limited::new(body, limit).collect());
        let Ok(read) = read.await else {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("request body not received within {timeout:?}"),
            )
            .with_status(StatusCode::REQUEST_TIMEOUT));
        };
        match read {
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

/// The answer to a CORS preflight (`OPTIONS`) of an allowed origin.
/// Whether `path` is `prefix` or below it.
fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn cors_preflight() -> Response<Body> {
    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type, idempotency-key"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    response
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
    /// A status other than the code's own (408 for a slow body).
    status: Option<StatusCode>,
    /// Seconds for a `Retry-After` header.
    retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            status: None,
            retry_after: None,
        }
    }

    /// Answers with `status` instead of the code's own.
    pub(crate) fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    /// Adds `Retry-After: seconds`.
    pub(crate) fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub(crate) fn into_response(self) -> Response<Body> {
        let status = self.status.unwrap_or_else(|| {
            StatusCode::from_u16(self.code.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        });
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut response = json(status, &body);
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
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
