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
//! Payloads are JSON: `{"n":node,"c":[[channel,seq],…]}` for commits, `{"n":node,"e":event}`
//! for events, where `event` is whatever JSON the hub encoded.

use std::time::Duration;

use relay_proto::{ChannelName, Seq};
use serde_json::value::RawValue;
use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::mpsc;

use crate::postgres::map_err;
use crate::{PgStore, StoreResult};

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

/// The envelope of an event payload, for `node`: `{"n":…,"e":` plus the closing brace.
pub fn event_envelope_bytes(node: &str) -> usize {
    event_payload(node, "").len()
}

fn event_payload(node: &str, event: &str) -> String {
    let node = serde_json::to_string(node).unwrap_or_else(|_| "\"\"".into());
    format!(r#"{{"n":{node},"e":{event}}}"#)
}

/// The commit pointers of one group commit, as payloads under the size limit (usually one).
pub(crate) fn commit_payloads(node: &str, commits: &[(&str, i64)]) -> Vec<String> {
    let head = format!(
        r#"{{"n":{},"c":["#,
        serde_json::to_string(node).unwrap_or_else(|_| "\"\"".into())
    );
    let mut payloads = Vec::new();
    let mut current = head.clone();
    for (channel, seq) in commits {
        let entry = format!(
            "[{},{seq}]",
            serde_json::to_string(channel).unwrap_or_else(|_| "\"\"".into())
        );
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
/// transaction of `pg_notify` calls per batch). Events are live-only by nature: when the
/// database is unreachable they are dropped (and logged), never retried late.
#[derive(Clone)]
pub struct PgNotifier {
    node: String,
    queue: mpsc::Sender<String>,
}

impl PgNotifier {
    /// Queues an encoded event; false when the queue is full (the database cannot keep up).
    pub fn send(&self, event: &str) -> bool {
        self.queue
            .try_send(event_payload(&self.node, event))
            .is_ok()
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

async fn notifier(pool: PgPool, mut queue: mpsc::Receiver<String>) {
    let mut batch = Vec::with_capacity(NOTIFY_BATCH);
    while queue.recv_many(&mut batch, NOTIFY_BATCH).await > 0 {
        let sent = sqlx::query("SELECT pg_notify($1, p) FROM UNNEST($2::text[]) AS p")
            .bind(NOTIFY_CHANNEL)
            .bind(&batch)
            .execute(&pool)
            .await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, events = batch.len(), "live events not sent to the cluster");
        }
        batch.clear();
    }
}

impl PgStore {
    /// Starts the notifier for live events of node `node`; it stops when every clone of the
    /// returned [`PgNotifier`] is gone.
    pub fn notifier(&self, node: &str) -> PgNotifier {
        let (tx, rx) = mpsc::channel(NOTIFY_QUEUE);
        tokio::spawn(notifier(self.pool().clone(), rx));
        PgNotifier {
            node: node.to_owned(),
            queue: tx,
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
        Ok(row.is_some())
    }

    /// Extends node `node`'s registration by `ttl` from now.
    pub async fn renew_node(&self, node: &str, ttl: Duration) -> StoreResult<()> {
        sqlx::query(
            "UPDATE cluster_nodes SET expires_at = now() + make_interval(secs => $2)
             WHERE node_id = $1",
        )
        .bind(node)
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
        let payload = event_payload("n\"1", r#"{"k":"x","v":[1,2]}"#);
        let notice = Notice::parse(&payload).unwrap();
        assert_eq!(notice.node, "n\"1");
        assert_eq!(
            notice.body,
            NoticeBody::Event(r#"{"k":"x","v":[1,2]}"#.into())
        );
        assert_eq!(
            event_envelope_bytes("n\"1"),
            payload.len() - r#"{"k":"x","v":[1,2]}"#.len()
        );
        assert_eq!(Notice::parse("not json"), None);
        assert_eq!(Notice::parse(r#"{"n":"a"}"#), None);
    }
}
