//! [`PgStore`]: the durable store on Postgres (sqlx), with group commit.
//!
//! Appends from every publisher go through one committer task. It takes whatever is queued
//! (up to [`PgStoreOptions::max_batch`]), assigns seqs for all of it in one transaction and
//! commits once, then answers each publisher. While one transaction is in flight the next
//! batch accumulates, so a light load gets one small transaction per publish (low latency)
//! and a heavy load gets few large ones (high throughput), with no timer in between.
//!
//! Seqs come from `channel_seqs`: bumping a channel's counter row locks that row until the
//! commit, so seqs are atomic and gap-free per channel (a rolled-back transaction gives its
//! seqs back) and unrelated channels never wait for each other.
//!
//! Idempotency keys live in `publish_keys`, written in the transaction that stores their
//! message. A commit first assumes its keys are new and inserts them with
//! `ON CONFLICT DO NOTHING`; if one was already there (a retry, rare), it rolls back and
//! commits the batch again after looking every key up, with the channels' counter rows
//! locked, so a commit of the same key by another node has either committed (and is seen)
//! or waits for this one: a key is stored once across the cluster. A background task prunes
//! expired keys.

use std::str::FromStr;
use std::time::Duration;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use async_trait::async_trait;
use relay_proto::{
    ChannelName, IdempotencyKey, MemberRole, MessageId, Payload, Seq, Timestamp, UserId,
};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Row, Transaction};
use tokio::sync::{mpsc, oneshot};

use crate::{
    Appended, ChannelRecord, Created, CurrentMessage, DEFAULT_IDEMPOTENCY_WINDOW, HistoryQuery,
    Member, NewChannel, NewMessage, Original, ReadState, Removal, RoleChange, Store, StoreError,
    StoreResult, StoredMessage,
};

/// The embedded migrations (`migrations/` at the repository root).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Tuning of a [`PgStore`].
#[derive(Debug, Clone)]
pub struct PgStoreOptions {
    /// Pool size.
    pub max_connections: u32,
    /// How long an operation waits for a pooled connection before failing `unavailable`.
    pub acquire_timeout: Duration,
    /// The deadline of every database operation: each statement (`statement_timeout` on
    /// every pooled connection, which also bounds lock waits), each group commit, and each
    /// publish's wait for its commit. Past it the operation fails `unavailable`; a publish
    /// that gave up before its commit started is never stored.
    pub statement_timeout: Duration,
    /// Most messages committed in one transaction.
    pub max_batch: usize,
    /// Publishes waiting for the committer before new ones are pushed back (`unavailable`).
    pub queue: usize,
    /// In a cluster, this node's id: each group commit then notifies the other nodes of the
    /// channels it appended to (see [`cluster`](crate::cluster)). `None` on a single node.
    pub cluster_node: Option<String>,
    /// How long idempotency keys are honoured (then pruned).
    pub idempotency_window: Duration,
}

impl Default for PgStoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(3),
            statement_timeout: Duration::from_secs(3),
            max_batch: 1024,
            queue: 16 * 1024,
            cluster_node: None,
            idempotency_window: DEFAULT_IDEMPOTENCY_WINDOW,
        }
    }
}

/// A [`Store`] on Postgres.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// How long idempotency keys are remembered.
    window: Duration,
    appends: mpsc::Sender<Append>,
    /// How long a publish waits for its commit.
    timeout: Duration,
    /// Dropped with the last clone of the store, which stops the key pruner.
    _pruner: Arc<oneshot::Sender<()>>,
}

struct Append {
    message: NewMessage,
    reply: oneshot::Sender<StoreResult<Committed>>,
}

/// What the committer answers one append.
#[derive(Debug, Clone, Copy)]
enum Committed {
    /// Stored with this seq; `true` if its payload was stored as `null` (an edit of a
    /// message deleted before it).
    New(Seq, bool),
    /// Its key was stored before: nothing stored now.
    Repeat(Original),
}

fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Unavailable(Box::new(e))
}

pub(crate) fn map_err(e: sqlx::Error) -> StoreError {
    // SQLSTATE classes 22 (data exception) and 23 (integrity violation): this data, not the
    // database, is the problem.
    if let sqlx::Error::Database(db) = &e
        && db
            .code()
            .is_some_and(|c| c.starts_with("22") || c.starts_with("23"))
    {
        return StoreError::Invalid(db.message().to_owned());
    }
    match e {
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_) => StoreError::Corrupt(e.to_string()),
        e => unavailable(e),
    }
}

pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

impl PgStore {
    /// The rows of a history page, ascending by seq: `sql(order)` is the query, ordered by
    /// seq `order` (`DESC` for the newest page, when `after` is unset, else `ASC`), with
    /// `$1` the channel, `$2` after, `$3` before and `$4` the limit.
    async fn page(
        &self,
        channel: &ChannelName,
        query: HistoryQuery,
        sql: impl FnOnce(&str) -> String,
    ) -> StoreResult<Vec<PgRow>> {
        let newest_first = query.after.is_none();
        let sql = sql(if newest_first { "DESC" } else { "ASC" });
        let mut rows = sqlx::query(&sql)
            .bind(channel.as_str())
            .bind(to_i64(query.after))
            .bind(to_i64(query.before))
            .bind(limit(query.limit))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        if newest_first {
            rows.reverse();
        }
        Ok(rows)
    }

