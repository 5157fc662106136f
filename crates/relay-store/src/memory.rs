//! [`MemoryStore`]: the embedded default store. Fast, complete, and gone when the process ends.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use relay_proto::{
    ChannelName, IdempotencyKey, MemberRole, Payload, Revision, Seq, Timestamp, UserId,
};

use crate::{
    Appended, ChannelRecord, Created, CurrentMessage, DEFAULT_IDEMPOTENCY_WINDOW, HistoryQuery,
    Member, NewChannel, NewMessage, Original, ReadState, Removal, RoleChange, Store, StoreError,
    StoreResult, StoredMessage,
};

/// An in-memory [`Store`]. Cloning shares the same data.
///
/// Each channel's message log has its own lock, so appends to different channels never
/// contend beyond a brief read of the channel map. [`MemoryStore::new`] keeps every message;
/// [`MemoryStore::with_retention`] bounds the logs per channel and in total bytes.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

/// How much history a [`MemoryStore`] keeps. Older messages are trimmed first: per channel
/// beyond `max_messages_per_channel`, and across all channels, oldest append first, while
/// the messages held pass `max_bytes`. A trimmed message is gone for history and recovery
/// (`recovered: false`), exactly as with a namespace's `max_history`.
///
/// Idempotency keys are kept for `idempotency_window` (default
/// [`DEFAULT_IDEMPOTENCY_WINDOW`]), and at most `max_idempotency_keys` of them: past that
/// the oldest are forgotten early, and a late retry of one of those stores a second copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryRetention {
    /// Messages kept per channel.
    pub max_messages_per_channel: Option<u64>,
    /// Bytes of messages kept in all (payload, event, channel name and a fixed overhead per
    /// message).
    pub max_bytes: Option<usize>,
    /// How long an idempotency key is remembered.
    pub idempotency_window: Option<Duration>,
    /// Idempotency keys remembered in all.
    pub max_idempotency_keys: Option<usize>,
}

#[derive(Default)]
struct Inner {
    channels: RwLock<BTreeMap<ChannelName, ChannelRecord>>,
    /// Members and roles per channel; one write lock makes every membership change atomic.
    members: RwLock<HashMap<ChannelName, BTreeMap<UserId, MemberRole>>>,
    logs: RwLock<HashMap<ChannelName, Arc<Mutex<Log>>>>,
    /// Records created per user.
    created: Mutex<HashMap<UserId, u64>>,
    retention: MemoryRetention,
    /// Bytes of messages held, as counted by [`cost`].
    bytes: AtomicUsize,
    /// Messages held.
    held: AtomicUsize,
    /// Appends in order, oldest first, for trimming by total bytes (only with `max_bytes`);
    /// entries of messages trimmed otherwise are skipped when reached, and compacted away.
    order: Mutex<VecDeque<(ChannelName, Seq)>>,
    /// Idempotency keys in the order they were stored, oldest first, for expiry.
    key_order: Mutex<VecDeque<KeyEntry>>,
    /// Read markers per user, by channel.
    read: RwLock<HashMap<UserId, BTreeMap<ChannelName, Seq>>>,
}

/// An idempotency key's scope within a channel: the publisher and the key.
type KeyScope = (Box<str>, IdempotencyKey);

/// A stored idempotency key, in [`Inner::key_order`].
struct KeyEntry {
    at: Instant,
    channel: ChannelName,
    scope: KeyScope,
}

/// One channel's messages. `messages` holds seqs `last - len + 1 ..= last`, consecutive.
#[derive(Default)]
struct Log {
    last: Seq,
    messages: VecDeque<StoredMessage>,
    /// Idempotency keys of this channel's appends, with when they were stored.
    keys: HashMap<KeyScope, (Original, Instant)>,
    /// The edits and delete of each held message that has any, by its seq.
    revisions: BTreeMap<Seq, Revisions>,
}

/// What changed one message: its edits, oldest first (dropped once it is deleted), and its
/// delete.
#[derive(Default)]
struct Revisions {
    edits: Vec<Seq>,
    deleted: Option<Seq>,
}

