// Type declarations for @relay/client (src/relay.js), written by hand.

/** Where the client is in its life. */
export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

/** The transport of a session. */
export type Transport = "websocket" | "sse";

/** Options of {@link RelayClient}. */
export interface RelayClientOptions {
  /**
   * The WebSocket endpoint, `ws://host:port/ws` or `wss://…/ws`. The HTTP endpoints are
   * derived from it: `ws:` → `http:`, `wss:` → `https:`, a trailing `/ws` → `/sse` for the
   * SSE fallback and `/api` for the REST API, which a subscription catching up reads its
   * history from (so the REST API must be reachable from the page, like the SSE endpoint:
   * same origin, or an origin in the server's `allowed_origins`).
   */
  url: string;
  /**
   * The JWT, or an async function returning one. A function is called for every connection
   * attempt, so that a reconnect after a 4001 (expired token) gets a fresh token; a token the
   * server refused is never used again by an automatic reconnect. With a fixed string, a
   * 4001 after the first welcome closes the client for good.
   */
  token: string | (() => string | Promise<string>);
  /**
   * `"auto"` (default): a WebSocket, falling back to SSE for the client's whole life when the
   * first two WebSocket attempts fail before any WebSocket was welcomed. `"websocket"` or
   * `"sse"`: only that transport.
   */
  transport?: "auto" | Transport;
  /**
   * Reconnect delays in ms: attempt `n` waits a uniformly random time in
   * `[0, min(max, min * 2^n)]` (full jitter). Defaults: 250 and 30000. Reset by each welcome.
   */
  backoff?: { min?: number; max?: number };
  /**
   * How long `subscribe`, `publish`, `edit`, `delete`, `signal`, `presence` and `markRead`
   * may take, in ms (default 10000).
   */
  requestTimeout?: number;
  /**
   * How long a connection attempt may take, in ms (default 10000): from asking the token
   * provider to the `welcome`. A provider that does not answer in time fails the attempt
   * like a missing `welcome` does, and the backoff tries again; its late answer is ignored.
   */
  connectTimeout?: number;
  /**
   * Events buffered per subscription for its async iterator (default 1024). A subscription
   * catching up over REST waits for a reader of its iterator when this buffer is full.
   */
  bufferSize?: number;

  /** For tests: the WebSocket constructor (default `globalThis.WebSocket`). */
  WebSocket?: new (url: string, protocols?: string | string[]) => WebSocket;
  /** For tests: the EventSource constructor (default `globalThis.EventSource`). */
  EventSource?: new (url: string) => EventSource;
  /** For tests: `fetch` (default `globalThis.fetch`), for SSE POSTs and history reads. */
  fetch?: (url: string, init: RequestInit) => Promise<Response>;
  /** For tests: a random number in [0, 1) for the backoff jitter (default `Math.random`). */
  random?: () => number;
  /** For tests: the timer functions (default the global ones). */
  setTimeout?: (callback: () => void, ms: number) => unknown;
  clearTimeout?: (handle: unknown) => void;
}

/** What the server acknowledged for a publish. */
export interface Ack {
  /** The message's id (a UUID v7). */
  messageId: string;
  /** Its seq in the channel; `null` for an ephemeral publish. */
  seq: number | null;
}

export interface PublishOptions {
  /** The event name (`"text"`, `"ADDED"`, …), at most 255 bytes. */
  event?: string;
  /**
   * Live only: not stored, no seq, not echoed to this connection, not sent again after a
   * reconnect (it rejects with `"disconnected"` if the connection drops before its ack).
   */
  ephemeral?: boolean;
  /**
   * The persistent publish's idempotency key: 1 to 128 visible ASCII characters. Defaults to
   * a fresh random UUID. Give your own (an outbox row id, or the key of an `"unconfirmed"`
   * error) to make a retry after a page reload store the message at most once.
   */
  idempotencyKey?: string;
}

