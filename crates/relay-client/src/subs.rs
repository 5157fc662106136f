//! The driver's table of subscriptions: routing frames to each subscription's queue,
//! filtering duplicates by seq, and deciding when a subscription must be re-subscribed.
//!
//! The driver never waits on an application: events are handed over with `try_send`. When a
//! subscription's queue is full, it is marked *behind*: its messages are dropped without
//! moving its cursor, and once the application has drained half of the queue the driver
//! unsubscribes and subscribes again with `since` = the cursor, so the server replays exactly
//! what was dropped. One slow reader therefore costs nobody else anything, and loses nothing.
//!
//! A subscription further behind than the server replays (`subscribed` answers
//! `recovered: false`) is *paging*: a catch-up task reads the missed history over REST, page
//! by page, and hands it to the application (waiting on it, so memory stays bounded); live
//! messages meanwhile are dropped without moving the cursor. Once the task is done, the
//! subscription subscribes again from where it got to, and the server replays the rest.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use relay_proto::{ChannelName, ErrorCode, Seq, SubscribeMode};
use tokio::sync::mpsc;

use crate::subscription::{Event, Message};

/// How long a restore refused for a passing reason (`unavailable`) waits before retrying.
const RETRY_AFTER: Duration = Duration::from_secs(1);

struct Sub {
    events: mpsc::Sender<Event>,
    /// The last seq handed to the application (or the start point); restores send it as
    /// `since`, and anything at or below it is a duplicate.
    last_seq: Option<Seq>,
    /// The subscribe frame whose `subscribed` this subscription waits for. Until it arrives,
    /// frames for the channel belong to an earlier subscription and are dropped.
    awaiting: Option<u64>,
    /// Events were dropped because the application fell behind.
    behind: bool,
    /// A restore was refused for a passing reason: subscribe again at this time.
    retry_at: Option<Instant>,
    /// History is being read over REST by a catch-up task.
    paging: Option<Paging>,
    /// The highest read marker handed to the application: markers only move up, and two
    /// moves may reach this connection in either order.
    read: Seq,
    /// `latest`: restored and resubscribed without `since` (the newest message comes first).
    mode: SubscribeMode,
}

impl Sub {
    /// What a restore sends as `since`: the cursor, except for a `latest` subscription,
    /// which starts from the newest message again.
    fn since(&self) -> Option<Seq> {
        match self.mode {
            SubscribeMode::Latest => None,
            SubscribeMode::Reliable => self.last_seq,
        }
    }
}

/// A subscription's catch-up over REST, shared with its task.
pub(crate) struct Paging {
    /// The last seq the task handed to the application.
    pub(crate) cursor: Arc<AtomicU64>,
    /// The task finished.
    pub(crate) done: Arc<AtomicBool>,
    /// Ends the task when the subscription goes.
    pub(crate) task: tokio::task::AbortHandle,
    /// The server still holds the channel's subscription (not after a reconnect).
    pub(crate) subscribed: bool,
}

impl Drop for Paging {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the driver must send to bring a subscription back.
pub(crate) struct Resubscribe {
    pub(crate) channel: ChannelName,
    pub(crate) since: Option<Seq>,
    /// The server still holds the old subscription: unsubscribe first.
    pub(crate) unsubscribe_first: bool,
    pub(crate) mode: SubscribeMode,
}

#[derive(Default)]
pub(crate) struct Subs {
    map: HashMap<ChannelName, Sub>,
    /// Some subscription is behind or waiting to retry.
    maintenance: bool,
}

impl Subs {
    pub(crate) fn contains(&self, channel: &ChannelName) -> bool {
        self.map.contains_key(channel)
    }

    /// Registers a subscription waiting for the reply to subscribe frame `id`.
    pub(crate) fn insert(
        &mut self,
        channel: ChannelName,
        events: mpsc::Sender<Event>,
        since: Option<Seq>,
        id: u64,
        mode: SubscribeMode,
    ) {
        let sub = Sub {
            events,
            last_seq: since,
            awaiting: Some(id),
            behind: false,
            retry_at: None,
            paging: None,
            read: Seq::ZERO,
            mode,
        };
        self.map.insert(channel, sub);
    }

