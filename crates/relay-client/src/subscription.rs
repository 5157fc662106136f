//! [`Subscription`] and the [`Event`]s it yields.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use relay_proto::{
    ChannelName, MessageId, Payload, ReceiptStatus, Revision, Seq, Timestamp, UserId,
};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::driver::Command;

/// A message delivered on a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The channel.
    pub channel: ChannelName,
    /// The message id.
    pub id: MessageId,
    /// Its seq; `None` for an ephemeral message (typing, cursors).
    pub seq: Option<Seq>,
    /// The publisher; `None` for server publishes.
    pub from: Option<UserId>,
    /// The event name.
    pub event: Option<String>,
    /// The opaque JSON payload.
    pub payload: Payload,
    /// Server time of the publish.
    pub ts: Timestamp,
    /// For an `edit` or `delete` event: the seq of the message it changes.
    pub reference: Option<Seq>,
}

impl Message {
    /// What this message does to the one its [`reference`](Self::reference) names: `Edit`
    /// (its payload replaces that message's) or `Delete`; `None` for any other message.
    pub fn revision(&self) -> Option<Revision> {
        self.reference
            .and(Revision::of_event(self.event.as_deref()))
    }

    /// Deserializes the payload into `T`.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.payload.as_str())
    }
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A published message. Persistent messages arrive in seq order, each exactly once, across
    /// reconnects.
    Message(Message),
    /// A user's first connection subscribed (namespaces with join/leave).
    Join(UserId),
    /// A user's last connection left.
    Leave(UserId),
    /// A signal addressed to this user.
    Signal {
        /// The sender.
        from: UserId,
        /// The event name (`offer`, `answer`, `ice`).
        event: Option<String>,
        /// The opaque payload.
        payload: Payload,
        /// The server's id of a signal sent with a receipt or a TTL (the same on a repeat).
        signal: Option<MessageId>,
    },
    /// What became of a signal this connection sent with
    /// [`signal_with_receipt`](crate::Client::signal_with_receipt) after its first answer was
    /// `held`: `delivered` or `expired`.
    Receipt {
        /// The signal's target.
        to: UserId,
        /// The server's id of the signal (as in [`SignalReceipt::signal`](crate::SignalReceipt)).
        signal: MessageId,
        /// `delivered` or `expired`.
        status: ReceiptStatus,
    },
    /// This user's read marker in the channel moved (another of its connections, or a REST
    /// call, marked it read up to this seq): for keeping unread badges in step across devices.
    Read(Seq),
    /// After a reconnect (or after the application fell behind and caught up), the server
    /// replayed everything missed since `since`: nothing was lost. Informational.
    Recovered {
        /// The last seq seen before the reconnect.
        since: Seq,
    },
    /// The server refused to restore this subscription (the user lost the right to it, say);
    /// the stream ends after this event.
    Refused {
        /// The protocol error code.
        code: relay_proto::ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// Messages `since + 1 ..= resumed_at` cannot be delivered: the channel's history no
    /// longer holds them (trimmed, `max_history`), or it could not be read over REST five
    /// times in a row. A subscription further behind than the server replays does not get
    /// a gap: it pages through the history over REST and then goes on live. Messages after
    /// `resumed_at` follow.
    Gap {
        /// The last seq seen before the reconnect.
        since: Seq,
        /// Where live delivery resumes (the channel's latest seq at the resubscribe).
        resumed_at: Seq,
    },
}

/// A live subscription: a [`Stream`] of [`Event`]s. Dropping it unsubscribes.
pub struct Subscription {
    pub(crate) channel: ChannelName,
    pub(crate) start: Seq,
    pub(crate) events: mpsc::Receiver<Event>,
    pub(crate) commands: mpsc::UnboundedSender<Command>,
}

impl Subscription {
    /// The channel.
    pub fn channel(&self) -> &ChannelName {
        &self.channel
    }

    /// The channel's latest seq when the subscription started: messages after it follow.
    pub fn start_seq(&self) -> Seq {
        self.start
    }

    /// Events received and not yet taken.
    pub fn events_pending(&self) -> usize {
        self.events.len()
    }

    /// The next event; `None` once the client is closed.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The next message, skipping other events.
    pub async fn next_message(&mut self) -> Option<Message> {
        loop {
            if let Event::Message(m) = self.events.recv().await? {
                return Some(m);
            }
        }
    }
}

impl Stream for Subscription {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.events.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Unsubscribe {
            channel: self.channel.clone(),
        });
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}
