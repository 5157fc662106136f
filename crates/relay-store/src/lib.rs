//! Relay storage: the [`Store`] trait and its in-memory implementation, [`MemoryStore`].
//!
//! A store keeps channel records (name, opaque `meta`), memberships and the per-channel message
//! log. Its one hard promise is the sequence: [`Store::append`] gives each message of a channel
//! the next seq, 1, 2, 3, …, atomically, with no gap and no reuse, and a message is durable (as
//! durable as the implementation is) when `append` returns. Seqs of different channels are
//! assigned independently, so unrelated channels never wait for each other.
//!
//! What it is not: it knows nothing of connections, subscriptions or delivery (that is
//! `relay-core`), and nothing of HTTP.
//!
//! Implementations: [`MemoryStore`] (the default) and `PgStore` (feature `postgres`), which
//! commits appends from many publishers in one transaction (group commit).
//!
//! Every implementation must pass the conformance suite in `conformance` (feature
//! `conformance`), which the Postgres store runs unchanged.
//!
//! ```
//! use relay_proto::{ChannelName, Payload, Seq};
//! use relay_store::{MemoryStore, NewMessage, Store, HistoryQuery};
//!
//! # tokio_test_block_on(async {
//! let store = MemoryStore::new();
//! let channel = ChannelName::parse("chat:42").unwrap();
//! let payload = Payload::from_json(r#"{"text":"hi"}"#).unwrap();
//! let stored = store.append(NewMessage::new(channel.clone(), payload)).await.unwrap();
//! assert_eq!(stored.seq(), Seq(1));
//! let page = store.history(&channel, HistoryQuery::latest(50)).await.unwrap();
//! assert_eq!(page.len(), 1);
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     // MemoryStore never awaits anything that parks, so a trivial executor is enough here.
//! #     let waker = std::task::Waker::noop();
//! #     let mut cx = std::task::Context::from_waker(&waker);
//! #     let mut f = std::pin::pin!(f);
//! #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
//! # }
//! ```

#[cfg(feature = "postgres")]
pub mod cluster;
mod error;
mod memory;
mod model;
#[cfg(feature = "postgres")]
mod postgres;

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(all(feature = "conformance", feature = "postgres"))]
pub mod testing;

use async_trait::async_trait;
use relay_proto::{ChannelName, IdempotencyKey, MemberRole, Seq, UserId};

#[cfg(feature = "postgres")]
pub use cluster::{FeedItem, Notice, NoticeBody, PgNotifier, Wanted};
pub use error::StoreError;
pub use memory::{MemoryRetention, MemoryStore};
pub use model::{
    Appended, ChannelRecord, Created, CurrentMessage, HistoryQuery, Member, NewChannel, NewMessage,
    Original, ReadState, Removal, RoleChange, StoredMessage,
};
#[cfg(feature = "postgres")]
pub use postgres::{MIGRATOR, PgStore, PgStoreOptions};

/// How long a store remembers idempotency keys unless configured otherwise: 10 minutes.
pub const DEFAULT_IDEMPOTENCY_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);