/** Options of {@link RelayClient.edit} and {@link RelayClient.delete}. */
export interface RevisionOptions {
  /**
   * The idempotency key, as for a persistent publish ({@link PublishOptions.idempotencyKey}):
   * defaults to a fresh random UUID; give the key of an `"unconfirmed"` error to settle it.
   */
  idempotencyKey?: string;
}

export interface SignalOptions {
  /** The event name (`"offer"`, `"answer"`, `"ice"`). */
  event?: string;
  /**
   * Ask what becomes of the signal: `signal` then resolves with its first receipt
   * ({@link SignalReceipt}) instead of `undefined`, and after `"held"` the channel's
   * subscription gets one more, as a `receipt` event ({@link ReceiptEvent}).
   */
  receipt?: boolean;
  /**
   * Milliseconds the server holds the signal when no connection of `to` can take it,
   * delivering it when `to` subscribes to the channel: a positive safe integer, at most the
   * server's maximum (`max_signal_ttl_secs`, 300 s by default; above it the server refuses
   * with `"bad_request"`). Without it, a signal nobody can take is not held.
   */
  ttlMs?: number;
}

/** What became of a signal sent with `receipt: true`. */
export type ReceiptStatus =
  /** A connection of the target received it. */
  | "delivered"
  /** No connection of the target could take it: it is held up to its `ttlMs`; `"delivered"` or `"expired"` follows. */
  | "held"
  /** No connection of the target received it before its `ttlMs` ran out, or at once without a `ttlMs`. */
  | "expired";

/** The first receipt of a signal sent with `receipt: true`: what {@link RelayClient.signal} resolves with. */
export interface SignalReceipt {
  /**
   * The server's id of the signal (a UUID): the signal reaches the target with it
   * ({@link SignalEvent.signal}), and the later receipt carries it ({@link ReceiptEvent}).
   */
  signal: string;
  /** `"delivered"`, `"held"` (one more receipt follows, as a `receipt` event), or `"expired"`. */
  status: ReceiptStatus;
}

export interface SubscribeOptions {
  /**
   * The last seq the application has seen on the channel: the server first replays every
   * stored message after it. When it cannot (further behind than it replays), the
   * subscription catches up over REST first (see {@link Subscription}); only messages the
   * history no longer holds are reported, with a `gap` event. Not with `mode: "latest"`
   * (refused with `"bad_request"`).
   */
  since?: number;
  /**
   * `"reliable"` (the default): every message, once each, in seq order. `"latest"`, for
   * channels whose messages are states where only the newest matters (prices, cursors,
   * dashboards): the subscription starts with the channel's newest stored message, and the
   * server keeps at most one message waiting for it, so a slow reader skips older ones.
   * Seqs increase with holes; no `gap` is raised for them and nothing is caught up over
   * REST. After a reconnect it starts from the newest message again (no `since`, no
   * `recovered`); a repeat of the last message delivered is dropped.
   *
   * @example
   * const prices = await client.subscribe("prices:eur", { mode: "latest" });
   * prices.on("message", (m) => render(m.payload));
   */
  mode?: SubscribeMode;
}

export type SubscribeMode = "reliable" | "latest";

/** Events of {@link RelayClient.on}. */
export interface ClientEventMap {
  /** A session began (the first, or after a reconnect); subscriptions are being restored. */
  connected: { connectionId: string; transport: Transport };
  /**
   * The session was lost. `code` is the close code (1001, 4001, 4002, 4008, …; 4001 also for
   * an SSE POST answered 401), or `null` when the client detected the loss itself (watchdog,
   * failed POST). A reconnect follows unless the client closes.
   */
  disconnected: { code: number | null; reason: string };
  /** The client closed for good: `close()`, or a fixed token refused with 4001. */
  closed: Record<string, never>;
  /** `"auto"` settled on SSE. */
  transport: { transport: Transport };
}

