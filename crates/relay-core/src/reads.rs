//! Read markers: per user and channel, the highest seq the user has read. Stored (monotonic,
//! never past the channel's latest seq), answered with the stored value, and sent at once to
//! the user's other connections subscribed to the channel, on this node and (through the
//! backplane, like a signal to the user) on the others: a user's devices stay in step.

use relay_proto::{ChannelName, Seq, ServerFrame};
use relay_store::ReadState;

use crate::error::HubError;
use crate::hub::{Action, Hub};
use crate::identity::Identity;
use crate::subscriber::ConnId;

/// Most channels one [`Hub::unread`] call returns.
pub const MAX_UNREAD_PAGE: usize = 10_000;

impl Hub {
    /// Marks `channel` read up to `seq` for `who` (who must have the right to subscribe);
    /// returns the stored marker, which may be higher than `seq` (markers never move back)
    /// or lower (never past the channel's latest seq). When the marker moved, the user's
    /// subscribed connections learn it with a `read` frame.
    pub async fn mark_read(
        &self,
        who: &Identity,
        channel: &ChannelName,
        seq: Seq,
    ) -> Result<Seq, HubError> {
        self.mark_read_from(who, channel, seq, None).await
    }

    pub(crate) async fn mark_read_from(
        &self,
        who: &Identity,
        channel: &ChannelName,
        seq: Seq,
        origin: Option<ConnId>,
    ) -> Result<Seq, HubError> {
        self.authorize(who, channel, Action::Subscribe).await?;
        let (stored, moved) = self.inner.store.mark_read(&who.user, channel, seq).await?;
        if !moved {
            return Ok(stored);
        }
        let frame = ServerFrame::Read {
            id: None,
            channel: channel.clone(),
            seq: stored,
        }
        .encode();
        if let Some(state) = self.inner.channels.get(channel) {
            state.broadcast(&frame, |id, sub| Some(id) != origin && sub.user == who.user);
        }
        if let Err(e) = self.forward_signal(channel, &who.user, &frame) {
            tracing::warn!(%channel, error = %e, "read marker not sent to the other nodes");
        }
        Ok(stored)
    }

    /// `who`'s read marker in `channel` (who must have the right to subscribe).
    pub async fn read_marker(
        &self,
        who: &Identity,
        channel: &ChannelName,
    ) -> Result<Seq, HubError> {
        self.authorize(who, channel, Action::Subscribe).await?;
        Ok(self.inner.store.read_marker(&who.user, channel).await?)
    }

    /// The read state of `who`'s channels (its memberships and its markers), by name after
    /// `after`, at most `limit` (capped at [`MAX_UNREAD_PAGE`]).
    pub async fn unread(
        &self,
        who: &Identity,
        after: Option<&ChannelName>,
        limit: usize,
    ) -> Result<Vec<ReadState>, HubError> {
        let limit = limit.clamp(1, MAX_UNREAD_PAGE);
        let mut states = self.inner.store.unread(&who.user, after, limit).await?;
        // A marker outlives a claim the token no longer carries: such channels are left out
        // (their counts would tell what the user may no longer read). Members-only channels
        // come from the member list itself, and removal deletes the marker.
        states.retain(|state| {
            crate::hub::check_user_limit(who, &state.channel).is_ok()
                && (who.is_service()
                    || self.policy(&state.channel).subscribe != crate::SubscribeRule::Claim
                    || who.claims(&state.channel))
        });
        Ok(states)
    }
}
