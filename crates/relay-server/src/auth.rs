//! Token verification and minting (JWT via `jsonwebtoken`).
//!
//! Tokens are verified with one configured algorithm and key (HS256 with a shared secret of
//! at least 32 bytes by default, RS256 or ES256 with a public key), or with the keys of a
//! JSON Web Key Set (file or URL) selected by the token's `kid`. `alg: none`, symmetric keys
//! from a key set and every algorithm other than the key's are refused; `exp` is required,
//! `nbf` respected with a small leeway, and `iss`/`aud` checked when configured. Tokens
//! never reach the logs: errors name what was wrong, not the token.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parking_lot::{Mutex, RwLock};
use relay_core::{Identity, Role};
use relay_proto::UserId;
use serde::{Deserialize, Serialize};

use crate::config::{AuthConfig, ConfigError, JwtAlgorithm};

/// Default clock-skew leeway, in seconds.
const DEFAULT_LEEWAY_SECS: u64 = 5;

/// The claims Relay reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Not before, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// `"service"` for backend services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Allowed channel names or `prefix*` patterns (namespaces with the `claim` rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
}

impl Claims {
    /// Claims for `user` valid for `ttl` from now.
    pub fn new(user: &str, ttl: Duration) -> Self {
        let now = unix_now();
        Self {
            sub: user.to_owned(),
            exp: now + ttl.as_secs(),
            nbf: None,
            iat: Some(now),
            role: None,
            channels: None,
        }
    }
}

/// A time later than any token's expiry (about a century ahead).
pub(crate) fn far_future() -> SystemTime {
    SystemTime::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token in the query string or `Authorization` header.
    #[error("missing token")]
    Missing,
    /// The token expired.
    #[error("token expired")]
    Expired,
    /// The token is not valid yet (`nbf`).
    #[error("token not yet valid")]
    NotYetValid,
    /// Signed with a key (`kid`) the server's key set does not hold, even after a refresh.
    #[error("invalid token: unknown signing key")]
    UnknownKey,
    /// Wrong signature, algorithm, format or claims.
    #[error("invalid token: {0}")]
    Invalid(&'static str),
}

/// Verifies tokens with the configured keys, and mints HS256 tokens for `gentoken`.
#[derive(Clone)]
pub struct Authenticator {
    keys: Arc<Keys>,
    leeway: u64,
    encoding: Option<EncodingKey>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = match &*self.keys {
            Keys::Fixed(key) => format!("{:?}", key.validation.algorithms),
            Keys::Jwks(jwks) => format!("JWKS of {} keys", jwks.len()),
        };
        f.debug_struct("Authenticator")
            .field("keys", &keys)
            .finish()
    }
}

/// Where verification keys come from.
enum Keys {
    /// One configured key (HS256 secret, RS256/ES256 public key).
    Fixed(Key),
    /// A JSON Web Key Set, keys selected by `kid`.
    Jwks(Jwks),
}

/// A verification key with the validation rules of its algorithm.
struct Key {
    decoding: DecodingKey,
    validation: Validation,
}

/// A JWKS from a file or URL: refreshed every `refresh_every`, and on a token with an
/// unknown `kid` at most once per [`JWKS_MIN_REFRESH`].
struct Jwks {
    source: JwksSource,
    /// Keys by `kid` (`""` for a key without one).
    keys: RwLock<Arc<HashMap<String, Key>>>,
    /// When the set was last loaded.
    loaded: Mutex<Option<Instant>>,
    /// When a refresh last started; held while one runs, so refreshes never overlap.
    attempt: tokio::sync::Mutex<Option<Instant>>,
    refresh_every: Duration,
    /// The validation rules every key's are derived from.
    base: Validation,
}

enum JwksSource {
    File(PathBuf),
    Url { url: String, http: reqwest::Client },
}

