//! The records a store keeps and the queries it answers.

use relay_proto::{
    ChannelName, IdempotencyKey, MemberRole, MessageId, Payload, Revision, Seq, ServerFrame,
    Timestamp, UserId,
};

/// A channel record: what `POST /api/channels` creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRecord {
    /// The name.
    pub name: ChannelName,
    /// Opaque JSON (often encrypted) set at creation.
    pub meta: Option<Payload>,
    /// Who created it (absent for service-created channels).
    pub created_by: Option<UserId>,
    /// When it was created.
    pub created_at: Timestamp,
}

/// A channel to create.
#[derive(Debug, Clone)]
pub struct NewChannel {
    /// The name.
    pub name: ChannelName,
    /// Opaque JSON.
    pub meta: Option<Payload>,
    /// The creator; becomes its owner.
    pub created_by: Option<UserId>,
    /// Initial members besides the creator, with the role `member`.
    pub members: Vec<UserId>,
}

impl NewChannel {
    /// A channel with no meta, no creator and no members.
    pub fn named(name: ChannelName) -> Self {
        Self {
            name,
            meta: None,
            created_by: None,
            members: Vec::new(),
        }
    }
}

/// Outcome of an idempotent create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The channel was created now.
    New(ChannelRecord),
    /// The channel existed; its record is unchanged.
    Existing(ChannelRecord),
}

impl Created {
    /// The record, new or existing.
    pub fn record(&self) -> &ChannelRecord {
        match self {
            Self::New(r) | Self::Existing(r) => r,
        }
    }

    /// Whether the channel was created by this call.
    pub fn is_new(&self) -> bool {
        matches!(self, Self::New(_))
    }
}

/// A member of a channel record and its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The user.
    pub user: UserId,
    /// Its role.
    pub role: MemberRole,
}

/// Outcome of [`Store::set_role`](crate::Store::set_role).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleChange {
    /// The role was changed; it was `from` before.
    Changed {
        /// The previous role.
        from: MemberRole,
    },
    /// The user already had this role.
    Unchanged,
    /// The user is not a member (or the channel has no record).
    NotMember,
    /// Refused: the user is the record's last owner and the new role is not `owner`.
    LastOwner,
}

/// Outcome of [`Store::remove_member`](crate::Store::remove_member).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// The member was removed; it had this role.
    Removed(MemberRole),
    /// The user is not a member (or the channel has no record).
    NotMember,
    /// Refused: the user is the record's last owner.
    LastOwner,
    /// Refused: the member has this role, above the removal's `up_to`.
    Outranked(MemberRole),
}

/// A message to append; the store assigns its seq.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The channel.
    pub channel: ChannelName,
    /// Its id (UUID v7).
    pub id: MessageId,
    /// The publisher, absent for server publishes.
    pub from: Option<UserId>,
    /// Event name.
    pub event: Option<String>,
    /// Opaque JSON.
    pub payload: Payload,
    /// Publish time.
    pub ts: Timestamp,
    /// Makes the append safe to retry: within the store's idempotency window, a second
    /// append with the same key on the same channel by the same publisher (`from`) stores
    /// nothing and answers [`Appended::Repeat`] with what the first one got.
    pub idempotency_key: Option<IdempotencyKey>,
    /// For an `edit` or `delete` event: the seq of the message it changes. A store appends
    /// it like any message; appending a `delete` also replaces the stored payload of that
    /// message and of its edits with `null`, in the same step, and an edit of a message
    /// already deleted is stored with a `null` payload.
    pub reference: Option<Seq>,
}

impl NewMessage {
    /// A message with a fresh id and the current time, from nobody, with no event.
    pub fn new(channel: ChannelName, payload: Payload) -> Self {
        Self {
            channel,
            id: MessageId::now_v7(),
            from: None,
            event: None,
            payload,
            ts: Timestamp::now(),
            idempotency_key: None,
            reference: None,
        }
    }

    /// Sets the idempotency key.
    pub fn keyed(mut self, key: IdempotencyKey) -> Self {
        self.idempotency_key = Some(key);
        self
    }

    /// Who the idempotency key is scoped to: the publisher's user id, or `""` for the server.
    pub fn publisher(&self) -> &str {
        self.from.as_ref().map_or("", UserId::as_str)
    }

    /// The stored form of this message with its seq.
    pub fn with_seq(self, seq: Seq) -> StoredMessage {
        StoredMessage {
            channel: self.channel,
            seq,
            id: self.id,
            from: self.from,
            event: self.event,
            payload: self.payload,
            ts: self.ts,
            reference: self.reference,
        }
    }

