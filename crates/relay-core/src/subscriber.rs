//! The per-channel state the hub keeps for local subscribers: who is subscribed, where each
//! subscriber is in the channel's sequence, and who is online.
//!
//! Every subscriber has a cursor, the last seq it was handed. A persistent message is pushed
//! only when it is exactly the next seq; a duplicate is skipped; a message that arrives
//! ahead of a gap is held, and the gap is filled from the store (the store is the truth,
//! deliveries are hints). This makes delivery correct whatever order committed messages
//! arrive in: racing local publishers, another node's notifications, a subscribe that is
//! still reading history.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use relay_proto::{ChannelName, EncodedFrame, Seq, UserId};

use crate::outbox::Outbox;

/// Identifies a connection within one hub.
pub type ConnId = u64;

/// A message held for a subscriber: `None` when it only advances the cursor (the publisher's
/// own message in a namespace without echo).
pub(crate) type Held = Option<EncodedFrame>;

pub(crate) enum Position {
    /// Up to date: the next message it takes is `cursor + 1`.
    Live(Seq),
    /// Collecting messages while it cannot take them yet: `cursor` is `None` while the
    /// subscribe is still reading the store, else there is a gap after `cursor`.
    Buffering {
        cursor: Option<Seq>,
        pending: BTreeMap<Seq, Held>,
    },
}

pub(crate) struct Subscriber {
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) user: UserId,
    /// Subscribed with a service token (members-only rules do not bind it).
    pub(crate) service: bool,
    /// A `latest`-mode subscription: its messages go to the outbox's slot for this channel.
    pub(crate) latest: Option<ChannelName>,
    pub(crate) position: Position,
}

impl Subscriber {
    pub(crate) fn joining(outbox: Arc<Outbox>, user: UserId) -> Self {
        let position = Position::Buffering {
            cursor: None,
            pending: BTreeMap::new(),
        };
        Self {
            outbox,
            user,
            service: false,
            latest: None,
            position,
        }
    }

    /// Whether frames that are not part of the sequence (ephemeral messages, join/leave,
    /// signals) may go out now: not before the `subscribed` reply.
    pub(crate) fn is_started(&self) -> bool {
        !matches!(self.position, Position::Buffering { cursor: None, .. })
    }

    /// Hands a message frame to the client: queued, or for a `latest`-mode subscription put
    /// in its slot (replacing an older one not yet written).
    pub(crate) fn push_message(&self, frame: EncodedFrame) -> bool {
        match &self.latest {
            Some(channel) => self.outbox.push_latest(channel, frame),
            None => self.outbox.push(frame).is_ok(),
        }
    }

    /// Offers persistent message `seq`. Returns true when the subscriber now waits on a gap.
    ///
    /// Fast path: a live subscriber and the next seq cost one comparison and one push.
    pub(crate) fn offer(&mut self, seq: Seq, frame: Option<&EncodedFrame>) -> bool {
        // A started `latest` subscriber never waits on a gap: a newer seq is the newest.
        if let (Some(channel), Position::Live(cursor)) = (&self.latest, &mut self.position) {
            if seq > *cursor {
                *cursor = seq;
                if let Some(frame) = frame {
                    self.outbox.push_latest(channel, frame.clone());
                }
            }
            return false;
        }
        match &mut self.position {
            Position::Live(cursor) if seq == cursor.next() => {
                *cursor = seq;
                if let Some(frame) = frame {
                    // A full outbox closes itself with 4008; the transport then drops us.
                    self.push_message(frame.clone());
                }
                false
            }
            Position::Live(cursor) if seq <= *cursor => false,
            Position::Live(cursor) => {
                let cursor = Some(*cursor);
                let pending = BTreeMap::from([(seq, frame.cloned())]);
                self.position = Position::Buffering { cursor, pending };
                true
            }
            Position::Buffering { cursor, pending } => {
                if cursor.is_none_or(|c| seq > c) {
                    pending.entry(seq).or_insert_with(|| frame.cloned());
                }
                self.advance()
            }
        }
    }

    /// Starts a joining subscriber at `cursor` after replaying `history` (consecutive seqs
    /// from `cursor + 1`). Returns true when it waits on a gap.
    pub(crate) fn start(&mut self, cursor: Seq, history: Vec<(Seq, EncodedFrame)>) -> bool {
        let Position::Buffering {
            cursor: slot @ None,
            pending,
        } = &mut self.position
        else {
            return false;
        };
        let mut at = cursor;
        for (seq, frame) in history {
            if seq == at.next() {
                match &self.latest {
                    Some(channel) => {
                        self.outbox.push_latest(channel, frame);
                    }
                    None => self.outbox.push_replay(frame),
                }
                at = seq;
            }
        }
        *slot = Some(at);
        pending.retain(|seq, _| *seq > at);
        if let Some(channel) = &self.latest {
            // What arrived while joining: only the newest counts, holes or not.
            if let Some((seq, frame)) = pending.pop_last() {
                at = seq;
                if let Some(frame) = frame {
                    self.outbox.push_latest(channel, frame);
                }
            }
            self.position = Position::Live(at);
            return false;
        }
        self.advance()
    }