/** A message published to the channel. */
export interface ChannelMessage {
  type: "message";
  channel: string;
  /** The message id (a UUID v7). */
  id: string;
  /** Its seq; `null` for an ephemeral message (typing, cursors). */
  seq: number | null;
  /** The publisher; `null` for messages published by the server. */
  from: string | null;
  event: string | null;
  /** The publisher's JSON payload (`null` for a delete, and once deleted: see `ref`). */
  payload: unknown;
  /** Server time of the publish, RFC 3339 in UTC with milliseconds. */
  ts: string;
  /**
   * Only on an edit or delete (`event` `"edit"` or `"delete"`): the seq of the message it
   * changes. Apply it to the messages you hold with {@link applyRevision}. A message
   * deleted before it was replayed (or read over REST) arrives with payload `null`, and so
   * do its edits. A message with event `"edit"` or `"delete"` but no `ref` (published so
   * with `publish`, as before edits existed) is an ordinary message, not a revision.
   */
  ref?: number;
}

/** A user's first connection subscribed (namespaces with join/leave). */
export interface JoinEvent {
  type: "join";
  user: string;
}

/** A user's last connection left. */
export interface LeaveEvent {
  type: "leave";
  user: string;
}

/** A signal addressed to this user. */
export interface SignalEvent {
  type: "signal";
  from: string;
  event: string | null;
  payload: unknown;
  /**
   * Only on a signal sent with a receipt or a `ttlMs` ({@link SignalOptions}): the server's
   * id of it (a UUID), the same on every delivery. A held signal can arrive twice (in a
   * cluster, offered again before the delivering node answered): drop a repeat by this id.
   */
  signal?: string;
}

/**
 * What became of a signal this connection sent with `receipt: true` in this channel, after
 * its first receipt, which the `signal` promise resolved with, said `"held"`: `"delivered"`
 * or `"expired"`. Also a first receipt that arrives after the `signal` promise rejected with
 * `"timeout"`. Only on the connection that sent the signal: after a reconnect, the receipts
 * of signals sent before it never come (the server still delivers a held signal). Dropped
 * when this client is no longer subscribed to the channel.
 */
export interface ReceiptEvent {
  type: "receipt";
  /** The signal's target. */
  to: string;
  /** The server's id of the signal ({@link SignalReceipt.signal}). */
  signal: string;
  status: ReceiptStatus;
}

/**
 * This user's read marker in the channel moved to `seq` elsewhere: on another of its
 * connections (another tab or device, with {@link RelayClient.markRead}) or over REST
 * (`PUT /api/channels/{name}/read`). Never sent for this connection's own `markRead`, whose
 * promise carries the marker instead.
 */
export interface ReadEvent {
  type: "read";
  seq: number;
}

/**
 * After a reconnect, or at the end of a catch-up over REST, the server replayed everything
 * after `since`: nothing was lost.
 */
export interface RecoveredEvent {
  type: "recovered";
  since: number;
}

/**
 * Messages `since + 1 … resumedAt` are missing. Sent when the channel's history no longer
 * holds them (trimmed by the namespace's `max_history`), found while catching up over REST;
 * when that history could not be read five times in a row (then up to the channel's seq at
 * `subscribed`, and delivery goes on from there); when `since` was past the channel's latest
 * seq (a wiped store); and, to the async iterator only, when its buffer overflowed with live
 * events and dropped them (a catch-up waits for room instead): reload those over REST
 * (`GET /api/channels/{name}/messages?after=since`) if needed.
 */
export interface GapEvent {
  type: "gap";
  since: number;
  resumedAt: number;
}

/**
 * The subscription ended: the server ended it (`"forbidden"`, e.g. removed from the
 * channel's members), refused to restore it (the server's error code), or the client closed
 * (`"closed"`, or `"unauthorized"` for a refused fixed token). Nothing follows.
 */
export interface EndedEvent {
  type: "ended";
  code: string;
  reason: string;
}

