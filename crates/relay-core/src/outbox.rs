//! [`Outbox`]: a connection's bounded outbound queue.
//!
//! The hub pushes encoded frames without ever waiting; the transport takes everything queued
//! at once and writes it as one batch (one write per batch, not one per frame). A push into a full outbox closes the connection with
//! 4008 (slow consumer) instead of blocking the publisher or growing without bound, so one
//! stalled reader never slows anyone else.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use relay_proto::{ChannelName, CloseCode, EncodedFrame};
use tokio::sync::Notify;

/// Bytes of replayed history held in memory across a hub (read for a `subscribe {since}`,
/// or queued in outboxes and not yet written), against a process-wide limit.
#[derive(Debug)]
pub struct ReplayBudget {
    used: AtomicUsize,
    limit: usize,
}

impl ReplayBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            limit,
        }
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Reserves `bytes` if the budget has room.
    pub(crate) fn try_reserve(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    /// Counts `bytes` whatever the limit (frames moving into an outbox, already reserved).
    fn add(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::AcqRel);
    }

    pub(crate) fn release(&self, bytes: usize) {
        if bytes > 0 {
            self.used.fetch_sub(bytes, Ordering::AcqRel);
        }
    }
}

/// Why an outbox was closed: the close code and a short reason for the close frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    /// The close code.
    pub code: CloseCode,
    /// A short human-readable reason (at most 123 bytes fit a close frame).
    pub reason: &'static str,
}

/// A push that did not enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The queue was full: the outbox is now closed with 4008.
    #[error("outbound queue overflowed")]
    Overflow,
    /// The outbox was already closed.
    #[error("outbox closed")]
    Closed,
}

/// What the transport should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Batch {
    /// Frames were moved into the buffer: write them all, in one batch.
    Frames,
    /// The outbox is closed and drained: send a close frame with this reason.
    Closed(CloseReason),
}

/// A bounded queue of encoded frames with a close signal.
pub struct Outbox {
    state: Mutex<State>,
    ready: Notify,
    capacity: usize,
    max_bytes: usize,
    max_replayed: usize,
    /// Where replayed bytes are counted while queued.
    replay_budget: Option<Arc<ReplayBudget>>,
}

struct State {
    queue: Vec<EncodedFrame>,
    closed: Option<CloseReason>,
    /// Replayed history frames queued since the last drain: they may exceed the capacity,
    /// which bounds only live traffic (a recovery replay larger than the queue must not cut
    /// the connection it is recovering).
    replayed: usize,
    /// Bytes of those replayed frames.
    replayed_bytes: usize,
    /// Bytes of live frames queued.
    bytes: usize,
    /// The newest message waiting for each `latest`-mode subscription, by channel: one
    /// frame each, replaced rather than queued, written after the queue.
    latest: Vec<(ChannelName, EncodedFrame)>,
}

impl Outbox {
    /// An empty outbox holding at most `capacity` frames.
    pub fn new(capacity: usize) -> Self {
        Self::with_limits(capacity, usize::MAX)
    }