/// A token with an unknown `kid` refreshes the key set at most this often.
const JWKS_MIN_REFRESH: Duration = Duration::from_secs(10);
/// How long a JWKS fetch may take.
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest JWKS document accepted.
const JWKS_MAX_BYTES: usize = 1024 * 1024;
/// Shortest HS256 secret accepted, in bytes (RFC 7518 section 3.2: at least the hash size).
pub const MIN_SECRET_BYTES: usize = 32;

impl Authenticator {
    /// Builds the verifier from configuration. `secret` must be resolved (the server
    /// generates a development secret before calling this when no key is configured). A
    /// `jwks_file` is read now; a `jwks_url` is fetched on first use (or by
    /// [`refresh`](Self::refresh)).
    pub fn from_config(config: &AuthConfig) -> Result<Self, ConfigError> {
        let leeway = config.leeway_secs.unwrap_or(DEFAULT_LEEWAY_SECS);
        let mut base = Validation::new(Algorithm::HS256);
        base.leeway = leeway;
        base.validate_exp = true;
        base.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &config.issuer {
            base.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &config.audience {
            Some(audience) => {
                base.set_audience(&[audience]);
                required.push("aud");
            }
            // Without a configured audience, tokens that carry one are fine.
            None => base.validate_aud = false,
        }
        base.set_required_spec_claims(&required);
        let with_algorithm = |algorithm| {
            let mut validation = base.clone();
            validation.algorithms = vec![algorithm];
            validation
        };

        if config.jwks_file.is_some() || config.jwks_url.is_some() {
            let source = match (&config.jwks_file, &config.jwks_url) {
                (Some(path), None) => JwksSource::File(path.clone()),
                (None, Some(url)) => JwksSource::Url {
                    url: url.clone(),
                    http: reqwest::Client::builder()
                        .timeout(JWKS_FETCH_TIMEOUT)
                        .build()
                        .map_err(|e| ConfigError::Invalid(format!("auth.jwks_url: {e}")))?,
                },
                _ => {
                    return Err(ConfigError::Invalid(
                        "set auth.jwks_file or auth.jwks_url, not both".into(),
                    ));
                }
            };
            let jwks = Jwks {
                source,
                keys: RwLock::new(Arc::default()),
                loaded: Mutex::new(None),
                attempt: tokio::sync::Mutex::new(None),
                refresh_every: Duration::from_secs(config.jwks_refresh_secs.max(1)),
                base,
            };
            if let JwksSource::File(path) = &jwks.source {
                let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                jwks.install(&bytes)
                    .map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))?;
            }
            return Ok(Self {
                keys: Arc::new(Keys::Jwks(jwks)),
                leeway,
                encoding: None,
            });
        }

        let (key, encoding) = match config.algorithm {
            JwtAlgorithm::Hs256 => {
                let secret = config.secret.as_deref().ok_or_else(|| {
                    ConfigError::Invalid("HS256 needs auth.secret (RELAY_JWT_SECRET)".into())
                })?;
                if secret.len() < MIN_SECRET_BYTES {
                    return Err(ConfigError::Invalid(format!(
                        "the JWT secret must be at least {MIN_SECRET_BYTES} bytes"
                    )));
                }
                let bytes = secret.as_bytes();
                (
                    Key {
                        decoding: DecodingKey::from_secret(bytes),
                        validation: with_algorithm(Algorithm::HS256),
                    },
                    Some(EncodingKey::from_secret(bytes)),
                )
            }
            JwtAlgorithm::Rs256 | JwtAlgorithm::Es256 => {
                let path = config.public_key_file.as_deref().ok_or_else(|| {
                    ConfigError::Invalid("RS256/ES256 need auth.public_key_file".into())
                })?;
                let pem = std::fs::read(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                let bad_key = |e: jsonwebtoken::errors::Error| {
                    ConfigError::Invalid(format!("public key {}: {e}", path.display()))
                };
                let key = if config.algorithm == JwtAlgorithm::Rs256 {
                    Key {
                        decoding: DecodingKey::from_rsa_pem(&pem).map_err(bad_key)?,
                        validation: with_algorithm(Algorithm::RS256),
                    }
                } else {
                    Key {
                        decoding: DecodingKey::from_ec_pem(&pem).map_err(bad_key)?,
                        validation: with_algorithm(Algorithm::ES256),
                    }
                };
                (key, None)
            }
        };
        Ok(Self {
            keys: Arc::new(Keys::Fixed(key)),
            leeway,
            encoding,
        })
    }