/** What a subscription delivers, to handlers and to its async iterator. */
export type SubscriptionEvent =
  | ChannelMessage
  | JoinEvent
  | LeaveEvent
  | SignalEvent
  | ReceiptEvent
  | ReadEvent
  | RecoveredEvent
  | GapEvent
  | EndedEvent;

/** Events of {@link Subscription.on}, by type. */
export interface SubscriptionEventMap {
  message: ChannelMessage;
  join: JoinEvent;
  leave: LeaveEvent;
  signal: SignalEvent;
  receipt: ReceiptEvent;
  read: ReadEvent;
  recovered: RecoveredEvent;
  gap: GapEvent;
  ended: EndedEvent;
}

/** Error codes of the server, and of the client itself. */
export type RelayErrorCode =
  | "bad_request"
  | "unauthorized"
  | "forbidden"
  | "not_found"
  | "conflict"
  | "too_large"
  | "rate_limited"
  | "unavailable"
  | "internal"
  /** No reply within `requestTimeout`; for a publish: it was never sent, so not stored. */
  | "timeout"
  /** A persistent publish was sent but not acknowledged in time: it may be stored. */
  | "unconfirmed"
  /**
   * The connection dropped before the reply (not for persistent publishes, which wait for
   * the next connection), or, at once and with nothing sent, the client is not connected
   * and 1000 requests are already queued.
   */
  | "disconnected"
  /** The client is closed. */
  | "closed"
  /** The server sent something this client did not expect. */
  | "protocol";

/** Why an operation failed. */
export class RelayError extends Error {
  constructor(code: string, message: string, details?: { idempotencyKey?: string; cause?: unknown });
  readonly name: "RelayError";
  /** A server error code (`"forbidden"`, …) or one of the client's own (`"timeout"`, …). */
  readonly code: RelayErrorCode | (string & {});
  /**
   * Set for `"unconfirmed"`: publish again with this key to settle whether the message was
   * stored; the server stores it at most once and answers with its seq.
   */
  readonly idempotencyKey: string | undefined;
}

/**
 * A connection to a Relay server that survives disconnects.
 *
 * @example
 * const client = new RelayClient({ url: "wss://relay.example/ws", token: () => fetchToken() });
 * await client.connect();
 * const room = await client.subscribe("chat:42");
 * room.on("message", (m) => console.log(m.from, m.payload));
 * await client.publish("chat:42", { text: "hi" }, { event: "text" });
 */
export class RelayClient {
  constructor(options: RelayClientOptions);

  readonly state: ConnectionState;
  /** The transport in use, or about to be. */
  readonly transport: Transport;
  /** The user id from the last `welcome`; `null` before the first. */
  readonly user: string | null;

  /**
   * Connects. Resolves after the first `welcome`; rejects with a {@link RelayError} on the
   * first failure (`"unauthorized"` for a refused token, `"disconnected"`, `"timeout"`,
   * `"protocol"`), after which the client is `"idle"` again and `connect` may be retried.
   * In `"auto"` mode a failing WebSocket is retried once and then replaced by SSE before the
   * promise rejects. Once connected, the client reconnects on its own until `close()`.
   */
  connect(): Promise<void>;

  /** Calls `handler` synchronously on each event; returns the function that removes it. */
  on<K extends keyof ClientEventMap>(type: K, handler: (event: ClientEventMap[K]) => void): () => void;

  /**
   * Subscribes to `channel`; resolves after the server's `subscribed`. The subscription is
   * restored after every reconnect from its {@link Subscription.lastSeq}; when the server
   * cannot replay that far, it catches up over REST ({@link Subscription}). With
   * `{ mode: "latest" }` it is restored at the channel's newest message instead
   * ({@link SubscribeOptions.mode}). Rejects with the server's code (`"forbidden"`, …),
   * `"bad_request"` when this client is already subscribed or the options are invalid
   * (an unknown `mode`, `since` with `"latest"`), `"disconnected"` when the connection dropped before the reply, `"timeout"`
   * when no reply came within `requestTimeout`. A subscribe that timed out may still take
   * effect on the server: the client undoes it when its late `subscribed` arrives, or, when
   * the channel is subscribed again first, sends `unsubscribe` before the new `subscribe`,
   * so that exactly one subscription remains.
   */
  subscribe(channel: string, options?: SubscribeOptions): Promise<Subscription>;

