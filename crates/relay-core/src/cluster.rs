//! The backplane seam: how hubs on several nodes behave as one.
//!
//! What crosses nodes, and how:
//! - **Persistent messages** do not travel through the hub at all: the store tells the other
//!   nodes which channels a commit appended to (the Postgres store does it in the commit's
//!   own transaction), and each node calls [`Hub::remote_commit`], which brings its local
//!   subscribers up to that seq from the store through gap repair. The store is the truth;
//!   a lost notification costs latency, never a message, because [`Hub::resync`] catches up
//!   every channel after the transport may have lost some.
//! - **Live events** (ephemeral messages and signals) are not stored: the hub encodes them and
//!   hands them to a [`Backplane`], and a receiving node passes them to [`Hub::receive`].
//!
//! A hub without a backplane (`Hub::new`, a single node) pays one `None` check per ephemeral
//! publish and signal, and nothing on the persistent fan-out path.

use std::collections::HashMap;

use relay_proto::{ChannelName, EncodedFrame, Seq, ServerFrame, UserId};
use serde_json::value::RawValue;

use crate::error::HubError;
use crate::hub::Hub;

/// Carries this node's live events to the other nodes of a cluster.
pub trait Backplane: Send + Sync + 'static {
    /// The largest encoded event the transport carries; a larger one is refused with
    /// `too_large` before anything is delivered.
    fn max_event_bytes(&self) -> usize;

    /// Sends an encoded event to every other node, without waiting. Live events are
    /// best-effort by nature: a transport that cannot keep up drops them.
    fn send(&self, event: &str);
}

/// A live event from another node, as [`Hub::receive`] takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RemoteEvent {
    /// An ephemeral `message` frame for the channel's subscribers.
    Ephemeral(EncodedFrame, ChannelName),
    /// A `signal` frame for the connections of one user subscribed to the channel.
    Signal(EncodedFrame, ChannelName, UserId),
}

