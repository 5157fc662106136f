//! [`Config`]: everything the server is told, from defaults, an optional TOML file, the
//! `RELAY_*` environment and command-line flags (later sources win).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use relay_core::{
    CreateRule, FrameLimits, HubConfig, NamespacePolicy, Persistence, Policies, PublishRule,
    RateLimit, SubscribeRule,
};
use serde::Deserialize;

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for this schema.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range or contradicts another.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The server's configuration. `Config::default()` runs out of the box: `127.0.0.1:8080`,
/// memory store, a random development secret. Its `Debug` output leaves out credentials.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Postgres URL; without one the embedded in-memory store is used.
    pub database_url: Option<String>,
    /// Database connection pool size.
    pub database_max_connections: u32,
    /// Without a database: messages the memory store keeps per channel (older ones are
    /// trimmed; `0`: no limit).
    pub memory_max_history: u64,
    /// Without a database: bytes of messages the memory store keeps in all, oldest trimmed
    /// first across channels (`0`: no limit).
    pub memory_max_bytes: usize,
    /// Without a database: idempotency keys the memory store remembers in all; past it the
    /// oldest are forgotten before their window ends (`0`: no limit).
    pub memory_max_idempotency_keys: usize,
    /// How long a publish's idempotency key is honoured: a repeat within it gets the first
    /// publish's ack and stores nothing.
    pub idempotency_window_secs: u64,
    /// How long a store operation waits for a database connection before it fails with
    /// `unavailable` (503).
    pub database_timeout_ms: u64,
    /// Token verification.
    pub auth: AuthConfig,
    /// Interval of WebSocket pings; a connection silent for two intervals is closed (4002).
    pub heartbeat_ms: u64,
    /// Close connections older than this (4002), so that none outlives its token forever.
    pub max_connection_age_secs: Option<u64>,
    /// Largest WebSocket message or REST body accepted, in bytes (larger: 1009 or 413).
    pub max_frame_bytes: usize,
    /// Frames a connection may have queued before it is closed as a slow consumer (4008).
    pub outbox_capacity: usize,
    /// Bytes a connection may have queued before it is closed as a slow consumer (4008).
    pub outbox_max_bytes: usize,
    /// Subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Channel records one user may create (`0`: no quota; services are not counted).
    pub max_channels_per_user: u64,
    /// Signals (sent with a receipt or a `ttl_ms`) this node holds at once for targets not
    /// connected; past it such signals are refused with `rate_limited`.
    pub max_held_signals: usize,
    /// The longest `ttl_ms` a signal may ask for, in seconds.
    pub max_signal_ttl_secs: u64,
    /// Most messages a `subscribe {since}` replays.
    pub max_recovery: usize,
    /// Bytes of history one connection may have replayed and not yet received; a recovery
    /// past it answers `recovered: false` (the client pages through REST history instead).
    pub max_replay_bytes: usize,
    /// Bytes of replayed history the whole process holds at once; past it recoveries answer
    /// `recovered: false` until replays in flight are written.
    pub replay_budget_bytes: usize,
    /// How long graceful shutdown waits for connections and requests to finish.
    pub shutdown_timeout_ms: u64,
    /// Log format.
    pub log_format: LogFormat,
    /// Runtime worker threads for the binary (0: one per core; 1: a single-threaded runtime).
    pub worker_threads: usize,
    /// The policy of namespaces not listed in `namespaces`.
    pub default_policy: PolicyConfig,
    /// Per-namespace policies (the key `""` is the namespace of names without `:`).
    pub namespaces: BTreeMap<String, PolicyConfig>,
    /// Serve the demo app at `/` and development tokens to loopback clients at
    /// `POST /demo/token`; the `demo` namespace then shows presence and joins unless configured.
    pub demo: bool,
    /// `single` (the default), `postgres` (several nodes sharing `database_url`, fanning
    /// out over `LISTEN`/`NOTIFY`) or `nats` (fanning out over NATS, see `nats`).
    pub cluster: ClusterMode,
    /// How a `nats` cluster node reaches NATS (the `[nats]` table).
    pub nats: crate::nats::NatsOptions,
    /// This node's id in a cluster (1 to 64 of `A-Z a-z 0-9 . _ -`); generated when unset.
    pub node_id: Option<String>,
    /// How long a cluster node's registration lives without renewal (renewed, and presence
    /// reconciled, every quarter of it): a dead node's users leave within 1.25 times this.
    pub node_ttl_secs: u64,
    /// Most WebSocket sessions this process holds (`0`: no limit); beyond it upgrades are
    /// refused with 503.
    pub max_connections: usize,
    /// Most WebSocket sessions one user may hold (`0`: no limit; service tokens are exempt);
    /// beyond it upgrades are refused with 429.
    pub max_connections_per_user: usize,
    /// Most WebSocket sessions from one client IP (`0`: no limit; service tokens are exempt);
    /// beyond it upgrades are refused with 429.
    pub max_connections_per_ip: usize,
    /// Proxies (addresses or CIDR ranges) whose `Forwarded` / `X-Forwarded-For` headers name
    /// the client's IP; from any other peer those headers are ignored.
    #[serde(deserialize_with = "addresses_or_ranges")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The header the trusted proxies write the client's address into
    /// (`"x-forwarded-for"` or `"forwarded"`); the other one is ignored.
    pub forwarded_header: ForwardedHeader,
    /// Browser origins allowed to open WebSockets and call the REST API (exact origins such
    /// as `https://app.example.com`, or patterns such as `https://*.example.com`); unset:
    /// any origin. Requests without an `Origin` header (non-browser clients) are not checked.
    pub allowed_origins: Option<Vec<String>>,
    /// How long a client has to send the request head, and after the upgrade its first
    /// WebSocket frame (a pong to the server's early ping counts).
    pub handshake_timeout_ms: u64,
    /// How long a REST request body may take to arrive (slow bodies get 408).
    pub request_timeout_ms: u64,
    /// Rate limits of user tokens (unset entries keep their defaults).
    pub rate_limits: RateLimitsConfig,
    /// Rate limits of service tokens (unset entries keep their defaults, higher than users').
    pub service_rate_limits: RateLimitsConfig,
    /// A connection that sends past this many times its rate (and burst) is closed with 4029.
    pub rate_limit_close_multiple: u32,
    /// Requests and upgrades with a bad token, per client IP; past it the IP gets 429 before
    /// its token is even checked.
    pub auth_failure_limit: LimitConfig,
    /// New WebSocket connections per client IP (service tokens exempt); past it upgrades get
    /// 429, so that a client reconnecting in a loop costs a refusal, not a session.
    pub connect_rate_limit: LimitConfig,
    /// After a user's connection is closed for abuse (4029 rate limit, 1009 oversized frame,
    /// 1002/1007 protocol violations), that user's upgrades get 429 for this many seconds
    /// (`0`: off; services are never barred).
    pub abuse_cooldown_secs: u64,
}