    /// What this message does to the one its `reference` names, if anything.
    pub fn revision(&self) -> Option<Revision> {
        self.reference
            .and(Revision::of_event(self.event.as_deref()))
    }
}

/// Outcome of [`Store::append`](crate::Store::append).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Stored now, with the channel's next seq.
    New(StoredMessage),
    /// A repeat of an earlier append with the same idempotency key: nothing was stored, and
    /// this is what the earlier one got.
    Repeat(Original),
}

/// What an earlier append with the same idempotency key was stored as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Original {
    /// Its seq.
    pub seq: Seq,
    /// Its id.
    pub id: MessageId,
    /// Its publish time.
    pub ts: Timestamp,
}

impl Appended {
    /// The seq the message has, new or earlier.
    pub fn seq(&self) -> Seq {
        match self {
            Self::New(m) => m.seq,
            Self::Repeat(o) => o.seq,
        }
    }

    /// The id the message has, new or earlier.
    pub fn id(&self) -> MessageId {
        match self {
            Self::New(m) => m.id,
            Self::Repeat(o) => o.id,
        }
    }

    /// Whether this was a repeat (nothing stored).
    pub fn is_repeat(&self) -> bool {
        matches!(self, Self::Repeat(_))
    }

    /// The message stored by this append, `None` for a repeat.
    pub fn into_new(self) -> Option<StoredMessage> {
        match self {
            Self::New(m) => Some(m),
            Self::Repeat(_) => None,
        }
    }
}

impl StoredMessage {
    /// What a repeat of this message's append answers.
    pub fn original(&self) -> Original {
        Original {
            seq: self.seq,
            id: self.id,
            ts: self.ts,
        }
    }
}

/// A message as stored, with its seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The channel.
    pub channel: ChannelName,
    /// Its per-channel seq.
    pub seq: Seq,
    /// Its id.
    pub id: MessageId,
    /// The publisher.
    pub from: Option<UserId>,
    /// Event name.
    pub event: Option<String>,
    /// Opaque JSON.
    pub payload: Payload,
    /// Publish time.
    pub ts: Timestamp,
    /// For an `edit` or `delete` event: the seq of the message it changes.
    pub reference: Option<Seq>,
}

impl StoredMessage {
    /// What this message does to the one its `reference` names, if anything.
    pub fn revision(&self) -> Option<Revision> {
        self.reference
            .and(Revision::of_event(self.event.as_deref()))
    }

    /// The `message` frame that delivers this message.
    pub fn to_frame(&self) -> ServerFrame {
        ServerFrame::Message {
            channel: self.channel.clone(),
            id: self.id,
            seq: Some(self.seq),
            from: self.from.clone(),
            event: self.event.clone(),
            payload: self.payload.clone(),
            ts: self.ts,
            reference: self.reference,
        }
    }
}

/// A message as it reads now ([`Store::history_current`](crate::Store::history_current)):
/// its latest edit applied, or deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentMessage {
    /// The message with its seq, id, sender, event and time, and the payload of its latest
    /// edit (`null` once deleted).
    pub message: StoredMessage,
    /// The seq of the edit whose payload it carries, if it was edited.
    pub edited: Option<Seq>,
    /// The seq of the `delete` event, if it was deleted.
    pub deleted: Option<Seq>,
}

/// A user's read state in one channel ([`Store::unread`](crate::Store::unread)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadState {
    /// The channel.
    pub channel: ChannelName,
    /// Its latest seq.
    pub last_seq: Seq,
    /// The user's read marker there.
    pub read_seq: Seq,
}

impl ReadState {
    /// Messages after the read marker (edits and deletes count, being seq'd events too).
    pub fn unread(&self) -> u64 {
        self.last_seq.0.saturating_sub(self.read_seq.0)
    }
}

/// Which messages [`Store::history`](crate::Store::history) returns, always ascending by seq.
///
/// - `after` set: the first `limit` messages with seq > `after` (and < `before`, if set);
/// - `after` unset: the newest `limit` messages (with seq < `before`, if set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only messages with a greater seq.
    pub after: Option<Seq>,
    /// Only messages with a smaller seq.
    pub before: Option<Seq>,
    /// At most this many.
    pub limit: usize,
}

impl HistoryQuery {
    /// The newest `limit` messages.
    pub fn latest(limit: usize) -> Self {
        Self {
            after: None,
            before: None,
            limit,
        }
    }

    /// The first `limit` messages after `seq`.
    pub fn after(seq: Seq, limit: usize) -> Self {
        Self {
            after: Some(seq),
            before: None,
            limit,
        }
    }
}
