//! The Postgres side of a cluster (`--cluster postgres`): several nodes share one database
//! and learn of each other's commits and live events through `LISTEN`/`NOTIFY`.
//!
//! - **Commits.** In cluster mode the committer adds one notification to each group-commit
//!   transaction: pointers `(channel, last seq)` for every channel the batch appended to,
//!   never the messages (`NOTIFY` payloads are small, and the table is the truth). Postgres
//!   delivers it only once the transaction committed, so a reader who follows a pointer
//!   always finds the rows.
//! - **Events** (ephemeral messages, signals) are not stored; their encoded form travels in
//!   the payload itself, batched by [`PgNotifier`].
//! - **The feed** ([`PgStore::cluster_feed`]) yields what other nodes announce, and
//!   [`FeedItem::Resync`] whenever notifications may have been lost (the listening
//!   connection dropped and was re-established): a node then catches up from the tables.
//! - **Nodes** register with an expiring row ([`PgStore::register_node`]), which refuses a
//!   second live node with the same id.
//!
//! Payloads are JSON: `{"n":node,"c":[[channel,seq],…]}` for commits, `{"n":node,"i":n,
//! "e":event}` for events, where `event` is whatever JSON the hub encoded and `n` counts the
//! node's events: Postgres delivers identical payloads sent in one transaction only once, so
//! two identical events (the same signal twice) must not look identical.

use std::time::Duration;

use relay_proto::{ChannelName, Seq, UserId};
use serde_json::value::RawValue;
use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::mpsc;

use crate::postgres::{CHANNEL_MESSAGE_COLUMNS, corrupt, map_err, stored_message};
use crate::{PgStore, StoreResult, StoredMessage};

/// A range of a channel's messages to read: seqs after `after`, up to `up_to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The channel.
    pub channel: ChannelName,
    /// Only seqs above this one.
    pub after: Seq,
    /// Only seqs up to this one.
    pub up_to: Seq,
}

/// The `LISTEN`/`NOTIFY` channel every node uses.
pub const NOTIFY_CHANNEL: &str = "relay_cluster";

/// Postgres refuses `NOTIFY` payloads of 8000 bytes or more.
pub const MAX_NOTIFY_BYTES: usize = 7999;

/// A notification from a node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The node that sent it.
    pub node: String,
    /// What it announces.
    pub body: NoticeBody,
}

/// What a [`Notice`] announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoticeBody {
    /// The node committed messages: for each channel, the last seq of the commit.
    Commits(Vec<(ChannelName, Seq)>),
    /// A live event, as the hub encoded it (JSON).
    Event(String),
}

/// What [`PgStore::cluster_feed`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedItem {
    /// A notification from another node (this node's own are left out).
    Notice(Notice),
    /// Notifications may have been lost (the listener reconnected): catch up from the tables.
    Resync,
}

impl Notice {
    /// Parses a payload; `None` for anything that is not one of ours.
    pub fn parse(payload: &str) -> Option<Self> {
        #[derive(serde::Deserialize)]
        struct Wire<'a> {
            n: String,
            #[serde(default)]
            c: Option<Vec<(String, u64)>>,
            #[serde(default, borrow)]
            e: Option<&'a RawValue>,
        }
        let wire: Wire<'_> = serde_json::from_str(payload).ok()?;
        let body = match (wire.c, wire.e) {
            (Some(commits), None) => NoticeBody::Commits(
                commits
                    .into_iter()
                    .filter_map(|(c, s)| Some((ChannelName::parse(&c).ok()?, Seq(s))))
                    .collect(),
            ),
            (None, Some(event)) => NoticeBody::Event(event.get().to_owned()),
            _ => return None,
        };
        Some(Self { node: wire.n, body })
    }
}

/// The largest envelope of an event payload, for `node`: `{"n":…,"i":…,"e":` plus the
/// closing brace.
pub fn event_envelope_bytes(node: &str) -> usize {
    event_payload(node, u64::MAX, "").len()
}