/// Reads `["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]`: CIDR ranges, or single addresses
/// (a `/32` or `/128` range).
fn addresses_or_ranges<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<ipnet::IpNet>, D::Error> {
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|entry| {
            entry
                .parse::<ipnet::IpNet>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "trusted_proxies: {entry:?} is neither an address nor a CIDR range"
                    ))
                })
        })
        .collect()
}

/// A rate limit as written in the config file: `{ per_second = 50, burst = 200 }`;
/// `per_second = 0` turns the limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Sustained rate.
    pub per_second: u32,
    /// Allowed at once after a quiet period (at least 1).
    pub burst: u32,
}

impl LimitConfig {
    fn resolve(self) -> Option<RateLimit> {
        (self.per_second > 0).then(|| RateLimit::new(self.per_second, self.burst.max(1)))
    }

    fn from_limit(limit: Option<RateLimit>) -> Self {
        limit.map_or(
            Self {
                per_second: 0,
                burst: 0,
            },
            |l| Self {
                per_second: l.per_second,
                burst: l.burst,
            },
        )
    }
}

/// Rate limits of one kind of token: WebSocket frames and REST requests. Unset entries keep
/// the defaults (users: publish 50/s burst 200, subscribe 100/s burst 1000, signal 50/s
/// burst 200, frames 200/s burst 1000, REST 20/s burst 100; services: publish and signal
/// 20000/s burst 40000, subscribe 2000/s burst 10000, frames 50000/s burst 100000, REST
/// 20000/s burst 40000).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// `publish` frames per connection.
    pub publish: Option<LimitConfig>,
    /// `subscribe` frames per connection.
    pub subscribe: Option<LimitConfig>,
    /// `signal` frames per connection.
    pub signal: Option<LimitConfig>,
    /// Every frame per connection, of any type.
    pub frames: Option<LimitConfig>,
    /// REST requests per user.
    pub rest: Option<LimitConfig>,
}

