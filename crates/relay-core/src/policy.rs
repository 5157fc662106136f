//! Per-namespace policies: who may subscribe and publish, presence, persistence, limits.

use std::collections::HashMap;

use crate::rate::FrameLimits;

/// Who may subscribe to (and read the history of) a namespace's channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SubscribeRule {
    /// Any authenticated user (zero-knowledge threads: knowing the name is the capability).
    #[default]
    Any,
    /// Only stored members of the channel.
    Members,
    /// Only users whose token's `channels` claim lists the name or a `prefix*` matching it.
    Claim,
}

/// Who may publish from a client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PublishRule {
    /// Whoever has the subscribe right, subscribed at the moment or not.
    #[default]
    Subscribers,
    /// Only stored members.
    Members,
    /// Nobody: a server-only namespace, fed by `/api/publish` or the embedded hub.
    None,
}

/// Who may create channel records (`POST /api/channels`, [`Hub::create_channel`]).
///
/// [`Hub::create_channel`]: crate::Hub::create_channel
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateRule {
    /// Any user with the right to the name: in a `members` namespace whoever the name's user
    /// limit admits (the first creator owns the name), elsewhere whoever has the subscribe
    /// right. A group chat where users start conversations.
    Any,
    /// Only service tokens (backends provision the records).
    Service,
}

/// Which kinds of message a namespace carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Persistence {
    /// Persistent by default; a publish may ask for `ephemeral`.
    #[default]
    Mixed,
    /// Persistent only: ephemeral publishes are refused.
    PersistentOnly,
    /// Ephemeral only: nothing is ever stored, every publish is live-only.
    EphemeralOnly,
}

/// The policy of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespacePolicy {
    /// Subscribe (and history, presence) right.
    pub subscribe: SubscribeRule,
    /// Client publish right.
    pub publish: PublishRule,
    /// Who may create records; `None` takes the default of [`Self::create_rule`].
    pub create: Option<CreateRule>,
    /// Whether `subscribed` carries the online users and `presence` is answered.
    pub presence: bool,
    /// Whether `join`/`leave` frames are sent.
    pub join_leave: bool,
    /// Persistent, ephemeral or both.
    pub persistence: Persistence,
    /// Whether a persistent message is delivered back to the connection that published it.
    pub echo: bool,
    /// Largest payload, in bytes of JSON text.
    pub max_payload_bytes: usize,
    /// Keep at most this many messages per channel (older ones are trimmed); `None` keeps all.
    pub max_history: Option<u64>,
    /// Frame rate limits of user connections in this namespace, instead of the hub's
    /// (counted in buckets of their own); service connections keep the service limits.
    pub rate_limits: Option<FrameLimits>,
}

impl Default for NamespacePolicy {
    fn default() -> Self {
        Self {
            subscribe: SubscribeRule::Any,
            publish: PublishRule::Subscribers,
            create: None,
            presence: false,
            join_leave: false,
            persistence: Persistence::Mixed,
            echo: true,
            max_payload_bytes: 64 * 1024,
            max_history: None,
            rate_limits: None,
        }
    }
}

impl NamespacePolicy {
    /// Who may create records: the configured rule, else [`CreateRule::Service`] where
    /// access depends on membership (so that no user can squat a name and own it) and
    /// [`CreateRule::Any`] elsewhere.
    pub fn create_rule(&self) -> CreateRule {
        self.create.unwrap_or(match self.subscribe {
            SubscribeRule::Members => CreateRule::Service,
            SubscribeRule::Any | SubscribeRule::Claim => CreateRule::Any,
        })
    }

    /// Whether access to the namespace's channels depends on stored membership, so that
    /// removing a member ends its subscriptions.
    pub fn membership_grants_access(&self) -> bool {
        self.subscribe == SubscribeRule::Members
    }
}

/// Policies by namespace, with a fallback for namespaces not listed.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    default: NamespacePolicy,
    by_namespace: HashMap<String, NamespacePolicy>,
}

impl Policies {
    /// Every namespace gets `default`.
    pub fn new(default: NamespacePolicy) -> Self {
        Self {
            default,
            by_namespace: HashMap::new(),
        }
    }

    /// Sets the policy of one namespace (`""` is the default namespace: names without `:`).
    pub fn with(mut self, namespace: impl Into<String>, policy: NamespacePolicy) -> Self {
        self.by_namespace.insert(namespace.into(), policy);
        self
    }

    /// The policy that applies to `namespace`.
    pub fn get(&self, namespace: &str) -> &NamespacePolicy {
        self.by_namespace.get(namespace).unwrap_or(&self.default)
    }

    /// The fallback policy.
    pub fn default_policy(&self) -> &NamespacePolicy {
        &self.default
    }
}