    /// An empty outbox holding at most `capacity` frames and `max_bytes` bytes of them (a
    /// single frame larger than that still passes when nothing else is queued).
    pub fn with_limits(capacity: usize, max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State {
                queue: Vec::new(),
                closed: None,
                replayed: 0,
                replayed_bytes: 0,
                bytes: 0,
                latest: Vec::new(),
            }),
            ready: Notify::new(),
            capacity: capacity.max(1),
            max_bytes,
            max_replayed: usize::MAX,
            replay_budget: None,
        }
    }

    /// Counts queued replayed bytes in `budget` until they are written.
    pub(crate) fn with_replay_budget(mut self, budget: Arc<ReplayBudget>) -> Self {
        self.replay_budget = Some(budget);
        self
    }

    /// Bytes of replayed history queued now.
    pub(crate) fn replayed_bytes(&self) -> usize {
        self.state.lock().replayed_bytes
    }

    /// Forgets the replayed bytes of `state` (written or dropped).
    fn release_replayed(&self, state: &mut State) {
        if let Some(budget) = &self.replay_budget {
            budget.release(state.replayed_bytes);
        }
        state.replayed_bytes = 0;
    }

    /// Bounds the replayed frames queued at once (several recoveries into a connection that
    /// does not read); past it the outbox closes with 4008 like a live overflow.
    pub fn with_replay_limit(mut self, frames: usize) -> Self {
        self.max_replayed = frames;
        self
    }

    /// Enqueues a frame without waiting. On overflow the outbox closes itself with 4008 and
    /// drops what it held: the client recovers those messages with `since` on reconnect.
    pub fn push(&self, frame: EncodedFrame) -> Result<(), PushError> {
        let mut state = self.state.lock();
        if state.closed.is_some() {
            return Err(PushError::Closed);
        }
        let too_many = state.queue.len() >= self.capacity + state.replayed;
        let too_big = state.bytes > 0 && state.bytes.saturating_add(frame.len()) > self.max_bytes;
        if too_many || too_big {
            self.overflow(state, "slow consumer: outbound queue overflowed");
            return Err(PushError::Overflow);
        }
        state.bytes += frame.len();
        self.enqueue(state, frame);
        Ok(())
    }

    /// Puts `frame` in `channel`'s latest slot, replacing the frame waiting there: a
    /// `latest`-mode subscription never has more than one message waiting, so it never
    /// overflows. False when the outbox is closed.
    pub(crate) fn push_latest(&self, channel: &ChannelName, frame: EncodedFrame) -> bool {
        let mut state = self.state.lock();
        if state.closed.is_some() {
            return false;
        }
        let was_empty = state.queue.is_empty() && state.latest.is_empty();
        match state.latest.iter_mut().find(|(c, _)| c == channel) {
            Some((_, waiting)) => *waiting = frame,
            None => state.latest.push((channel.clone(), frame)),
        }
        drop(state);
        if was_empty {
            self.ready.notify_one();
        }
        true
    }

    /// Drops what waits in `channel`'s latest slot (its subscription ended).
    pub(crate) fn clear_latest(&self, channel: &ChannelName) {
        self.state.lock().latest.retain(|(c, _)| c != channel);
    }

    /// Queues a frame and wakes the writer if it was idle.
    fn enqueue(&self, mut state: parking_lot::MutexGuard<'_, State>, frame: EncodedFrame) {
        let was_empty = state.queue.is_empty();
        state.queue.push(frame);
        drop(state);
        if was_empty {
            self.ready.notify_one();
        }
    }

    /// Drops what is queued and closes with 4008; the writer wakes to send the close.
    fn overflow(&self, mut state: parking_lot::MutexGuard<'_, State>, reason: &'static str) {
        state.queue = Vec::new();
        state.latest = Vec::new();
        state.replayed = 0;
        self.release_replayed(&mut state);
        state.bytes = 0;
        state.closed = Some(CloseReason {
            code: CloseCode::SlowConsumer,
            reason,
        });
        drop(state);
        self.ready.notify_one();
    }

    /// Enqueues a replayed history frame (recovery) without counting it against the
    /// capacity. Replays are bounded by the hub's `max_recovery`.
    pub(crate) fn push_replay(&self, frame: EncodedFrame) {
        let mut state = self.state.lock();
        if state.closed.is_some() {
            return;
        }
        if state.replayed >= self.max_replayed {
            self.overflow(state, "slow consumer: too much history queued");
            return;
        }
        state.replayed += 1;
        state.replayed_bytes += frame.len();
        if let Some(budget) = &self.replay_budget {
            budget.add(frame.len());
        }
        self.enqueue(state, frame);
    }

    /// Closes the outbox; frames already queued are still handed out before the close. The
    /// first close wins.
    pub fn close(&self, code: CloseCode, reason: &'static str) {
        let mut state = self.state.lock();
        if state.closed.is_none() {
            state.closed = Some(CloseReason { code, reason });
        }
        drop(state);
        self.ready.notify_one();
    }

    /// The close reason, once closed.
    pub fn closed(&self) -> Option<CloseReason> {
        self.state.lock().closed.clone()
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        let state = self.state.lock();
        state.queue.len() + state.latest.len()
    }

    /// Whether no frame is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Moves every queued frame into `out` without waiting; returns the close reason when the
    /// outbox is closed and nothing is left.
    pub fn try_drain(&self, out: &mut Vec<EncodedFrame>) -> Option<Batch> {
        let mut state = self.state.lock();
        if !state.queue.is_empty() || !state.latest.is_empty() {
            // Hand the whole queue over by swapping vectors: no per-frame move, and the
            // writer's empty vector (with its capacity) becomes the next queue.
            if out.is_empty() {
                std::mem::swap(&mut state.queue, out);
            } else {
                out.append(&mut state.queue);
            }
            // The latest slots after the queue: a subscription's `subscribed` reply, queued,
            // goes out before its messages.
            out.extend(state.latest.drain(..).map(|(_, frame)| frame));
            state.replayed = 0;
            self.release_replayed(&mut state);
            state.bytes = 0;
            return Some(Batch::Frames);
        }
        state.closed.clone().map(Batch::Closed)
    }

    /// Waits until frames are queued or the outbox is closed. Cancel-safe: nothing is lost if
    /// the future is dropped. Only one task (the connection's writer) should call this.
    pub async fn next_batch(&self, out: &mut Vec<EncodedFrame>) -> Batch {
        loop {
            if let Some(batch) = self.try_drain(out) {
                return batch;
            }
            self.ready.notified().await;
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let mut state = std::mem::replace(
            &mut *self.state.lock(),
            State {
                queue: Vec::new(),
                closed: None,
                replayed: 0,
                replayed_bytes: 0,
                bytes: 0,
                latest: Vec::new(),
            },
        );
        self.release_replayed(&mut state);
    }
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.lock();
        f.debug_struct("Outbox")
            .field("queued", &state.queue.len())
            .field("capacity", &self.capacity)
            .field("closed", &state.closed)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(s: &'static str) -> EncodedFrame {
        EncodedFrame::from_static(s)
    }

    #[tokio::test]
    async fn batches_hand_out_everything_queued_at_once() {
        let outbox = Outbox::new(8);
        outbox.push(frame("1")).unwrap();
        outbox.push(frame("2")).unwrap();
        let mut out = Vec::new();
        assert_eq!(outbox.next_batch(&mut out).await, Batch::Frames);
        assert_eq!(out, vec![frame("1"), frame("2")]);
    }

    #[tokio::test]
    async fn overflow_closes_with_4008_and_drops_the_queue() {
        let outbox = Outbox::new(2);
        outbox.push(frame("1")).unwrap();
        outbox.push(frame("2")).unwrap();
        assert_eq!(outbox.push(frame("3")), Err(PushError::Overflow));
        assert_eq!(outbox.push(frame("4")), Err(PushError::Closed));
        let mut out = Vec::new();
        let Batch::Closed(reason) = outbox.next_batch(&mut out).await else {
            panic!()
        };
        assert_eq!(reason.code, CloseCode::SlowConsumer);
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn replayed_frames_do_not_count_against_the_capacity() {
        let outbox = Outbox::new(2);
        for _ in 0..10 {
            outbox.push_replay(frame("old"));
        }
        outbox.push(frame("live1")).unwrap();
        outbox.push(frame("live2")).unwrap();
        assert_eq!(outbox.push(frame("live3")), Err(PushError::Overflow));
    }

    #[tokio::test]
    async fn the_byte_limit_closes_with_4008_too() {
        let outbox = Outbox::with_limits(100, 10);
        outbox.push(frame("12345678")).unwrap();
        assert_eq!(outbox.push(frame("123")), Err(PushError::Overflow));
        let alone = Outbox::with_limits(100, 4);
        assert_eq!(
            alone.push(frame("a frame larger than the limit")),
            Ok(()),
            "alone, it passes"
        );
    }

    #[tokio::test]
    async fn a_normal_close_still_delivers_what_was_queued() {
        let outbox = Outbox::new(4);
        outbox.push(frame("1")).unwrap();
        outbox.close(CloseCode::GoingAway, "shutting down");
        let mut out = Vec::new();
        assert_eq!(outbox.next_batch(&mut out).await, Batch::Frames);
        assert!(
            matches!(outbox.next_batch(&mut out).await, Batch::Closed(r) if r.code == CloseCode::GoingAway)
        );
    }

    #[tokio::test]
    async fn a_waiting_writer_wakes_on_push() {
        let outbox = std::sync::Arc::new(Outbox::new(4));
        let writer = {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                outbox.next_batch(&mut out).await;
                out
            })
        };
        tokio::task::yield_now().await;
        outbox.push(frame("x")).unwrap();
        assert_eq!(writer.await.unwrap(), vec![frame("x")]);
    }
}