/// What a message counts against `max_bytes`: its variable parts plus a fixed overhead for
/// the ids, timestamps and queue slot.
fn cost(message: &StoredMessage) -> usize {
    const OVERHEAD: usize = 160;
    message.payload.len()
        + message.event.as_ref().map_or(0, String::len)
        + message.channel.as_str().len()
        + OVERHEAD
}

impl Log {
    /// Removes messages from the front while `remove` says so; returns their count and the
    /// bytes freed (their cost, and what scrubbing the edits that stay saved).
    fn drain_front(
        &mut self,
        mut remove: impl FnMut(&StoredMessage, usize) -> bool,
    ) -> (usize, isize) {
        let (mut count, mut bytes) = (0, 0);
        while let Some(first) = self.messages.front() {
            if !remove(first, self.messages.len()) {
                break;
            }
            bytes += cost(first);
            count += 1;
            self.messages.pop_front();
        }
        let mut freed = bytes as isize;
        if count > 0 {
            // The revisions of a message go with it, and the content of its edits that stay,
            // as a delete would have done.
            let first = self.first_seq();
            while let Some(entry) = self.revisions.first_entry() {
                if *entry.key() >= first {
                    break;
                }
                let revisions = entry.remove();
                for seq in revisions.edits {
                    if let Some(edit) = self.get_mut(seq) {
                        let before = cost(edit) as isize;
                        edit.payload = Payload::null();
                        freed += before - cost(edit) as isize;
                    }
                }
            }
        }
        (count, freed)
    }

    fn get_mut(&mut self, seq: Seq) -> Option<&mut StoredMessage> {
        let index = seq.0.checked_sub(self.first_seq().0)?;
        self.messages.get_mut(usize::try_from(index).ok()?)
    }

    fn get(&self, seq: Seq) -> Option<&StoredMessage> {
        let index = seq.0.checked_sub(self.first_seq().0)?;
        self.messages.get(usize::try_from(index).ok()?)
    }

    /// Records `stored`, an edit or delete about to be appended, against the message it
    /// names. A delete replaces the payloads of that message and its edits with `null`, an
    /// edit of a deleted message loses its own. Returns how many bytes the log shrank by
    /// (negative if it grew: `null` is longer than a payload like `1`).
    fn revise(&mut self, stored: &mut StoredMessage) -> isize {
        let (Some(revision), Some(target)) = (stored.revision(), stored.reference) else {
            return 0;
        };
        if self.get(target).is_none() {
            // Trimmed (or never there): nothing of it is held to change, and an edit of it
            // loses its content, as trimming does to the edits it finds.
            if revision == Revision::Edit {
                stored.payload = Payload::null();
            }
            return 0;
        }
        let entry = self.revisions.entry(target).or_default();
        match revision {
            Revision::Edit if entry.deleted.is_some() => {
                stored.payload = Payload::null();
                0
            }
            Revision::Edit => {
                entry.edits.push(stored.seq);
                0
            }
            Revision::Delete => {
                entry.deleted.get_or_insert(stored.seq);
                let scrub: Vec<Seq> = std::mem::take(&mut entry.edits);
                let mut freed = 0;
                for seq in scrub.into_iter().chain([target]) {
                    if let Some(message) = self.get_mut(seq) {
                        let before = cost(message) as isize;
                        message.payload = Payload::null();
                        freed += before - cost(message) as isize;
                    }
                }
                freed
            }
        }
    }

    /// `message` as it reads now, if it is not itself an edit or delete.
    fn current(&self, message: &StoredMessage) -> Option<CurrentMessage> {
        if message.revision().is_some() {
            return None;
        }
        let mut current = CurrentMessage {
            message: message.clone(),
            edited: None,
            deleted: None,
        };
        if let Some(revisions) = self.revisions.get(&message.seq) {
            current.deleted = revisions.deleted;
            if let Some(edit) = revisions.edits.last().and_then(|seq| self.get(*seq))
                && revisions.deleted.is_none()
            {
                current.edited = Some(edit.seq);
                current.message.payload = edit.payload.clone();
            }
        }
        Some(current)
    }
}