    /// Connects, applies pending migrations and starts the committer.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        Self::connect_with(url, PgStoreOptions::default()).await
    }

    /// Like [`connect`](Self::connect), with options.
    pub async fn connect_with(url: &str, options: PgStoreOptions) -> StoreResult<Self> {
        let connect = PgConnectOptions::from_str(url).map_err(map_err)?;
        // Migrations run on a connection of their own, without the statement timeout: an
        // index build on a large table may take longer than any publish should.
        let mut migrating = PgConnection::connect_with(&connect)
            .await
            .map_err(map_err)?;
        MIGRATOR.run(&mut migrating).await.map_err(unavailable)?;
        let _ = migrating.close().await;
        let timeout_ms = options.statement_timeout.as_millis().max(1).to_string();
        let connect = connect.options([
            ("statement_timeout", timeout_ms.as_str()),
            // The server probes idle connections, so that a vanished peer does not keep a
            // transaction (and its locks) open.
            ("tcp_keepalives_idle", "10"),
            ("tcp_keepalives_interval", "5"),
            ("tcp_keepalives_count", "3"),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(map_err)?;
        Ok(Self::with_pool(pool, &options))
    }

    /// A store over an existing pool whose database is already migrated. Starts the
    /// committer task, which ends when the last clone of the store is dropped.
    pub fn with_pool(pool: PgPool, options: &PgStoreOptions) -> Self {
        let (appends, queue) = mpsc::channel(options.queue.max(1));
        tokio::spawn(committer(
            pool.clone(),
            queue,
            Batching {
                max_batch: options.max_batch.max(1),
                node: options.cluster_node.clone(),
                deadline: options.statement_timeout,
                window: options.idempotency_window,
            },
        ));
        let (pruner, stopped) = oneshot::channel();
        tokio::spawn(prune_keys(
            pool.clone(),
            options.idempotency_window,
            stopped,
        ));
        Self {
            pool,
            window: options.idempotency_window,
            appends,
            timeout: options.statement_timeout,
            _pruner: Arc::new(pruner),
        }
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Expired idempotency keys deleted per statement, so that pruning never holds many row
/// locks or runs into the statement timeout.
const PRUNE_CHUNK: u64 = 5000;

/// Deletes idempotency keys past `window`, a few times per window, until `stopped`.
async fn prune_keys(pool: PgPool, window: Duration, mut stopped: oneshot::Receiver<()>) {
    let period = (window / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tick.tick() => {}
        }
        loop {
            let deleted = sqlx::query(
                "DELETE FROM publish_keys WHERE ctid = ANY(ARRAY(
                     SELECT ctid FROM publish_keys
                     WHERE created_at < now() - $1 * interval '1 millisecond'
                     LIMIT $2))",
            )
            .bind(window.as_millis() as i64)
            .bind(PRUNE_CHUNK as i64)
            .execute(&pool)
            .await;
            match deleted {
                Ok(done) if done.rows_affected() >= PRUNE_CHUNK => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "pruning expired idempotency keys failed");
                    break;
                }
            }
        }
    }
}

/// How the committer batches.
struct Batching {
    max_batch: usize,
    /// This node's id in a cluster.
    node: Option<String>,
    /// The deadline of one group commit.
    deadline: Duration,
    /// How long idempotency keys are honoured.
    window: Duration,
}

/// Commits queued appends in batches until every sender is gone.
async fn committer(pool: PgPool, mut queue: mpsc::Receiver<Append>, batching: Batching) {
    let Batching {
        max_batch,
        node,
        deadline,
        window,
    } = batching;
    let node = node.as_deref();
    let mut batch = Vec::with_capacity(max_batch);
    while queue.recv_many(&mut batch, max_batch).await > 0 {
        // A publish that stopped waiting (its deadline passed while an earlier commit was
        // stuck) is dropped here, before its commit: it failed, so it must not be stored.
        batch.retain(|append: &Append| !append.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let committed = tokio::time::timeout(deadline, commit(&pool, &batch, node, window))
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(
                    format!("the group commit did not finish within {deadline:?}").into(),
                ))
            });
        match committed {
            Ok(outcomes) => {
                for (append, outcome) in batch.drain(..).zip(outcomes) {
                    let _ = append.reply.send(Ok(outcome));
                }
            }
            Err(StoreError::Invalid(_)) if batch.len() > 1 => {
                // One message the database refuses must not fail its neighbours: commit
                // them one by one so that only the bad one gets the error.
                for append in batch.drain(..) {
                    let result = commit(&pool, std::slice::from_ref(&append), node, window)
                        .await
                        .and_then(|outcomes| {
                            outcomes
                                .first()
                                .copied()
                                .ok_or_else(|| StoreError::Corrupt("no seq for a commit".into()))
                        });
                    let _ = append.reply.send(result);
                }
            }
            Err(StoreError::Invalid(reason)) => {
                for append in batch.drain(..) {
                    let _ = append.reply.send(Err(StoreError::Invalid(reason.clone())));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, messages = batch.len(), "group commit failed");
                let reason = e.to_string();
                for append in batch.drain(..) {
                    let error = StoreError::Unavailable(reason.clone().into());
                    let _ = append.reply.send(Err(error));
                }
            }
        }
    }
}

/// An append's key scope: channel, publisher, key.
type KeyScope<'a> = (&'a str, &'a str, &'a str);

fn key_scope(message: &NewMessage) -> Option<KeyScope<'_>> {
    let key = message.idempotency_key.as_ref()?;
    Some((message.channel.as_str(), message.publisher(), key.as_str()))
}

/// What one append of a batch turns into.
#[derive(Clone, Copy)]
enum Role {
    /// Stored now.
    Store,
    /// Repeats the append at this index of the same batch (same key).
    Follow(usize),
    /// Repeats an append committed earlier.
    Repeat(Original),
}

/// How a commit treats idempotency keys that may have been stored before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keys {
    /// Assume every key is new (the common case: a repeat is a rare retry) and insert the
    /// keys with `ON CONFLICT DO NOTHING`; if one was there, the transaction is abandoned
    /// and the batch committed again with [`Keys::LookUp`].
    Optimistic,
    /// Look every key up first (with the counter rows locked), answer repeats, give their
    /// seqs back, and replace keys past the window.
    LookUp,
}

