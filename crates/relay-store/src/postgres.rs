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

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use relay_proto::{ChannelName, MemberRole, MessageId, Payload, Seq, Timestamp, UserId};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Row, Transaction};
use tokio::sync::{mpsc, oneshot};

use crate::{
    ChannelRecord, Created, HistoryQuery, Member, NewChannel, NewMessage, Removal, RoleChange,
    Store, StoreError, StoreResult, StoredMessage,
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
        }
    }
}

/// A [`Store`] on Postgres.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    appends: mpsc::Sender<Append>,
    /// How long a publish waits for its commit.
    timeout: Duration,
}

struct Append {
    message: NewMessage,
    reply: oneshot::Sender<StoreResult<Seq>>,
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
            options.max_batch.max(1),
            options.cluster_node.clone(),
            options.statement_timeout,
        ));
        Self {
            pool,
            appends,
            timeout: options.statement_timeout,
        }
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Commits queued appends in batches until every sender is gone.
async fn committer(
    pool: PgPool,
    mut queue: mpsc::Receiver<Append>,
    max_batch: usize,
    node: Option<String>,
    deadline: Duration,
) {
    let node = node.as_deref();
    let mut batch = Vec::with_capacity(max_batch);
    while queue.recv_many(&mut batch, max_batch).await > 0 {
        // A publish that stopped waiting (its deadline passed while an earlier commit was
        // stuck) is dropped here, before its commit: it failed, so it must not be stored.
        batch.retain(|append: &Append| !append.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let committed = tokio::time::timeout(deadline, commit(&pool, &batch, node))
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(
                    format!("the group commit did not finish within {deadline:?}").into(),
                ))
            });
        match committed {
            Ok(seqs) => {
                for (append, seq) in batch.drain(..).zip(seqs) {
                    let _ = append.reply.send(Ok(seq));
                }
            }
            Err(StoreError::Invalid(_)) if batch.len() > 1 => {
                // One message the database refuses must not fail its neighbours: commit
                // them one by one so that only the bad one gets the error.
                for append in batch.drain(..) {
                    let result = commit(&pool, std::slice::from_ref(&append), node)
                        .await
                        .and_then(|seqs| {
                            seqs.first()
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

/// One transaction: reserve seqs per channel, insert every message, notify the cluster (one
/// notification per transaction, not per message: `NOTIFY` serialises commits behind a
/// global lock), commit.
async fn commit(pool: &PgPool, batch: &[Append], node: Option<&str>) -> StoreResult<Vec<Seq>> {
    // Count per channel, in name order so that concurrent transactions lock counter rows in
    // the same order.
    let mut counts: Vec<(&str, i64)> = Vec::new();
    let mut order: Vec<&str> = batch.iter().map(|a| a.message.channel.as_str()).collect();
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
    // Next seq to hand out per channel: last - count + 1.
    let mut next: std::collections::HashMap<String, i64> =
        std::collections::HashMap::with_capacity(rows.len());
    for row in &rows {
        let channel: String = row.try_get(0).map_err(map_err)?;
        let last: i64 = row.try_get(1).map_err(map_err)?;
        let count = counts
            .iter()
            .find(|(n, _)| *n == channel)
            .map_or(0, |(_, k)| *k);
        next.insert(channel, last - count + 1);
    }
    let mut seqs = Vec::with_capacity(batch.len());
    let (mut channels, mut seq_col, mut ids, mut froms, mut events, mut payloads, mut ts) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for append in batch {
        let m = &append.message;
        let slot = next
            .get_mut(m.channel.as_str())
            .ok_or_else(|| StoreError::Corrupt(format!("no seq reserved for {}", m.channel)))?;
        let seq = *slot;
        *slot += 1;
        seqs.push(Seq(seq as u64));
        channels.push(m.channel.as_str());
        seq_col.push(seq);
        ids.push(m.id);
        froms.push(m.from.as_ref().map(UserId::as_str));
        events.push(m.event.as_deref());
        payloads.push(m.payload.as_str());
        ts.push(m.ts.unix_millis() as i64);
    }
    sqlx::query(
        "INSERT INTO messages (channel, seq, id, from_user, event, payload, ts)
         SELECT c, s, i, f, e, p, to_timestamp(t::float8 / 1000)
         FROM UNNEST($1::text[], $2::bigint[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::bigint[])
              AS u(c, s, i, f, e, p, t)",
    )
    .bind(&channels)
    .bind(&seq_col)
    .bind(&ids)
    .bind(&froms)
    .bind(&events)
    .bind(&payloads)
    .bind(&ts)
    .execute(&mut *tx)
    .await
    .map_err(map_err)?;
    if let Some(node) = node {
        let pointers: Vec<(&str, i64)> = next.iter().map(|(c, n)| (c.as_str(), n - 1)).collect();
        let payloads = crate::cluster::commit_payloads(node, &pointers);
        sqlx::query("SELECT pg_notify($1, p) FROM UNNEST($2::text[]) AS p")
            .bind(crate::cluster::NOTIFY_CHANNEL)
            .bind(&payloads)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
    }
    tx.commit().await.map_err(map_err)?;
    Ok(seqs)
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

const MESSAGE_COLUMNS: &str =
    "seq, id, from_user, event, payload, (round(extract(epoch FROM ts) * 1000))::bigint AS ts_ms";

/// [`MESSAGE_COLUMNS`] of table alias `m`, with the channel.
pub(crate) const CHANNEL_MESSAGE_COLUMNS: &str = "m.channel, m.seq, m.id, m.from_user, m.event, m.payload, \
     (round(extract(epoch FROM m.ts) * 1000))::bigint AS ts_ms";

pub(crate) fn stored_message(channel: &ChannelName, row: &PgRow) -> StoreResult<StoredMessage> {
    let seq: i64 = row.try_get("seq").map_err(map_err)?;
    let id: MessageId = row.try_get("id").map_err(map_err)?;
    let from: Option<String> = row.try_get("from_user").map_err(map_err)?;
    let event: Option<String> = row.try_get("event").map_err(map_err)?;
    let payload: String = row.try_get("payload").map_err(map_err)?;
    let ts_ms: i64 = row.try_get("ts_ms").map_err(map_err)?;
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
        sqlx::query("DELETE FROM members WHERE channel = $1 AND user_id = $2")
            .bind(channel.as_str())
            .bind(user.as_str())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
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

    async fn append(&self, message: NewMessage) -> StoreResult<StoredMessage> {
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
        let seq = tokio::time::timeout(self.timeout, answer)
            .await
            .map_err(|_| {
                StoreError::Unavailable(
                    format!("the database did not commit within {:?}", self.timeout).into(),
                )
            })?
            .map_err(|_| StoreError::Unavailable("committer stopped".into()))??;
        Ok(message.with_seq(seq))
    }

    async fn history(
        &self,
        channel: &ChannelName,
        query: HistoryQuery,
    ) -> StoreResult<Vec<StoredMessage>> {
        let newest_first = query.after.is_none();
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages
             WHERE channel = $1 AND ($2::bigint IS NULL OR seq > $2) AND ($3::bigint IS NULL OR seq < $3)
             ORDER BY seq {} LIMIT $4",
            if newest_first { "DESC" } else { "ASC" }
        );
        let rows = sqlx::query(&sql)
            .bind(channel.as_str())
            .bind(to_i64(query.after))
            .bind(to_i64(query.before))
            .bind(limit(query.limit))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        let mut messages = rows
            .iter()
            .map(|r| stored_message(channel, r))
            .collect::<StoreResult<Vec<_>>>()?;
        if newest_first {
            messages.reverse();
        }
        Ok(messages)
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

    async fn trim(&self, channel: &ChannelName, keep: u64) -> StoreResult<u64> {
        let done = sqlx::query(
            "DELETE FROM messages WHERE channel = $1
             AND seq <= (SELECT last_seq FROM channel_seqs WHERE channel = $1) - $2",
        )
        .bind(channel.as_str())
        .bind(i64::try_from(keep).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(done.rows_affected())
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }
}