/// `s` as a JSON string literal.
fn quote(s: &str) -> String {
    // Serializing a `str` cannot fail; the fallback only keeps the output valid JSON.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn event_payload(node: &str, number: u64, event: &str) -> String {
    format!(r#"{{"n":{},"i":{number},"e":{event}}}"#, quote(node))
}

/// The commit pointers of one group commit, as payloads under the size limit (usually one).
pub(crate) fn commit_payloads(node: &str, commits: &[(&str, i64)]) -> Vec<String> {
    let head = format!(r#"{{"n":{},"c":["#, quote(node));
    let mut payloads = Vec::new();
    let mut current = head.clone();
    for (channel, seq) in commits {
        let entry = format!("[{},{seq}]", quote(channel));
        if current.len() > head.len() && current.len() + entry.len() + 3 > MAX_NOTIFY_BYTES {
            current.push_str("]}");
            payloads.push(std::mem::replace(&mut current, head.clone()));
        }
        if current.len() > head.len() {
            current.push(',');
        }
        current.push_str(&entry);
    }
    if current.len() > head.len() {
        current.push_str("]}");
        payloads.push(current);
    }
    payloads
}

/// Sends live events to the other nodes: queued without waiting, and written in batches (one
/// transaction per batch: presence rows first, then one `pg_notify` per event). Events are
/// live-only by nature: when the database is unreachable they are dropped (and logged),
/// never retried late; presence rows are rewritten wholesale at the next reconciliation.
#[derive(Clone)]
pub struct PgNotifier {
    node: String,
    queue: mpsc::Sender<Outgoing>,
    numbers: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// One queued item of the notifier.
struct Outgoing {
    payload: String,
    /// A local presence change to record with it: (channel, user, online).
    presence: Option<(ChannelName, UserId, bool)>,
}

impl PgNotifier {
    /// Queues an encoded event; false when the queue is full (the database cannot keep up).
    pub fn send(&self, event: &str) -> bool {
        let item = Outgoing {
            payload: self.payload(event),
            presence: None,
        };
        self.queue.try_send(item).is_ok()
    }

    /// Records that `user` is now online (or no longer) in `channel` on this node, and
    /// announces it with the encoded `event`; false when the queue is full.
    pub fn send_presence(
        &self,
        channel: &ChannelName,
        user: &UserId,
        online: bool,
        event: &str,
    ) -> bool {
        let item = Outgoing {
            payload: self.payload(event),
            presence: Some((channel.clone(), user.clone(), online)),
        };
        self.queue.try_send(item).is_ok()
    }

    fn payload(&self, event: &str) -> String {
        let number = self
            .numbers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        event_payload(&self.node, number, event)
    }

    /// The largest encoded event that fits one notification.
    pub fn max_event_bytes(&self) -> usize {
        MAX_NOTIFY_BYTES.saturating_sub(event_envelope_bytes(&self.node))
    }
}

/// Events waiting for the notifier before new ones are dropped.
const NOTIFY_QUEUE: usize = 16 * 1024;
/// Most events per notifying transaction.
const NOTIFY_BATCH: usize = 256;

async fn notifier(pool: PgPool, node: String, mut queue: mpsc::Receiver<Outgoing>) {
    let mut batch = Vec::with_capacity(NOTIFY_BATCH);
    while queue.recv_many(&mut batch, NOTIFY_BATCH).await > 0 {
        if let Err(e) = notify_batch(&pool, &node, &batch).await {
            tracing::warn!(error = %e, events = batch.len(), "live events not sent to the cluster");
        }
        batch.clear();
    }
}

async fn notify_batch(pool: &PgPool, node: &str, batch: &[Outgoing]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for (channel, user, online) in batch.iter().filter_map(|item| item.presence.as_ref()) {
        let sql = if *online {
            "INSERT INTO cluster_presence (node_id, channel, user_id) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM cluster_presence WHERE node_id = $1 AND channel = $2 AND user_id = $3"
        };
        sqlx::query(sql)
            .bind(node)
            .bind(channel.as_str())
            .bind(user.as_str())
            .execute(&mut *tx)
            .await?;
    }
    let payloads: Vec<&str> = batch.iter().map(|item| item.payload.as_str()).collect();
    sqlx::query("SELECT pg_notify($1, p) FROM UNNEST($2::text[]) AS p")
        .bind(NOTIFY_CHANNEL)
        .bind(&payloads)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

impl PgStore {
    /// Starts the notifier for live events of node `node`; it stops when every clone of the
    /// returned [`PgNotifier`] is gone.
    pub fn notifier(&self, node: &str) -> PgNotifier {
        let (tx, rx) = mpsc::channel(NOTIFY_QUEUE);
        tokio::spawn(notifier(self.pool().clone(), node.to_owned(), rx));
        PgNotifier {
            node: node.to_owned(),
            queue: tx,
            numbers: std::sync::Arc::default(),
        }
    }

    /// Listens for the other nodes' notifications. The first item is always
    /// [`FeedItem::Resync`] (nothing before the listener started was seen); the listener
    /// task ends when the receiver is dropped.
    pub fn cluster_feed(&self, node: &str) -> mpsc::Receiver<FeedItem> {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(listen(self.pool().clone(), node.to_owned(), tx));
        rx
    }

    /// Reads the messages of several channels' ranges in one query: what a node fetches after
    /// a batch of other nodes' commits. Ordered by channel, then seq.
    pub async fn committed(&self, wanted: &[Wanted]) -> StoreResult<Vec<StoredMessage>> {
        let channels: Vec<&str> = wanted.iter().map(|w| w.channel.as_str()).collect();
        let seq = |s: Seq| i64::try_from(s.0).unwrap_or(i64::MAX);
        let after: Vec<i64> = wanted.iter().map(|w| seq(w.after)).collect();
        let up_to: Vec<i64> = wanted.iter().map(|w| seq(w.up_to)).collect();
        let rows = sqlx::query(&format!(
            "SELECT {CHANNEL_MESSAGE_COLUMNS}
             FROM UNNEST($1::text[], $2::bigint[], $3::bigint[]) AS w(c, a, b)
             JOIN messages m ON m.channel = w.c AND m.seq > w.a AND m.seq <= w.b
             ORDER BY m.channel, m.seq"
        ))
        .bind(&channels)
        .bind(&after)
        .bind(&up_to)
        .fetch_all(self.pool())
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                let name: String = sqlx::Row::try_get(row, "channel").map_err(map_err)?;
                let channel = ChannelName::parse(&name).map_err(|e| corrupt("channel", e))?;
                stored_message(&channel, row)
            })
            .collect()
    }

    /// Registers node `node` as live for `ttl`. Returns false when another live node holds the
    /// id (its row has not expired): the caller must not start.
    pub async fn register_node(&self, node: &str, ttl: Duration) -> StoreResult<bool> {
        let row: Option<(String,)> = sqlx::query_as(
            "INSERT INTO cluster_nodes (node_id, expires_at)
             VALUES ($1, now() + make_interval(secs => $2))
             ON CONFLICT (node_id) DO UPDATE
                SET started_at = now(), expires_at = EXCLUDED.expires_at
                WHERE cluster_nodes.expires_at < now()
             RETURNING node_id",
        )
        .bind(node)
        .bind(ttl.as_secs_f64())
        .fetch_optional(self.pool())
        .await
        .map_err(map_err)?;
        if row.is_none() {
            return Ok(false);
        }
        // A restarted node starts with nobody online: what its previous run left is gone.
        sqlx::query("DELETE FROM cluster_presence WHERE node_id = $1")
            .bind(node)
            .execute(self.pool())
            .await
            .map_err(map_err)?;
        Ok(true)
    }

    /// Who is online in `channels` on the live nodes other than `node`: (channel, user, node).
    pub async fn online_elsewhere(
        &self,
        node: &str,
        channels: &[ChannelName],
    ) -> StoreResult<Vec<(ChannelName, UserId, String)>> {
        let names: Vec<&str> = channels.iter().map(ChannelName::as_str).collect();
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT p.channel, p.user_id, p.node_id FROM cluster_presence p
             JOIN cluster_nodes n ON n.node_id = p.node_id
             WHERE p.channel = ANY($1) AND p.node_id <> $2 AND n.expires_at > now()",
        )
        .bind(&names)
        .bind(node)
        .fetch_all(self.pool())
        .await
        .map_err(map_err)?;
        Ok(rows
            .into_iter()
            .filter_map(|(channel, user, node)| {
                Some((
                    ChannelName::parse(&channel).ok()?,
                    UserId::parse(&user).ok()?,
                    node,
                ))
            })
            .collect())
    }

    /// Replaces node `node`'s presence rows with `online` (channel, user) pairs, in one
    /// transaction: the reconciliation that repairs rows a lost event did not write.
    pub async fn replace_presence(
        &self,
        node: &str,
        online: &[(ChannelName, UserId)],
    ) -> StoreResult<()> {
        let channels: Vec<&str> = online.iter().map(|(c, _)| c.as_str()).collect();
        let users: Vec<&str> = online.iter().map(|(_, u)| u.as_str()).collect();
        let mut tx = self.pool().begin().await.map_err(map_err)?;
        sqlx::query("DELETE FROM cluster_presence WHERE node_id = $1")
            .bind(node)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        sqlx::query(
            "INSERT INTO cluster_presence (node_id, channel, user_id)
             SELECT $1, c, u FROM UNNEST($2::text[], $3::text[]) AS t(c, u)
             ON CONFLICT DO NOTHING",
        )
        .bind(node)
        .bind(&channels)
        .bind(&users)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(())
    }

    /// Extends node `node`'s registration by `ttl` from now (re-creating it if it expired
    /// and was removed meanwhile), and removes nodes expired for longer than `ttl` (their
    /// presence rows go with them).
    pub async fn renew_node(&self, node: &str, ttl: Duration) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO cluster_nodes (node_id, expires_at)
             VALUES ($1, now() + make_interval(secs => $2))
             ON CONFLICT (node_id) DO UPDATE SET expires_at = EXCLUDED.expires_at",
        )
        .bind(node)
        .bind(ttl.as_secs_f64())
        .execute(self.pool())
        .await
        .map_err(map_err)?;
        sqlx::query(
            "DELETE FROM cluster_nodes WHERE expires_at < now() - make_interval(secs => $1)",
        )
        .bind(ttl.as_secs_f64())
        .execute(self.pool())
        .await
        .map_err(map_err)?;
        Ok(())
    }

    /// Removes node `node`'s registration (clean shutdown).
    pub async fn unregister_node(&self, node: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM cluster_nodes WHERE node_id = $1")
            .bind(node)
            .execute(self.pool())
            .await
            .map_err(map_err)?;
        Ok(())
    }
}