/// Commits a batch: optimistically, and again with a look-up when a key was known.
async fn commit(
    pool: &PgPool,
    batch: &[Append],
    node: Option<&str>,
    window: Duration,
) -> StoreResult<Vec<Committed>> {
    if let Some(outcomes) = commit_with(pool, batch, node, window, Keys::Optimistic).await? {
        return Ok(outcomes);
    }
    commit_with(pool, batch, node, window, Keys::LookUp)
        .await?
        .ok_or_else(|| {
            StoreError::Corrupt("an idempotency key conflicted after its look-up".into())
        })
}

/// One transaction: reserve seqs per channel, answer repeated idempotency keys, insert every
/// new message and its key, notify the cluster (one notification per transaction, not per
/// message: `NOTIFY` serialises commits behind a global lock), commit. `None` (and nothing
/// committed) when an optimistic commit met a key stored before.
async fn commit_with(
    pool: &PgPool,
    batch: &[Append],
    node: Option<&str>,
    window: Duration,
    mode: Keys,
) -> StoreResult<Option<Vec<Committed>>> {
    // A key used twice in one batch: the later append follows the first.
    let mut roles = vec![Role::Store; batch.len()];
    let mut first_of: HashMap<KeyScope<'_>, usize> = HashMap::new();
    for (i, append) in batch.iter().enumerate() {
        if let Some(scope) = key_scope(&append.message) {
            match first_of.entry(scope) {
                Entry::Occupied(first) => roles[i] = Role::Follow(*first.get()),
                Entry::Vacant(slot) => {
                    slot.insert(i);
                }
            }
        }
    }
    // Seqs to reserve per channel, in name order so that concurrent transactions lock
    // counter rows in the same order.
    let mut counts: Vec<(&str, i64)> = Vec::new();
    let mut order: Vec<&str> = batch
        .iter()
        .zip(&roles)
        .filter(|(_, role)| matches!(role, Role::Store))
        .map(|(a, _)| a.message.channel.as_str())
        .collect();
    order.sort_unstable();
    for name in order {
        match counts.last_mut() {
            Some((last, n)) if *last == name => *n += 1,
            _ => counts.push((name, 1)),
        }
    }
    let mut tx: Transaction<'_, sqlx::Postgres> = pool.begin().await.map_err(map_err)?;
    let names: Vec<&str> = counts.iter().map(|(n, _)| *n).collect();
    let increments: Vec<i64> = counts.iter().map(|(_, k)| *k).collect();
    let rows = sqlx::query(
        "INSERT INTO channel_seqs (channel, last_seq)
         SELECT * FROM UNNEST($1::text[], $2::bigint[])
         ON CONFLICT (channel) DO UPDATE SET last_seq = channel_seqs.last_seq + EXCLUDED.last_seq
         RETURNING channel, last_seq",
    )
    .bind(&names)
    .bind(&increments)
    .fetch_all(&mut *tx)
    .await
    .map_err(map_err)?;
    // Next seq to hand out per channel: last - count + 1. Repeats found below give their
    // reserved seqs back from the top, so this start stays right.
    let mut next: HashMap<String, i64> = HashMap::with_capacity(rows.len());
    for row in &rows {
        let channel: String = row.try_get(0).map_err(map_err)?;
        let last: i64 = row.try_get(1).map_err(map_err)?;
        let count = counts
            .iter()
            .find(|(n, _)| *n == channel)
            .map_or(0, |(_, k)| *k);
        next.insert(channel, last - count + 1);
    }
    if !first_of.is_empty() && mode == Keys::LookUp {
        find_repeats(&mut tx, batch, &mut roles, window).await?;
    }
    let mut given_back: HashMap<&str, i64> = HashMap::new();
    for (append, role) in batch.iter().zip(&roles) {
        if matches!(role, Role::Repeat(_)) {
            *given_back
                .entry(append.message.channel.as_str())
                .or_default() += 1;
        }
    }
    if !given_back.is_empty() {
        let (channels, amounts): (Vec<&str>, Vec<i64>) = given_back.into_iter().unzip();
        sqlx::query(
            "UPDATE channel_seqs SET last_seq = last_seq - u.n
             FROM UNNEST($1::text[], $2::bigint[]) AS u(c, n) WHERE channel = u.c",
        )
        .bind(&channels)
        .bind(&amounts)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
    }
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut columns = MessageColumns::default();
    let mut keys = KeyColumns::default();
    let mut touched: HashMap<&str, i64> = HashMap::new();
    for (append, role) in batch.iter().zip(&roles) {
        let m = &append.message;
        let outcome = match *role {
            Role::Repeat(original) => Committed::Repeat(original),
            Role::Follow(first) => match outcomes.get(first) {
                Some(Committed::New(seq, _)) => Committed::Repeat(Original {
                    seq: *seq,
                    id: batch[first].message.id,
                    ts: batch[first].message.ts,
                }),
                Some(repeat @ Committed::Repeat(_)) => *repeat,
                None => return Err(StoreError::Corrupt("a key follows a later append".into())),
            },
            Role::Store => {
                let slot = next.get_mut(m.channel.as_str()).ok_or_else(|| {
                    StoreError::Corrupt(format!("no seq reserved for {}", m.channel))
                })?;
                let seq = *slot;
                *slot += 1;
                touched.insert(m.channel.as_str(), seq);
                columns.push(m, seq);
                if let Some((channel, publisher, key)) = key_scope(m) {
                    keys.push((channel, publisher, key), m, seq);
                }
                Committed::New(Seq(seq as u64), false)
            }
        };
        outcomes.push(outcome);
    }
    if !columns.seqs.is_empty() {
        columns.insert(&mut tx).await?;
    }
    if columns.refs.iter().any(Option::is_some) {
        // With the channels' counter rows locked, every delete committed before is seen.
        for (channel, seq) in columns.scrub(&mut tx).await? {
            let scrubbed = batch.iter().zip(outcomes.iter_mut()).find(|(a, o)| {
                a.message.channel.as_str() == channel
                    && matches!(o, Committed::New(s, _) if s.0 as i64 == seq)
            });
            if let Some((_, Committed::New(_, flag))) = scrubbed {
                *flag = true;
            }
        }
    }
    if !keys.seqs.is_empty() {
        let inserted = keys.insert(&mut tx, mode).await?;
        if inserted < keys.seqs.len() as u64 {
            // A key was stored before: dropping the transaction rolls it back.
            return Ok(None);
        }
    }
    if let Some(node) = node
        && !touched.is_empty()
    {
        let pointers: Vec<(&str, i64)> = touched.into_iter().collect();
        let payloads = crate::cluster::commit_payloads(node, &pointers);
        sqlx::query("SELECT pg_notify($1, p) FROM UNNEST($2::text[]) AS p")
            .bind(crate::cluster::NOTIFY_CHANNEL)
            .bind(&payloads)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
    }
    tx.commit().await.map_err(map_err)?;
    Ok(Some(outcomes))
}