    /// The clock-skew leeway applied to `exp` and `nbf`.
    pub fn leeway(&self) -> Duration {
        Duration::from_secs(self.leeway)
    }

    /// Whether the verifier holds keys (a JWKS URL not fetched yet holds none).
    pub fn has_keys(&self) -> bool {
        match &*self.keys {
            Keys::Fixed(_) => true,
            Keys::Jwks(jwks) => jwks.len() > 0,
        }
    }

    /// Reloads a JWKS now (no-op for fixed keys); the error says why it failed, without
    /// any key material.
    pub async fn refresh(&self) -> Result<usize, String> {
        match &*self.keys {
            Keys::Fixed(_) => Ok(1),
            Keys::Jwks(jwks) => jwks.refresh(Duration::ZERO).await,
        }
    }

    /// Verifies a token and returns who it stands for.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_claims(token).map(|(identity, _)| identity)
    }

    /// Verifies a token with the keys held now and returns who it stands for and when the
    /// token expires. See [`verify_fresh`](Self::verify_fresh) for JWKS refreshes.
    pub fn verify_claims(&self, token: &str) -> Result<(Identity, SystemTime), AuthError> {
        match &*self.keys {
            Keys::Fixed(key) => decode(token, key),
            Keys::Jwks(jwks) => {
                let header = jsonwebtoken::decode_header(token)
                    .map_err(|_| AuthError::Invalid("malformed token"))?;
                let keys = jwks.keys.read().clone();
                let key = match &header.kid {
                    Some(kid) => keys.get(kid),
                    // A token without `kid` matches a set of exactly one key.
                    None if keys.len() == 1 => keys.values().next(),
                    None => return Err(AuthError::Invalid("token has no kid")),
                };
                decode(token, key.ok_or(AuthError::UnknownKey)?)
            }
        }
    }

    /// Like [`verify_claims`](Self::verify_claims), keeping a JWKS fresh: a stale set is
    /// refreshed in the background, and a token with an unknown `kid` waits for one refresh
    /// (at most one per 10 s, or per `jwks_refresh_secs` if shorter) before it is refused.
    pub async fn verify_fresh(&self, token: &str) -> Result<(Identity, SystemTime), AuthError> {
        let Keys::Jwks(jwks) = &*self.keys else {
            return self.verify_claims(token);
        };
        if jwks.stale() && tokio::runtime::Handle::try_current().is_ok() {
            let keys = self.keys.clone();
            tokio::spawn(async move {
                if let Keys::Jwks(jwks) = &*keys {
                    let _ = jwks.refresh(jwks.refresh_every).await;
                }
            });
        }
        match self.verify_claims(token) {
            Err(AuthError::UnknownKey) => {
                let _ = jwks.refresh(JWKS_MIN_REFRESH.min(jwks.refresh_every)).await;
                self.verify_claims(token)
            }
            result => result,
        }
    }

    /// Signs claims with the HS256 secret (`gentoken`); `None` for public-key setups, where
    /// the server cannot sign.
    pub fn mint(&self, claims: &Claims) -> Option<String> {
        let key = self.encoding.as_ref()?;
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, key).ok()
    }
}