/// Default REST limit of user tokens.
const USER_REST: RateLimit = RateLimit::new(20, 100);
/// Default REST limit of service tokens.
const SERVICE_REST: RateLimit = RateLimit::new(20_000, 40_000);

impl RateLimitsConfig {
    fn frames(&self, base: FrameLimits) -> FrameLimits {
        let pick = |set: Option<LimitConfig>, base| set.map_or(base, LimitConfig::resolve);
        FrameLimits {
            frames: pick(self.frames, base.frames),
            ..FrameLimitsConfig {
                publish: self.publish,
                subscribe: self.subscribe,
                signal: self.signal,
            }
            .over(base)
        }
    }

    fn rest(&self, base: RateLimit) -> Option<RateLimit> {
        self.rest.map_or(Some(base), LimitConfig::resolve)
    }
}

/// A namespace's own frame limits for user connections.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FrameLimitsConfig {
    /// `publish` frames.
    pub publish: Option<LimitConfig>,
    /// `subscribe` frames.
    pub subscribe: Option<LimitConfig>,
    /// `signal` frames.
    pub signal: Option<LimitConfig>,
}

impl FrameLimitsConfig {
    /// `base` with the entries set here replaced.
    fn over(self, base: FrameLimits) -> FrameLimits {
        let pick = |set: Option<LimitConfig>, base| set.map_or(base, LimitConfig::resolve);
        FrameLimits {
            publish: pick(self.publish, base.publish),
            subscribe: pick(self.subscribe, base.subscribe),
            signal: pick(self.signal, base.signal),
            frames: base.frames,
        }
    }
}

/// Which header a trusted proxy writes the client's address into. Only that one is read: a
/// client could write the other itself, and a proxy that does not know it passes it on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` (most proxies and load balancers).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=` (RFC 7239).
    Forwarded,
}

/// Whether the server runs alone or as one node of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClusterMode {
    /// One node.
    #[default]
    Single,
    /// Nodes sharing one Postgres database fan out to each other over `LISTEN`/`NOTIFY`.
    Postgres,
    /// Nodes fan out to each other over NATS, each receiving only the channels it serves;
    /// Postgres (when configured) stays the source of truth for seqs and recovery.
    Nats,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: None,
            database_max_connections: 16,
            memory_max_history: 10_000,
            memory_max_bytes: 256 * 1024 * 1024,
            memory_max_idempotency_keys: 1_000_000,
            idempotency_window_secs: 600,
            database_timeout_ms: 3000,
            auth: AuthConfig::default(),
            heartbeat_ms: 25_000,
            max_connection_age_secs: None,
            max_frame_bytes: 128 * 1024,
            outbox_capacity: 4096,
            outbox_max_bytes: 16 * 1024 * 1024,
            max_subscriptions: 1024,
            max_channels_per_user: 1000,
            max_held_signals: 10_000,
            max_signal_ttl_secs: 300,
            max_recovery: 1000,
            max_replay_bytes: 8 * 1024 * 1024,
            replay_budget_bytes: 256 * 1024 * 1024,
            shutdown_timeout_ms: 10_000,
            log_format: LogFormat::Text,
            worker_threads: 0,
            default_policy: PolicyConfig::default(),
            namespaces: BTreeMap::new(),
            demo: false,
            cluster: ClusterMode::Single,
            nats: crate::nats::NatsOptions::default(),
            node_id: None,
            node_ttl_secs: 20,
            max_connections: 100_000,
            max_connections_per_user: 100,
            max_connections_per_ip: 1_000,
            trusted_proxies: Vec::new(),
            forwarded_header: ForwardedHeader::default(),
            allowed_origins: None,
            handshake_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
            rate_limits: RateLimitsConfig::default(),
            service_rate_limits: RateLimitsConfig::default(),
            rate_limit_close_multiple: 4,
            auth_failure_limit: LimitConfig::from_limit(Some(RateLimit::new(2, 20))),
            connect_rate_limit: LimitConfig::from_limit(Some(RateLimit::new(20, 200))),
            abuse_cooldown_secs: 10,
        }
    }
}

