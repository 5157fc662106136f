//! One node of a cluster on NATS (`--cluster nats`): the live traffic between nodes travels
//! over a NATS server, while the store (Postgres) stays the source of truth for seqs and
//! recovery.
//!
//! - **Interest routing.** Each channel has its own subject ([`channel_subject`]). A node
//!   subscribes to a channel's subject only while it has local subscribers there (the hub
//!   tells it through [`Backplane::interest`]), so it receives only the channels it serves.
//!   Once a new subscription is confirmed by the server, the channel catches up from the
//!   store, in case something was committed while the subscription was on its way.
//! - **Persistent messages** travel whole (seq and encoded frame): a receiving node delivers
//!   them without reading the store. Subscribers' seq tracking repairs a lost or repeated one
//!   from the store. A commit made while NATS was unreachable is remembered as a pointer
//!   (channel and highest seq), sent once NATS is back; receivers read those from the store.
//!   Each period (a quarter of the node lifetime) the node announces its commits of the
//!   period again as pointers, so a commit lost on the way costs a period of latency at most.
//! - **Ephemeral messages and signals** travel on the channel's subject too; while NATS is
//!   unreachable, or once they waited 2 s in the queue, they are dropped (live events are never
//!   delivered late).
//! - **Evictions** (a user lost access) go to every node on `{prefix}.ctl.evict`, whatever it
//!   serves, and are kept while NATS is unreachable, then sent.
//! - **Presence** is low-rate control traffic that every node receives: each node announces
//!   its local first joins and last leaves on `{prefix}.ctl.presence`, numbered, and a
//!   heartbeat on `{prefix}.ctl.hb` with its latest number. A node that missed a number (or
//!   meets a node it does not know) asks that node for a snapshot of its presence
//!   (`{prefix}.snap.{node}`, answered in parts on `{prefix}.snapreply.{node}`). A node not
//!   heard from for the node lifetime is dead: its users leave everywhere. A node that leaves
//!   cleanly says so, and its users leave at once.
//! - **Health.** While the NATS connection is down, local delivery and commits go on, the
//!   node is reported degraded (`/readyz`, metrics), and on reconnection every channel with
//!   local subscribers catches up from the store.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use relay_core::{Backplane, BackplaneStatus, BoxFuture, Hub, HubConfig, commit_pointer};
use relay_proto::{ChannelName, Seq, UserId};
use relay_store::Store;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::task::AbortOnDropHandle;

/// How a node reaches its NATS servers (the `[nats]` table of the configuration). Secrets are
/// passed to the client and never logged: `Debug` shows only whether they are set.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsOptions {
    /// Server URLs, comma-separated (`nats://127.0.0.1:4222`). Credentials in a URL are
    /// allowed and redacted in logs.
    pub url: String,
    /// The first token of every subject this cluster uses; nodes of one cluster share it.
    pub subject_prefix: String,
    /// A `.creds` file (user JWT and nkey seed).
    pub creds_file: Option<PathBuf>,
    /// A token.
    pub token: Option<String>,
    /// A user name, with `password`.
    pub user: Option<String>,
    /// The password of `user`.
    pub password: Option<String>,
    /// Extra root certificates (PEM) to verify the servers with.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (PEM), with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// The key of `tls_cert` (PEM).
    pub tls_key: Option<PathBuf>,
    /// Refuse servers that do not offer TLS.
    pub tls_required: bool,
}

impl Default for NatsOptions {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            subject_prefix: "relay".into(),
            creds_file: None,
            token: None,
            user: None,
            password: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_required: false,
        }
    }
}

impl NatsOptions {
    /// Checks what can be checked before connecting.
    pub fn validate(&self) -> Result<(), String> {
        if self.url.split(',').any(|u| u.trim().is_empty()) {
            return Err("nats.url must name at least one server".into());
        }
        let prefix_ok = !self.subject_prefix.is_empty()
            && self
                .subject_prefix
                .split('.')
                .all(|t| !t.is_empty() && t.bytes().all(is_plain));
        if !prefix_ok {
            return Err(format!(
                "nats.subject_prefix {:?} must be dot-separated tokens of A-Z a-z 0-9 _ -",
                self.subject_prefix
            ));
        }
        if self.user.is_some() != self.password.is_some() {
            return Err("nats.user and nats.password go together".into());
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("nats.tls_cert and nats.tls_key go together".into());
        }
        Ok(())
    }
}

impl std::fmt::Debug for NatsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsOptions")
            .field("url", &redact_urls(&self.url))
            .field("subject_prefix", &self.subject_prefix)
            .field("creds_file", &self.creds_file)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("tls_required", &self.tls_required)
            .finish()
    }
}

