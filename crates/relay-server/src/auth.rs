//! Token verification and minting (JWT via `jsonwebtoken`).
//!
//! Tokens are verified with one configured algorithm and key: HS256 with a shared secret by
//! default, RS256 or ES256 with a public key. `alg: none` and every other algorithm are
//! refused, `exp` is required and `nbf` respected, with a small leeway. Tokens never reach
//! the logs: errors name what was wrong, not the token.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
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
    /// Wrong signature, algorithm, format or claims.
    #[error("invalid token: {0}")]
    Invalid(&'static str),
}

/// Verifies tokens with the configured key, and mints HS256 tokens for `gentoken`.
#[derive(Clone)]
pub struct Authenticator {
    decoding: DecodingKey,
    validation: Validation,
    encoding: Option<EncodingKey>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("algorithms", &self.validation.algorithms)
            .finish()
    }
}

impl Authenticator {
    /// Builds the verifier from configuration. `secret` must be resolved (the server
    /// generates a development secret before calling this when none is configured).
    pub fn from_config(config: &AuthConfig) -> Result<Self, ConfigError> {
        let (algorithm, decoding, encoding) = match config.algorithm {
            JwtAlgorithm::Hs256 => {
                let secret = config.secret.as_deref().ok_or_else(|| {
                    ConfigError::Invalid("HS256 needs auth.secret (RELAY_JWT_SECRET)".into())
                })?;
                if secret.len() < 16 {
                    return Err(ConfigError::Invalid(
                        "the JWT secret must be at least 16 bytes".into(),
                    ));
                }
                let bytes = secret.as_bytes();
                (
                    Algorithm::HS256,
                    DecodingKey::from_secret(bytes),
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
                if config.algorithm == JwtAlgorithm::Rs256 {
                    (
                        Algorithm::RS256,
                        DecodingKey::from_rsa_pem(&pem).map_err(bad_key)?,
                        None,
                    )
                } else {
                    (
                        Algorithm::ES256,
                        DecodingKey::from_ec_pem(&pem).map_err(bad_key)?,
                        None,
                    )
                }
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        validation.leeway = config.leeway_secs.unwrap_or(DEFAULT_LEEWAY_SECS);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Self {
            decoding,
            validation,
            encoding,
        })
    }

    /// The clock-skew leeway applied to `exp` and `nbf`.
    pub fn leeway(&self) -> Duration {
        Duration::from_secs(self.validation.leeway)
    }

    /// Verifies a token and returns who it stands for.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_claims(token).map(|(identity, _)| identity)
    }

    /// Verifies a token and returns who it stands for and when the token expires.
    pub fn verify_claims(&self, token: &str) -> Result<(Identity, SystemTime), AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidSignature => AuthError::Invalid("bad signature"),
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    AuthError::Invalid("algorithm not accepted")
                }
                ErrorKind::MissingRequiredClaim(_) => {
                    AuthError::Invalid("missing exp or sub claim")
                }
                _ => AuthError::Invalid("malformed token"),
            })?;
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

    /// Signs claims with the HS256 secret (`gentoken`); `None` for public-key setups, where
    /// the server cannot sign.
    pub fn mint(&self, claims: &Claims) -> Option<String> {
        let key = self.encoding.as_ref()?;
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, key).ok()
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
        let auth = hs256("0123456789abcdef0123");
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
        let auth = hs256("0123456789abcdef0123");
        let other = hs256("another-secret-of-16+");
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
        let auth = hs256("0123456789abcdef0123");
        let claims = Claims {
            exp: u64::MAX,
            ..Claims::new("alice", Duration::ZERO)
        };
        assert!(auth.verify_claims(&auth.mint(&claims).unwrap()).is_ok());
    }

    #[test]
    fn short_secrets_are_refused() {
        let config = AuthConfig {
            secret: Some("short".into()),
            ..AuthConfig::default()
        };
        assert!(Authenticator::from_config(&config).is_err());
    }
}