/// How tokens are verified. Its `Debug` output leaves out the secret.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The signing algorithm tokens must use.
    pub algorithm: JwtAlgorithm,
    /// HS256 shared secret. When absent (and no public key is set) a random development
    /// secret is generated at start.
    pub secret: Option<String>,
    /// PEM file with the RS256/ES256 public key.
    pub public_key_file: Option<PathBuf>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: Option<u64>,
    /// Required `iss` claim.
    pub issuer: Option<String>,
    /// Required `aud` claim (one of the token's audiences); unset: `aud` is not checked.
    pub audience: Option<String>,
    /// A JSON Web Key Set file: tokens are verified with the key named by their `kid`
    /// (instead of `secret`/`public_key_file`; `algorithm` is then the key's own).
    pub jwks_file: Option<PathBuf>,
    /// A JSON Web Key Set URL (an identity provider's `jwks_uri`), fetched at start,
    /// refreshed every `jwks_refresh_secs` and on a token with an unknown `kid` (at most
    /// once per 10 s).
    pub jwks_url: Option<String>,
    /// How often a JWKS is reloaded.
    pub jwks_refresh_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            algorithm: JwtAlgorithm::default(),
            secret: None,
            public_key_file: None,
            leeway_secs: None,
            issuer: None,
            audience: None,
            jwks_file: None,
            jwks_url: None,
            jwks_refresh_secs: 300,
        }
    }
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("algorithm", &self.algorithm)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("public_key_file", &self.public_key_file)
            .field("leeway_secs", &self.leeway_secs)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("jwks_file", &self.jwks_file)
            .field("jwks_url", &self.jwks_url.as_deref().map(redact))
            .field("jwks_refresh_secs", &self.jwks_refresh_secs)
            .finish()
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("database_url", &self.database_url.as_deref().map(redact))
            .field("auth", &self.auth)
            .field("cluster", &self.cluster)
            .field("nats", &self.nats)
            .field("node_id", &self.node_id)
            .field("allowed_origins", &self.allowed_origins)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("forwarded_header", &self.forwarded_header)
            .finish_non_exhaustive()
    }
}

impl AuthConfig {
    /// Whether tokens are verified with a key set.
    pub fn uses_jwks(&self) -> bool {
        self.jwks_file.is_some() || self.jwks_url.is_some()
    }

    /// Whether no key is configured, so that the server would generate a development secret.
    pub fn needs_development_secret(&self) -> bool {
        !self.uses_jwks() && self.algorithm == JwtAlgorithm::Hs256 && self.secret.is_none()
    }
}

/// Accepted token algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "UPPERCASE")]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with a shared secret.
    #[default]
    #[value(name = "HS256")]
    Hs256,
    /// RSA PKCS#1 v1.5 with SHA-256, public key in PEM.
    #[value(name = "RS256")]
    Rs256,
    /// ECDSA P-256 with SHA-256, public key in PEM.
    #[value(name = "ES256")]
    Es256,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// A namespace policy as written in the config file; unset fields take the defaults of