/// Marks the appends whose key was committed within `window` as repeats. Runs with the
/// channels' counter rows locked: a commit of the same key by another node has committed
/// before this statement started (and is seen), or waits for this transaction.
async fn find_repeats(
    tx: &mut Transaction<'_, sqlx::Postgres>,
    batch: &[Append],
    roles: &mut [Role],
    window: Duration,
) -> StoreResult<()> {
    let (mut channels, mut publishers, mut keys) = (Vec::new(), Vec::new(), Vec::new());
    for (append, role) in batch.iter().zip(roles.iter()) {
        if let (Role::Store, Some((c, p, k))) = (role, key_scope(&append.message)) {
            channels.push(c);
            publishers.push(p);
            keys.push(k);
        }
    }
    let rows = sqlx::query(
        // LATERAL: one primary-key lookup per key, whatever the planner guesses of the
        // arrays' size (a hash join would scan the whole table).
        "SELECT k.channel, k.publisher, k.key, k.seq, k.message_id,
                (round(extract(epoch FROM k.ts) * 1000))::bigint AS ts_ms
         FROM UNNEST($1::text[], $2::text[], $3::text[]) AS u(c, p, k)
         CROSS JOIN LATERAL (
             SELECT * FROM publish_keys
             WHERE channel = u.c AND publisher = u.p AND key = u.k
               AND created_at >= now() - $4 * interval '1 millisecond'
         ) AS k",
    )
    .bind(&channels)
    .bind(&publishers)
    .bind(&keys)
    .bind(window.as_millis() as i64)
    .fetch_all(&mut **tx)
    .await
    .map_err(map_err)?;
    if rows.is_empty() {
        return Ok(());
    }
    let mut found: HashMap<(String, String, String), Original> = HashMap::new();
    for row in &rows {
        let seq: i64 = row.try_get("seq").map_err(map_err)?;
        let ts_ms: i64 = row.try_get("ts_ms").map_err(map_err)?;
        found.insert(
            (
                row.try_get("channel").map_err(map_err)?,
                row.try_get("publisher").map_err(map_err)?,
                row.try_get("key").map_err(map_err)?,
            ),
            Original {
                seq: Seq(seq as u64),
                id: row.try_get("message_id").map_err(map_err)?,
                ts: Timestamp::from_unix_millis(ts_ms.max(0) as u64),
            },
        );
    }
    for (append, role) in batch.iter().zip(roles.iter_mut()) {
        if let (Role::Store, Some((c, p, k))) = (*role, key_scope(&append.message))
            && let Some(original) = found.get(&(c.to_owned(), p.to_owned(), k.to_owned()))
        {
            *role = Role::Repeat(*original);
        }
    }
    Ok(())
}

/// The columns of the messages one commit inserts.
#[derive(Default)]
struct MessageColumns<'a> {
    channels: Vec<&'a str>,
    seqs: Vec<i64>,
    ids: Vec<MessageId>,
    froms: Vec<Option<&'a str>>,
    events: Vec<Option<&'a str>>,
    payloads: Vec<&'a str>,
    ts: Vec<i64>,
    refs: Vec<Option<i64>>,
}

impl<'a> MessageColumns<'a> {
    fn push(&mut self, m: &'a NewMessage, seq: i64) {
        self.channels.push(m.channel.as_str());
        self.seqs.push(seq);
        self.ids.push(m.id);
        self.froms.push(m.from.as_ref().map(UserId::as_str));
        self.events.push(m.event.as_deref());
        self.payloads.push(m.payload.as_str());
        self.ts.push(m.ts.unix_millis() as i64);
        self.refs.push(m.reference.map(|r| r.0 as i64));
    }