    pub(crate) fn remove(&mut self, channel: &ChannelName) -> bool {
        self.map.remove(channel).is_some()
    }

    /// Removes a subscription whose first subscribe (frame `id`) failed.
    pub(crate) fn remove_if_awaiting(&mut self, channel: &ChannelName, id: u64) {
        if self
            .map
            .get(channel)
            .is_some_and(|sub| sub.awaiting == Some(id))
        {
            self.map.remove(channel);
        }
    }

    /// After a reconnect: every subscription is subscribed again from its cursor.
    pub(crate) fn restore_all(
        &mut self,
        mut next_id: impl FnMut() -> u64,
    ) -> Vec<(u64, ChannelName, Option<Seq>, SubscribeMode)> {
        self.map
            .iter_mut()
            .filter_map(|(channel, sub)| {
                if let Some(paging) = &mut sub.paging {
                    // Subscribed again once its catch-up is done.
                    paging.subscribed = false;
                    return None;
                }
                let id = next_id();
                sub.awaiting = Some(id);
                sub.behind = false;
                sub.retry_at = None;
                Some((id, channel.clone(), sub.since(), sub.mode))
            })
            .collect()
    }

    /// The server answered subscribe frame `id`. Returns false when the reply is stale (the
    /// subscription was replaced or dropped meanwhile).
    pub(crate) fn on_subscribed(
        &mut self,
        channel: &ChannelName,
        id: u64,
        since: Option<Seq>,
        recovered: Option<bool>,
        latest: Seq,
        notify: bool,
    ) -> bool {
        let Some(sub) = self.map.get_mut(channel) else {
            return false;
        };
        if sub.awaiting != Some(id) {
            return false;
        }
        sub.awaiting = None;
        let notice = match (since, recovered) {
            (Some(since), Some(true)) => notify.then_some(Event::Recovered { since }),
            (Some(since), _) => Some(Event::Gap {
                since,
                resumed_at: latest,
            }),
            (None, _) => None,
        };
        // A `latest` subscription's first message is the newest at or below `latest`: its
        // cursor stays at the last message delivered, which drops only a repeat of it.
        if recovered != Some(true) && sub.mode == SubscribeMode::Reliable {
            sub.last_seq = Some(latest);
        }
        if let Some(notice) = notice {
            Self::offer(sub, notice, &mut self.maintenance);
        }
        true
    }

    /// The server answered subscribe frame `id` with `recovered: false` for `since`: the
    /// subscription starts paging from `since`. Returns the subscription's queue for the
    /// catch-up task, or `None` when the reply is stale.
    pub(crate) fn begin_paging(
        &mut self,
        channel: &ChannelName,
        id: u64,
        since: Seq,
    ) -> Option<mpsc::Sender<Event>> {
        let sub = self.map.get_mut(channel)?;
        if sub.awaiting != Some(id) {
            return None;
        }
        sub.awaiting = None;
        sub.last_seq = Some(since);
        Some(sub.events.clone())
    }

    /// Hands the running catch-up task of `channel` to its subscription.
    pub(crate) fn set_paging(&mut self, channel: &ChannelName, paging: Paging) {
        if let Some(sub) = self.map.get_mut(channel) {
            sub.paging = Some(paging);
            self.maintenance = true;
        }
    }

    /// A subscribe (or restore) was refused. Refusals that will not change (no right, no
    /// such channel) end the subscription with an [`Event::Refused`]; passing ones
    /// (`unavailable`, …) are retried.
    pub(crate) fn on_refused(
        &mut self,
        channel: &ChannelName,
        id: u64,
        code: ErrorCode,
        message: String,
    ) {
        let Some(sub) = self.map.get_mut(channel) else {
            return;
        };
        if sub.awaiting != Some(id) {
            return;
        }
        sub.awaiting = None;
        match code {
            ErrorCode::Unavailable | ErrorCode::Internal | ErrorCode::RateLimited => {
                sub.retry_at = Some(Instant::now() + RETRY_AFTER);
                self.maintenance = true;
            }
            _ => {
                let _ = sub.events.try_send(Event::Refused { code, message });
                self.map.remove(channel);
            }
        }
    }