/// [`NamespacePolicy`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// `any`, `members` or `claim`.
    pub subscribe: Option<SubscribeRuleConfig>,
    /// `subscribers`, `members` or `none`.
    pub publish: Option<PublishRuleConfig>,
    /// Who may create channel records: `any` or `service` (default: `service` where
    /// `subscribe = "members"`, `any` elsewhere).
    pub create: Option<CreateRuleConfig>,
    /// Presence lists in `subscribed` and `presence` replies.
    pub presence: Option<bool>,
    /// `join`/`leave` frames.
    pub join_leave: Option<bool>,
    /// `mixed`, `persistent` or `ephemeral`.
    pub persistence: Option<PersistenceConfig>,
    /// Deliver persistent messages back to their publisher.
    pub echo: Option<bool>,
    /// Largest payload in bytes.
    pub max_payload_bytes: Option<usize>,
    /// Messages kept per channel.
    pub max_history: Option<u64>,
    /// Frame rate limits of user connections in this namespace (unset entries: the
    /// `rate_limits` ones).
    pub rate_limits: Option<FrameLimitsConfig>,
}

/// `subscribe` rule names.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum SubscribeRuleConfig {
    Any,
    Members,
    Claim,
}

/// `publish` rule names.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum PublishRuleConfig {
    Subscribers,
    Members,
    None,
}

/// `create` rule names.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum CreateRuleConfig {
    Any,
    Service,
}

/// `persistence` names.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum PersistenceConfig {
    Mixed,
    Persistent,
    Ephemeral,
}

impl PolicyConfig {
    fn resolve(&self, base: &NamespacePolicy, users: FrameLimits) -> NamespacePolicy {
        NamespacePolicy {
            subscribe: self.subscribe.map_or(base.subscribe, |r| match r {
                SubscribeRuleConfig::Any => SubscribeRule::Any,
                SubscribeRuleConfig::Members => SubscribeRule::Members,
                SubscribeRuleConfig::Claim => SubscribeRule::Claim,
            }),
            publish: self.publish.map_or(base.publish, |r| match r {
                PublishRuleConfig::Subscribers => PublishRule::Subscribers,
                PublishRuleConfig::Members => PublishRule::Members,
                PublishRuleConfig::None => PublishRule::None,
            }),
            create: self
                .create
                .map(|r| match r {
                    CreateRuleConfig::Any => CreateRule::Any,
                    CreateRuleConfig::Service => CreateRule::Service,
                })
                .or(base.create),
            presence: self.presence.unwrap_or(base.presence),
            join_leave: self.join_leave.unwrap_or(base.join_leave),
            persistence: self.persistence.map_or(base.persistence, |p| match p {
                PersistenceConfig::Mixed => Persistence::Mixed,
                PersistenceConfig::Persistent => Persistence::PersistentOnly,
                PersistenceConfig::Ephemeral => Persistence::EphemeralOnly,
            }),
            echo: self.echo.unwrap_or(base.echo),
            max_payload_bytes: self.max_payload_bytes.unwrap_or(base.max_payload_bytes),
            max_history: self.max_history.or(base.max_history),
            rate_limits: self
                .rate_limits
                .map(|own| own.over(base.rate_limits.unwrap_or(users)))
                .or(base.rate_limits),
        }
    }
}