    /// After the insert, in the same transaction: for every message the batch edits or
    /// deletes that has a `delete` event (or was trimmed), replaces the stored payload of
    /// that message and of its edits with `null` (a delete scrubs what it deletes; an edit
    /// racing a delete or a trim is scrubbed too). Returns the scrubbed rows.
    async fn scrub(
        &self,
        tx: &mut Transaction<'_, sqlx::Postgres>,
    ) -> StoreResult<Vec<(String, i64)>> {
        let (channels, refs): (Vec<&str>, Vec<i64>) = self
            .channels
            .iter()
            .zip(&self.refs)
            .filter_map(|(c, r)| r.map(|r| (*c, r)))
            .unzip();
        let rows = sqlx::query(
            // Two lookups per deleted message (its row by primary key, its edits by the
            // partial index), never a walk of the channel.
            // A message trimmed meanwhile counts as deleted: its edits lose their content, as
            // trimming does to those it finds.
            "WITH gone AS (
                 SELECT DISTINCT u.c, u.r FROM UNNEST($1::text[], $2::bigint[]) AS u(c, r)
                 WHERE EXISTS (SELECT 1 FROM messages d
                               WHERE d.channel = u.c AND d.ref_seq = u.r AND d.event = 'delete')
                    OR NOT EXISTS (SELECT 1 FROM messages o WHERE o.channel = u.c AND o.seq = u.r)
             ),
             hit AS (
                 SELECT c, r AS s FROM gone
                 UNION
                 SELECT x.channel, x.seq FROM gone
                 JOIN messages x ON x.channel = gone.c AND x.ref_seq = gone.r AND x.event = 'edit'
             )
             UPDATE messages m SET payload = 'null'
             FROM hit
             WHERE m.channel = hit.c AND m.seq = hit.s AND m.payload <> 'null'
             RETURNING m.channel, m.seq",
        )
        .bind(&channels)
        .bind(&refs)
        .fetch_all(&mut **tx)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get(0).map_err(map_err)?,
                    row.try_get(1).map_err(map_err)?,
                ))
            })
            .collect()
    }

    async fn insert(&self, tx: &mut Transaction<'_, sqlx::Postgres>) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO messages (channel, seq, id, from_user, event, payload, ts, ref_seq)
             SELECT c, s, i, f, e, p, to_timestamp(t::float8 / 1000), r
             FROM UNNEST($1::text[], $2::bigint[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::bigint[])
                  AS u(c, s, i, f, e, p, t, r)",
        )
        .bind(&self.channels)
        .bind(&self.seqs)
        .bind(&self.ids)
        .bind(&self.froms)
        .bind(&self.events)
        .bind(&self.payloads)
        .bind(&self.ts)
        .bind(&self.refs)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
        Ok(())
    }
}

/// The idempotency keys one commit stores, with what their messages got.
#[derive(Default)]
struct KeyColumns<'a> {
    channels: Vec<&'a str>,
    publishers: Vec<&'a str>,
    keys: Vec<&'a str>,
    seqs: Vec<i64>,
    ids: Vec<MessageId>,
    ts: Vec<i64>,
}

impl<'a> KeyColumns<'a> {
    fn push(&mut self, (channel, publisher, key): KeyScope<'a>, m: &NewMessage, seq: i64) {
        self.channels.push(channel);
        self.publishers.push(publisher);
        self.keys.push(key);
        self.seqs.push(seq);
        self.ids.push(m.id);
        self.ts.push(m.ts.unix_millis() as i64);
    }

    /// Inserts the keys and returns how many rows were written. Optimistically, a key that
    /// is already there is left alone (the caller starts over); after a look-up, the only
    /// keys still there are expired ones, which are replaced.
    async fn insert(
        &self,
        tx: &mut Transaction<'_, sqlx::Postgres>,
        mode: Keys,
    ) -> StoreResult<u64> {
        let on_conflict = match mode {
            Keys::Optimistic => "DO NOTHING",
            Keys::LookUp => {
                "DO UPDATE SET seq = EXCLUDED.seq, message_id = EXCLUDED.message_id,
                 ts = EXCLUDED.ts, created_at = now()"
            }
        };
        let sql = format!(
            "INSERT INTO publish_keys (channel, publisher, key, seq, message_id, ts)
             SELECT c, p, k, s, i, to_timestamp(t::float8 / 1000)
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::uuid[], $6::bigint[])
                  AS u(c, p, k, s, i, t)
             ON CONFLICT (channel, publisher, key) {on_conflict}"
        );
        let done = sqlx::query(&sql)
            .bind(&self.channels)
            .bind(&self.publishers)
            .bind(&self.keys)
            .bind(&self.seqs)
            .bind(&self.ids)
            .bind(&self.ts)
            .execute(&mut **tx)
            .await
            .map_err(map_err)?;
        Ok(done.rows_affected())
    }
}

const CHANNEL_COLUMNS: &str =
    "name, meta, created_by, (round(extract(epoch FROM created_at) * 1000))::bigint AS created_ms";

fn channel_record(row: &PgRow) -> StoreResult<ChannelRecord> {
    let name: String = row.try_get("name").map_err(map_err)?;
    let meta: Option<String> = row.try_get("meta").map_err(map_err)?;
    let created_by: Option<String> = row.try_get("created_by").map_err(map_err)?;
    let created_ms: i64 = row.try_get("created_ms").map_err(map_err)?;
    Ok(ChannelRecord {
        name: ChannelName::parse(&name).map_err(|e| corrupt("channel name", e))?,
        meta: meta
            .map(|m| Payload::from_json(&m))
            .transpose()
            .map_err(|e| corrupt("meta", e))?,
        created_by: created_by
            .map(|u| UserId::parse(&u))
            .transpose()
            .map_err(|e| corrupt("created_by", e))?,
        created_at: Timestamp::from_unix_millis(created_ms.max(0) as u64),
    })
}

const MESSAGE_COLUMNS: &str = "seq, id, from_user, event, payload, \
     (round(extract(epoch FROM ts) * 1000))::bigint AS ts_ms, ref_seq";

/// [`MESSAGE_COLUMNS`] of table alias `m`, with the channel.
pub(crate) const CHANNEL_MESSAGE_COLUMNS: &str = "m.channel, m.seq, m.id, m.from_user, m.event, m.payload, \
     (round(extract(epoch FROM m.ts) * 1000))::bigint AS ts_ms, m.ref_seq";