  /**
   * Publishes `payload` (any JSON value). A persistent publish resolves once the message is
   * stored, with its seq; it is sent again with the same idempotency key after a reconnect
   * that lost its ack, so it is stored once. It rejects with:
   *
   * - the server's code (`"forbidden"`, `"too_large"`, `"rate_limited"`, …): refused, not
   *   stored;
   * - `"bad_request"` from the client itself: at once, with nothing sent, when the payload
   *   cannot be encoded as JSON (a BigInt, a cycle);
   * - `"timeout"`: persistent: never sent within `requestTimeout`, so not stored; ephemeral:
   *   no ack within `requestTimeout`;
   * - `"unconfirmed"`: persistent, sent, no ack within `requestTimeout`: maybe stored (see
   *   {@link RelayError.idempotencyKey});
   * - `"disconnected"`: at once, with nothing sent, when the client is not connected and
   *   1000 requests are already queued; for an ephemeral publish, also when the connection
   *   drops before its ack (maybe delivered). A persistent publish that was accepted never
   *   rejects with it: a lost connection makes it wait for the next one;
   * - `"rate_limited"` from the client itself: at once, with nothing sent, when connected and
   *   1000 requests already wait for the server;
   * - `"closed"`: the client is closed, or `close()` was called while it waited (maybe
   *   stored, if it had been sent);
   * - `"unauthorized"`: a fixed token was refused while it waited (maybe stored, if it had
   *   been sent);
   * - `"protocol"`: the server answered with another frame than `ack`.
   */
  publish(channel: string, payload: unknown, options?: PublishOptions): Promise<Ack>;

  /**
   * Sends `payload` to the connections of user `to` subscribed to `channel` (this client
   * must be subscribed too). Resolves once the server relayed it (with `ttlMs`: relayed, or
   * held for `to`); rejects with `"forbidden"`, or `"not_found"` where presence is on and
   * `to` is not there (only without `receipt` and `ttlMs`).
   *
   * With `receipt: true` it resolves with the signal's first receipt instead: its server id
   * and `"delivered"`, `"held"` (with `ttlMs`: nobody could take it yet; the last receipt
   * follows as a `receipt` event of the channel's subscription, {@link ReceiptEvent}), or
   * `"expired"` (nobody could take it, and no `ttlMs`).
   *
   * Either way it rejects like `presence`: with the server's code (`"forbidden"`,
   * `"not_found"`, `"bad_request"` for a `ttlMs` above the server's maximum,
   * `"rate_limited"` when the server holds too many signals), `"timeout"`, `"disconnected"`
   * (the connection dropped before the answer; the signal may have been delivered or held,
   * and the server still delivers a held one), `"closed"`; and at once, with nothing sent,
   * with `"bad_request"` when `ttlMs` is not a positive safe integer, `receipt` is not a
   * boolean, or the payload cannot be encoded as JSON. It is never sent again after a
   * reconnect.
   *
   * @example
   * const { signal, status } = await client.signal("call:9", "bob", offer, {
   *   event: "offer",
   *   receipt: true,
   *   ttlMs: 30000,
   * });
   * // "delivered", "held" (bob is not there yet), or "expired"
   * showCallState(status);
   * // After "held": "delivered" once bob subscribes within 30 s, else "expired".
   * call.on("receipt", (r) => {
   *   if (r.signal === signal) showCallState(r.status);
   * });
   */
  signal(
    channel: string,
    to: string,
    payload: unknown,
    options: SignalOptions & { receipt: true },
  ): Promise<SignalReceipt>;
  signal(
    channel: string,
    to: string,
    payload: unknown,
    options?: SignalOptions & { receipt?: false },
  ): Promise<void>;
  signal(channel: string, to: string, payload: unknown, options?: SignalOptions): Promise<SignalReceipt | void>;