    /// The server ended a live subscription itself (the user was removed from the channel's
    /// members): the stream ends with an [`Event::Refused`] (`forbidden`, the server's
    /// reason), and nothing restores it. A subscription waiting on a resubscribe ignores it:
    /// that subscribe gets its own answer.
    pub(crate) fn on_ended(&mut self, channel: &ChannelName, reason: String) {
        let Some(sub) = self.map.get(channel) else {
            return;
        };
        if sub.awaiting.is_some() {
            return;
        }
        let _ = sub.events.try_send(Event::Refused {
            code: ErrorCode::Forbidden,
            message: reason,
        });
        self.map.remove(channel);
    }

    /// Routes a message: skips duplicates, and moves the cursor only when the application
    /// actually gets the message.
    pub(crate) fn on_message(&mut self, message: Message) {
        let Some(sub) = self.map.get_mut(&message.channel) else {
            return;
        };
        if sub.awaiting.is_some() || sub.behind || sub.paging.is_some() {
            return;
        }
        let seq = message.seq;
        if let Some(seq) = seq
            && sub.last_seq.is_some_and(|last| seq <= last)
        {
            return;
        }
        if Self::offer(sub, Event::Message(message), &mut self.maintenance)
            && let Some(seq) = seq
        {
            sub.last_seq = Some(seq);
        }
    }

    /// Routes a read marker of this user, unless a higher one was handed over already.
    pub(crate) fn on_read(&mut self, channel: &ChannelName, seq: Seq) {
        let Some(sub) = self.map.get_mut(channel) else {
            return;
        };
        if seq <= sub.read || sub.awaiting.is_some() || sub.behind {
            return;
        }
        if Self::offer(sub, Event::Read(seq), &mut self.maintenance) {
            sub.read = seq;
        }
    }

    /// Routes an event outside the sequence (join, leave, signal).
    pub(crate) fn on_event(&mut self, channel: &ChannelName, event: Event) {
        if let Some(sub) = self.map.get_mut(channel)
            && sub.awaiting.is_none()
            && !sub.behind
        {
            Self::offer(sub, event, &mut self.maintenance);
        }
    }

    /// Hands an event over without waiting; a full queue marks the subscription behind.
    fn offer(sub: &mut Sub, event: Event, maintenance: &mut bool) -> bool {
        match sub.events.try_send(event) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                sub.behind = true;
                *maintenance = true;
                false
            }
            // The application dropped the subscription; its unsubscribe is on the way.
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Whether [`Self::due`] has anything to do.
    pub(crate) fn needs_maintenance(&self) -> bool {
        self.maintenance
    }