/// `urls` without the credentials any of them carries.
pub(crate) fn redact_urls(urls: &str) -> String {
    urls.split(',')
        .map(|url| {
            let url = url.trim();
            match (url.find("://"), url.rfind('@')) {
                (Some(scheme), Some(at)) if at > scheme => {
                    format!("{}://***@{}", &url[..scheme], &url[at + 1..])
                }
                (None, Some(at)) => format!("***@{}", &url[at + 1..]),
                _ => url.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Why a node could not join its NATS cluster.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The options are unusable (a credentials file that cannot be read, a bad URL).
    #[error("NATS options: {0}")]
    Options(String),
    /// The client could not be built.
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect {
        /// The servers, without credentials.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

/// The subject of `channel`'s traffic: `{prefix}.c.{token}`, where the token keeps
/// `A-Z a-z 0-9 _ -` and writes every other byte as `~` and two hex digits (`~` included).
/// Any name maps to one valid subject token (no `.`, `*`, `>` or whitespace), and two names
/// never share one: [`channel_from_subject`] undoes it.
pub fn channel_subject(prefix: &str, channel: &str) -> String {
    let mut subject = String::with_capacity(prefix.len() + 3 + channel.len() * 3);
    subject.push_str(prefix);
    subject.push_str(".c.");
    push_token(&mut subject, channel);
    subject
}

/// The name whose subject is `subject` under `prefix`; `None` for any other subject.
pub fn channel_from_subject(prefix: &str, subject: &str) -> Option<String> {
    let token = subject.strip_prefix(prefix)?.strip_prefix(".c.")?;
    let mut bytes = Vec::with_capacity(token.len());
    let mut rest = token.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'~' {
            let hex = tail.get(..2)?;
            let hex = std::str::from_utf8(hex).ok()?;
            if hex.bytes().any(|h| h.is_ascii_lowercase()) {
                return None;
            }
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else if is_plain(b) {
            bytes.push(b);
            rest = tail;
        } else {
            return None;
        }
    }
    if bytes.is_empty() {
        return None;
    }
    String::from_utf8(bytes).ok()
}

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

fn push_token(out: &mut String, text: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in text.bytes() {
        if is_plain(b) {
            out.push(char::from(b));
        } else {
            out.push('~');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

/// Largest NATS message assumed until the server says otherwise (its default).
const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;
/// Bytes of channel events waiting for the publisher before new ones are dropped.
const DATA_QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// A live event older than this when its turn to be published comes is dropped: live events
/// are never delivered late.
const LIVE_EVENT_TTL: Duration = Duration::from_secs(2);
/// How long one publish may wait for the client before its event counts as not sent.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(1);
/// Evictions kept while NATS is unreachable, sent when it is back.
const MAX_PENDING_EVICTIONS: usize = 10_000;
/// Other nodes a node keeps presence for; more are ignored (and logged).
const MAX_NODES: usize = 10_000;
/// Parts one presence snapshot may have.
const MAX_SNAPSHOT_PARTS: usize = 100_000;
/// Channel events waiting for the publisher before new ones are dropped.
const DATA_QUEUE: usize = 16 * 1024;
/// Presence changes and heartbeats waiting for the publisher.
const CONTROL_QUEUE: usize = 4 * 1024;
/// Most presence changes of one node held while its snapshot is on the way.
const MAX_HELD_CHANGES: usize = 10_000;

/// A running NATS cluster node. Dropping it stops its tasks at once;
/// [`leave`](Self::leave) also tells the other nodes, so that its users leave there at once.
pub struct NatsNode {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl NatsNode {
    /// Connects node `node_id` to NATS with `options` and builds its hub over `store`
    /// (which must not announce commits itself: open a Postgres store without a
    /// `cluster_node`). The node is heard from every quarter of `ttl`, and taken for dead by
    /// the others after `ttl` of silence. An unreachable server does not fail the join: the
    /// node starts degraded and connects when it can.
    pub async fn join(
        store: Arc<dyn Store>,
        config: HubConfig,
        node_id: &str,
        ttl: Duration,
        options: &NatsOptions,
    ) -> Result<(Hub, Self), NatsError> {
        let (events_tx, events_rx) = mpsc::channel(64);
        let (connected_tx, mut first_connect) = tokio::sync::watch::channel(false);
        let client = connect(options, node_id, events_tx, connected_tx).await?;
        // A zero period would stop the control task at its first tick.
        let ttl = ttl.max(Duration::from_secs(1));
        let (data_tx, data_rx) = mpsc::channel(DATA_QUEUE);
        let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let shared = Arc::new(Shared {
            node_id: node_id.to_owned(),
            instance: uuid::Uuid::new_v4().simple().to_string(),
            prefix: options.subject_prefix.clone(),
            url: redact_urls(&options.url),
            client,
            ttl,
            data: data_tx,
            queued_bytes: AtomicUsize::new(0),
            control: control_tx,
            dropped: AtomicU64::new(0),
            pointers: Mutex::new(HashMap::new()),
            recent: Mutex::new(HashMap::new()),
            evictions: Mutex::new(Vec::new()),
            pointers_waiting: Notify::new(),
            interest: Mutex::new(HashSet::new()),
            interest_changed: Notify::new(),
            routed: AtomicU64::new(0),
            local: Mutex::new(LocalPresence::default()),
            remote: Mutex::new(RemotePresence::default()),
            duplicate: Mutex::new(None),
            slow_resync: Mutex::new(None),
        });
        let hub = Hub::with_backplane(
            store,
            config,
            Arc::new(NatsBackplane {
                shared: shared.clone(),
            }),
        );
        let control = ControlSubscriptions::open(&shared).await?;
        let tasks = vec![
            tokio::spawn(publish(shared.clone(), data_rx, control_rx)),
            tokio::spawn(route(shared.clone(), hub.clone())),
            tokio::spawn(control.run(shared.clone(), hub.clone(), events_rx)),
        ];
        // The client connects in the background; a node whose server answers starts
        // connected (its first events are not dropped), one whose server does not starts
        // degraded after a bounded wait.
        let connected = tokio::time::timeout(
            Duration::from_secs(5),
            first_connect.wait_for(|connected| *connected),
        )
        .await;
        if !matches!(connected, Ok(Ok(_))) {
            tracing::warn!(url = %shared.url, "NATS not reachable yet: the node starts degraded");
        }
        // Heard from at once: the others learn of this node without waiting a period.
        shared.heartbeat(false);
        let _ = tokio::time::timeout(Duration::from_secs(5), shared.client.flush()).await;
        Ok((hub, Self { shared, tasks }))
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    /// Tells the other nodes this node is leaving (its users leave there at once) and stops
    /// its tasks.
    pub async fn leave(mut self) {
        // Stopped first: no heartbeat of this node may follow its goodbye.
        for task in self.tasks.drain(..) {
            task.abort();
        }
        let bye = Heartbeat {
            n: self.shared.node_id.clone(),
            i: self.shared.instance.clone(),
            v: 0,
            bye: true,
        };
        if let Ok(payload) = serde_json::to_vec(&bye) {
            let subject = format!("{}.ctl.hb", self.shared.prefix);
            let sent = async {
                self.shared
                    .client
                    .publish(subject, payload.into())
                    .await
                    .ok()?;
                self.shared.client.flush().await.ok()
            };
            if tokio::time::timeout(Duration::from_secs(2), sent)
                .await
                .ok()
                .flatten()
                .is_none()
            {
                tracing::warn!("could not tell the cluster this node is leaving");
            }
        }
    }
}

impl Drop for NatsNode {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn connect(
    options: &NatsOptions,
    node_id: &str,
    events: mpsc::Sender<async_nats::Event>,
    connected: tokio::sync::watch::Sender<bool>,
) -> Result<async_nats::Client, NatsError> {
    // The same checks as the configuration's, for embedders who built the options by hand.
    options.validate().map_err(NatsError::Options)?;
    let mut connect = async_nats::ConnectOptions::new()
        .name(format!("relay {node_id}"))
        .no_echo()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .ping_interval(Duration::from_secs(10))
        // Reconnect quickly at first, then every 2 s at most.
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis(100u64.saturating_mul(attempts as u64).min(2_000))
        })
        .event_callback(move |event| {
            let events = events.clone();
            if matches!(event, async_nats::Event::Connected) {
                connected.send_replace(true);
            }
            async move {
                // Only a stalled control task lets this fill; the next event says it again.
                let _ = events.try_send(event);
            }
        });
    if let Some(path) = &options.creds_file {
        connect = connect.credentials_file(path).await.map_err(|e| {
            NatsError::Options(format!(
                "cannot read the credentials file {}: {e}",
                path.display()
            ))
        })?;
    }
    if let Some(token) = &options.token {
        connect = connect.token(token.clone());
    }
    if let (Some(user), Some(password)) = (&options.user, &options.password) {
        connect = connect.user_and_password(user.clone(), password.clone());
    }
    if let Some(ca) = &options.tls_ca {
        connect = connect.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&options.tls_cert, &options.tls_key) {
        connect = connect.add_client_certificate(cert.clone(), key.clone());
    }
    if options.tls_required {
        connect = connect.require_tls(true);
    }
    // Credentials in URLs are taken out and passed as options: the client logs server
    // addresses (at debug level) as they are.
    let mut urls = Vec::new();
    let mut url_credentials = None;
    for url in options.url.split(',') {
        let (url, credentials) = split_credentials(url.trim());
        url_credentials = url_credentials.or(credentials);
        urls.push(
            url.parse::<async_nats::ServerAddr>().map_err(|e| {
                NatsError::Options(format!("nats.url {:?}: {e}", redact_urls(&url)))
            })?,
        );
    }
    match url_credentials {
        Some(UrlCredentials::UserPassword(user, password))
            if options.user.is_none() && options.creds_file.is_none() =>
        {
            connect = connect.user_and_password(user, password);
        }
        Some(UrlCredentials::Token(token))
            if options.token.is_none() && options.creds_file.is_none() =>
        {
            connect = connect.token(token);
        }
        _ => {}
    }
    connect
        .connect(urls.as_slice())
        .await
        .map_err(|e| NatsError::Connect {
            url: redact_urls(&options.url),
            reason: e.to_string(),
        })
}

/// Credentials written into a server URL.
enum UrlCredentials {
    UserPassword(String, String),
    Token(String),
}

/// `url` without its `user:password@` or `token@`, and what it held (percent-decoded).
fn split_credentials(url: &str) -> (String, Option<UrlCredentials>) {
    let (scheme, rest) = match url.find("://") {
        Some(at) => (&url[..at + 3], &url[at + 3..]),
        None => ("", url),
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return (url.to_owned(), None);
    };
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let credentials = match userinfo.split_once(':') {
        Some((user, password)) => UrlCredentials::UserPassword(decode(user), decode(password)),
        None => UrlCredentials::Token(decode(userinfo)),
    };
    (format!("{scheme}{host}"), Some(credentials))
}

/// What the backplane, the publisher and the control task share.
struct Shared {
    node_id: String,
    /// Tells this run of the node from an earlier one with the same id.
    instance: String,
    prefix: String,
    /// The servers, without credentials, for logs and `/readyz`.
    url: String,
    client: async_nats::Client,
    ttl: Duration,
    data: mpsc::Sender<Outgoing>,
    /// Bytes of `data` queued.
    queued_bytes: AtomicUsize,
    control: mpsc::Sender<(String, Bytes)>,
    dropped: AtomicU64,
    /// Commits not sent while NATS was unreachable: the highest seq per channel.
    pointers: Mutex<HashMap<ChannelName, Seq>>,
    /// Commits of this period, announced again as pointers at its end: a commit lost on the
    /// way (the connection dropped with it in a buffer) costs a period of latency at most.
    recent: Mutex<HashMap<ChannelName, Seq>>,
    /// Evictions not sent while NATS was unreachable: (channel, event).
    evictions: Mutex<Vec<(ChannelName, String)>>,
    pointers_waiting: Notify,
    /// Channels whose local interest may have changed since the router last looked.
    interest: Mutex<HashSet<ChannelName>>,
    interest_changed: Notify,
    /// Channel subjects subscribed.
    routed: AtomicU64,
    local: Mutex<LocalPresence>,
    remote: Mutex<RemotePresence>,
    /// Set when another live process uses this node id, with when it was last heard.
    duplicate: Mutex<Option<(String, Instant)>>,
    /// When a slow-consumer event last made the node catch up.
    slow_resync: Mutex<Option<Instant>>,
}

/// One channel event for the publisher.
struct Outgoing {
    channel: ChannelName,
    payload: Bytes,
    /// The seq of a committed message (remembered as a pointer when it cannot be sent).
    commit: Option<Seq>,
    queued: Instant,
}

impl Shared {
    fn connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    fn drop_event(&self, channel: &ChannelName, commit: Option<Seq>) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        if let Some(seq) = commit {
            let mut pointers = self.pointers.lock();
            let last = pointers.entry(channel.clone()).or_default();
            *last = (*last).max(seq);
        }
    }

    fn enqueue(&self, channel: &ChannelName, event: &str, commit: Option<Seq>) {
        if let Some(seq) = commit {
            let mut recent = self.recent.lock();
            let last = recent.entry(channel.clone()).or_default();
            *last = (*last).max(seq);
        }
        if self.queued_bytes.load(Ordering::Relaxed) + event.len() > DATA_QUEUE_BYTES {
            self.drop_event(channel, commit);
            return;
        }
        let item = Outgoing {
            channel: channel.clone(),
            payload: Bytes::copy_from_slice(event.as_bytes()),
            commit,
            queued: Instant::now(),
        };
        self.queued_bytes.fetch_add(event.len(), Ordering::Relaxed);
        if let Err(e) = self.data.try_send(item) {
            let item = match e {
                mpsc::error::TrySendError::Full(item) | mpsc::error::TrySendError::Closed(item) => {
                    item
                }
            };
            self.queued_bytes
                .fetch_sub(item.payload.len(), Ordering::Relaxed);
            self.drop_event(&item.channel, item.commit);
            if item.commit.is_some() {
                self.pointers_waiting.notify_one();
            }
        }
    }

    /// Queues this node's heartbeat (`bye`: it is leaving), carrying the number of its
    /// latest presence change, behind every change it covers.
    fn heartbeat(&self, bye: bool) {
        let local = self.local.lock();
        let beat = Heartbeat {
            n: self.node_id.clone(),
            i: self.instance.clone(),
            v: local.version,
            bye,
        };
        if let Ok(payload) = serde_json::to_vec(&beat) {
            let _ = self
                .control
                .try_send((format!("{}.ctl.hb", self.prefix), payload.into()));
        }
    }

    /// Publishes, giving up after [`PUBLISH_TIMEOUT`] (the client's queue is full: it is
    /// cut off from the server). True when the client took the message.
    async fn publish(&self, subject: String, payload: Bytes) -> bool {
        self.connected()
            && matches!(
                tokio::time::timeout(PUBLISH_TIMEOUT, self.client.publish(subject, payload)).await,
                Ok(Ok(()))
            )
    }

    /// Queues an eviction for every node; kept for later when it cannot be queued now.
    fn evict(&self, channel: &ChannelName, event: &str) {
        let subject = format!("{}.ctl.evict", self.prefix);
        if self
            .control
            .try_send((subject, Bytes::copy_from_slice(event.as_bytes())))
            .is_err()
        {
            self.keep_eviction(channel, event);
        }
    }

    fn keep_eviction(&self, channel: &ChannelName, event: &str) {
        let mut evictions = self.evictions.lock();
        if evictions.len() < MAX_PENDING_EVICTIONS {
            evictions.push((channel.clone(), event.to_owned()));
        } else {
            tracing::error!(%channel, "too many evictions waiting for NATS: one is lost");
        }
        drop(evictions);
        self.pointers_waiting.notify_one();
    }

    fn snapshot_subject(&self, node: &str) -> String {
        let mut subject = format!("{}.snap.", self.prefix);
        push_token(&mut subject, node);
        subject
    }

    fn reply_subject(&self) -> String {
        let mut subject = format!("{}.snapreply.", self.prefix);
        push_token(&mut subject, &self.node_id);
        subject
    }
}

struct NatsBackplane {
    shared: Arc<Shared>,
}

impl Backplane for NatsBackplane {
    fn max_event_bytes(&self) -> usize {
        let max_payload = match self.shared.client.max_payload() {
            0 => DEFAULT_MAX_PAYLOAD,
            n => n,
        };
        // Room for the subject and protocol line within the server's limit.
        max_payload.saturating_sub(1024)
    }

    fn evict(&self, channel: &ChannelName, event: &str) {
        self.shared.evict(channel, event);
    }

    fn send(&self, channel: &ChannelName, event: &str) {
        self.shared.enqueue(channel, event, None);
    }

    fn carries_commits(&self) -> bool {
        true
    }

    fn committed(&self, channel: &ChannelName, seq: Seq, event: &str) {
        self.shared.enqueue(channel, event, Some(seq));
    }

    fn presence(&self, channel: &ChannelName, user: &UserId, online: bool, event: &str) {
        let mut local = self.shared.local.lock();
        local.version += 1;
        let key = (channel.clone(), user.clone());
        if online {
            local.online.insert(key);
        } else {
            local.online.remove(&key);
        }
        let change = Change {
            n: self.shared.node_id.clone(),
            i: self.shared.instance.clone(),
            v: local.version,
            ch: channel.clone(),
            u: user.clone(),
            on: online,
            e: event.to_owned(),
        };
        // Queued under the lock: changes leave in the order of their numbers. One that
        // cannot be queued is a gap the others repair with a snapshot.
        if let Ok(payload) = serde_json::to_vec(&change)
            && self
                .shared
                .control
                .try_send((
                    format!("{}.ctl.presence", self.shared.prefix),
                    payload.into(),
                ))
                .is_ok()
        {
            return;
        }
        self.shared.dropped.fetch_add(1, Ordering::Relaxed);
    }

    fn online_elsewhere<'a>(
        &'a self,
        channel: &'a ChannelName,
    ) -> BoxFuture<'a, Vec<(UserId, String)>> {
        let online = self.shared.remote.lock().online_in(channel);
        Box::pin(async move { online })
    }

    fn interest(&self, channel: &ChannelName) {
        self.shared.interest.lock().insert(channel.clone());
        self.shared.interest_changed.notify_one();
    }

    fn status(&self) -> BackplaneStatus {
        let shared = &self.shared;
        let mut problems = Vec::new();
        if !shared.connected() {
            problems.push(format!(
                "NATS ({}) unreachable: cross-node delivery paused, local delivery goes on",
                shared.url
            ));
        }
        {
            let mut duplicate = shared.duplicate.lock();
            // Cleared once the other process has not been heard from for a lifetime.
            if duplicate
                .as_ref()
                .is_some_and(|(_, at)| at.elapsed() > shared.ttl)
            {
                *duplicate = None;
            }
            if let Some((problem, _)) = duplicate.as_ref() {
                problems.push(problem.clone());
            }
        }
        let statistics = shared.client.statistics();
        BackplaneStatus {
            degraded: (!problems.is_empty()).then(|| problems.join("; ")),
            routed_channels: Some(shared.routed.load(Ordering::Relaxed)),
            received_messages: statistics.in_messages.load(Ordering::Relaxed),
            received_bytes: statistics.in_bytes.load(Ordering::Relaxed),
            dropped_events: shared.dropped.load(Ordering::Relaxed),
        }
    }
}

/// Most queued items published per wake-up.
const PUBLISH_BATCH: usize = 256;

/// Publishes queued events, control traffic first. While NATS is unreachable, events are
/// dropped (commits remembered as pointers); once it is back, the pointers go out.
async fn publish(
    shared: Arc<Shared>,
    mut data: mpsc::Receiver<Outgoing>,
    mut control: mpsc::Receiver<(String, Bytes)>,
) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    loop {
        tokio::select! {
            biased;
            item = control.recv() => {
                let Some((subject, payload)) = item else { return };
                let eviction = subject.ends_with(".ctl.evict").then(|| payload.clone());
                if !shared.publish(subject, payload).await {
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                    if let Some(event) = eviction
                        && let Ok(event) = std::str::from_utf8(&event)
                        && let Some(channel) = evicted_channel(event)
                    {
                        shared.keep_eviction(&channel, event);
                    }
                }
            }
            n = data.recv_many(&mut batch, PUBLISH_BATCH) => {
                if n == 0 {
                    return;
                }
                for item in batch.drain(..) {
                    shared
                        .queued_bytes
                        .fetch_sub(item.payload.len(), Ordering::Relaxed);
                    let stale = item.queued.elapsed() > LIVE_EVENT_TTL;
                    let subject = channel_subject(&shared.prefix, item.channel.as_str());
                    // A stale live event is dropped; a stale commit goes as a pointer.
                    if stale || !shared.publish(subject, item.payload).await {
                        shared.drop_event(&item.channel, item.commit);
                    }
                }
            }
            () = shared.pointers_waiting.notified() => {}
        }
        if shared.connected() {
            send_pointers(&shared).await;
        }
    }
}

/// Sends the pointers of commits not carried, and the evictions kept, while connected.
async fn send_pointers(shared: &Shared) {
    let pointers: Vec<(ChannelName, Seq)> = shared.pointers.lock().drain().collect();
    for (channel, seq) in pointers {
        let subject = channel_subject(&shared.prefix, channel.as_str());
        let event = commit_pointer(&channel, seq);
        if !shared.publish(subject, event.into_bytes().into()).await {
            shared.drop_event(&channel, Some(seq));
            return;
        }
    }
    let evictions: Vec<(ChannelName, String)> = std::mem::take(&mut *shared.evictions.lock());
    let mut evictions = evictions.into_iter();
    for (channel, event) in evictions.by_ref() {
        let subject = format!("{}.ctl.evict", shared.prefix);
        if !shared
            .publish(subject, Bytes::copy_from_slice(event.as_bytes()))
            .await
        {
            shared.keep_eviction(&channel, &event);
            break;
        }
    }
    for (channel, event) in evictions {
        shared.keep_eviction(&channel, &event);
    }
}

/// The channel an encoded eviction names.
fn evicted_channel(event: &str) -> Option<ChannelName> {
    #[derive(Deserialize)]
    struct Evict {
        ch: ChannelName,
    }
    serde_json::from_str::<Evict>(event).ok().map(|e| e.ch)
}

/// Keeps one subscription per channel this node serves, and none for the others.
async fn route(shared: Arc<Shared>, hub: Hub) {
    let mut subscriptions: HashMap<ChannelName, Reader> = HashMap::new();
    loop {
        let changed: Vec<ChannelName> = shared.interest.lock().drain().collect();
        if changed.is_empty() {
            shared.interest_changed.notified().await;
            continue;
        }
        let mut added = Vec::new();
        let mut removed = false;
        for channel in changed {
            let wanted = hub.serves(&channel);
            if wanted == subscriptions.contains_key(&channel) {
                continue;
            }
            if !wanted {
                if let Some(reader) = subscriptions.remove(&channel) {
                    reader.stop().await;
                }
                removed = true;
                continue;
            }
            let subject = channel_subject(&shared.prefix, channel.as_str());
            match shared.client.subscribe(subject).await {
                Ok(subscriber) => {
                    let (stop, stopped) = tokio::sync::oneshot::channel();
                    let task = tokio::spawn(read_channel(
                        subscriber,
                        channel.clone(),
                        hub.clone(),
                        stopped,
                    ));
                    let reader = Reader {
                        task: AbortOnDropHandle::new(task),
                        stop,
                    };
                    subscriptions.insert(channel.clone(), reader);
                    added.push(channel);
                }
                Err(e) => {
                    tracing::warn!(error = %e, %channel, "cannot subscribe to the channel's subject; retrying");
                    shared.interest.lock().insert(channel);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        if removed || !added.is_empty() {
            // The server has the (un)subscriptions once it answers a flush.
            let _ = tokio::time::timeout(Duration::from_secs(5), shared.client.flush()).await;
        }
        if !added.is_empty() {
            // Whatever was committed before the subscriptions took effect is read from the
            // store, now and once more a second later: in a cluster of NATS servers, interest
            // takes a moment to reach the others.
            for channel in &added {
                hub.catch_up(channel);
            }
            let hub = hub.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                for channel in &added {
                    hub.catch_up(channel);
                }
            });
        }
        shared
            .routed
            .store(subscriptions.len() as u64, Ordering::Relaxed);
    }
}

/// The reader of one channel's subject.
struct Reader {
    task: AbortOnDropHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Reader {
    /// Unsubscribes (the client has sent `UNSUB` once this returns) and ends the reader.
    async fn stop(self) {
        let Self { task, stop } = self;
        if stop.send(()).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
    }
}

async fn read_channel(
    mut subscriber: async_nats::Subscriber,
    channel: ChannelName,
    hub: Hub,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            message = subscriber.next() => {
                let Some(message) = message else { return };
                match std::str::from_utf8(&message.payload) {
                    Ok(event) => {
                        hub.receive_routed(&channel, event);
                    }
                    Err(_) => tracing::warn!(%channel, "non-UTF-8 cluster event"),
                }
            }
            _ = &mut stop => {
                let _ = subscriber.unsubscribe().await;
                return;
            }
        }
    }
}

/// A node's heartbeat: its id, run, and the number of its latest presence change.
#[derive(Debug, Serialize, Deserialize)]
struct Heartbeat {
    n: String,
    i: String,
    v: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    bye: bool,
}

/// A node's presence change, numbered.
#[derive(Debug, Serialize, Deserialize)]
struct Change {
    n: String,
    i: String,
    v: u64,
    ch: ChannelName,
    u: UserId,
    on: bool,
    /// The hub's encoding of the change, for [`Hub::receive`].
    e: String,
}

/// Online (channel, user) pairs.
type Entries = Vec<(ChannelName, UserId)>;

/// A part of a node's presence snapshot.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotPart {
    n: String,
    i: String,
    v: u64,
    part: usize,
    parts: usize,
    p: Entries,
}

/// This node's presence as announced: what a snapshot sends.
#[derive(Default)]
struct LocalPresence {
    version: u64,
    online: HashSet<(ChannelName, UserId)>,
}

/// What this node knows of the other nodes' presence.
#[derive(Default)]
struct RemotePresence {
    nodes: HashMap<String, NodeView>,
    by_channel: HashMap<ChannelName, HashMap<UserId, BTreeSet<String>>>,
}

struct NodeView {
    instance: String,
    /// The number of the last change applied; `None` until a snapshot arrived.
    synced: Option<u64>,
    online: HashSet<(ChannelName, UserId)>,
    last_seen: Instant,
    /// Changes received ahead of a snapshot or past a gap, by number.
    held: BTreeMap<u64, Change>,
    /// Parts of the snapshot being received: (its number, parts so far).
    assembling: Option<(u64, Vec<Option<Entries>>)>,
    requested: Option<Instant>,
}

impl NodeView {
    fn new(instance: &str) -> Self {
        Self {
            instance: instance.to_owned(),
            synced: None,
            online: HashSet::new(),
            last_seen: Instant::now(),
            held: BTreeMap::new(),
            assembling: None,
            requested: None,
        }
    }
}

/// What the control task must do after updating the table.
#[derive(Default)]
struct Effects {
    /// Presence events to hand to the hub, in order: (node, event).
    events: Vec<(String, String)>,
    /// The table changed wholesale: reconcile every presence channel with it.
    reconcile: bool,
    /// Nodes to ask for a snapshot.
    snapshots: Vec<String>,
}

impl RemotePresence {
    fn online_in(&self, channel: &ChannelName) -> Vec<(UserId, String)> {
        self.by_channel
            .get(channel)
            .map(|users| {
                users
                    .iter()
                    .flat_map(|(user, nodes)| nodes.iter().map(|n| (user.clone(), n.clone())))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn rows(&self, channels: &[ChannelName]) -> Vec<(ChannelName, UserId, String)> {
        channels
            .iter()
            .flat_map(|channel| {
                self.online_in(channel)
                    .into_iter()
                    .map(|(user, node)| (channel.clone(), user, node))
            })
            .collect()
    }

    fn set(&mut self, node: &str, channel: &ChannelName, user: &UserId, online: bool) {
        let users = self.by_channel.entry(channel.clone()).or_default();
        if online {
            users
                .entry(user.clone())
                .or_default()
                .insert(node.to_owned());
        } else if let Some(nodes) = users.get_mut(user) {
            nodes.remove(node);
            if nodes.is_empty() {
                users.remove(user);
            }
        }
        if users.is_empty() {
            self.by_channel.remove(channel);
        }
    }

    /// Forgets everything `node` said (it left, died, or restarted).
    fn forget(&mut self, node: &str) -> Option<NodeView> {
        let view = self.nodes.remove(node)?;
        for (channel, user) in &view.online {
            self.set(node, channel, user, false);
        }
        Some(view)
    }

    /// Whether a message of `node` is taken: a known node, or room for one more.
    fn admits(&self, node: &str) -> bool {
        let admitted = self.nodes.contains_key(node) || self.nodes.len() < MAX_NODES;
        if !admitted {
            tracing::warn!(node, "too many cluster nodes: ignoring one more");
        }
        admitted
    }

    /// The view of `node`'s run `instance`, made fresh when the node is new or restarted.
    fn view(&mut self, node: &str, instance: &str, effects: &mut Effects) -> &mut NodeView {
        let restarted = self
            .nodes
            .get(node)
            .is_some_and(|view| view.instance != instance);
        if restarted && self.forget(node).is_some_and(|v| !v.online.is_empty()) {
            effects.reconcile = true;
        }
        self.nodes
            .entry(node.to_owned())
            .or_insert_with(|| NodeView::new(instance))
    }

    fn heartbeat(&mut self, beat: Heartbeat, effects: &mut Effects) {
        if beat.bye {
            if self.forget(&beat.n).is_some() {
                effects.reconcile = true;
            }
            return;
        }
        if !self.admits(&beat.n) {
            return;
        }
        let view = self.view(&beat.n, &beat.i, effects);
        view.last_seen = Instant::now();
        if view.synced != Some(beat.v) {
            // Not synced yet, or changes up to `v` were lost on the way.
            effects.snapshots.push(beat.n);
        }
    }

    fn change(&mut self, change: Change, effects: &mut Effects) {
        let node = change.n.clone();
        if !self.admits(&node) {
            return;
        }
        let view = self.view(&node, &change.i, effects);
        view.last_seen = Instant::now();
        match view.synced {
            Some(synced) if change.v <= synced => {}
            Some(synced) if change.v == synced + 1 => {
                self.apply(&node, change, effects);
                self.drain_held(&node, effects);
            }
            _ => {
                if view.held.len() >= MAX_HELD_CHANGES {
                    view.held.clear();
                }
                view.held.insert(change.v, change);
                effects.snapshots.push(node);
            }
        }
    }

    fn apply(&mut self, node: &str, change: Change, effects: &mut Effects) {
        let Some(view) = self.nodes.get_mut(node) else {
            return;
        };
        view.synced = Some(change.v);
        let key = (change.ch.clone(), change.u.clone());
        if change.on {
            view.online.insert(key);
        } else {
            view.online.remove(&key);
        }
        self.set(node, &change.ch, &change.u, change.on);
        effects.events.push((node.to_owned(), change.e));
    }

    /// Applies held changes that now follow on.
    fn drain_held(&mut self, node: &str, effects: &mut Effects) {
        loop {
            let Some(view) = self.nodes.get_mut(node) else {
                return;
            };
            let Some(synced) = view.synced else { return };
            view.held.retain(|v, _| *v > synced);
            let Some(next) = view.held.remove(&(synced + 1)) else {
                return;
            };
            self.apply(node, next, effects);
        }
    }

    fn snapshot_part(&mut self, part: SnapshotPart, effects: &mut Effects) {
        let node = part.n.clone();
        if part.parts == 0 || part.part >= part.parts || part.parts > MAX_SNAPSHOT_PARTS {
            return;
        }
        if !self.admits(&node) {
            return;
        }
        let view = self.view(&node, &part.i, effects);
        view.last_seen = Instant::now();
        let assembling = match &mut view.assembling {
            Some((version, parts)) if *version == part.v && parts.len() == part.parts => parts,
            slot => &mut slot.insert((part.v, vec![None; part.parts])).1,
        };
        assembling[part.part] = Some(part.p);
        if assembling.iter().any(Option::is_none) {
            return;
        }
        let Some((version, parts)) = view.assembling.take() else {
            return;
        };
        let online: HashSet<(ChannelName, UserId)> =
            parts.into_iter().flatten().flatten().collect();
        let old = std::mem::replace(&mut view.online, online.clone());
        view.synced = Some(version);
        view.requested = None;
        for (channel, user) in old.difference(&online) {
            self.set(&node, channel, user, false);
        }
        for (channel, user) in online.difference(&old) {
            self.set(&node, channel, user, true);
        }
        effects.reconcile = true;
        self.drain_held(&node, effects);
        if self
            .nodes
            .get(&node)
            .is_some_and(|view| !view.held.is_empty())
        {
            // A gap remains past the snapshot: ask again.
            effects.snapshots.push(node);
        }
    }

    /// Forgets nodes not heard from for `ttl`; true when any had users online.
    fn expire(&mut self, ttl: Duration) -> bool {
        let dead: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, view)| view.last_seen.elapsed() > ttl)
            .map(|(node, _)| node.clone())
            .collect();
        let mut changed = false;
        for node in dead {
            tracing::warn!(node, "cluster node not heard from: its users leave");
            changed |= self.forget(&node).is_some_and(|v| !v.online.is_empty());
        }
        changed
    }
}

/// The control task's subscriptions: presence changes and heartbeats (one subscription, so
/// that they arrive in the order each node sent them), snapshot requests to this node, and
/// snapshot parts for it.
struct ControlSubscriptions {
    control: async_nats::Subscriber,
    requests: async_nats::Subscriber,
    replies: async_nats::Subscriber,
}

impl ControlSubscriptions {
    async fn open(shared: &Shared) -> Result<Self, NatsError> {
        let subscribe = |subject: String| async {
            shared
                .client
                .subscribe(subject)
                .await
                .map_err(|e| NatsError::Connect {
                    url: shared.url.clone(),
                    reason: e.to_string(),
                })
        };
        Ok(Self {
            control: subscribe(format!("{}.ctl.>", shared.prefix)).await?,
            requests: subscribe(shared.snapshot_subject(&shared.node_id)).await?,
            replies: subscribe(shared.reply_subject()).await?,
        })
    }

    async fn run(
        mut self,
        shared: Arc<Shared>,
        hub: Hub,
        mut events: mpsc::Receiver<async_nats::Event>,
    ) {
        let mut every = tokio::time::interval(shared.ttl / 4);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let heartbeat_subject = format!("{}.ctl.hb", shared.prefix);
        let evict_subject = format!("{}.ctl.evict", shared.prefix);
        let mut was_connected = shared.connected();
        loop {
            let mut effects = Effects::default();
            tokio::select! {
                Some(message) = self.control.next() => {
                    if message.subject.as_str() == evict_subject {
                        match std::str::from_utf8(&message.payload) {
                            Ok(event) if evicted_channel(event).is_some() => {
                                hub.receive("", event);
                            }
                            _ => tracing::warn!("undecodable cluster eviction"),
                        }
                        continue;
                    }
                    let mut remote = shared.remote.lock();
                    if message.subject.as_str() == heartbeat_subject {
                        match serde_json::from_slice::<Heartbeat>(&message.payload) {
                            Ok(beat) if beat.n == shared.node_id => duplicate(&shared, &beat),
                            Ok(beat) => remote.heartbeat(beat, &mut effects),
                            Err(e) => tracing::warn!(error = %e, "undecodable cluster heartbeat"),
                        }
                    } else {
                        match serde_json::from_slice::<Change>(&message.payload) {
                            Ok(change) if change.n != shared.node_id => remote.change(change, &mut effects),
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = %e, "undecodable cluster presence change"),
                        }
                    }
                }
                Some(message) = self.requests.next() => {
                    if let Some(reply) = message.reply {
                        answer_snapshot(&shared, reply.to_string()).await;
                    }
                }
                Some(message) = self.replies.next() => {
                    match serde_json::from_slice::<SnapshotPart>(&message.payload) {
                        Ok(part) => shared.remote.lock().snapshot_part(part, &mut effects),
                        Err(e) => tracing::warn!(error = %e, "undecodable presence snapshot"),
                    }
                }
                Some(event) = events.recv() => on_event(&shared, &hub, event),
                _ = every.tick() => {
                    shared.heartbeat(false);
                    // This period's commits, announced again as pointers.
                    let recent = std::mem::take(&mut *shared.recent.lock());
                    if !recent.is_empty() {
                        let mut pointers = shared.pointers.lock();
                        for (channel, seq) in recent {
                            let last = pointers.entry(channel).or_default();
                            *last = (*last).max(seq);
                        }
                        drop(pointers);
                        shared.pointers_waiting.notify_one();
                    }
                    let connected = shared.connected();
                    if connected && !was_connected {
                        // Back after an outage (whether or not its event got through): the
                        // other nodes get a lifetime to be heard from again.
                        reconnected(&shared, &hub);
                    } else if connected && shared.remote.lock().expire(shared.ttl) {
                        // Nodes are judged only while this one hears the cluster.
                        effects.reconcile = true;
                    }
                    was_connected = connected;
                    // Repairs whatever the incremental changes got wrong.
                    effects.reconcile = true;
                }
                else => return,
            }
            self.apply(&shared, &hub, effects).await;
        }
    }

    async fn apply(&self, shared: &Shared, hub: &Hub, effects: Effects) {
        for (node, event) in &effects.events {
            hub.receive(node, event);
        }
        if effects.reconcile {
            let channels = hub.presence_channels();
            let rows = shared.remote.lock().rows(&channels);
            hub.reconcile_presence(&channels, rows);
        }
        for node in effects.snapshots {
            let due = {
                let mut remote = shared.remote.lock();
                let Some(view) = remote.nodes.get_mut(&node) else {
                    continue;
                };
                let due = view
                    .requested
                    .is_none_or(|at| at.elapsed() > shared.ttl / 4);
                if due {
                    view.requested = Some(Instant::now());
                }
                due
            };
            if due {
                let subject = shared.snapshot_subject(&node);
                if let Err(e) = shared
                    .client
                    .publish_with_reply(subject, shared.reply_subject(), Bytes::new())
                    .await
                {
                    tracing::warn!(error = %e, node, "cannot ask for a presence snapshot");
                }
            }
        }
    }
}

fn duplicate(shared: &Shared, beat: &Heartbeat) {
    if beat.i == shared.instance || beat.bye {
        return;
    }
    let problem = format!(
        "another live node uses node id {:?}: give each node its own --node-id",
        shared.node_id
    );
    let mut slot = shared.duplicate.lock();
    if slot.is_none() {
        tracing::error!("{problem}");
    }
    *slot = Some((problem, Instant::now()));
}

/// The connection is back: the other nodes get a lifetime to be heard from again, and once
/// the server has this node's subscriptions again, whatever was committed meanwhile is read
/// from the store; pointers and evictions kept go out.
fn reconnected(shared: &Arc<Shared>, hub: &Hub) {
    for view in shared.remote.lock().nodes.values_mut() {
        view.last_seen = Instant::now();
    }
    shared.pointers_waiting.notify_one();
    shared.heartbeat(false);
    let (shared, hub) = (shared.clone(), hub.clone());
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(5), shared.client.flush()).await;
        hub.resync();
        // Evictions sent while this node was cut off never reached it.
        let ended = hub.revalidate_members().await;
        if ended > 0 {
            tracing::info!(
                ended,
                "subscriptions of removed members ended after reconnecting"
            );
        }
    });
}

fn on_event(shared: &Arc<Shared>, hub: &Hub, event: async_nats::Event) {
    match event {
        async_nats::Event::Connected => {
            tracing::info!(url = %shared.url, "connected to NATS");
            reconnected(shared, hub);
        }
        async_nats::Event::Disconnected => {
            tracing::warn!(url = %shared.url, "NATS connection lost: cross-node delivery paused until it is back");
        }
        async_nats::Event::SlowConsumer(_) => {
            // At most one catch-up a second, however many subscriptions overflow.
            let mut last = shared.slow_resync.lock();
            if last.is_none_or(|at| at.elapsed() > Duration::from_secs(1)) {
                *last = Some(Instant::now());
                tracing::warn!(
                    "NATS dropped messages for this node (slow consumer): catching up from the store"
                );
                hub.resync();
            }
        }
        other => tracing::warn!(event = %other, "NATS"),
    }
}

/// Sends this node's presence, in parts, to `reply`.
async fn answer_snapshot(shared: &Shared, reply: String) {
    let (version, online): (u64, Entries) = {
        let local = shared.local.lock();
        (local.version, local.online.iter().cloned().collect())
    };
    // Parts under half the server's limit, counting each entry at its longest encoding.
    let budget = match shared.client.max_payload() {
        0 => DEFAULT_MAX_PAYLOAD,
        n => n,
    } / 2;
    let mut chunks: Vec<Entries> = vec![Vec::new()];
    let mut size = 0;
    for entry in online {
        let longest = 6 * (entry.0.as_str().len() + entry.1.as_str().len()) + 8;
        if size + longest > budget && chunks.last().is_some_and(|c| !c.is_empty()) {
            chunks.push(Vec::new());
            size = 0;
        }
        size += longest;
        if let Some(chunk) = chunks.last_mut() {
            chunk.push(entry);
        }
    }
    let parts = chunks.len();
    for (part, p) in chunks.into_iter().enumerate() {
        let message = SnapshotPart {
            n: shared.node_id.clone(),
            i: shared.instance.clone(),
            v: version,
            part,
            parts,
            p,
        };
        let Ok(payload) = serde_json::to_vec(&message) else {
            return;
        };
        if !shared.publish(reply.clone(), payload.into()).await {
            tracing::warn!("cannot send a presence snapshot");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn is_valid_token(token: &str) -> bool {
        !token.is_empty()
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'~'))
    }

    #[test]
    fn awkward_names_map_to_plain_tokens() {
        assert_eq!(channel_subject("relay", "chat:1"), "relay.c.chat~3A1");
        assert_eq!(
            channel_subject("relay", "dm:#alice,bob"),
            "relay.c.dm~3A~23alice~2Cbob"
        );
        assert_eq!(
            channel_subject("r", "a.b*>~ é"),
            "r.c.a~2Eb~2A~3E~7E~20~C3~A9"
        );
        assert_eq!(channel_from_subject("r", "r.c.a~2Eb"), Some("a.b".into()));
        assert_eq!(
            channel_from_subject("r", "r.c.a~2eb"),
            None,
            "one spelling only"
        );
        assert_eq!(channel_from_subject("r", "r.c.a.b"), None);
        assert_eq!(channel_from_subject("r", "r.c."), None);
        assert_eq!(channel_from_subject("r", "x.c.ab"), None);
    }

    proptest! {
        #[test]
        fn every_name_maps_to_one_valid_subject_and_back(name in "\\PC{1,64}") {
            let subject = channel_subject("relay", &name);
            let token = subject.strip_prefix("relay.c.").unwrap();
            prop_assert!(is_valid_token(token), "{subject}");
            prop_assert_eq!(channel_from_subject("relay", &subject), Some(name));
        }

        #[test]
        fn valid_channel_names_never_share_a_subject(
            a in "[A-Za-z0-9_:.,#@=-]{1,40}",
            b in "[A-Za-z0-9_:.,#@=-]{1,40}",
        ) {
            prop_assume!(a != b);
            prop_assert!(ChannelName::parse(&a).is_ok());
            prop_assert_ne!(channel_subject("relay", &a), channel_subject("relay", &b));
        }

        #[test]
        fn names_differing_only_in_escaped_bytes_stay_apart(
            stem in "[a-z]{0,8}",
            x in prop::sample::select(vec!['.', '*', '>', '~', '#', ':', ' ', 'é', '-', '_']),
            y in prop::sample::select(vec!['.', '*', '>', '~', '#', ':', ' ', 'é', '-', '_']),
        ) {
            prop_assume!(x != y);
            let (a, b) = (format!("{stem}{x}"), format!("{stem}{y}"));
            prop_assert_ne!(channel_subject("p", &a), channel_subject("p", &b));
        }
    }

    #[test]
    fn urls_lose_their_credentials_in_logs() {
        assert_eq!(
            redact_urls("nats://user:secret@10.0.0.1:4222, tls://tok@h:4222,nats://h2:4222"),
            "nats://***@10.0.0.1:4222,tls://***@h:4222,nats://h2:4222"
        );
        let options = NatsOptions {
            url: "nats://a:b@h".into(),
            token: Some("s3cret".into()),
            password: Some("pw".into()),
            ..NatsOptions::default()
        };
        let shown = format!("{options:?}");
        assert!(!shown.contains("s3cret") && !shown.contains(":b@") && !shown.contains("pw\""));
    }

    fn change(node: &str, v: u64, ch: &str, u: &str, on: bool) -> Change {
        Change {
            n: node.into(),
            i: "run1".into(),
            v,
            ch: ChannelName::parse(ch).unwrap(),
            u: UserId::parse(u).unwrap(),
            on,
            e: format!("{v}"),
        }
    }

    #[test]
    fn presence_changes_apply_in_order_and_gaps_wait_for_a_snapshot() {
        let mut remote = RemotePresence::default();
        let room = ChannelName::parse("room:1").unwrap();
        let mut fx = Effects::default();
        remote.change(change("b", 1, "room:1", "bob", true), &mut fx);
        assert_eq!(
            fx.snapshots,
            ["b"],
            "an unknown node is asked for a snapshot"
        );
        assert!(
            remote.online_in(&room).is_empty(),
            "held until the snapshot"
        );
        let mut fx = Effects::default();
        remote.change(change("b", 3, "room:1", "carol", true), &mut fx);
        let mut fx = Effects::default();
        remote.snapshot_part(
            SnapshotPart {
                n: "b".into(),
                i: "run1".into(),
                v: 1,
                part: 0,
                parts: 1,
                p: vec![(room.clone(), UserId::parse("bob").unwrap())],
            },
            &mut fx,
        );
        assert!(fx.reconcile);
        assert_eq!(fx.snapshots, ["b"], "change 2 is missing: ask again");
        assert_eq!(remote.online_in(&room).len(), 1);
        let mut fx = Effects::default();
        remote.change(change("b", 2, "room:1", "bob", false), &mut fx);
        assert_eq!(
            fx.events,
            [
                ("b".to_owned(), "2".to_owned()),
                ("b".to_owned(), "3".to_owned())
            ],
            "the gap filled: 2 then the held 3"
        );
        let online = remote.online_in(&room);
        assert_eq!(online, [(UserId::parse("carol").unwrap(), "b".to_owned())]);
        let mut fx = Effects::default();
        remote.heartbeat(
            Heartbeat {
                n: "b".into(),
                i: "run1".into(),
                v: 3,
                bye: false,
            },
            &mut fx,
        );
        assert!(fx.snapshots.is_empty(), "in sync");
        let mut fx = Effects::default();
        remote.heartbeat(
            Heartbeat {
                n: "b".into(),
                i: "run2".into(),
                v: 0,
                bye: false,
            },
            &mut fx,
        );
        assert!(fx.reconcile, "a restarted node's users are gone");
        assert!(remote.online_in(&room).is_empty());
        let mut fx = Effects::default();
        remote.heartbeat(
            Heartbeat {
                n: "b".into(),
                i: "run2".into(),
                v: 0,
                bye: true,
            },
            &mut fx,
        );
        assert!(remote.nodes.is_empty());
    }

    #[test]
    fn silent_nodes_expire() {
        let mut remote = RemotePresence::default();
        let mut fx = Effects::default();
        remote.snapshot_part(
            SnapshotPart {
                n: "b".into(),
                i: "run1".into(),
                v: 4,
                part: 0,
                parts: 1,
                p: vec![(
                    ChannelName::parse("room:1").unwrap(),
                    UserId::parse("bob").unwrap(),
                )],
            },
            &mut fx,
        );
        assert!(!remote.expire(Duration::from_secs(60)));
        assert!(remote.expire(Duration::ZERO));
        assert!(remote.by_channel.is_empty());
    }
}