pub(crate) fn stored_message(channel: &ChannelName, row: &PgRow) -> StoreResult<StoredMessage> {
    let seq: i64 = row.try_get("seq").map_err(map_err)?;
    let id: MessageId = row.try_get("id").map_err(map_err)?;
    let from: Option<String> = row.try_get("from_user").map_err(map_err)?;
    let event: Option<String> = row.try_get("event").map_err(map_err)?;
    let payload: String = row.try_get("payload").map_err(map_err)?;
    let ts_ms: i64 = row.try_get("ts_ms").map_err(map_err)?;
    let reference: Option<i64> = row.try_get("ref_seq").map_err(map_err)?;
    Ok(StoredMessage {
        channel: channel.clone(),
        seq: Seq(seq as u64),
        id,
        from: from
            .map(|u| UserId::parse(&u))
            .transpose()
            .map_err(|e| corrupt("from_user", e))?,
        event,
        payload: Payload::from_json(&payload).map_err(|e| corrupt("payload", e))?,
        ts: Timestamp::from_unix_millis(ts_ms.max(0) as u64),
        reference: reference.map(|r| Seq(r.max(0) as u64)),
    })
}

fn member_role(text: &str) -> StoreResult<MemberRole> {
    MemberRole::parse(text).ok_or_else(|| corrupt("member role", text))
}

/// A member's role and the channel's owner count, read with the channel's record locked
/// (`FOR UPDATE`) so that concurrent membership changes of one channel run one at a time:
/// two owners removing each other can never leave it without one.
struct LockedRole {
    role: MemberRole,
    owners: i64,
}

async fn locked_role(
    tx: &mut Transaction<'_, sqlx::Postgres>,
    channel: &ChannelName,
    user: &UserId,
) -> StoreResult<Option<LockedRole>> {
    let locked: Option<(i32,)> =
        sqlx::query_as("SELECT 1 FROM channels WHERE name = $1 FOR UPDATE")
            .bind(channel.as_str())
            .fetch_optional(&mut **tx)
            .await
            .map_err(map_err)?;
    if locked.is_none() {
        return Ok(None);
    }
    let row: Option<(String, i64)> = sqlx::query_as(
        "SELECT role, (SELECT count(*) FROM members WHERE channel = $1 AND role = 'owner')
         FROM members WHERE channel = $1 AND user_id = $2",
    )
    .bind(channel.as_str())
    .bind(user.as_str())
    .fetch_optional(&mut **tx)
    .await
    .map_err(map_err)?;
    row.map(|(role, owners)| {
        Ok(LockedRole {
            role: member_role(&role)?,
            owners,
        })
    })
    .transpose()
}