    /// Merges messages read from the store into a subscriber that waits on a gap. Seqs up to
    /// `committed` that the store no longer has (trimmed) are skipped rather than waited for.
    /// Returns true when the subscriber still waits on a gap.
    pub(crate) fn fill(&mut self, history: &[(Seq, EncodedFrame)], committed: Seq) -> bool {
        let Position::Buffering {
            cursor: Some(cursor),
            pending,
        } = &mut self.position
        else {
            return false;
        };
        for (seq, frame) in history {
            if *seq > *cursor {
                pending.entry(*seq).or_insert_with(|| Some(frame.clone()));
            }
        }
        if self.advance() {
            if let Position::Buffering {
                cursor: Some(cursor),
                pending,
            } = &mut self.position
            {
                let first = pending.keys().next().copied().unwrap_or(Seq::ZERO);
                let lost_up_to = Seq(first.0.saturating_sub(1)).min(committed);
                if lost_up_to > *cursor {
                    tracing::warn!(from = %cursor.next(), to = %lost_up_to,
                        "messages no longer in the store were skipped");
                    *cursor = lost_up_to;
                }
            }
            return self.advance();
        }
        false
    }

    /// The cursor of a started subscriber (the last seq it was handed).
    pub(crate) fn cursor(&self) -> Option<Seq> {
        match self.position {
            Position::Live(cursor) => Some(cursor),
            Position::Buffering { cursor, .. } => cursor,
        }
    }

    /// Brings a live subscriber up to date with messages read from the store (after a
    /// commit whose delivery may have been lost). Returns true when it waits on a gap.
    pub(crate) fn catch_up(&mut self, history: &[(Seq, EncodedFrame)], committed: Seq) -> bool {
        if let (Some(channel), Position::Live(cursor)) = (&self.latest, &mut self.position) {
            // Only the newest of what was missed.
            if let Some((seq, frame)) = history.iter().rev().find(|(seq, _)| *seq > *cursor) {
                *cursor = *seq;
                self.outbox.push_latest(channel, frame.clone());
            }
            return false;
        }
        if let Position::Live(cursor) = self.position {
            if !history.iter().any(|(seq, _)| *seq > cursor) {
                return false;
            }
            self.position = Position::Buffering {
                cursor: Some(cursor),
                pending: BTreeMap::new(),
            };
        }
        self.fill(history, committed)
    }

    /// The cursor of a subscriber waiting on a gap.
    pub(crate) fn gap_cursor(&self) -> Option<Seq> {
        match self.position {
            Position::Buffering { cursor, .. } => cursor,
            Position::Live(_) => None,
        }
    }

    /// Pushes every held message that continues the sequence; becomes live when nothing is
    /// held. Returns true while a gap remains.
    fn advance(&mut self) -> bool {
        let Position::Buffering {
            cursor: Some(cursor),
            pending,
        } = &mut self.position
        else {
            return false;
        };
        while let Some(entry) = pending.first_entry() {
            if *entry.key() > cursor.next() {
                return true;
            }
            let (seq, frame) = entry.remove_entry();
            if seq == cursor.next() {
                *cursor = seq;
                if let Some(frame) = frame {
                    match &self.latest {
                        Some(channel) => {
                            self.outbox.push_latest(channel, frame);
                        }
                        None => {
                            let _ = self.outbox.push(frame);
                        }
                    }
                }
            }
        }
        self.position = Position::Live(*cursor);
        false
    }
}

/// The local state of one channel: present only while it has local subscribers.
#[derive(Default)]
pub(crate) struct ChannelState {
    pub(crate) subscribers: HashMap<ConnId, Subscriber>,
    /// Online users and how many of their connections are subscribed.
    pub(crate) online: HashMap<UserId, u32>,
    /// A gap repair is scheduled for this channel.
    pub(crate) repair_scheduled: bool,
    /// The next repair also brings live subscribers up to the store's latest seq.
    pub(crate) tail_check: bool,
    /// The highest seq other nodes announced for this channel.
    pub(crate) announced: Seq,
    /// Users online in this channel on other nodes of a cluster, and on which nodes.
    pub(crate) remote: HashMap<UserId, HashSet<String>>,
    /// Whether `remote` was loaded from the cluster since this state exists.
    pub(crate) remote_loaded: bool,
}