impl Log {
    fn first_seq(&self) -> Seq {
        Seq(self.last.0 + 1 - self.messages.len() as u64)
    }

    /// Index range within `messages` of the seqs strictly between `after` and `before`.
    fn window(&self, after: Option<Seq>, before: Option<Seq>) -> (usize, usize) {
        let first = self.first_seq().0;
        let len = self.messages.len() as u64;
        let lo = after.map_or(0, |a| a.0.saturating_add(1).saturating_sub(first).min(len));
        let hi = before.map_or(len, |b| b.0.saturating_sub(first).min(len));
        (lo as usize, hi.max(lo) as usize)
    }
}

fn owners(roles: &BTreeMap<UserId, MemberRole>) -> usize {
    roles.values().filter(|r| **r == MemberRole::Owner).count()
}

impl MemoryStore {
    /// An empty store that keeps every message (until a namespace's `max_history` trims).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store that keeps at most what `retention` allows.
    pub fn with_retention(retention: MemoryRetention) -> Self {
        Self {
            inner: Arc::new(Inner {
                retention,
                ..Inner::default()
            }),
        }
    }

    /// Bytes of messages held, as counted against [`MemoryRetention::max_bytes`].
    pub fn held_bytes(&self) -> usize {
        self.inner.bytes.load(Ordering::Relaxed)
    }

    fn forget(&self, (count, bytes): (usize, isize)) {
        self.inner.held.fetch_sub(count, Ordering::Relaxed);
        self.shrink(bytes);
    }

    /// Accounts for the messages held getting `bytes` smaller (larger, if negative).
    fn shrink(&self, bytes: isize) {
        if bytes >= 0 {
            self.inner
                .bytes
                .fetch_sub(bytes as usize, Ordering::Relaxed);
        } else {
            self.inner
                .bytes
                .fetch_add(bytes.unsigned_abs(), Ordering::Relaxed);
        }
    }

    /// Trims the oldest appends, across channels, until the held bytes fit `max_bytes`.
    fn enforce_max_bytes(&self, max_bytes: usize) {
        while self.inner.bytes.load(Ordering::Relaxed) > max_bytes {
            let Some((channel, seq)) = self.inner.order.lock().pop_front() else {
                break;
            };
            if let Some(log) = self.log(&channel) {
                let removed = log.lock().drain_front(|m, _| m.seq <= seq);
                self.forget(removed);
            }
        }
        // Entries of messages trimmed another way (per channel, `trim`) are dropped once
        // they outnumber the messages held, so the order list stays proportional.
        let mut order = self.inner.order.lock();
        let held = self.inner.held.load(Ordering::Relaxed);
        if order.len() > 2 * held + 1024 {
            let logs = self.inner.logs.read();
            order.retain(|(channel, seq)| {
                logs.get(channel)
                    .is_some_and(|log| log.lock().first_seq() <= *seq)
            });
        }
    }

    fn idempotency_window(&self) -> Duration {
        self.inner
            .retention
            .idempotency_window
            .unwrap_or(DEFAULT_IDEMPOTENCY_WINDOW)
    }

    /// Forgets idempotency keys past the window, and the oldest beyond
    /// `max_idempotency_keys`. Never called with a log locked.
    fn expire_keys(&self, now: Instant) {
        let window = self.idempotency_window();
        let max = self
            .inner
            .retention
            .max_idempotency_keys
            .unwrap_or(usize::MAX);
        loop {
            let entry = {
                let mut order = self.inner.key_order.lock();
                match order.front() {
                    Some(e) if order.len() > max || now.duration_since(e.at) >= window => {
                        order.pop_front()
                    }
                    _ => None,
                }
            };
            let Some(entry) = entry else { break };
            if let Some(log) = self.log(&entry.channel) {
                let mut log = log.lock();
                // A key stored again after it expired has a newer entry of its own.
                if log
                    .keys
                    .get(&entry.scope)
                    .is_some_and(|(_, at)| *at == entry.at)
                {
                    log.keys.remove(&entry.scope);
                }
            }
        }
    }

    /// Idempotency keys held (for tests of the bound).
    #[cfg(test)]
    fn held_keys(&self) -> usize {
        self.inner.key_order.lock().len()
    }

