//! Channel records and membership: who may create a record, read it and its history, and
//! manage its members and their roles. Every shell (REST, code embedding the hub) calls
//! these methods and only translates their answers; none decides a right itself.
//!
//! The rules (docs/protocol.md, "Membership", has them as a table):
//! - the creator of a record is its `owner`; owners grant `admin` and `owner`;
//! - owners and admins add members; owners remove anyone, admins only plain members;
//! - anyone may leave; nobody removes or demotes the last owner (`conflict`);
//! - services may do everything else;
//! - a refusal never tells a caller who may not see a record whether it exists.

use std::collections::BTreeSet;

use relay_proto::{ChannelName, MemberRole, Payload, UserId};
use relay_store::{
    ChannelRecord, Created, CurrentMessage, HistoryQuery, Member, NewChannel, Removal, RoleChange,
    StoredMessage,
};

use crate::error::HubError;
use crate::hub::{Action, Hub, check_user_limit};
use crate::identity::Identity;
use crate::policy::CreateRule;

/// Most names one request may list: the `names` of a channel query, the initial `members`
/// of a record, the `channels` of a server-side publish.
pub const MAX_LISTED_NAMES: usize = 1000;

/// The `reason` of the `unsubscribed` frame that ends a removed member's subscriptions.
pub(crate) const REMOVED: &str = "removed from the channel's members";

/// Largest page of [`Hub::history`] and [`Hub::channels_of`].
pub const MAX_PAGE: usize = 200;

/// A channel record to create, for [`Hub::create_channel`].
#[derive(Debug, Clone)]
pub struct CreateChannel {
    /// The name.
    pub name: ChannelName,
    /// Opaque JSON (often encrypted), at most the namespace's `max_payload_bytes`.
    pub meta: Option<Payload>,
    /// Initial members besides the creator (who becomes the owner).
    pub members: Vec<UserId>,
}

impl CreateChannel {
    /// A record with no meta and no other members.
    pub fn named(name: ChannelName) -> Self {
        Self {
            name,
            meta: None,
            members: Vec::new(),
        }
    }
}

/// What [`Hub::add_member`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberUpdate {
    /// The user was added.
    Added(Member),
    /// The user was a member; its role changed from `from`.
    Changed {
        /// The member as it is now.
        member: Member,
        /// Its previous role.
        from: MemberRole,
    },
    /// The user already was a member with this role.
    Unchanged(Member),
}

impl MemberUpdate {
    /// The member as it is now.
    pub fn member(&self) -> &Member {
        match self {
            Self::Added(m) | Self::Unchanged(m) | Self::Changed { member: m, .. } => m,
        }
    }

    /// Whether the user was added by this call.
    pub fn is_new(&self) -> bool {
        matches!(self, Self::Added(_))
    }
}

/// Who is asking, as far as a record's management is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Actor {
    Service,
    Member(MemberRole),
    /// Not a member, or there is no record: the two look the same to the caller.
    Stranger,
}

impl Actor {
    fn may(self, least: MemberRole) -> bool {
        match self {
            Self::Service => true,
            Self::Member(role) => role >= least,
            Self::Stranger => false,
        }
    }
}

impl Hub {
    /// Creates a channel record as `who`, or answers the existing one.
    ///
    /// Rights: the name's user limit binds everyone; the namespace's
    /// [`CreateRule`] decides who may create; outside namespaces where membership grants
    /// access, creating needs the subscribe right. An existing record is returned unchanged
    /// (whatever meta the repeat carries: zero-knowledge threads rely on it), except where
    /// membership grants access: there a repeat must name the same members as the record
    /// has (creator included), or it is a `Conflict`. So the first creator owns the name,
    /// and nobody's member list is silently dropped.
    pub async fn create_channel(
        &self,
        who: &Identity,
        request: CreateChannel,
    ) -> Result<Created, HubError> {
        let CreateChannel {
            name,
            meta,
            members,
        } = request;
        let policy = self.policy(&name);
        check_user_limit(who, &name)?;
        if !who.is_service() {
            match policy.create_rule() {
                CreateRule::Service => {
                    return Err(HubError::Forbidden(format!(
                        "only services may create channels in namespace {:?}",
                        name.namespace()
                    )));
                }
                CreateRule::Any if !policy.membership_grants_access() => {
                    self.authorize(who, &name, Action::Subscribe).await?;
                }
                CreateRule::Any => {}
            }
        }
        if members.len() > MAX_LISTED_NAMES {
            return Err(HubError::BadRequest(format!(
                "at most {MAX_LISTED_NAMES} members"
            )));
        }
        if let Some(stranger) = members.iter().find(|m| !name.admits(m)) {
            return Err(HubError::BadRequest(format!(
                "member {stranger} is not listed in the channel name {name}"
            )));
        }
        let limit = policy.max_payload_bytes;
        if let Some(meta) = meta.as_ref().filter(|m| m.len() > limit) {
            return Err(HubError::TooLarge {
                size: meta.len(),
                limit,
                namespace: name.namespace().to_owned(),
            });
        }
        let created_by = (!who.is_service()).then(|| who.user.clone());
        if let Some(creator) = &created_by {
            self.check_creation_quota(creator, &name).await?;
        }
        let mut requested: BTreeSet<UserId> = members.iter().cloned().collect();
        requested.extend(created_by.clone());
        let created = self
            .store()
            .create_channel(NewChannel {
                name: name.clone(),
                meta,
                created_by,
                members,
            })
            .await?;
        if !created.is_new() && policy.membership_grants_access() {
            let existing: BTreeSet<UserId> = self
                .store()
                .members(&name)
                .await?
                .into_iter()
                .map(|m| m.user)
                .collect();
            if existing != requested {
                // The same answer whoever asks: it says the name is taken, nothing more.
                return Err(HubError::Conflict(format!(
                    "channel {name} already exists with other members"
                )));
            }
        }
        Ok(created)
    }