impl Config {
    /// Reads a TOML config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, Box<toml::de::Error>> {
        toml::from_str(text).map_err(Box::new)
    }

    /// Checks values that would make the server misbehave.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat_ms < 100 {
            return Err(ConfigError::Invalid(
                "heartbeat_ms must be at least 100".into(),
            ));
        }
        if self.max_frame_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "max_frame_bytes must be at least 1024".into(),
            ));
        }
        if self.outbox_capacity == 0 {
            return Err(ConfigError::Invalid(
                "outbox_capacity must be at least 1".into(),
            ));
        }
        if self.cluster == ClusterMode::Postgres && self.database_url.is_none() {
            return Err(ConfigError::Invalid(
                "cluster = \"postgres\" needs a database: set --database-url (RELAY_DATABASE_URL)"
                    .into(),
            ));
        }
        if self.cluster == ClusterMode::Nats {
            self.nats.validate().map_err(ConfigError::Invalid)?;
            if self.database_url.is_none() {
                let policies = self.hub_config().policies;
                let ephemeral = |p: &NamespacePolicy| p.persistence == Persistence::EphemeralOnly;
                let listed = self.namespaces.keys().map(|ns| policies.get(ns));
                if !(ephemeral(policies.default_policy()) && listed.into_iter().all(ephemeral)) {
                    return Err(ConfigError::Invalid(
                        "cluster = \"nats\" with the in-memory store would number each channel's \
                         messages separately on every node: set --database-url (Postgres stays \
                         the source of truth, NATS carries the live traffic), or make every \
                         namespace ephemeral-only (persistence = \"ephemeral\" in \
                         [default_policy] and each [namespaces.*])"
                            .into(),
                    ));
                }
            }
        }
        if let Some(id) = &self.node_id {
            let valid = (1..=64).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !valid {
                return Err(ConfigError::Invalid(format!(
                    "node_id {id:?} must be 1 to 64 of A-Z a-z 0-9 . _ -"
                )));
            }
        }
        if self.node_ttl_secs < 3 {
            return Err(ConfigError::Invalid(
                "node_ttl_secs must be at least 3".into(),
            ));
        }
        if self.handshake_timeout_ms < 100 || self.request_timeout_ms < 100 {
            return Err(ConfigError::Invalid(
                "handshake_timeout_ms and request_timeout_ms must be at least 100".into(),
            ));
        }
        crate::limits::AllowedOrigins::new(self.allowed_origins.as_deref())
            .map_err(ConfigError::Invalid)?;
        let needs_key = matches!(
            self.auth.algorithm,
            JwtAlgorithm::Rs256 | JwtAlgorithm::Es256
        );
        if self.auth.jwks_file.is_some() && self.auth.jwks_url.is_some() {
            return Err(ConfigError::Invalid(
                "set auth.jwks_file or auth.jwks_url, not both".into(),
            ));
        }
        if needs_key && self.auth.public_key_file.is_none() && !self.auth.uses_jwks() {
            return Err(ConfigError::Invalid(format!(
                "auth.algorithm {:?} needs auth.public_key_file",
                self.auth.algorithm
            )));
        }
        Ok(())
    }

    /// The hub configuration these settings describe.
    pub fn hub_config(&self) -> HubConfig {
        let users = self.rate_limits.frames(FrameLimits::USERS);
        let default = self
            .default_policy
            .resolve(&NamespacePolicy::default(), users);
        let mut namespaces = self.namespaces.clone();
        if self.demo {
            namespaces
                .entry(crate::assets::DEMO_NAMESPACE.to_owned())
                .or_insert_with(|| PolicyConfig {
                    presence: Some(true),
                    join_leave: Some(true),
                    ..PolicyConfig::default()
                });
        }
        let policies = namespaces
            .iter()
            .fold(Policies::new(default.clone()), |p, (ns, cfg)| {
                p.with(ns.clone(), cfg.resolve(&default, users))
            });
        HubConfig {
            policies,
            outbox_capacity: self.outbox_capacity,
            outbox_max_bytes: self.outbox_max_bytes,
            max_subscriptions: self.max_subscriptions,
            max_recovery: self.max_recovery,
            max_replay_bytes: self.max_replay_bytes,
            max_channels_per_user: (self.max_channels_per_user > 0)
                .then_some(self.max_channels_per_user),
            replay_budget_bytes: self.replay_budget_bytes,
            user_limits: users,
            service_limits: self.service_rate_limits.frames(FrameLimits::SERVICES),
            close_multiple: self.rate_limit_close_multiple.max(1),
            max_held_signals: self.max_held_signals,
            max_signal_ttl: Duration::from_secs(self.max_signal_ttl_secs),
            ..HubConfig::default()
        }
    }

    /// REST request limits of user and service tokens.
    pub(crate) fn rest_limits(&self) -> (Option<RateLimit>, Option<RateLimit>) {
        (
            self.rate_limits.rest(USER_REST),
            self.service_rate_limits.rest(SERVICE_REST),
        )
    }

    /// The limit on new connections per client IP.
    pub(crate) fn connect_rate_limit(&self) -> Option<RateLimit> {
        self.connect_rate_limit.resolve()
    }

    /// The limit on bad-token attempts per client IP.
    pub(crate) fn auth_failure_limit(&self) -> Option<RateLimit> {
        self.auth_failure_limit.resolve()
    }

    /// The Postgres store options these settings describe (announcing commits to the
    /// cluster when this is a cluster node with a node id).
    pub fn store_options(&self) -> relay_store::PgStoreOptions {
        let cluster_node = match self.cluster {
            ClusterMode::Postgres => self.node_id.clone(),
            // NATS carries this node's commits; the store announces nothing.
            ClusterMode::Single | ClusterMode::Nats => None,
        };
        relay_store::PgStoreOptions {
            max_connections: self.database_max_connections.max(1),
            acquire_timeout: Duration::from_millis(self.database_timeout_ms),
            statement_timeout: Duration::from_millis(self.database_timeout_ms),
            cluster_node,
            idempotency_window: self.idempotency_window(),
            ..relay_store::PgStoreOptions::default()
        }
    }

    /// How long idempotency keys are honoured.
    pub fn idempotency_window(&self) -> Duration {
        Duration::from_secs(self.idempotency_window_secs)
    }

    /// The database URL without credentials, for logs.
    pub fn redacted_database_url(&self) -> String {
        self.database_url.as_deref().map(redact).unwrap_or_default()
    }

    /// How long a cluster node's registration lives.
    pub fn node_ttl(&self) -> Duration {
        Duration::from_secs(self.node_ttl_secs)
    }

    /// Opens the configured store: Postgres (migrated) when `database_url` is set, else
    /// memory. Also names it for logs, without credentials.
    pub async fn open_store(
        &self,
    ) -> Result<(std::sync::Arc<dyn relay_store::Store>, String), relay_store::StoreError> {
        match &self.database_url {
            Some(url) => {
                let store = relay_store::PgStore::connect_with(url, self.store_options()).await?;
                Ok((
                    std::sync::Arc::new(store),
                    format!("postgres ({})", redact(url)),
                ))
            }
            None => Ok((
                std::sync::Arc::new(relay_store::MemoryStore::with_retention(
                    self.memory_retention(),
                )),
                "memory".into(),
            )),
        }
    }

    /// The memory store's retention.
    pub fn memory_retention(&self) -> relay_store::MemoryRetention {
        relay_store::MemoryRetention {
            max_messages_per_channel: (self.memory_max_history > 0)
                .then_some(self.memory_max_history),
            max_bytes: (self.memory_max_bytes > 0).then_some(self.memory_max_bytes),
            idempotency_window: Some(self.idempotency_window()),
            max_idempotency_keys: (self.memory_max_idempotency_keys > 0)
                .then_some(self.memory_max_idempotency_keys),
        }
    }

    /// The heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    /// The handshake timeout (request head, first frame).
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    pub(crate) fn caps(&self) -> crate::limits::Caps {
        crate::limits::Caps {
            process: self.max_connections,
            per_user: self.max_connections_per_user,
            per_ip: self.max_connections_per_ip,
        }
    }
}