/// Verifies `token` with `key` and reads Relay's claims.
fn decode(token: &str, key: &Key) -> Result<(Identity, SystemTime), AuthError> {
    use jsonwebtoken::errors::ErrorKind;
    let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &key.validation).map_err(
        |e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidSignature => AuthError::Invalid("bad signature"),
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                AuthError::Invalid("algorithm not accepted")
            }
            ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer"),
            ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience"),
            ErrorKind::MissingRequiredClaim(_) => {
                AuthError::Invalid("missing a required claim (exp, sub, iss or aud)")
            }
            _ => AuthError::Invalid("malformed token"),
        },
    )?;
    let claims = data.claims;
    let user = UserId::parse(&claims.sub).map_err(|_| AuthError::Invalid("bad sub claim"))?;
    let role = match claims.role.as_deref() {
        Some("service") => Role::Service,
        _ => Role::User,
    };
    // A far-future `exp` must not overflow the clock type.
    let expires = UNIX_EPOCH
        .checked_add(Duration::from_secs(claims.exp))
        .unwrap_or_else(far_future);
    Ok((
        Identity {
            user,
            role,
            channels: claims.channels,
        },
        expires,
    ))
}

impl Jwks {
    fn len(&self) -> usize {
        self.keys.read().len()
    }

    fn stale(&self) -> bool {
        self.loaded
            .lock()
            .is_none_or(|at| at.elapsed() >= self.refresh_every)
    }

    /// Reloads the set unless a load started within `min_interval`; returns the number of
    /// keys held afterwards.
    async fn refresh(&self, min_interval: Duration) -> Result<usize, String> {
        let mut attempt = self.attempt.lock().await;
        if attempt.is_some_and(|at| at.elapsed() < min_interval) {
            return Ok(self.len());
        }
        *attempt = Some(Instant::now());
        let result = match self.fetch().await {
            Ok(bytes) => self.install(&bytes),
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            tracing::warn!(error = %e, "cannot refresh the JWKS: keeping the keys held");
        }
        result
    }

    async fn fetch(&self) -> Result<Vec<u8>, String> {
        match &self.source {
            JwksSource::File(path) => {
                std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
            }
            JwksSource::Url { url, http } => {
                let fail = |e: reqwest::Error| format!("JWKS fetch failed: {}", e.without_url());
                let response = http.get(url).send().await.map_err(fail)?;
                if !response.status().is_success() {
                    return Err(format!("JWKS fetch answered {}", response.status()));
                }
                if response
                    .content_length()
                    .is_some_and(|n| n > JWKS_MAX_BYTES as u64)
                {
                    return Err("JWKS document too large".into());
                }
                let bytes = response.bytes().await.map_err(fail)?;
                if bytes.len() > JWKS_MAX_BYTES {
                    return Err("JWKS document too large".into());
                }
                Ok(bytes.to_vec())
            }
        }
    }

    /// Parses a JWKS document and replaces the held keys with its signing keys.
    fn install(&self, bytes: &[u8]) -> Result<usize, String> {
        let set: JwkSet =
            serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let Some(algorithm) = jwk_algorithm(jwk) else {
                continue;
            };
            let Ok(decoding) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            let mut validation = self.base.clone();
            validation.algorithms = vec![algorithm];
            let kid = jwk.common.key_id.clone().unwrap_or_default();
            keys.insert(
                kid,
                Key {
                    decoding,
                    validation,
                },
            );
        }
        if keys.is_empty() {
            return Err("the JWKS holds no usable signing key".into());
        }
        let count = keys.len();
        *self.keys.write() = Arc::new(keys);
        *self.loaded.lock() = Some(Instant::now());
        tracing::info!(keys = count, "JWKS loaded");
        Ok(count)
    }
}