    /// Subscriptions to subscribe again now: those behind whose application has drained half
    /// of its queue, and refused restores whose retry time has come. `next_id` numbers the
    /// new subscribe frames.
    pub(crate) fn due(&mut self, mut next_id: impl FnMut() -> u64) -> Vec<(u64, Resubscribe)> {
        let now = Instant::now();
        let mut due = Vec::new();
        let mut still = false;
        for (channel, sub) in &mut self.map {
            if let Some(paging) = &sub.paging {
                if !paging.done.load(Ordering::Acquire) {
                    still = true;
                    continue;
                }
                // Paged up to here: the server replays the rest.
                let subscribed = paging.subscribed;
                sub.last_seq = Some(Seq(paging.cursor.load(Ordering::Acquire)));
                sub.paging = None;
                let id = next_id();
                due.push((
                    id,
                    Resubscribe {
                        channel: channel.clone(),
                        since: sub.last_seq,
                        unsubscribe_first: subscribed,
                        mode: sub.mode,
                    },
                ));
                sub.awaiting = Some(id);
                sub.behind = false;
                sub.retry_at = None;
                continue;
            }
            let caught_up = sub.behind && sub.events.capacity() * 2 >= sub.events.max_capacity();
            let retry = sub.retry_at.is_some_and(|at| now >= at);
            if caught_up || retry {
                let id = next_id();
                due.push((
                    id,
                    Resubscribe {
                        channel: channel.clone(),
                        since: sub.since(),
                        unsubscribe_first: caught_up,
                        mode: sub.mode,
                    },
                ));
                sub.awaiting = Some(id);
                sub.behind = false;
                sub.retry_at = None;
            } else {
                still |= sub.behind || sub.retry_at.is_some();
            }
        }
        self.maintenance = still;
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_proto::{MessageId, Payload, Timestamp};

    fn message(seq: u64) -> Message {
        Message {
            channel: ChannelName::parse("c").unwrap(),
            id: MessageId::nil(),
            seq: Some(Seq(seq)),
            from: None,
            event: None,
            payload: Payload::from_json("1").unwrap(),
            ts: Timestamp::from_unix_millis(0),
            reference: None,
        }
    }

    fn seqs(rx: &mut mpsc::Receiver<Event>) -> Vec<u64> {
        let mut out = Vec::new();
        while let Ok(event) = rx.try_recv() {
            if let Event::Message(m) = event {
                out.push(m.seq.unwrap().0);
            }
        }
        out
    }

    #[test]
    fn a_full_queue_marks_behind_and_resubscribes_from_the_last_delivered_seq() {
        let channel = ChannelName::parse("c").unwrap();
        let (tx, mut rx) = mpsc::channel(2);
        let mut subs = Subs::default();
        subs.insert(channel.clone(), tx, None, 1, SubscribeMode::Reliable);
        assert!(subs.on_subscribed(&channel, 1, None, None, Seq(0), false));
        for seq in 1..=5 {
            subs.on_message(message(seq));
        }
        assert!(subs.needs_maintenance());
        assert!(subs.due(|| 2).is_empty(), "still full");
        assert_eq!(seqs(&mut rx), [1, 2]);
        let due = subs.due(|| 2);
        assert_eq!(due.len(), 1);
        assert_eq!(
            (due[0].1.since, due[0].1.unsubscribe_first),
            (Some(Seq(2)), true)
        );
        subs.on_message(message(3)); // the old subscription's frame, before the new reply
        assert!(seqs(&mut rx).is_empty());
        assert!(
            !subs.on_subscribed(&channel, 1, Some(Seq(2)), Some(true), Seq(5), true),
            "stale"
        );
        assert!(subs.on_subscribed(&channel, 2, Some(Seq(2)), Some(true), Seq(5), true));
        for seq in 3..=5 {
            subs.on_message(message(seq));
        }
        let mut got = Vec::new();
        while let Ok(event) = rx.try_recv() {
            got.push(event);
        }
        assert!(matches!(got[0], Event::Recovered { since: Seq(2) }));
    }

    #[test]
    fn a_passing_refusal_is_retried_and_a_final_one_ends_the_stream() {
        let channel = ChannelName::parse("c").unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        let mut subs = Subs::default();
        subs.insert(
            channel.clone(),
            tx,
            Some(Seq(4)),
            1,
            SubscribeMode::Reliable,
        );
        subs.on_refused(&channel, 1, ErrorCode::Unavailable, "db down".into());
        assert!(subs.contains(&channel) && subs.needs_maintenance());
        subs.insert(
            channel.clone(),
            mpsc::channel(1).0,
            None,
            3,
            SubscribeMode::Reliable,
        );
        subs.on_refused(&channel, 3, ErrorCode::Forbidden, "no".into());
        assert!(!subs.contains(&channel));
        drop(subs);
        assert!(rx.try_recv().is_err(), "the first queue got nothing");
    }
}