  /** The users online in `channel`, sorted. */
  presence(channel: string): Promise<string[]>;

  /**
   * Marks `channel` read up to `seq` for this user and resolves with the marker the server
   * stored. That may differ from `seq`: the marker never moves back (a lower `seq` changes
   * nothing) and never passes the channel's latest seq. When it moved, the user's other
   * connections subscribed to the channel get a `read` event ({@link ReadEvent}). Needs the
   * right to subscribe to the channel; counts against the publish rate limit. Rejects like
   * `presence`: with the server's code (`"forbidden"`, `"rate_limited"`, …), `"timeout"`,
   * `"disconnected"` (the connection dropped before the reply; the marker may have moved,
   * and repeating the call is harmless), `"closed"`; and at once, with nothing sent, with
   * `"bad_request"` when `seq` is not a non-negative safe integer.
   *
   * @example
   * // Everything shown so far has been seen.
   * const marker = await client.markRead("chat:42", room.lastSeq ?? 0);
   * clearUnreadUpTo(marker);
   * // Another tab or device of this user read further.
   * room.on("read", ({ seq }) => clearUnreadUpTo(seq));
   */
  markRead(channel: string, seq: number): Promise<number>;

  /**
   * Replaces the payload of message `seq` of `channel` with `payload`: a persistent publish
   * with event `"edit"` and `ref` = `seq`, which subscribers receive as an ordinary message
   * ({@link ChannelMessage.ref}). Allowed to the message's sender, an owner or admin of the
   * channel, and services. Exactly once like {@link RelayClient.publish}: it carries an
   * idempotency key and is sent again with it after a reconnect that lost its ack. Resolves
   * with the ack of the edit: its `seq` is the edit's own, not `seq`. Rejects like
   * `publish`, and with the server's `"not_found"` (no such message: never stored, trimmed,
   * or itself an edit or delete), `"conflict"` (deleted already), `"forbidden"` (not
   * allowed); a repeat with the same key of an edit that was stored (after a reconnect, or
   * with the key of an `"unconfirmed"` error) resolves with its first ack when it comes
   * within the server's idempotency window (10 minutes by default), whatever happened to
   * the message since; at once, with nothing sent, with `"bad_request"` when `seq` is not a
   * positive safe integer or the payload cannot be encoded as JSON. (A `publish` with event
   * `"edit"` or `"delete"` and no `ref` is an ordinary message, not an edit or delete.)
   *
   * @example
   * const { seq: editSeq } = await client.edit("chat:42", 17, { text: "hi, fixed" });
   */
  edit(channel: string, seq: number, payload: unknown, options?: RevisionOptions): Promise<Ack>;

  /**
   * Deletes message `seq` of `channel`: a persistent publish with event `"delete"` and
   * `ref` = `seq`; the server replaces the stored payloads of the message and of all its
   * edits with `null`. Allowed, sent exactly once, resolved and rejected like
   * {@link RelayClient.edit}: a delete of a message deleted already is refused with
   * `"conflict"`, and a repeat of a delete that was stored resolves with its first ack
   * within the idempotency window.
   */
  delete(channel: string, seq: number, options?: RevisionOptions): Promise<Ack>;

  /**
   * Tells the channel this user is typing: an ephemeral publish with event `"typing"` and
   * payload `{}`, at most one per channel every 2 s (calls in between do nothing). The
   * promise never rejects.
   */
  typing(channel: string): Promise<void>;

  /** Closes the client for good: pending requests reject with `"closed"`, subscriptions end. Idempotent. */
  close(): void;
}