/// Result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// Persistence of channels, members and messages.
///
/// Implementations must be cheap to share (`Arc<dyn Store>`) and safe to call from many tasks
/// at once.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates a channel record, or returns the existing one unchanged (idempotent). The
    /// creator, if any, becomes the `owner` of a new channel and the listed members its
    /// `member`s.
    async fn create_channel(&self, new: NewChannel) -> StoreResult<Created>;

    /// One channel record.
    async fn get_channel(&self, name: &ChannelName) -> StoreResult<Option<ChannelRecord>>;

    /// How many channel records `user` created (for the per-user quota).
    async fn count_created_by(&self, user: &UserId) -> StoreResult<u64>;

    /// The records that exist among `names`, in the order of `names`, without duplicates.
    async fn query_channels(&self, names: &[ChannelName]) -> StoreResult<Vec<ChannelRecord>>;

    /// Channels `user` is a member of, ordered by name.
    async fn channels_of_member(
        &self,
        user: &UserId,
        limit: usize,
        offset: usize,
    ) -> StoreResult<Vec<ChannelRecord>>;

    /// Adds a member with `role` to an existing channel; `Ok(false)` (and no change) if the
    /// user already is a member, [`StoreError::ChannelNotFound`] if the channel has no record.
    async fn add_member(
        &self,
        channel: &ChannelName,
        user: &UserId,
        role: MemberRole,
    ) -> StoreResult<bool>;

    /// Changes a member's role. Atomic with respect to other membership changes of the
    /// channel: it never leaves a record that had an owner without one.
    async fn set_role(
        &self,
        channel: &ChannelName,
        user: &UserId,
        role: MemberRole,
    ) -> StoreResult<RoleChange>;

    /// Removes a member whose role is at most `up_to` ([`Removal::Outranked`] otherwise: an
    /// admin removes plain members only). Atomic like [`set_role`](Self::set_role): the role
    /// is checked in the same step, and the last owner is never removed.
    async fn remove_member(
        &self,
        channel: &ChannelName,
        user: &UserId,
        up_to: MemberRole,
    ) -> StoreResult<Removal>;

    /// Members of a channel with their roles, ordered by user id (empty for an unknown
    /// channel).
    async fn members(&self, channel: &ChannelName) -> StoreResult<Vec<Member>>;

    /// The role of `user` in `channel`; `None` if not a member or there is no record.
    async fn member_role(
        &self,
        channel: &ChannelName,
        user: &UserId,
    ) -> StoreResult<Option<MemberRole>>;

    /// Whether `user` is a member of `channel`.
    async fn is_member(&self, channel: &ChannelName, user: &UserId) -> StoreResult<bool> {
        Ok(self.member_role(channel, user).await?.is_some())
    }

    /// Appends a message with the channel's next seq and returns it as stored. A channel
    /// record is not required: the message log of a channel exists on its own.
    ///
    /// With an [idempotency key](NewMessage::idempotency_key) that the same publisher used on
    /// the same channel within the store's idempotency window (default
    /// [`DEFAULT_IDEMPOTENCY_WINDOW`]), nothing is stored and the answer is
    /// [`Appended::Repeat`] with the earlier append's seq, id and time, even if that message
    /// was trimmed since. Keys are kept at least for the window, then forgotten.
    async fn append(&self, message: NewMessage) -> StoreResult<Appended>;

    /// What an append with this idempotency key by `publisher` (a user id, or `""` for the
    /// server; see [`NewMessage::publisher`]) on `channel` would repeat: the earlier append's
    /// seq, id and time if the key is known within the window, as [`append`](Self::append)
    /// would answer it. Stores nothing.
    async fn repeat_of(
        &self,
        channel: &ChannelName,
        publisher: &str,
        key: &IdempotencyKey,
    ) -> StoreResult<Option<Original>>;

    /// Messages of a channel, ascending by seq; see [`HistoryQuery`].
    async fn history(
        &self,
        channel: &ChannelName,
        query: HistoryQuery,
    ) -> StoreResult<Vec<StoredMessage>>;

    /// The channel's messages as they read now: like [`history`](Self::history), but with
    /// the `edit` and `delete` events left out (`limit` counts the other messages only), and
    /// each message carrying the payload of its latest edit, or `null` once deleted.
    async fn history_current(
        &self,
        channel: &ChannelName,
        query: HistoryQuery,
    ) -> StoreResult<Vec<CurrentMessage>>;

    /// Number of stored messages of a channel.
    async fn count(&self, channel: &ChannelName) -> StoreResult<u64>;

    /// The channel's latest seq ([`Seq::ZERO`] if it has none). Trimming never lowers it.
    async fn latest_seq(&self, channel: &ChannelName) -> StoreResult<Seq>;

    /// Drops the oldest messages so that at most `keep` remain; returns how many were dropped.
    /// Seqs are never reused after a trim.
    async fn trim(&self, channel: &ChannelName, keep: u64) -> StoreResult<u64>;

    /// Moves `user`'s read marker in `channel` up to `seq`, never down, and never past the
    /// channel's latest seq; returns the marker as stored after the call, and whether this
    /// call moved it.
    async fn mark_read(
        &self,
        user: &UserId,
        channel: &ChannelName,
        seq: Seq,
    ) -> StoreResult<(Seq, bool)>;

    /// `user`'s read marker in `channel` ([`Seq::ZERO`] if none).
    async fn read_marker(&self, user: &UserId, channel: &ChannelName) -> StoreResult<Seq>;

    /// The read state of `user`'s channels (those whose record lists the user as a member,
    /// and those the user has a read marker in), ordered by name, names after `after` only,
    /// at most `limit`.
    async fn unread(
        &self,
        user: &UserId,
        after: Option<&ChannelName>,
        limit: usize,
    ) -> StoreResult<Vec<ReadState>>;

    /// Checks that the store is reachable (readiness).
    async fn ping(&self) -> StoreResult<()>;

    /// How late a commit can land after its `append` call was abandoned (the caller's future
    /// dropped mid-commit), for stores whose commits run on their own; `None` when dropping
    /// `append` ends it (the memory store). The hub checks the channel again after this long,
    /// so that a commit that lands late still reaches live subscribers.
    fn commit_deadline(&self) -> Option<std::time::Duration> {
        None
    }
}
