//! Gap repair: the only code of the hub that spawns a task and sleeps. A subscriber that
//! sees a seq ahead of its cursor holds it; after [`HubConfig::repair_delay`] the hub reads
//! the missing messages from the store (the truth) and fills every subscriber it can.
//!
//! [`HubConfig::repair_delay`]: crate::HubConfig::repair_delay

use std::sync::Arc;

use relay_proto::{ChannelName, EncodedFrame, Seq};
use relay_store::HistoryQuery;

use crate::hub::Hub;

impl Hub {
    pub(crate) fn schedule_repair(&self, channel: ChannelName) {
        self.schedule_repair_in(channel, self.inner.config.repair_delay);
    }

    /// Schedules a repair after `delay` that also brings live subscribers up to the store's
    /// latest seq (unless one is scheduled already). Nothing when the channel has no local
    /// subscribers.
    pub(crate) fn schedule_tail_check(&self, channel: &ChannelName, delay: std::time::Duration) {
        let Some(mut state) = self.inner.channels.get_mut(channel) else {
            return;
        };
        state.tail_check = true;
        let schedule = !state.repair_scheduled;
        state.repair_scheduled = true;
        drop(state);
        if schedule {
            self.schedule_repair_in(channel.clone(), delay);
        }
    }

    /// Schedules a repair after `delay` (zero when the store is known to hold what is
    /// missing: another node announced its commit).
    pub(crate) fn schedule_repair_in(&self, channel: ChannelName, delay: std::time::Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(%channel, "no tokio runtime: cannot repair a delivery gap");
            // Let a later delivery made on a runtime schedule the repair.
            if let Some(mut state) = self.inner.channels.get_mut(&channel) {
                state.repair_scheduled = false;
            }
            return;
        };
        let hub = Arc::downgrade(&self.inner);
        runtime.spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(inner) = hub.upgrade() {
                Hub { inner }.repair(channel).await;
            }
        });
    }

    /// Fills the gaps of a channel's subscribers from the store.
    async fn repair(&self, channel: ChannelName) {
        let (from, tail) = {
            let Some(mut state) = self.inner.channels.get_mut(&channel) else {
                return;
            };
            state.repair_scheduled = false;
            let tail = std::mem::take(&mut state.tail_check);
            let from = state
                .subscribers
                .values()
                .filter_map(|s| if tail { s.cursor() } else { s.gap_cursor() })
                .min();
            (from, tail)
        };
        let Some(from) = from else {
            return;
        };
        let limit = self.inner.config.max_recovery.max(1);
        let store = &self.inner.store;
        let read = async {
            let committed = store.latest_seq(&channel).await?;
            let history = store
                .history(&channel, HistoryQuery::after(from, limit))
                .await?;
            Ok::<_, relay_store::StoreError>((committed, history))
        };
        let (mut committed, history) = match read.await {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(%channel, error = %e, "gap repair could not read the store; retrying");
                self.retry_repair(&channel);
                return;
            }
        };
        if history.len() == limit {
            // The page may have stopped short of what is committed: only trust what it holds.
            committed = committed.min(history.last().map_or(from, |m| m.seq));
        }
        let frames: Vec<(Seq, EncodedFrame)> = history
            .iter()
            .map(|m| (m.seq, m.to_frame().encode()))
            .collect();
        let mut gap = false;
        if let Some(mut state) = self.inner.channels.get_mut(&channel) {
            for sub in state.subscribers.values_mut() {
                // Only subscribers at or after `from` can trust this read to hold everything
                // they miss; one that fell behind it meanwhile waits for the next repair.
                match sub.cursor() {
                    Some(cursor) if cursor >= from => {
                        if sub.gap_cursor().is_some() {
                            gap |= sub.fill(&frames, committed);
                        } else if tail {
                            gap |= sub.catch_up(&frames, committed);
                        }
                    }
                    Some(_) => gap |= sub.gap_cursor().is_some(),
                    None => {}
                }
            }
        }
        if gap {
            self.retry_repair(&channel);
        }
    }

    fn retry_repair(&self, channel: &ChannelName) {
        if let Some(mut state) = self.inner.channels.get_mut(channel)
            && !state.repair_scheduled
        {
            state.repair_scheduled = true;
            drop(state);
            self.schedule_repair(channel.clone());
        }
    }
}