fn to_i64(seq: Option<Seq>) -> Option<i64> {
    seq.map(|s| i64::try_from(s.0).unwrap_or(i64::MAX))
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[async_trait]
impl Store for PgStore {
    async fn count_created_by(&self, user: &UserId) -> StoreResult<u64> {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM channels WHERE created_by = $1")
            .bind(user.as_str())
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(count.max(0) as u64)
    }

    async fn create_channel(&self, new: NewChannel) -> StoreResult<Created> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let inserted = sqlx::query(&format!(
            "INSERT INTO channels (name, meta, created_by) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO NOTHING RETURNING {CHANNEL_COLUMNS}"
        ))
        .bind(new.name.as_str())
        .bind(new.meta.as_ref().map(Payload::as_str))
        .bind(new.created_by.as_ref().map(UserId::as_str))
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        let Some(row) = inserted else {
            let row = sqlx::query(&format!(
                "SELECT {CHANNEL_COLUMNS} FROM channels WHERE name = $1"
            ))
            .bind(new.name.as_str())
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
            tx.commit().await.map_err(map_err)?;
            return Ok(Created::Existing(channel_record(&row)?));
        };
        // The creator last, so that its `owner` wins over a `member` entry for itself.
        let (users, roles): (Vec<&str>, Vec<&str>) = new
            .members
            .iter()
            .filter(|u| new.created_by.as_ref() != Some(*u))
            .map(|u| (u.as_str(), MemberRole::Member.as_str()))
            .chain(
                new.created_by
                    .iter()
                    .map(|u| (u.as_str(), MemberRole::Owner.as_str())),
            )
            .unzip();
        sqlx::query(
            "INSERT INTO members (channel, user_id, role)
             SELECT $1, u, r FROM UNNEST($2::text[], $3::text[]) AS t(u, r)
             ON CONFLICT DO NOTHING",
        )
        .bind(new.name.as_str())
        .bind(&users)
        .bind(&roles)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(Created::New(channel_record(&row)?))
    }

    async fn get_channel(&self, name: &ChannelName) -> StoreResult<Option<ChannelRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {CHANNEL_COLUMNS} FROM channels WHERE name = $1"
        ))
        .bind(name.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(channel_record).transpose()
    }

    async fn query_channels(&self, names: &[ChannelName]) -> StoreResult<Vec<ChannelRecord>> {
        let wanted: Vec<&str> = names.iter().map(ChannelName::as_str).collect();
        let rows = sqlx::query(&format!(
            "SELECT {CHANNEL_COLUMNS} FROM channels WHERE name = ANY($1)"
        ))
        .bind(&wanted)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            let record = channel_record(row)?;
            found.insert(record.name.clone(), record);
        }
        // In request order, each once.
        Ok(names.iter().filter_map(|n| found.remove(n)).collect())
    }

    async fn channels_of_member(
        &self,
        user: &UserId,
        limit_n: usize,
        offset: usize,
    ) -> StoreResult<Vec<ChannelRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {CHANNEL_COLUMNS} FROM channels
             WHERE name IN (SELECT channel FROM members WHERE user_id = $1)
             ORDER BY name LIMIT $2 OFFSET $3"
        ))
        .bind(user.as_str())
        .bind(limit(limit_n))
        .bind(limit(offset))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(channel_record).collect()
    }

    async fn add_member(
        &self,
        channel: &ChannelName,
        user: &UserId,
        role: MemberRole,
    ) -> StoreResult<bool> {
        let result = sqlx::query(
            "INSERT INTO members (channel, user_id, role) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(channel.as_str())
        .bind(user.as_str())
        .bind(role.as_str())
        .execute(&self.pool)
        .await;
        match result {
            Ok(done) => Ok(done.rows_affected() == 1),
            Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
                Err(StoreError::ChannelNotFound(channel.clone()))
            }
            Err(e) => Err(map_err(e)),
        }
    }

    async fn set_role(
        &self,
        channel: &ChannelName,
        user: &UserId,
        role: MemberRole,
    ) -> StoreResult<RoleChange> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let Some(current) = locked_role(&mut tx, channel, user).await? else {
            return Ok(RoleChange::NotMember);
        };
        if current.role == role {
            return Ok(RoleChange::Unchanged);
        }
        if current.role == MemberRole::Owner && current.owners == 1 {
            return Ok(RoleChange::LastOwner);
        }
        sqlx::query("UPDATE members SET role = $3 WHERE channel = $1 AND user_id = $2")
            .bind(channel.as_str())
            .bind(user.as_str())
            .bind(role.as_str())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(RoleChange::Changed { from: current.role })
    }

    async fn remove_member(
        &self,
        channel: &ChannelName,
        user: &UserId,
        up_to: MemberRole,
    ) -> StoreResult<Removal> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let Some(current) = locked_role(&mut tx, channel, user).await? else {
            return Ok(Removal::NotMember);
        };
        if current.role > up_to {
            return Ok(Removal::Outranked(current.role));
        }
        if current.role == MemberRole::Owner && current.owners == 1 {
            return Ok(Removal::LastOwner);
        }
        // The read marker goes with the membership: a former member's unread counts no
        // longer show the channel.
        for sql in [
            "DELETE FROM members WHERE channel = $1 AND user_id = $2",
            "DELETE FROM read_markers WHERE channel = $1 AND user_id = $2",
        ] {
            sqlx::query(sql)
                .bind(channel.as_str())
                .bind(user.as_str())
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(Removal::Removed(current.role))
    }

    async fn members(&self, channel: &ChannelName) -> StoreResult<Vec<Member>> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT user_id, role FROM members WHERE channel = $1 ORDER BY user_id")
                .bind(channel.as_str())
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
        rows.into_iter()
            .map(|(user, role)| {
                Ok(Member {
                    user: UserId::parse(&user).map_err(|e| corrupt("member", e))?,
                    role: member_role(&role)?,
                })
            })
            .collect()
    }

    async fn member_role(
        &self,
        channel: &ChannelName,
        user: &UserId,
    ) -> StoreResult<Option<MemberRole>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT role FROM members WHERE channel = $1 AND user_id = $2")
                .bind(channel.as_str())
                .bind(user.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err)?;
        row.map(|(role,)| member_role(&role)).transpose()
    }

    fn commit_deadline(&self) -> Option<Duration> {
        // A group commit runs in the committer task, bounded by this deadline.
        Some(self.timeout)
    }

    async fn append(&self, message: NewMessage) -> StoreResult<Appended> {
        let (reply, answer) = oneshot::channel();
        let append = Append {
            message: message.clone(),
            reply,
        };
        self.appends.try_send(append).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                StoreError::Unavailable("too many publishes waiting for the database".into())
            }
            mpsc::error::TrySendError::Closed(_) => {
                StoreError::Unavailable("committer stopped".into())
            }
        })?;
        let committed = tokio::time::timeout(self.timeout, answer)
            .await
            .map_err(|_| {
                StoreError::Unavailable(
                    format!("the database did not commit within {:?}", self.timeout).into(),
                )
            })?
            .map_err(|_| StoreError::Unavailable("committer stopped".into()))??;
        Ok(match committed {
            Committed::New(seq, scrubbed) => {
                let mut stored = message.with_seq(seq);
                if scrubbed {
                    stored.payload = Payload::null();
                }
                Appended::New(stored)
            }
            Committed::Repeat(original) => Appended::Repeat(original),
        })
    }

    async fn history(
        &self,
        channel: &ChannelName,
        query: HistoryQuery,
    ) -> StoreResult<Vec<StoredMessage>> {
        let rows = self
            .page(channel, query, |order| {
                format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages
                     WHERE channel = $1 AND ($2::bigint IS NULL OR seq > $2) AND ($3::bigint IS NULL OR seq < $3)
                     ORDER BY seq {order} LIMIT $4"
                )
            })
            .await?;
        let messages = rows
            .iter()
            .map(|r| stored_message(channel, r))
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(messages)
    }

    async fn repeat_of(
        &self,
        channel: &ChannelName,
        publisher: &str,
        key: &IdempotencyKey,
    ) -> StoreResult<Option<Original>> {
        let row: Option<(i64, MessageId, i64)> = sqlx::query_as(
            "SELECT seq, message_id, (round(extract(epoch FROM ts) * 1000))::bigint
             FROM publish_keys
             WHERE channel = $1 AND publisher = $2 AND key = $3
               AND created_at >= now() - $4 * interval '1 millisecond'",
        )
        .bind(channel.as_str())
        .bind(publisher)
        .bind(key.as_str())
        .bind(self.window.as_millis() as i64)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(row.map(|(seq, id, ts_ms)| Original {
            seq: Seq(seq.max(0) as u64),
            id,
            ts: Timestamp::from_unix_millis(ts_ms.max(0) as u64),
        }))
    }

    async fn history_current(
        &self,
        channel: &ChannelName,
        query: HistoryQuery,
    ) -> StoreResult<Vec<CurrentMessage>> {
        // Walks the primary key in seq order, skipping edits and deletes; each message's
        // latest edit and its delete come from the partial index on ref_seq.
        let rows = self
            .page(channel, query, |order| {
                format!(
                    "SELECT m.seq, m.id, m.from_user, m.event, COALESCE(e.payload, m.payload) AS payload,
                    (round(extract(epoch FROM m.ts) * 1000))::bigint AS ts_ms, m.ref_seq,
                    e.seq AS edited, d.seq AS deleted
             FROM messages m
             LEFT JOIN LATERAL (
                 SELECT x.seq, x.payload FROM messages x
                 WHERE x.channel = m.channel AND x.ref_seq = m.seq AND x.event = 'edit'
                 ORDER BY x.seq DESC LIMIT 1
             ) e ON true
             LEFT JOIN LATERAL (
                 SELECT x.seq FROM messages x
                 WHERE x.channel = m.channel AND x.ref_seq = m.seq AND x.event = 'delete'
                 ORDER BY x.seq LIMIT 1
             ) d ON true
             WHERE m.channel = $1 AND m.ref_seq IS NULL
               AND ($2::bigint IS NULL OR m.seq > $2) AND ($3::bigint IS NULL OR m.seq < $3)
             ORDER BY m.seq {order} LIMIT $4"
                )
            })
            .await?;
        rows.iter()
            .map(|row| {
                let mut message = stored_message(channel, row)?;
                let edited: Option<i64> = row.try_get("edited").map_err(map_err)?;
                let deleted: Option<i64> = row.try_get("deleted").map_err(map_err)?;
                let deleted = deleted.map(|s| Seq(s.max(0) as u64));
                if deleted.is_some() {
                    message.payload = Payload::null();
                }
                Ok(CurrentMessage {
                    message,
                    edited: edited
                        .filter(|_| deleted.is_none())
                        .map(|s| Seq(s.max(0) as u64)),
                    deleted,
                })
            })
            .collect()
    }

    async fn count(&self, channel: &ChannelName) -> StoreResult<u64> {
        let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM messages WHERE channel = $1")
            .bind(channel.as_str())
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(count.max(0) as u64)
    }

    async fn latest_seq(&self, channel: &ChannelName) -> StoreResult<Seq> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT last_seq FROM channel_seqs WHERE channel = $1")
                .bind(channel.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err)?;
        Ok(Seq(row.map_or(0, |(s,)| s.max(0) as u64)))
    }

    async fn mark_read(
        &self,
        user: &UserId,
        channel: &ChannelName,
        seq: Seq,
    ) -> StoreResult<(Seq, bool)> {
        // A row comes back only when the marker was created or moved up; otherwise the
        // marker as it stands is read.
        let moved: Option<(i64,)> = sqlx::query_as(
            "INSERT INTO read_markers AS r (user_id, channel, seq)
             SELECT $1, $2, m FROM (SELECT LEAST($3, COALESCE(
                 (SELECT last_seq FROM channel_seqs WHERE channel = $2), 0)) AS m) clamped
             WHERE m > 0
             ON CONFLICT (user_id, channel) DO UPDATE
                SET seq = EXCLUDED.seq, updated_at = now()
                WHERE r.seq < EXCLUDED.seq
             RETURNING seq",
        )
        .bind(user.as_str())
        .bind(channel.as_str())
        .bind(i64::try_from(seq.0).unwrap_or(i64::MAX))
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        match moved {
            Some((stored,)) => Ok((Seq(stored.max(0) as u64), stored > 0)),
            None => Ok((self.read_marker(user, channel).await?, false)),
        }
    }

    async fn read_marker(&self, user: &UserId, channel: &ChannelName) -> StoreResult<Seq> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT seq FROM read_markers WHERE user_id = $1 AND channel = $2")
                .bind(user.as_str())
                .bind(channel.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err)?;
        Ok(Seq(row.map_or(0, |(s,)| s.max(0) as u64)))
    }

    async fn unread(
        &self,
        user: &UserId,
        after: Option<&ChannelName>,
        limit: usize,
    ) -> StoreResult<Vec<ReadState>> {
        // Both sources are read through indexes led by the user (members_by_user, the
        // markers' primary key), merged, then joined to the channels' counters.
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT c.channel, COALESCE(s.last_seq, 0), COALESCE(r.seq, 0)
             FROM (
                SELECT channel FROM members WHERE user_id = $1 AND channel > $2
                UNION
                SELECT channel FROM read_markers WHERE user_id = $1 AND channel > $2
             ) c
             LEFT JOIN channel_seqs s ON s.channel = c.channel
             LEFT JOIN read_markers r ON r.user_id = $1 AND r.channel = c.channel
             ORDER BY c.channel
             LIMIT $3",
        )
        .bind(user.as_str())
        .bind(after.map_or("", ChannelName::as_str))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.into_iter()
            .map(|(name, last, read)| {
                Ok(ReadState {
                    channel: ChannelName::parse(&name).map_err(|e| corrupt("channel", e))?,
                    last_seq: Seq(last.max(0) as u64),
                    read_seq: Seq(read.max(0) as u64),
                })
            })
            .collect()
    }

    async fn trim(&self, channel: &ChannelName, keep: u64) -> StoreResult<u64> {
        // An edit's content goes with its message: the edits of the dropped messages that
        // stay (newer than the cut) lose their payloads, as a delete would have done.
        let (dropped,): (i64,) = sqlx::query_as(
            "WITH cut AS (
                 SELECT last_seq - $2 AS at FROM channel_seqs WHERE channel = $1
             ),
             dropped AS (
                 DELETE FROM messages WHERE channel = $1 AND seq <= (SELECT at FROM cut)
                 RETURNING seq
             ),
             orphans AS (
                 UPDATE messages m SET payload = 'null'
                 FROM dropped d
                 WHERE m.channel = $1 AND m.ref_seq = d.seq AND m.event = 'edit'
                   AND m.seq > (SELECT at FROM cut) AND m.payload <> 'null'
                 RETURNING 1
             )
             SELECT count(*) FROM dropped",
        )
        .bind(channel.as_str())
        .bind(i64::try_from(keep).unwrap_or(i64::MAX))
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(dropped.max(0) as u64)
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }
}