/// The signature algorithm of a public JWK: its `alg`, else the usual one of its key type.
/// Symmetric (`oct`) keys are never taken from a key set.
fn jwk_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
        return None;
    }
    if let Some(declared) = jwk.common.key_algorithm {
        return declared
            .to_string()
            .parse::<Algorithm>()
            .ok()
            .filter(|a| !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512));
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => None,
        },
        AlgorithmParameters::OctetKeyPair(_) => Some(Algorithm::EdDSA),
        AlgorithmParameters::OctetKey(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs256(secret: &str) -> Authenticator {
        Authenticator::from_config(&AuthConfig {
            secret: Some(secret.into()),
            ..AuthConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn a_minted_token_verifies_with_its_claims() {
        let auth = hs256("0123456789abcdef0123456789abcdef");
        let claims = Claims {
            role: Some("service".into()),
            channels: Some(vec!["list:*".into()]),
            ..Claims::new("alice", Duration::from_secs(60))
        };
        let identity = auth.verify(&auth.mint(&claims).unwrap()).unwrap();
        assert_eq!(identity.user.as_str(), "alice");
        assert_eq!(identity.role, Role::Service);
        assert_eq!(identity.channels, Some(vec!["list:*".to_owned()]));
    }

    #[test]
    fn wrong_key_expired_and_alg_none_are_refused() {
        let auth = hs256("0123456789abcdef0123456789abcdef");
        let other = hs256("another-secret-of-at-least-32-bytes");
        let token = other
            .mint(&Claims::new("alice", Duration::from_secs(60)))
            .unwrap();
        assert_eq!(
            auth.verify(&token),
            Err(AuthError::Invalid("bad signature"))
        );

        let expired = Claims {
            exp: unix_now() - 3600,
            ..Claims::new("alice", Duration::ZERO)
        };
        assert_eq!(
            auth.verify(&auth.mint(&expired).unwrap()),
            Err(AuthError::Expired)
        );

        let future = Claims {
            nbf: Some(unix_now() + 3600),
            ..Claims::new("a", Duration::from_secs(7200))
        };
        assert_eq!(
            auth.verify(&auth.mint(&future).unwrap()),
            Err(AuthError::NotYetValid)
        );

        // {"alg":"none","typ":"JWT"} . {"sub":"alice","exp":9999999999} . (no signature)
        let none =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert!(matches!(auth.verify(none), Err(AuthError::Invalid(_))));
        assert!(matches!(auth.verify("garbage"), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn a_huge_exp_does_not_panic() {
        let auth = hs256("0123456789abcdef0123456789abcdef");
        let claims = Claims {
            exp: u64::MAX,
            ..Claims::new("alice", Duration::ZERO)
        };
        assert!(auth.verify_claims(&auth.mint(&claims).unwrap()).is_ok());
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        #[derive(Serialize)]
        struct WithAud<'a> {
            #[serde(flatten)]
            claims: Claims,
            #[serde(skip_serializing_if = "Option::is_none")]
            iss: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            aud: Option<serde_json::Value>,
        }
        let secret = "0123456789abcdef0123456789abcdef";
        let sign = |iss: Option<&str>, aud: Option<serde_json::Value>| {
            let claims = WithAud {
                claims: Claims::new("alice", Duration::from_secs(60)),
                iss,
                aud,
            };
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(secret.as_bytes()),
            )
            .unwrap()
        };
        // Unconfigured: a token with `aud` is fine.
        let open = hs256(secret);
        assert!(open.verify(&sign(None, Some("anything".into()))).is_ok());

        let strict = Authenticator::from_config(&AuthConfig {
            secret: Some(secret.into()),
            issuer: Some("https://id.example.com".into()),
            audience: Some("relay".into()),
            ..AuthConfig::default()
        })
        .unwrap();
        let good = sign(
            Some("https://id.example.com"),
            Some(serde_json::json!(["other", "relay"])),
        );
        assert!(strict.verify(&good).is_ok());
        assert_eq!(
            strict.verify(&sign(Some("https://id.example.com"), Some("other".into()))),
            Err(AuthError::Invalid("wrong audience"))
        );
        assert_eq!(
            strict.verify(&sign(Some("https://evil.test"), Some("relay".into()))),
            Err(AuthError::Invalid("wrong issuer"))
        );
        assert!(matches!(
            strict.verify(&sign(Some("https://id.example.com"), None)),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            strict.verify(&sign(None, Some("relay".into()))),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn short_secrets_are_refused() {
        for short in ["short", "0123456789abcdef0123456789abcde"] {
            let config = AuthConfig {
                secret: Some(short.into()),
                ..AuthConfig::default()
            };
            assert!(Authenticator::from_config(&config).is_err(), "{short}");
        }
    }
}
