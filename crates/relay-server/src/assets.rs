//! Files the server embeds and serves: the browser client at `/client/relay.js` (always), and
//! with `--demo` the demo app at `/` plus `POST /demo/token`, which hands out development
//! tokens to loopback clients.
//!
//! Every file carries an `ETag` (a hash of its content) and `Cache-Control: no-cache`:
//! browsers keep a copy and revalidate it, getting `304 Not Modified` until a new build
//! changes the file.

use std::hash::{Hash, Hasher};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use relay_proto::{ErrorCode, UserId};
use serde::Deserialize;

use crate::app::{ApiError, App, Body, json};
use crate::auth::Claims;

/// One embedded file.
pub(crate) struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: OnceLock<HeaderValue>,
}

impl Asset {
    const fn new(body: &'static str, content_type: &'static str) -> Self {
        Self {
            body,
            content_type,
            etag: OnceLock::new(),
        }
    }

    fn etag(&self) -> &HeaderValue {
        self.etag.get_or_init(|| {
            // SipHash with fixed keys: the same content gives the same tag in every process.
            let mut hasher = std::hash::DefaultHasher::new();
            self.body.hash(&mut hasher);
            HeaderValue::from_str(&format!("\"{:016x}\"", hasher.finish()))
                .unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
        })
    }

    /// The file, or `304` when the request already holds this version.
    pub(crate) fn serve<B>(&self, req: &Request<B>) -> Response<Body> {
        let etag = self.etag();
        let fresh = req
            .headers()
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            // Weak comparison (RFC 9110): a proxy that compresses the file marks the tag `W/`.
            .map(|tag| tag.trim().trim_start_matches("W/"))
            .any(|tag| tag == etag || tag == "*");
        let mut response = if fresh {
            let mut response = Response::new(Body::default());
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            response
        } else {
            Response::new(Body::from(Bytes::from_static(self.body.as_bytes())))
        };
        let headers = response.headers_mut();
        headers.insert(header::ETAG, etag.clone());
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        response
    }
}

/// The browser client (`clients/js`), an ES module. Pages on any origin may import it: it
/// is public and carries no credentials.
pub(crate) static CLIENT: Asset = Asset::new(
    include_str!("../../../clients/js/src/relay.js"),
    "text/javascript; charset=utf-8",
);
/// Its TypeScript declarations.
pub(crate) static CLIENT_TYPES: Asset = Asset::new(
    include_str!("../../../clients/js/src/relay.d.ts"),
    "application/typescript; charset=utf-8",
);

/// The demo app (`--demo`).
pub(crate) static DEMO_PAGE: Asset = Asset::new(
    include_str!("../demo/index.html"),
    "text/html; charset=utf-8",
);
pub(crate) static DEMO_STYLE: Asset =
    Asset::new(include_str!("../demo/demo.css"), "text/css; charset=utf-8");
pub(crate) static DEMO_SCRIPT: Asset = Asset::new(
    include_str!("../demo/demo.js"),
    "text/javascript; charset=utf-8",
);

/// The demo's room: its namespace shows presence and joins, which `--demo` turns on.
pub(crate) const DEMO_NAMESPACE: &str = "demo";
/// How long a demo token lives.
const DEMO_TOKEN_TTL: Duration = Duration::from_secs(8 * 3600);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    name: String,
}

/// Whether `name` is a demo user name: 1 to 32 of `A-Z a-z 0-9 _ -`.
fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// Whether the request's `Host` names this machine: `localhost`, `127.0.0.1` or `[::1]`,
/// with any port.
fn loopback_host<B>(req: &Request<B>) -> bool {
    let Some(host) = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    name.eq_ignore_ascii_case("localhost") || name == "::1" || name.starts_with("127.")
}

/// `POST /demo/token` `{"name": "alice"}` → `{"user": "alice", "token": "…"}`: a development
/// token for anyone who asks, so only for clients on this machine.
pub(crate) async fn demo_token<B>(app: &App, req: Request<B>) -> Result<Response<Body>, ApiError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    // The page must be served as a loopback host too: a page of another site that resolves
    // its own name to 127.0.0.1 (DNS rebinding) gets nothing.
    if !app.client_ip(&req).is_some_and(|ip| ip.is_loopback()) || !loopback_host(&req) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "demo tokens are handed out to clients on this machine only",
        ));
    }
    let body = app.read_body(req.into_body()).await?;
    let request: TokenRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("expected {{\"name\": \"…\"}}: {e}"),
        )
    })?;
    if !valid_name(&request.name) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "a name is 1 to 32 letters, digits, _ or -",
        ));
    }
    let user = UserId::parse(&request.name)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))?;
    let token = app
        .inner
        .auth
        .mint(&Claims::new(user.as_str(), DEMO_TOKEN_TTL))
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unavailable,
                "demo tokens need an HS256 secret (the development secret will do)",
            )
        })?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "user": user, "token": token }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_names_are_short_and_plain() {
        assert!(valid_name("alice"));
        assert!(valid_name("Bob_2-x"));
        assert!(!valid_name(""));
        assert!(!valid_name(&"a".repeat(33)));
        assert!(!valid_name("a b"));
        assert!(!valid_name("ä"));
        assert!(!valid_name("a,b"));
    }
}