/// How long the listener waits before trying again after it could not (re)connect.
const RELISTEN_AFTER: Duration = Duration::from_millis(500);

async fn listen(pool: PgPool, node: String, feed: mpsc::Sender<FeedItem>) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "cluster listener cannot connect; retrying");
                if wait_or_closed(&feed).await {
                    return;
                }
                continue;
            }
        };
        if let Err(e) = listener.listen(NOTIFY_CHANNEL).await {
            tracing::warn!(error = %e, "cluster listener cannot LISTEN; retrying");
            if wait_or_closed(&feed).await {
                return;
            }
            continue;
        }
        // Listening from here on: whatever happened before is read from the tables.
        if feed.send(FeedItem::Resync).await.is_err() {
            return;
        }
        loop {
            let received = tokio::select! {
                received = listener.try_recv() => received,
                () = feed.closed() => return,
            };
            match received {
                Ok(Some(notification)) => {
                    let Some(notice) = Notice::parse(notification.payload()) else {
                        tracing::warn!(
                            payload = notification.payload(),
                            "unknown cluster notification"
                        );
                        continue;
                    };
                    if notice.node == node {
                        continue;
                    }
                    if feed.send(FeedItem::Notice(notice)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    // The connection dropped and was re-established: notifications sent in
                    // between are lost.
                    tracing::warn!("cluster listener reconnected; catching up from the tables");
                    if feed.send(FeedItem::Resync).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cluster listener failed; reconnecting");
                    break;
                }
            }
        }
        if wait_or_closed(&feed).await {
            return;
        }
    }
}