    fn log(&self, channel: &ChannelName) -> Option<Arc<Mutex<Log>>> {
        self.inner.logs.read().get(channel).cloned()
    }

    fn log_or_create(&self, channel: &ChannelName) -> Arc<Mutex<Log>> {
        if let Some(log) = self.log(channel) {
            return log;
        }
        self.inner
            .logs
            .write()
            .entry(channel.clone())
            .or_default()
            .clone()
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn create_channel(&self, new: NewChannel) -> StoreResult<Created> {
        let mut channels = self.inner.channels.write();
        if let Some(existing) = channels.get(&new.name) {
            return Ok(Created::Existing(existing.clone()));
        }
        let record = ChannelRecord {
            name: new.name.clone(),
            meta: new.meta,
            created_by: new.created_by.clone(),
            created_at: Timestamp::now(),
        };
        channels.insert(new.name.clone(), record.clone());
        if let Some(creator) = &new.created_by {
            *self
                .inner
                .created
                .lock()
                .entry(creator.clone())
                .or_default() += 1;
        }
        let mut members = self.inner.members.write();
        let roles = members.entry(new.name).or_default();
        for user in new.members {
            roles.insert(user, MemberRole::Member);
        }
        if let Some(creator) = new.created_by {
            roles.insert(creator, MemberRole::Owner);
        }
        Ok(Created::New(record))
    }

    async fn count_created_by(&self, user: &UserId) -> StoreResult<u64> {
        Ok(self.inner.created.lock().get(user).copied().unwrap_or(0))
    }

    async fn get_channel(&self, name: &ChannelName) -> StoreResult<Option<ChannelRecord>> {
        Ok(self.inner.channels.read().get(name).cloned())
    }

    async fn query_channels(&self, names: &[ChannelName]) -> StoreResult<Vec<ChannelRecord>> {
        let channels = self.inner.channels.read();
        let mut seen = BTreeSet::new();
        Ok(names
            .iter()
            .filter(|n| seen.insert(*n))
            .filter_map(|n| channels.get(n).cloned())
            .collect())
    }

    async fn channels_of_member(
        &self,
        user: &UserId,
        limit: usize,
        offset: usize,
    ) -> StoreResult<Vec<ChannelRecord>> {
        let mut names: Vec<ChannelName> = self
            .inner
            .members
            .read()
            .iter()
            .filter(|(_, roles)| roles.contains_key(user))
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        let channels = self.inner.channels.read();
        Ok(names
            .iter()
            .skip(offset)
            .take(limit)
            .filter_map(|n| channels.get(n).cloned())
            .collect())
    }

    async fn add_member(
        &self,
        channel: &ChannelName,
        user: &UserId,
        role: MemberRole,
    ) -> StoreResult<bool> {
        if !self.inner.channels.read().contains_key(channel) {
            return Err(StoreError::ChannelNotFound(channel.clone()));
        }
        let mut members = self.inner.members.write();
        let roles = members.entry(channel.clone()).or_default();
        if roles.contains_key(user) {
            return Ok(false);
        }
        roles.insert(user.clone(), role);
        Ok(true)
    }

    async fn set_role(
        &self,
        channel: &ChannelName,
        user: &UserId,
        role: MemberRole,
    ) -> StoreResult<RoleChange> {
        let mut members = self.inner.members.write();
        let Some(roles) = members.get_mut(channel) else {
            return Ok(RoleChange::NotMember);
        };
        let Some(&from) = roles.get(user) else {
            return Ok(RoleChange::NotMember);
        };
        if from == role {
            return Ok(RoleChange::Unchanged);
        }
        if from == MemberRole::Owner && owners(roles) == 1 {
            return Ok(RoleChange::LastOwner);
        }
        roles.insert(user.clone(), role);
        Ok(RoleChange::Changed { from })
    }

    async fn remove_member(
        &self,
        channel: &ChannelName,
        user: &UserId,
        up_to: MemberRole,
    ) -> StoreResult<Removal> {
        let mut members = self.inner.members.write();
        let Some(roles) = members.get_mut(channel) else {
            return Ok(Removal::NotMember);
        };
        let Some(&role) = roles.get(user) else {
            return Ok(Removal::NotMember);
        };
        if role > up_to {
            return Ok(Removal::Outranked(role));
        }
        if role == MemberRole::Owner && owners(roles) == 1 {
            return Ok(Removal::LastOwner);
        }
        roles.remove(user);
        // The read marker goes with the membership.
        if let Some(markers) = self.inner.read.write().get_mut(user) {
            markers.remove(channel);
        }
        Ok(Removal::Removed(role))
    }

    async fn members(&self, channel: &ChannelName) -> StoreResult<Vec<Member>> {
        let members = self.inner.members.read();
        Ok(members
            .get(channel)
            .map(|roles| {
                roles
                    .iter()
                    .map(|(user, role)| Member {
                        user: user.clone(),
                        role: *role,
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn member_role(
        &self,
        channel: &ChannelName,
        user: &UserId,
    ) -> StoreResult<Option<MemberRole>> {
        Ok(self
            .inner
            .members
            .read()
            .get(channel)
            .and_then(|roles| roles.get(user).copied()))
    }

    async fn append(&self, message: NewMessage) -> StoreResult<Appended> {
        let retention = self.inner.retention;
        let log = self.log_or_create(&message.channel);
        let now = Instant::now();
        let scope = message
            .idempotency_key
            .clone()
            .map(|key| (Box::<str>::from(message.publisher()), key));
        let stored = {
            let mut log = log.lock();
            if let Some(scope) = &scope
                && let Some((original, at)) = log.keys.get(scope)
                && now.duration_since(*at) < self.idempotency_window()
            {
                return Ok(Appended::Repeat(*original));
            }
            let seq = log.last.next();
            let mut stored = message.with_seq(seq);
            self.shrink(log.revise(&mut stored));
            if let Some(scope) = &scope {
                log.keys.insert(scope.clone(), (stored.original(), now));
                // Pushed under the log's lock, so the order list is in storing order per key.
                self.inner.key_order.lock().push_back(KeyEntry {
                    at: now,
                    channel: stored.channel.clone(),
                    scope: scope.clone(),
                });
            }
            self.inner.held.fetch_add(1, Ordering::Relaxed);
            self.inner.bytes.fetch_add(cost(&stored), Ordering::Relaxed);
            log.messages.push_back(stored.clone());
            log.last = seq;
            if let Some(keep) = retention.max_messages_per_channel {
                let removed = log.drain_front(|_, len| len as u64 > keep);
                self.forget(removed);
            }
            stored
        };
        if let Some(max_bytes) = retention.max_bytes {
            self.inner
                .order
                .lock()
                .push_back((stored.channel.clone(), stored.seq));
            self.enforce_max_bytes(max_bytes);
        }
        if scope.is_some() {
            self.expire_keys(now);
        }
        Ok(Appended::New(stored))
    }

    async fn history(
        &self,
        channel: &ChannelName,
        query: HistoryQuery,
    ) -> StoreResult<Vec<StoredMessage>> {
        let Some(log) = self.log(channel) else {
            return Ok(Vec::new());
        };
        let log = log.lock();
        let (lo, hi) = log.window(query.after, query.before);
        let (lo, hi) = match query.after {
            Some(_) => (lo, hi.min(lo.saturating_add(query.limit))),
            None => (hi.saturating_sub(query.limit).max(lo), hi),
        };
        Ok(log.messages.range(lo..hi).cloned().collect())
    }

    async fn repeat_of(
        &self,
        channel: &ChannelName,
        publisher: &str,
        key: &IdempotencyKey,
    ) -> StoreResult<Option<Original>> {
        let Some(log) = self.log(channel) else {
            return Ok(None);
        };
        let scope: KeyScope = (publisher.into(), key.clone());
        let log = log.lock();
        Ok(log
            .keys
            .get(&scope)
            .filter(|(_, at)| at.elapsed() < self.idempotency_window())
            .map(|(original, _)| *original))
    }

    async fn history_current(
        &self,
        channel: &ChannelName,
        query: HistoryQuery,
    ) -> StoreResult<Vec<CurrentMessage>> {
        let Some(log) = self.log(channel) else {
            return Ok(Vec::new());
        };
        let log = log.lock();
        let (lo, hi) = log.window(query.after, query.before);
        let window = log.messages.range(lo..hi);
        let mut page: Vec<CurrentMessage> = match query.after {
            Some(_) => window
                .filter_map(|m| log.current(m))
                .take(query.limit)
                .collect(),
            None => window
                .rev()
                .filter_map(|m| log.current(m))
                .take(query.limit)
                .collect(),
        };
        if query.after.is_none() {
            page.reverse();
        }
        Ok(page)
    }

    async fn count(&self, channel: &ChannelName) -> StoreResult<u64> {
        Ok(self
            .log(channel)
            .map_or(0, |log| log.lock().messages.len() as u64))
    }

    async fn latest_seq(&self, channel: &ChannelName) -> StoreResult<Seq> {
        Ok(self.log(channel).map_or(Seq::ZERO, |log| log.lock().last))
    }

    async fn mark_read(
        &self,
        user: &UserId,
        channel: &ChannelName,
        seq: Seq,
    ) -> StoreResult<(Seq, bool)> {
        let latest = self.log(channel).map_or(Seq::ZERO, |log| log.lock().last);
        if seq.min(latest) == Seq::ZERO {
            // Nothing to read: no marker row for it.
            return self
                .read_marker(user, channel)
                .await
                .map(|seq| (seq, false));
        }
        let mut read = self.inner.read.write();
        let marker = read
            .entry(user.clone())
            .or_default()
            .entry(channel.clone())
            .or_default();
        let moved = seq.min(latest) > *marker;
        *marker = (*marker).max(seq.min(latest));
        Ok((*marker, moved))
    }

    async fn read_marker(&self, user: &UserId, channel: &ChannelName) -> StoreResult<Seq> {
        Ok(self
            .inner
            .read
            .read()
            .get(user)
            .and_then(|markers| markers.get(channel).copied())
            .unwrap_or_default())
    }

    async fn unread(
        &self,
        user: &UserId,
        after: Option<&ChannelName>,
        limit: usize,
    ) -> StoreResult<Vec<ReadState>> {
        let mut names: BTreeMap<ChannelName, Seq> = self
            .inner
            .read
            .read()
            .get(user)
            .cloned()
            .unwrap_or_default();
        for (name, roles) in self.inner.members.read().iter() {
            if roles.contains_key(user) {
                names.entry(name.clone()).or_default();
            }
        }
        Ok(names
            .into_iter()
            .filter(|(name, _)| after.is_none_or(|after| name > after))
            .take(limit)
            .map(|(channel, read_seq)| ReadState {
                last_seq: self.log(&channel).map_or(Seq::ZERO, |log| log.lock().last),
                channel,
                read_seq,
            })
            .collect())
    }

    async fn trim(&self, channel: &ChannelName, keep: u64) -> StoreResult<u64> {
        let Some(log) = self.log(channel) else {
            return Ok(0);
        };
        let removed = log.lock().drain_front(|_, len| len as u64 > keep);
        self.forget(removed);
        Ok(removed.0 as u64)
    }

    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use relay_proto::Payload;

    use super::*;

    fn channel(name: &str) -> ChannelName {
        ChannelName::parse(name).unwrap()
    }

    async fn append(store: &MemoryStore, name: &str, bytes: usize) -> Seq {
        let payload = Payload::from_value(&"x".repeat(bytes)).unwrap();
        store
            .append(NewMessage::new(channel(name), payload))
            .await
            .unwrap()
            .seq()
    }

    async fn seqs(store: &MemoryStore, name: &str) -> Vec<u64> {
        store
            .history(&channel(name), HistoryQuery::latest(1000))
            .await
            .unwrap()
            .iter()
            .map(|m| m.seq.0)
            .collect()
    }

    #[tokio::test]
    async fn retention_keeps_a_number_per_channel_and_seqs_stay_gap_free() {
        let store = MemoryStore::with_retention(MemoryRetention {
            max_messages_per_channel: Some(3),
            ..MemoryRetention::default()
        });
        for _ in 0..5 {
            append(&store, "a", 10).await;
        }
        assert_eq!(seqs(&store, "a").await, vec![3, 4, 5]);
        assert_eq!(store.latest_seq(&channel("a")).await.unwrap(), Seq(5));
        assert_eq!(append(&store, "a", 10).await, Seq(6));
        assert_eq!(store.inner.held.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn retention_by_bytes_trims_the_oldest_appends_across_channels() {
        let store = MemoryStore::with_retention(MemoryRetention {
            max_messages_per_channel: None,
            max_bytes: Some(4 * (1000 + 200)),
            ..MemoryRetention::default()
        });
        append(&store, "a", 1000).await; // oldest
        append(&store, "b", 1000).await;
        append(&store, "a", 1000).await;
        append(&store, "b", 1000).await;
        assert_eq!(seqs(&store, "a").await, vec![1, 2]);
        append(&store, "c", 1000).await;
        // The oldest append (a:1) went first, whatever channel the new one is in.
        assert_eq!(seqs(&store, "a").await, vec![2]);
        assert_eq!(seqs(&store, "b").await, vec![1, 2]);
        assert!(store.held_bytes() <= 4 * 1200);
        for _ in 0..20 {
            append(&store, "d", 1000).await;
        }
        assert!(seqs(&store, "a").await.is_empty() && seqs(&store, "b").await.is_empty());
        assert_eq!(seqs(&store, "d").await, vec![17, 18, 19, 20]);
        // Trimming by policy gives bytes back too.
        store.trim(&channel("d"), 1).await.unwrap();
        assert!(store.held_bytes() < 1300, "{}", store.held_bytes());
    }

    #[tokio::test]
    async fn the_order_list_stays_proportional_to_what_is_held() {
        let store = MemoryStore::with_retention(MemoryRetention {
            max_messages_per_channel: Some(1),
            max_bytes: Some(1 << 30),
            ..MemoryRetention::default()
        });
        for _ in 0..10_000 {
            append(&store, "a", 1).await;
        }
        // One message held: at most twice that plus the compaction slack.
        assert!(store.inner.order.lock().len() <= 2 + 1024 + 1);
    }

    fn keyed(name: &str, key: &str, from: Option<&str>) -> NewMessage {
        NewMessage {
            from: from.map(|u| UserId::parse(u).unwrap()),
            ..NewMessage::new(channel(name), Payload::from_value(&1).unwrap())
                .keyed(IdempotencyKey::parse(key).unwrap())
        }
    }

    #[tokio::test]
    async fn a_key_expires_after_the_window() {
        let store = MemoryStore::with_retention(MemoryRetention {
            idempotency_window: Some(Duration::ZERO),
            ..MemoryRetention::default()
        });
        let first = store.append(keyed("a", "k", None)).await.unwrap();
        let again = store.append(keyed("a", "k", None)).await.unwrap();
        assert!(!again.is_repeat());
        assert_eq!((first.seq(), again.seq()), (Seq(1), Seq(2)));
        // Expired keys are forgotten, not just ignored.
        assert_eq!(store.held_keys(), 0);
        assert!(store.log(&channel("a")).unwrap().lock().keys.is_empty());
    }

    #[tokio::test]
    async fn keys_are_bounded_and_the_oldest_go_first() {
        let store = MemoryStore::with_retention(MemoryRetention {
            max_idempotency_keys: Some(2),
            ..MemoryRetention::default()
        });
        for key in ["k1", "k2", "k3"] {
            store.append(keyed("a", key, None)).await.unwrap();
        }
        assert_eq!(store.held_keys(), 2);
        // k1 was forgotten early: its retry stores again; k3 is still known.
        assert!(
            !store
                .append(keyed("a", "k1", None))
                .await
                .unwrap()
                .is_repeat()
        );
        assert!(
            store
                .append(keyed("a", "k3", None))
                .await
                .unwrap()
                .is_repeat()
        );
        assert_eq!(store.count(&channel("a")).await.unwrap(), 4);
    }
}