/**
 * Applies an edit or delete (a message with {@link ChannelMessage.ref}) to `messages`, a
 * list the application holds, without modifying it. Returns a new list in which the message
 * whose seq is `ref` reads as it does now, like `GET /api/channels/{name}/messages?view=current`
 * returns it: an edit gives it the edit's payload and `edited` = the edit's seq; a delete
 * gives it payload `null` and `deleted` = the delete's seq (a tombstone, kept in place).
 * Returns `messages` itself when nothing changes: `revision` is not an edit or delete, the
 * message it changes is not in the list, or the list reflects it already or something later
 * (a deleted message; an edit at or after this one), as after loading the current view and
 * then subscribing from an earlier seq.
 *
 * @example
 * room.on("message", (m) => {
 *   messages = m.ref === undefined ? [...messages, m] : applyRevision(messages, m);
 * });
 */
export function applyRevision<T extends RevisableMessage>(messages: readonly T[], revision: ChannelMessage): T[];

/** What {@link applyRevision} needs of a message: its seq, and what it sets. */
export interface RevisableMessage {
  seq: number | null;
  payload?: unknown;
  /** The seq of the edit whose payload the message shows. */
  edited?: number;
  /** The seq of the delete that removed it. */
  deleted?: number;
}

/**
 * A subscription to one channel. Events go to handlers (synchronously, never buffered) and
 * to its async iterator (through a buffer of at most `bufferSize` events: when it is full,
 * the oldest messages are dropped and the iterator gets a `gap` naming the persistent ones;
 * in `latest` mode every older message is dropped instead, with no `gap`).
 *
 * **Catch-up.** When the server cannot replay what the subscription missed (`subscribed`
 * with `recovered: false`: more than its `max_recovery` messages, or a replay too large),
 * the subscription reads the missed history over REST
 * (`GET /api/channels/{name}/messages?after={lastSeq}&limit=200`, with the session's token)
 * and delivers it as ordinary `message` events, once each and in order, page after page.
 * Live messages arriving meanwhile are dropped without moving {@link Subscription.lastSeq}. After a short
 * page, it subscribes again from `lastSeq` (an `unsubscribe` and a `subscribe`); the server
 * replays the rest (a `recovered` event), or cannot again, and the catch-up goes on. A
 * client offline for a week thus misses nothing, and holds one page at most: while the
 * async iterator is read, each event waits for room in its buffer before the next is
 * delivered and the next page is read. Only history the server no longer holds produces a
 * `gap`. A failed read is retried after 100 ms, doubling up to 5 s; after five failures in
 * a row the subscription reports a `gap` up to the channel's seq at `subscribed` and
 * continues from there. The catch-up stops with the subscription; across a reconnect it
 * goes on, and the subscription is subscribed again when it is done.
 */
export class Subscription implements AsyncIterable<SubscriptionEvent> {
  private constructor();

  readonly channel: string;
  /** The mode it was subscribed with ({@link SubscribeOptions.mode}). */
  readonly mode: SubscribeMode;
  /**
   * The cursor: the highest persistent seq delivered, or where the subscription started
   * (its `since`, or the channel's seq at `subscribed`). Store it to resume later with
   * `subscribe(channel, { since: lastSeq })`. In `latest` mode: the seq of the last message
   * delivered, or null before the first.
   */
  readonly lastSeq: number | null;

  /** Calls `handler` synchronously on each event; returns the function that removes it. */
  on<K extends keyof SubscriptionEventMap>(
    type: K,
    handler: (event: SubscriptionEventMap[K]) => void,
  ): () => void;

  /** Stops delivery at once (the iterator finishes) and tells the server. */
  unsubscribe(): Promise<void>;

  /**
   * The subscription's events, `{ type, ...fields }`, in order. The iteration ends after an
   * `ended` event, or after `unsubscribe()`. Leaving a `for await` loop does not unsubscribe.
   */
  [Symbol.asyncIterator](): AsyncIterableIterator<SubscriptionEvent>;
}