/// Waits before a retry; true when the feed's receiver is gone meanwhile.
async fn wait_or_closed(feed: &mpsc::Sender<FeedItem>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(RELISTEN_AFTER) => feed.is_closed(),
        () = feed.closed() => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_pointers_round_trip_and_split_under_the_limit() {
        let names: Vec<String> = (0..400).map(|i| format!("chat:{i:0>40}")).collect();
        let commits: Vec<(&str, i64)> = names.iter().map(|n| (n.as_str(), 7)).collect();
        let payloads = commit_payloads("node-a", &commits);
        assert!(
            payloads.len() > 1,
            "400 pointers of ~50 bytes need several payloads"
        );
        let mut seen = 0;
        for payload in &payloads {
            assert!(payload.len() <= MAX_NOTIFY_BYTES, "{}", payload.len());
            let notice = Notice::parse(payload).unwrap();
            assert_eq!(notice.node, "node-a");
            let NoticeBody::Commits(pointers) = notice.body else {
                panic!()
            };
            seen += pointers.len();
        }
        assert_eq!(seen, 400);
    }

    #[test]
    fn events_round_trip_in_their_envelope() {
        let payload = event_payload("n\"1", 7, r#"{"k":"x","v":[1,2]}"#);
        let notice = Notice::parse(&payload).unwrap();
        assert_eq!(notice.node, "n\"1");
        assert_eq!(
            notice.body,
            NoticeBody::Event(r#"{"k":"x","v":[1,2]}"#.into())
        );
        assert!(event_envelope_bytes("n\"1") >= payload.len() - r#"{"k":"x","v":[1,2]}"#.len());
        assert_eq!(Notice::parse("not json"), None);
        assert_eq!(Notice::parse(r#"{"n":"a"}"#), None);
    }
}