impl ChannelState {
    /// Pushes an ephemeral `message` frame to started subscribers for which `to` says yes
    /// (into the latest slot of `latest`-mode ones); returns how many got it.
    pub(crate) fn broadcast_message(
        &self,
        frame: &EncodedFrame,
        mut to: impl FnMut(ConnId, &Subscriber) -> bool,
    ) -> usize {
        let mut sent = 0;
        for (id, sub) in &self.subscribers {
            if sub.is_started() && to(*id, sub) && sub.push_message(frame.clone()) {
                sent += 1;
            }
        }
        sent
    }

    /// Pushes a frame outside the sequence to started subscribers for which `to` says yes;
    /// returns how many got it.
    pub(crate) fn broadcast(
        &self,
        frame: &EncodedFrame,
        mut to: impl FnMut(ConnId, &Subscriber) -> bool,
    ) -> usize {
        let mut sent = 0;
        for (id, sub) in &self.subscribers {
            if sub.is_started() && to(*id, sub) && sub.outbox.push(frame.clone()).is_ok() {
                sent += 1;
            }
        }
        sent
    }

    /// The online users, on this node and (in a cluster) the others, sorted, each once.
    pub(crate) fn online_users(&self) -> Vec<UserId> {
        let mut users: Vec<UserId> = self
            .online
            .keys()
            .chain(self.remote.keys().filter(|u| !self.online.contains_key(*u)))
            .cloned()
            .collect();
        users.sort();
        users
    }

    /// Whether `user` is online anywhere in the cluster.
    pub(crate) fn is_online(&self, user: &UserId) -> bool {
        self.online.contains_key(user) || self.remote.contains_key(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u64) -> EncodedFrame {
        relay_proto::ServerFrame::Pong { id: Some(n.into()) }.encode()
    }

    fn drained(outbox: &Outbox) -> Vec<EncodedFrame> {
        let mut out = Vec::new();
        outbox.try_drain(&mut out);
        out
    }

    fn live(cursor: u64) -> (Subscriber, Arc<Outbox>) {
        let outbox = Arc::new(Outbox::new(64));
        let mut sub = Subscriber::joining(outbox.clone(), UserId::parse("u").unwrap());
        sub.start(Seq(cursor), Vec::new());
        (sub, outbox)
    }

    #[test]
    fn out_of_order_messages_are_held_until_the_gap_closes() {
        let (mut sub, outbox) = live(0);
        assert!(!sub.offer(Seq(1), Some(&frame(1))));
        assert!(sub.offer(Seq(3), Some(&frame(3))), "3 before 2 is a gap");
        assert!(!sub.offer(Seq(2), Some(&frame(2))), "2 closes it");
        assert_eq!(drained(&outbox), vec![frame(1), frame(2), frame(3)]);
        assert!(
            !sub.offer(Seq(2), Some(&frame(2))),
            "duplicates are skipped"
        );
        assert!(drained(&outbox).is_empty());
    }

    #[test]
    fn a_gap_is_filled_from_history_and_trimmed_seqs_are_skipped() {
        let (mut sub, outbox) = live(0);
        sub.offer(Seq(5), Some(&frame(5)));
        assert!(!sub.fill(&[(Seq(3), frame(3)), (Seq(4), frame(4))], Seq(5)));
        assert_eq!(drained(&outbox), vec![frame(3), frame(4), frame(5)]);
    }

    #[test]
    fn a_gap_beyond_what_was_committed_is_waited_for() {
        let (mut sub, _outbox) = live(0);
        sub.offer(Seq(5), Some(&frame(5)));
        assert!(
            sub.fill(&[(Seq(1), frame(1))], Seq(1)),
            "2..=4 may still be in flight"
        );
        assert_eq!(sub.gap_cursor(), Some(Seq(1)));
    }

    #[test]
    fn joining_subscriber_replays_history_then_what_arrived_meanwhile() {
        let outbox = Arc::new(Outbox::new(64));
        let mut sub = Subscriber::joining(outbox.clone(), UserId::parse("u").unwrap());
        sub.offer(Seq(3), Some(&frame(3)));
        sub.offer(Seq(4), Some(&frame(4)));
        assert!(!sub.start(Seq(1), vec![(Seq(2), frame(2)), (Seq(3), frame(3))]));
        assert_eq!(drained(&outbox), vec![frame(2), frame(3), frame(4)]);
    }
}
