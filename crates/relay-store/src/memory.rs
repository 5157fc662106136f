//! [`MemoryStore`]: the embedded default store. Fast, complete, and gone when the process ends.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use relay_proto::{ChannelName, MemberRole, Seq, Timestamp, UserId};

use crate::{
    ChannelRecord, Created, HistoryQuery, Member, NewChannel, NewMessage, Removal, RoleChange,
    Store, StoreError, StoreResult, StoredMessage,
};

/// An in-memory [`Store`]. Cloning shares the same data.
///
/// Each channel's message log has its own lock, so appends to different channels never
/// contend beyond a brief read of the channel map.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    channels: RwLock<BTreeMap<ChannelName, ChannelRecord>>,
    /// Members and roles per channel; one write lock makes every membership change atomic.
    members: RwLock<HashMap<ChannelName, BTreeMap<UserId, MemberRole>>>,
    logs: RwLock<HashMap<ChannelName, Arc<Mutex<Log>>>>,
}

/// One channel's messages. `messages` holds seqs `last - len + 1 ..= last`, consecutive.
#[derive(Default)]
struct Log {
    last: Seq,
    messages: VecDeque<StoredMessage>,
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
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
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

    async fn append(&self, message: NewMessage) -> StoreResult<StoredMessage> {
        let log = self.log_or_create(&message.channel);
        let mut log = log.lock();
        let seq = log.last.next();
        let stored = message.with_seq(seq);
        log.messages.push_back(stored.clone());
        log.last = seq;
        Ok(stored)
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

    async fn count(&self, channel: &ChannelName) -> StoreResult<u64> {
        Ok(self
            .log(channel)
            .map_or(0, |log| log.lock().messages.len() as u64))
    }

    async fn latest_seq(&self, channel: &ChannelName) -> StoreResult<Seq> {
        Ok(self.log(channel).map_or(Seq::ZERO, |log| log.lock().last))
    }

    async fn trim(&self, channel: &ChannelName, keep: u64) -> StoreResult<u64> {
        let Some(log) = self.log(channel) else {
            return Ok(0);
        };
        let mut log = log.lock();
        let excess = (log.messages.len() as u64).saturating_sub(keep);
        log.messages.drain(..excess as usize);
        Ok(excess)
    }

    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }
}