/// A database URL without its user, password and query (which may carry a password too),
/// for logs. The user-info ends at the last `@` of the authority, never at one in the path
/// or query.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<url>".into();
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if path.is_empty() {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}/{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_from_toml_override_only_what_they_set() {
        let config = Config::from_toml(
            r#"
            listen = "127.0.0.1:9000"
            [default_policy]
            max_payload_bytes = 1000
            [namespaces.chat]
            subscribe = "members"
            presence = true
            join_leave = true
            [namespaces.list]
            publish = "none"
            "#,
        )
        .unwrap();
        assert_eq!(config.listen.port(), 9000);
        let hub = config.hub_config();
        let chat = hub.policies.get("chat");
        assert_eq!(chat.subscribe, SubscribeRule::Members);
        assert!(chat.presence && chat.join_leave);
        assert_eq!(chat.max_payload_bytes, 1000, "inherits the default policy");
        assert_eq!(hub.policies.get("list").publish, PublishRule::None);
        assert_eq!(hub.policies.get("other").subscribe, SubscribeRule::Any);
    }

    #[test]
    fn create_rule_defaults_to_service_where_membership_grants_access() {
        let config = Config::from_toml(
            r#"
            [namespaces.team]
            subscribe = "members"
            [namespaces.group]
            subscribe = "members"
            create = "any"
            [namespaces.feed]
            create = "service"
            "#,
        )
        .unwrap();
        let hub = config.hub_config();
        assert_eq!(hub.policies.get("team").create_rule(), CreateRule::Service);
        assert_eq!(hub.policies.get("group").create_rule(), CreateRule::Any);
        assert_eq!(hub.policies.get("feed").create_rule(), CreateRule::Service);
        assert_eq!(hub.policies.get("thread").create_rule(), CreateRule::Any);
        assert!(Config::from_toml("[namespaces.x]\ncreate = \"anyone\"").is_err());
    }

    #[test]
    fn database_urls_are_logged_without_credentials() {
        assert_eq!(
            redact("postgres://u:secret@db:5432/relay?sslmode=require"),
            "postgres://db:5432/relay"
        );
        assert_eq!(redact("postgres://db/relay"), "postgres://db/relay");
        // A password in the query, with an `@` in it: the host is not taken from the query.
        assert_eq!(
            redact("postgres://db/relay?user=u&password=p@ss"),
            "postgres://db/relay"
        );
        assert_eq!(
            redact("postgres://u:p%40ss@db:5432/relay?password=x@y"),
            "postgres://db:5432/relay"
        );
        assert_eq!(
            redact("postgres:///relay?host=/run&password=s"),
            "postgres:///relay"
        );
        assert_eq!(redact("not a url"), "<url>");
    }

    #[test]
    fn trusted_proxies_take_addresses_and_ranges() {
        let config =
            Config::from_toml(r#"trusted_proxies = ["10.0.0.0/8", "192.0.2.7", "2001:db8::1"]"#)
                .unwrap();
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let trusted = |s: &str| config.trusted_proxies.iter().any(|n| n.contains(&ip(s)));
        assert!(trusted("10.1.2.3") && trusted("192.0.2.7") && trusted("2001:db8::1"));
        assert!(!trusted("192.0.2.8"));
        assert!(Config::from_toml(r#"trusted_proxies = ["proxy.local"]"#).is_err());
        assert_eq!(config.forwarded_header, ForwardedHeader::XForwardedFor);
        let forwarded = Config::from_toml(r#"forwarded_header = "forwarded""#).unwrap();
        assert_eq!(forwarded.forwarded_header, ForwardedHeader::Forwarded);
        assert!(Config::from_toml(r#"forwarded_header = "x-real-ip""#).is_err());
    }

    #[test]
    fn debug_output_leaves_out_credentials() {
        let mut config = Config::default();
        config.auth.secret = Some("a-secret-that-must-not-be-logged-0123".into());
        config.database_url = Some("postgres://u:hunter2@db/relay?password=x".into());
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("must-not-be-logged") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert!(shown.contains("postgres://db/relay"), "{shown}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(Config::from_toml("listn = \"127.0.0.1:1\"").is_err());
        assert!(Config::from_toml("[namespaces.chat]\nsubscribe = \"everyone\"").is_err());
    }

    #[test]
    fn public_key_algorithms_need_a_key_file() {
        let mut config = Config::default();
        config.auth.algorithm = JwtAlgorithm::Rs256;
        assert!(config.validate().is_err());
    }
}