fn encode_ephemeral(frame: &EncodedFrame) -> String {
    format!(r#"{{"k":"ephemeral","f":{}}}"#, frame.as_str())
}

fn encode_signal(frame: &EncodedFrame, to: &UserId) -> String {
    let to = serde_json::to_string(to.as_str()).unwrap_or_else(|_| "\"\"".into());
    format!(r#"{{"k":"signal","to":{to},"f":{}}}"#, frame.as_str())
}

fn decode(event: &str) -> Option<RemoteEvent> {
    let fields: HashMap<&str, &RawValue> = serde_json::from_str(event).ok()?;
    let kind: &str = serde_json::from_str(fields.get("k")?.get()).ok()?;
    // The frame is decoded, not trusted: whatever another node sent is validated here like
    // anything else that reaches a subscriber.
    let frame = ServerFrame::decode(fields.get("f")?.get().as_bytes()).ok()?;
    match (kind, &frame) {
        (
            "ephemeral",
            ServerFrame::Message {
                channel, seq: None, ..
            },
        ) => {
            let channel = channel.clone();
            Some(RemoteEvent::Ephemeral(frame.encode(), channel))
        }
        ("signal", ServerFrame::Signal { channel, .. }) => {
            let to: String = serde_json::from_str(fields.get("to")?.get()).ok()?;
            let to = UserId::parse(&to).ok()?;
            let channel = channel.clone();
            Some(RemoteEvent::Signal(frame.encode(), channel, to))
        }
        _ => None,
    }
}

impl Hub {
    /// Delivers a live event another node sent through its [`Backplane`]. Returns false
    /// (and delivers nothing) for an event that does not decode.
    pub fn receive(&self, event: &str) -> bool {
        let Some(event) = decode(event) else {
            tracing::warn!(event, "undecodable event from the cluster");
            return false;
        };
        let (frame, channel, to) = match event {
            RemoteEvent::Ephemeral(frame, channel) => (frame, channel, None),
            RemoteEvent::Signal(frame, channel, to) => (frame, channel, Some(to)),
        };
        if let Some(state) = self.inner.channels.get(&channel) {
            let sent = state.broadcast(&frame, |_, sub| to.as_ref().is_none_or(|u| &sub.user == u));
            self.inner.counters.delivered(sent);
        }
        true
    }

    /// Another node committed messages to `channel` up to `seq`: local subscribers catch up
    /// from the store at once. Cheap when the channel has no local subscribers, or when they
    /// already have `seq`.
    pub fn remote_commit(&self, channel: &ChannelName, seq: Seq) {
        let Some(mut state) = self.inner.channels.get_mut(channel) else {
            return;
        };
        state.announced = state.announced.max(seq);
        let behind = state
            .subscribers
            .values()
            .any(|sub| sub.cursor().is_some_and(|cursor| cursor < seq));
        if behind {
            state.tail_check = true;
            let schedule = !state.repair_scheduled;
            state.repair_scheduled = true;
            drop(state);
            if schedule {
                self.schedule_repair_in(channel.clone(), std::time::Duration::ZERO);
            }
        }
    }

    /// Notifications from other nodes may have been lost: every channel with local
    /// subscribers catches up from the store.
    pub fn resync(&self) {
        let channels: Vec<ChannelName> = self
            .inner
            .channels
            .iter()
            .map(|entry| entry.key().clone())
            .collect();
        for channel in channels {
            if let Some(mut state) = self.inner.channels.get_mut(&channel) {
                state.tail_check = true;
                let schedule = !state.repair_scheduled;
                state.repair_scheduled = true;
                drop(state);
                if schedule {
                    self.schedule_repair_in(channel, std::time::Duration::ZERO);
                }
            }
        }
    }

    /// Hands an ephemeral `message` frame to the backplane, if there is one. Refused with
    /// `too_large` (before anything is delivered) when it does not fit the transport.
    pub(crate) fn forward_ephemeral(
        &self,
        channel: &ChannelName,
        frame: &EncodedFrame,
    ) -> Result<(), HubError> {
        match &self.inner.backplane {
            None => Ok(()),
            Some(backplane) => forward(&**backplane, channel, encode_ephemeral(frame)),
        }
    }

    /// Hands a `signal` frame for `to` to the backplane; false on a single node.
    pub(crate) fn forward_signal(
        &self,
        channel: &ChannelName,
        to: &UserId,
        frame: &EncodedFrame,
    ) -> Result<bool, HubError> {
        match &self.inner.backplane {
            None => Ok(false),
            Some(backplane) => {
                forward(&**backplane, channel, encode_signal(frame, to)).map(|()| true)
            }
        }
    }
}

fn forward(
    backplane: &dyn Backplane,
    channel: &ChannelName,
    event: String,
) -> Result<(), HubError> {
    let limit = backplane.max_event_bytes();
    if event.len() > limit {
        return Err(HubError::TooLarge {
            size: event.len(),
            limit,
            namespace: channel.namespace().to_owned(),
        });
    }
    backplane.send(&event);
    Ok(())
}

#[cfg(test)]
mod tests {
    use relay_proto::{MessageId, Payload, Timestamp};

    use super::*;

    #[test]
    fn events_round_trip_and_foreign_ones_are_refused() {
        let channel = ChannelName::parse("chat:1").unwrap();
        let message = ServerFrame::Message {
            channel: channel.clone(),
            id: MessageId::now_v7(),
            seq: None,
            from: Some(UserId::parse("alice").unwrap()),
            event: Some("typing".into()),
            payload: Payload::from_json("{}").unwrap(),
            ts: Timestamp::now(),
        }
        .encode();
        assert_eq!(
            decode(&encode_ephemeral(&message)),
            Some(RemoteEvent::Ephemeral(message.clone(), channel.clone()))
        );
        let signal = ServerFrame::Signal {
            channel: channel.clone(),
            from: UserId::parse("alice").unwrap(),
            payload: Payload::from_json(r#"{"sdp":"x"}"#).unwrap(),
            event: Some("offer".into()),
        }
        .encode();
        let bob = UserId::parse("bob").unwrap();
        assert_eq!(
            decode(&encode_signal(&signal, &bob)),
            Some(RemoteEvent::Signal(signal.clone(), channel, bob))
        );
        assert_eq!(
            decode(&encode_ephemeral(&signal)),
            None,
            "kind and frame must agree"
        );
        assert_eq!(decode(r#"{"k":"ephemeral","f":{"type":"nope"}}"#), None);
        assert_eq!(decode("[]"), None);
    }
}