    /// Refuses a user's new record past `max_channels_per_user` (recreating an existing
    /// record is not counted). Checked before the insert: concurrent creates of one user may
    /// pass the quota by their number.
    async fn check_creation_quota(
        &self,
        user: &UserId,
        name: &ChannelName,
    ) -> Result<(), HubError> {
        let Some(quota) = self.config().max_channels_per_user else {
            return Ok(());
        };
        if self.store().get_channel(name).await?.is_some() {
            return Ok(());
        }
        if self.store().count_created_by(user).await? >= quota {
            return Err(HubError::Forbidden(format!(
                "channel quota reached: a user may create at most {quota} channels"
            )));
        }
        Ok(())
    }

    /// One record, for a caller with the subscribe right.
    pub async fn channel(
        &self,
        who: &Identity,
        name: &ChannelName,
    ) -> Result<ChannelRecord, HubError> {
        self.authorize(who, name, Action::Subscribe).await?;
        self.store()
            .get_channel(name)
            .await?
            .ok_or_else(|| HubError::NotFound(format!("channel {name} does not exist")))
    }

    /// The records that exist among `names`, in the order given, without duplicates;
    /// names `who` has no subscribe right on are left out as if they did not exist.
    pub async fn query_channels(
        &self,
        who: &Identity,
        names: Vec<ChannelName>,
    ) -> Result<Vec<ChannelRecord>, HubError> {
        if names.len() > MAX_LISTED_NAMES {
            return Err(HubError::BadRequest(format!(
                "at most {MAX_LISTED_NAMES} names"
            )));
        }
        let mut allowed = Vec::with_capacity(names.len());
        for name in names {
            match self.authorize(who, &name, Action::Subscribe).await {
                Ok(()) => allowed.push(name),
                Err(HubError::Forbidden(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.store().query_channels(&allowed).await?)
    }

    /// The records `who` is a member of, by name; `limit` is capped at [`MAX_PAGE`].
    pub async fn channels_of(
        &self,
        who: &Identity,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<ChannelRecord>, HubError> {
        Ok(self
            .store()
            .channels_of_member(&who.user, limit.min(MAX_PAGE), offset)
            .await?)
    }

    /// The members of a record with their roles, for a caller with the subscribe right.
    pub async fn members(
        &self,
        who: &Identity,
        name: &ChannelName,
    ) -> Result<Vec<Member>, HubError> {
        self.authorize(who, name, Action::Subscribe).await?;
        Ok(self.store().members(name).await?)
    }

    /// Adds `user` to a record with `role` (`member` when `None`), or changes the role of
    /// a member when `role` differs from its current one.
    ///
    /// Rights: owners and admins add plain members; only owners grant or change roles.
    pub async fn add_member(
        &self,
        who: &Identity,
        name: &ChannelName,
        user: &UserId,
        role: Option<MemberRole>,
    ) -> Result<MemberUpdate, HubError> {
        let actor = self.actor(who, name).await?;
        let wanted = role.unwrap_or(MemberRole::Member);
        if !actor.may(MemberRole::Admin) {
            return Err(HubError::forbidden(
                name,
                "only its owners and admins may add members",
            ));
        }
        if wanted > MemberRole::Member && !actor.may(MemberRole::Owner) {
            return Err(HubError::forbidden(name, "only its owners may grant roles"));
        }
        if !name.admits(user) {
            return Err(HubError::BadRequest(format!(
                "user {user} is not listed in the channel name {name}"
            )));
        }
        if self.store().add_member(name, user, wanted).await? {
            return Ok(MemberUpdate::Added(Member {
                user: user.clone(),
                role: wanted,
            }));
        }
        let current = self
            .store()
            .member_role(name, user)
            .await?
            .ok_or_else(|| not_a_member(name, user))?;
        match role {
            Some(role) if role != current => self.change_role(actor, name, user, role).await,
            _ => Ok(MemberUpdate::Unchanged(Member {
                user: user.clone(),
                role: current,
            })),
        }
    }

    /// Changes the role of a member. Only owners (and services) may; the last owner cannot
    /// be demoted (`Conflict`).
    pub async fn set_role(
        &self,
        who: &Identity,
        name: &ChannelName,
        user: &UserId,
        role: MemberRole,
    ) -> Result<MemberUpdate, HubError> {
        let actor = self.actor(who, name).await?;
        self.change_role(actor, name, user, role).await
    }

    async fn change_role(
        &self,
        actor: Actor,
        name: &ChannelName,
        user: &UserId,
        role: MemberRole,
    ) -> Result<MemberUpdate, HubError> {
        if !actor.may(MemberRole::Owner) {
            return Err(HubError::forbidden(
                name,
                "only its owners may change roles",
            ));
        }
        let member = Member {
            user: user.clone(),
            role,
        };
        match self.store().set_role(name, user, role).await? {
            RoleChange::Changed { from } => Ok(MemberUpdate::Changed { member, from }),
            RoleChange::Unchanged => Ok(MemberUpdate::Unchanged(member)),
            RoleChange::NotMember => Err(not_a_member(name, user)),
            RoleChange::LastOwner => Err(last_owner(name, user)),
        }
    }

    /// Removes `user` from a record. Anyone may leave; owners remove anyone, admins plain
    /// members; the last owner stays (`Conflict`). Where membership grants access, the
    /// user's live subscriptions end at once with `unsubscribed` and its presence leaves.
    pub async fn remove_member(
        &self,
        who: &Identity,
        name: &ChannelName,
        user: &UserId,
    ) -> Result<MemberRole, HubError> {
        // The most a caller may remove; the store checks the target's role against it in
        // the same step as the removal, so a concurrent promotion cannot slip through.
        let up_to = if user == &who.user {
            MemberRole::Owner
        } else {
            match self.actor(who, name).await? {
                Actor::Service | Actor::Member(MemberRole::Owner) => MemberRole::Owner,
                Actor::Member(MemberRole::Admin) => MemberRole::Member,
                Actor::Member(MemberRole::Member) | Actor::Stranger => {
                    return Err(HubError::forbidden(
                        name,
                        "only its owners and admins may remove members",
                    ));
                }
            }
        };
        match self.store().remove_member(name, user, up_to).await? {
            Removal::Removed(role) => {
                if self.policy(name).membership_grants_access() {
                    self.evict(name, user, REMOVED);
                    self.forward_evict(name, user);
                }
                Ok(role)
            }
            Removal::Outranked(_) => Err(HubError::forbidden(
                name,
                "admins may only remove plain members",
            )),
            Removal::NotMember => Err(not_a_member(name, user)),
            Removal::LastOwner => Err(last_owner(name, user)),
        }
    }

    /// A page of stored messages, for a caller with the subscribe right. `query.limit`
    /// must be 1..=[`MAX_PAGE`].
    pub async fn history(
        &self,
        who: &Identity,
        name: &ChannelName,
        query: HistoryQuery,
    ) -> Result<Vec<StoredMessage>, HubError> {
        if query.limit == 0 || query.limit > MAX_PAGE {
            return Err(HubError::BadRequest(format!(
                "`limit` must be 1..={MAX_PAGE}"
            )));
        }
        self.authorize(who, name, Action::Subscribe).await?;
        Ok(self.store().history(name, query).await?)
    }

    /// The channel's messages as they read now (REST `?view=current`), for a caller with the
    /// subscribe right: edits and deletes applied and left out; see
    /// [`Store::history_current`](relay_store::Store::history_current).
    pub async fn history_current(
        &self,
        who: &Identity,
        name: &ChannelName,
        query: HistoryQuery,
    ) -> Result<Vec<CurrentMessage>, HubError> {
        if query.limit == 0 || query.limit > MAX_PAGE {
            return Err(HubError::BadRequest(format!(
                "`limit` must be 1..={MAX_PAGE}"
            )));
        }
        self.authorize(who, name, Action::Subscribe).await?;
        Ok(self.store().history_current(name, query).await?)
    }

    /// How many messages a channel stores, for a caller with the subscribe right.
    pub async fn count(&self, who: &Identity, name: &ChannelName) -> Result<u64, HubError> {
        self.authorize(who, name, Action::Subscribe).await?;
        Ok(self.store().count(name).await?)
    }

    /// The users online in a channel, for a caller with the subscribe right, where the
    /// namespace has presence on.
    pub async fn presence(
        &self,
        who: &Identity,
        name: &ChannelName,
    ) -> Result<Vec<UserId>, HubError> {
        self.authorize(who, name, Action::Subscribe).await?;
        if !self.policy(name).presence {
            return Err(HubError::forbidden(name, "presence is disabled"));
        }
        Ok(self.online_in_cluster(name).await)
    }

    /// The caller's standing in a record. The user limit binds services too.
    async fn actor(&self, who: &Identity, name: &ChannelName) -> Result<Actor, HubError> {
        check_user_limit(who, name)?;
        if who.is_service() {
            return Ok(Actor::Service);
        }
        Ok(match self.store().member_role(name, &who.user).await? {
            Some(role) => Actor::Member(role),
            None => Actor::Stranger,
        })
    }
}

fn not_a_member(name: &ChannelName, user: &UserId) -> HubError {
    HubError::NotFound(format!("{user} is not a member of {name}"))
}

fn last_owner(name: &ChannelName, user: &UserId) -> HubError {
    HubError::Conflict(format!(
        "{user} is the last owner of {name}; make another member owner first"
    ))
}
