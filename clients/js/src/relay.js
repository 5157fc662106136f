// @relay/client: the browser client of a Relay server, as one self-contained ES module.
//
// The server serves this exact file at `/client/relay.js`, so it imports nothing. It mirrors
// the Rust client `relay-client`:
//
// - `RelayClient` keeps one connection open (a WebSocket, or Server-Sent Events plus POSTs
//   where WebSockets do not get through) and reconnects on its own with full-jitter backoff.
//   After a 4001 it asks the token provider for a new token and never reuses a refused one.
// - Every subscription is restored after a reconnect with `since` = its cursor, and
//   duplicates are filtered by seq, so each persistent message arrives once, in order.
// - A subscription further behind than the server replays catches up over REST, page by
//   page, then subscribes again from where it got to; only history the server no longer
//   holds is reported, with a `gap` event.
// - A subscription in `latest` mode (for state: prices, cursors) starts from the channel's
//   newest message and, after a reconnect, from the newest again, never with `since`. Its
//   seqs have holes by design: no `gap`, no catch-up; only a repeat is dropped.
// - Every persistent publish carries an idempotency key and is sent again, with that key,
//   after a reconnect that lost its ack: it is stored once. It ends with its ack, the
//   server's error, "timeout" (never sent) or "unconfirmed" (sent, no ack in time). Edits
//   and deletes of stored messages are persistent publishes too (event "edit" or "delete",
//   `ref` the seq they change), and go the same way.
// - A signal may ask for receipts (`receipt: true`) and to be held for a target not there
//   yet (`ttlMs`). Its first receipt answers it; the one that follows `held` is a `receipt`
//   event of the channel's subscription. Signals delivered carry the server's id, if any.
// - Memory is bounded: at most 1000 requests wait for an answer, and each subscription
//   buffers at most `bufferSize` events for its async iterator.
//
// The wire protocol is docs/protocol.md in the server's repository.

const CLIENT_EVENTS = ["connected", "disconnected", "closed", "transport"];
const SUBSCRIPTION_EVENTS = ["message", "join", "leave", "signal", "receipt", "read", "recovered", "gap", "ended"];
const TRANSPORTS = ["auto", "websocket", "sse"];
const SUBSCRIBE_MODES = ["reliable", "latest"];

/** Requests (queued while disconnected, or sent and unanswered) allowed at once. */
const MAX_OUTSTANDING = 1000;
/** The connection counts as lost after this many heartbeats without any frame. */
const WATCHDOG_HEARTBEATS = 2.5;
const DEFAULT_HEARTBEAT_MS = 25000;
const MIN_HEARTBEAT_MS = 100;
/** The server refuses a user's connections this long after an abuse close. */
const ABUSE_COOLDOWN_MS = 10000;
const ABUSE_CLOSE_CODES = new Set([4029, 1009, 1002, 1007]);
/** Close code of a refused or expired token. */
const UNAUTHORIZED = 4001;
/** Restores refused for a passing reason are tried again after this long. */
const RESTORE_RETRY_MS = 1000;
const PASSING_ERRORS = new Set(["unavailable", "internal", "rate_limited"]);
const TYPING_INTERVAL_MS = 2000;
/** In "auto" mode, WebSocket attempts that may fail before the client settles on SSE. */
const WEBSOCKET_FAILURES_BEFORE_SSE = 2;
const SUBPROTOCOL = "relay.v1.json";
/** Wait before re-posting a batch answered 429 without a usable `Retry-After`. */
const DEFAULT_RETRY_AFTER_MS = 1000;
/** The server answers 400 to a POST of more frames than this. */
const SSE_MAX_FRAMES_PER_POST = 32;
/**
 * The server answers 413 to a POST body over 4 × `max_frame_bytes`; the client cannot know
 * the server's setting and keeps under the default's (131072 bytes).
 */
const SSE_MAX_POST_BYTES = 4 * 131072;
/** Messages per history page read while a subscription catches up (the server's maximum). */
const CATCH_UP_PAGE = 200;
/** History reads that may fail in a row before a catch-up gives up with a `gap`. */
const CATCH_UP_ATTEMPTS = 5;
/** Wait before reading a failed history page again; it doubles up to the maximum. */
const CATCH_UP_RETRY_MS = 100;
const CATCH_UP_MAX_RETRY_MS = 5000;

/** Why an operation failed: a server error code, or one of the client's own. */
export class RelayError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {{idempotencyKey?: string, cause?: unknown}} [details]
   */
  constructor(code, message, { idempotencyKey, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "RelayError";
    this.code = code;
    this.idempotencyKey = idempotencyKey;
  }
}

/**
 * Why `payload` cannot be sent (a BigInt, a cycle), checked when the request is made: a frame
 * that fails to encode later would stall the transport's queue.
 * @returns {RelayError | null}
 */
function encodingError(payload) {
  try {
    JSON.stringify(payload ?? null);
    return null;
  } catch (cause) {
    return new RelayError("bad_request", `the payload cannot be encoded as JSON: ${cause.message}`, { cause });
  }
}

/** A connection to a Relay server that survives disconnects. */
export class RelayClient {
  #settings;
  #env;
  #connection;
  #events = new Listeners(CLIENT_EVENTS);
  #user = null;
  #nextId = 1;
  /** Frames sent and not yet answered, by frame id: requests, restores, abandoned subscribes. */
  #pending = new Map();
  /** Requests issued while disconnected, sent in order after the next welcome. */
  #outbox = [];
  /** Requests not settled yet, wherever they wait. */
  #outstanding = 0;
  /** Subscriptions by channel, from the `subscribe` call until they end. */
  #routes = new Map();
  /** Channels with a typing notice sent less than TYPING_INTERVAL_MS ago. */
  #typing = new Map();

  constructor(options) {
    this.#settings = settingsOf(options);
    this.#env = environmentOf(options);
    this.#connection = new Connection(this.#settings, this.#env, {
      opened: (session) => this.#opened(session),
      frame: (frame) => this.#received(frame),
      lost: (close) => this.#lost(close),
      stopped: (error) => this.#shutdown(error),
      transport: (transport) => this.#events.emit("transport", { transport }),
    });
  }

  /** "idle" | "connecting" | "open" | "reconnecting" | "closed" */
  get state() {
    return this.#connection.state;
  }

  /** The transport in use (or about to be): "websocket" | "sse". */
  get transport() {
    return this.#connection.kind;
  }

  /** The user id from the last `welcome`, or null before the first one. */
  get user() {
    return this.#user;
  }

  /** Resolves after the first `welcome`; rejects with the first failure. */
  connect() {
    return this.#connection.start();
  }

  on(type, handler) {
    return this.#events.on(type, handler);
  }

  /** Closes the client for good: pending requests reject with "closed", subscriptions end. */
  close() {
    if (this.#connection.close()) this.#shutdown(new RelayError("closed", "the client was closed"));
  }

  subscribe(channel, { since, mode = "reliable" } = {}) {
    const refusal = subscribeRefusal(since, mode);
    if (refusal !== null) return Promise.reject(refusal);
    if (this.#routes.has(channel)) {
      return Promise.reject(new RelayError("bad_request", `already subscribed to ${channel}`));
    }
    const route = new Route(channel, since ?? null, mode, this.#settings.bufferSize, this.#env, () =>
      this.#unsubscribe(route),
    );
    return this.#issue("subscribe", (request) => {
      request.route = route;
      request.since = since ?? null;
      route.awaiting = request.id;
      this.#routes.set(channel, route);
      return this.#subscribeFrames(request.id, route, request.since);
    });
  }

  publish(channel, payload, { event, ephemeral = false, idempotencyKey } = {}) {
    const unencodable = encodingError(payload);
    if (unencodable) return Promise.reject(unencodable);
    const frame = { type: "publish", channel, payload: payload ?? null };
    if (event !== undefined) frame.event = event;
    if (ephemeral) {
      return this.#issue("ephemeral", (request) => [{ ...frame, id: request.id, ephemeral: true }]);
    }
    return this.#persist("publish", frame, idempotencyKey);
  }

  /**
   * Replaces the payload of message `seq` of `channel`: a persistent publish with event
   * "edit" and `ref` = `seq`, sent exactly once like `publish`. Resolves with the ack of the
   * edit, whose seq is the edit's own.
   */
  edit(channel, seq, payload, { idempotencyKey } = {}) {
    const refusal = refRefusal(seq) ?? encodingError(payload);
    if (refusal) return Promise.reject(refusal);
    const frame = { type: "publish", channel, event: "edit", ref: seq, payload: payload ?? null };
    return this.#persist("edit", frame, idempotencyKey);
  }

  /**
   * Deletes message `seq` of `channel` (the server replaces its payload and its edits' with
   * null): a persistent publish with event "delete" and `ref` = `seq`, sent exactly once
   * like `publish`. Resolves with the ack of the delete, whose seq is the delete's own.
   */
  delete(channel, seq, { idempotencyKey } = {}) {
    const refusal = refRefusal(seq);
    if (refusal) return Promise.reject(refusal);
    const frame = { type: "publish", channel, event: "delete", ref: seq, payload: null };
    return this.#persist("delete", frame, idempotencyKey);
  }

  /**
   * A signal has no reply when it is delivered, so a ping follows it: when the pong arrives
   * without an error for the signal before it, the server relayed the signal (or, with
   * `ttlMs`, holds it). With `receipt: true` the server answers the signal itself: its first
   * `receipt` settles the request, with the signal's server id and `delivered`, `held` or
   * `expired`; after `held`, the last one reaches the channel's subscription as a `receipt`
   * event. Like the other requests that are not persistent publishes, neither is sent again
   * after a reconnect.
   */
  signal(channel, to, payload, { event, receipt, ttlMs } = {}) {
    const refusal = signalRefusal(receipt, ttlMs) ?? encodingError(payload);
    if (refusal) return Promise.reject(refusal);
    const frameOf = (id) => {
      const frame = { type: "signal", id, channel, to, payload: payload ?? null };
      if (event !== undefined) frame.event = event;
      if (receipt) frame.receipt = true;
      if (ttlMs !== undefined) frame.ttl_ms = ttlMs;
      return frame;
    };
    if (receipt) {
      return this.#issue("signalReceipt", (request) => {
        request.operation = "signal";
        return [frameOf(request.id)];
      });
    }
    return this.#issue("signal", (request) => {
      request.fence = this.#nextId++;
      return [frameOf(request.id), { type: "ping", id: request.fence }];
    });
  }

  presence(channel) {
    return this.#issue("presence", (request) => [{ type: "presence", id: request.id, channel }]);
  }

  /**
   * Marks `channel` read up to `seq` for this user; resolves with the marker the server
   * stored, which differs from `seq` when the marker was already higher (it never moves
   * back) or the channel's latest seq is lower (it never passes it).
   */
  markRead(channel, seq) {
    if (!Number.isSafeInteger(seq) || seq < 0) {
      const got = typeof seq === "number" ? seq : typeof seq;
      return Promise.reject(new RelayError("bad_request", `seq must be a non-negative safe integer, got ${got}`));
    }
    return this.#issue("read", (request) => [{ type: "read", id: request.id, channel, seq }]);
  }

  /** An ephemeral "typing" notice, at most one per channel every two seconds; never rejects. */
  typing(channel) {
    if (this.#typing.has(channel) || this.state === "closed") return Promise.resolve();
    const expiry = this.#env.setTimeout(() => this.#typing.delete(channel), TYPING_INTERVAL_MS);
    this.#typing.set(channel, expiry);
    return this.publish(channel, {}, { event: "typing", ephemeral: true }).then(
      () => undefined,
      () => undefined,
    );
  }

  // Requests

  /**
   * Issues a persistent publish (`operation`: "publish", "edit" or "delete"): it carries an
   * idempotency key, the caller's or a fresh one, and is sent again with it after a
   * reconnect that lost its ack.
   */
  #persist(operation, frame, idempotencyKey) {
    const key = idempotencyKey ?? randomKey();
    return this.#issue("publish", (request) => {
      request.operation = operation;
      request.idempotencyKey = key;
      return [{ ...frame, id: request.id, idempotency_key: key }];
    });
  }

  /**
   * Issues a request: `prepare` gets the request (its `id` assigned) and returns its frames.
   * The promise settles with the reply, a server error, or a client error (timeout, …).
   */
  #issue(kind, prepare) {
    const refusal = this.#refusal();
    if (refusal !== null) return Promise.reject(refusal);
    return new Promise((resolve, reject) => {
      const request = new Request(this.#nextId++, kind, resolve, reject);
      request.frames = prepare(request);
      request.timer = this.#env.setTimeout(() => this.#expire(request), this.#settings.requestTimeout);
      this.#outstanding += 1;
      if (this.#connection.isOpen) this.#connection.send(this.#register(request));
      else this.#outbox.push(request);
    });
  }

  /** Why a new request cannot be accepted now, or null. */
  #refusal() {
    if (this.state === "closed") return new RelayError("closed", "the client is closed");
    if (this.#outstanding < MAX_OUTSTANDING) return null;
    return this.#connection.isOpen
      ? new RelayError("rate_limited", `${MAX_OUTSTANDING} requests are already waiting for the server`)
      : new RelayError("disconnected", `disconnected, and ${MAX_OUTSTANDING} requests are already queued`);
  }

  /** Records a request as sent and returns its frames. */
  #register(request) {
    request.sent = true;
    this.#pending.set(request.id, request);
    if (request.fence !== null) this.#pending.set(request.fence, request);
    return request.frames;
  }

  /** Settles a request once, wherever it waited. */
  #finish(request, error, value) {
    this.#env.clearTimeout(request.timer);
    this.#pending.delete(request.id);
    if (request.fence !== null) this.#pending.delete(request.fence);
    this.#outstanding -= 1;
    if (error) request.reject(error);
    else request.resolve(value);
  }

  #expire(request) {
    const queued = this.#outbox.indexOf(request);
    if (queued >= 0) this.#outbox.splice(queued, 1);
    if (request.kind === "subscribe") this.#dropRoute(request.route, request.id);
    this.#finish(request, timeoutError(request));
    if (request.kind === "subscribe" && request.sent) this.#abandon(request.id, request.route.channel);
  }

  // Connection lifecycle

  /**
   * A session began: subscriptions are restored first, then persistent publishes whose ack
   * was lost go out again in their original order, then whatever was queued meanwhile.
   */
  #opened({ connectionId, user, transport }) {
    this.#user = user;
    const frames = [];
    for (const route of this.#routes.values()) {
      // A subscription catching up subscribes again itself once it is done.
      if (route.confirmed && route.catchUp === null) frames.push(...this.#restoreFrames(route));
    }
    for (const request of this.#outbox.splice(0)) frames.push(...this.#register(request));
    if (frames.length > 0) this.#connection.send(frames);
    this.#events.emit("connected", { connectionId, transport });
  }

  /**
   * The session is gone and nobody will answer what is pending. Persistent publishes wait
   * for the next session (their idempotency keys make the repeat safe); every other request
   * rejects with "disconnected", since it may or may not have taken effect.
   */
  #lost({ code, reason }) {
    const resend = [];
    for (const entry of new Set(this.#pending.values())) {
      if (!(entry instanceof Request)) {
        this.#env.clearTimeout(entry.timer);
        continue;
      }
      if (entry.kind === "publish") {
        resend.push(entry);
        continue;
      }
      if (entry.kind === "subscribe") this.#dropRoute(entry.route, entry.id);
      this.#finish(entry, new RelayError("disconnected", `the connection was lost (${code ?? "no close code"}) ${reason}`.trim()));
    }
    this.#pending.clear();
    for (const route of this.#routes.values()) {
      route.cancelRetry();
      // The server forgot the subscription: the catch-up's resubscribe has nothing to undo.
      if (route.catchUp !== null) route.catchUp.subscribed = false;
    }
    resend.sort((a, b) => a.id - b.id);
    this.#outbox.unshift(...resend);
    this.#events.emit("disconnected", { code, reason });
  }

  /** The client stopped for good (closed, or its fixed token was refused). */
  #shutdown(error) {
    for (const entry of new Set([...this.#pending.values(), ...this.#outbox])) {
      if (entry instanceof Request) this.#finish(entry, error);
      else this.#env.clearTimeout(entry.timer);
    }
    this.#pending.clear();
    this.#outbox = [];
    for (const route of [...this.#routes.values()]) {
      this.#endRoute(route, { code: error.code, reason: error.message });
    }
    for (const expiry of this.#typing.values()) this.#env.clearTimeout(expiry);
    this.#typing.clear();
    this.#events.emit("closed", {});
  }

  // Server frames

  #received(frame) {
    switch (frame.type) {
      case "message":
        this.#routes.get(frame.channel)?.message(frame);
        break;
      case "join":
      case "leave":
        this.#routes.get(frame.channel)?.live({ type: frame.type, user: frame.user });
        break;
      case "signal":
        this.#routes.get(frame.channel)?.live(signalEventOf(frame));
        break;
      case "receipt":
        // The first receipt of a signal answers it; a later one (after `held`), or one whose
        // request gave up waiting, is an event of the channel's subscription.
        if (frame.id != null && this.#pending.get(frame.id)?.kind === "signalReceipt") this.#answered(frame);
        else this.#routes.get(frame.channel)?.receipt(receiptEventOf(frame));
        break;
      case "read":
        // Without an id, the marker moved on another connection of this user.
        if (frame.id == null) this.#routes.get(frame.channel)?.live({ type: "read", seq: frame.seq });
        else this.#answered(frame);
        break;
      case "unsubscribed":
        if (frame.id == null) this.#kicked(frame);
        else this.#answered(frame);
        break;
      case "subscribed":
      case "ack":
      case "presence":
      case "pong":
      case "error":
        this.#answered(frame);
        break;
      default:
      // A repeated welcome, or a frame type this client does not know: nothing to do.
    }
  }

  /** A frame that answers the frame with its `id`. */
  #answered(frame) {
    const entry = frame.id == null ? undefined : this.#pending.get(frame.id);
    if (entry === undefined) return;
    if (entry.kind === "restore") {
      this.#restoreAnswered(frame.id, entry, frame);
    } else if (entry.kind === "abandoned") {
      this.#pending.delete(frame.id);
      if (frame.type === "subscribed") this.#sendUnsubscribe(entry.channel);
    } else if (frame.type === "error") {
      if (entry.kind === "subscribe") this.#dropRoute(entry.route, entry.id);
      this.#finish(entry, new RelayError(frame.code, frame.message ?? frame.code));
    } else if (frame.type !== REPLY_TYPES[entry.kind]) {
      this.#finish(entry, new RelayError("protocol", `expected ${REPLY_TYPES[entry.kind]}, got ${frame.type}`));
    } else if (entry.kind === "subscribe") {
      this.#subscribed(entry, frame);
    } else {
      this.#finish(entry, null, REPLY_VALUES[entry.kind](frame));
    }
  }

  #subscribed(request, frame) {
    const { route } = request;
    if (mustCatchUp(request.since, frame)) {
      this.#catchUp(route, request.since, frame.seq);
    } else {
      const notice = route.confirm(request.since, frame, false);
      if (notice !== null) route.hold(notice);
    }
    this.#finish(request, null, route.subscription);
  }

  // Subscriptions

  /**
   * The frames of a subscribe (or restore) of `channel`. A subscribe of the channel that
   * timed out may still succeed on the server: this one would then be refused as a second
   * subscription, or ended by the `unsubscribe` that the late `subscribed` triggers. So the
   * abandoned subscribe is forgotten and an `unsubscribe` goes first. The server handles
   * frames in order, so exactly the new subscription remains, whatever became of the old
   * one; an `unsubscribe` with nothing to undo is refused harmlessly, and that reply, like
   * the late one, matches nothing pending. (Adopting the late reply for the new subscribe
   * instead would have to reconcile two `since` values and two timers.)
   */
  #subscribeFrames(id, route, since) {
    const { channel } = route;
    const frames = [subscribeFrame(id, channel, since, route.mode)];
    if (this.#forgetAbandoned(channel)) frames.unshift({ type: "unsubscribe", id: this.#nextId++, channel });
    return frames;
  }

  /** A subscribe sent and given up on: if the server confirms it after all, it is undone. */
  #abandon(id, channel) {
    this.#pending.set(id, { kind: "abandoned", channel });
  }

  /** Forgets the abandoned subscribes of `channel`; returns whether there were any. */
  #forgetAbandoned(channel) {
    let found = false;
    for (const [id, entry] of this.#pending) {
      if (entry.kind === "abandoned" && entry.channel === channel) {
        this.#pending.delete(id);
        found = true;
      }
    }
    return found;
  }

  /** The subscribe frames that bring `route` back: from its cursor, or at the newest message. */
  #restoreFrames(route) {
    route.cancelRetry();
    const id = this.#nextId++;
    route.awaiting = id;
    const restore = { kind: "restore", route, since: route.restoreSince, timer: null };
    restore.timer = this.#env.setTimeout(() => this.#restoreExpired(id, restore), this.#settings.requestTimeout);
    this.#pending.set(id, restore);
    return this.#subscribeFrames(id, route, restore.since);
  }

  /** Refusals that will not change end the subscription; passing ones are retried. */
  #restoreAnswered(id, restore, frame) {
    this.#pending.delete(id);
    this.#env.clearTimeout(restore.timer);
    const { route } = restore;
    if (this.#routes.get(route.channel) !== route || route.awaiting !== id) return;
    if (frame.type === "subscribed" && mustCatchUp(restore.since, frame)) {
      this.#catchUp(route, restore.since, frame.seq);
    } else if (frame.type === "subscribed") {
      const notice = route.confirm(restore.since, frame, true);
      if (notice !== null) route.deliver(notice);
    } else if (frame.type === "error" && PASSING_ERRORS.has(frame.code)) {
      route.awaiting = null;
      this.#restoreLater(route);
    } else if (frame.type === "error") {
      this.#endRoute(route, { code: frame.code, reason: frame.message ?? "" });
    }
  }

  /**
   * A restore without a reply in time (its reply lost, or an error frame without an id,
   * such as the connection's frame rate limit) would leave the subscription dropping its
   * frames until the next reconnect. It is abandoned and tried again like a passing
   * refusal. `awaiting` stays set meanwhile: frames of a subscription that the abandoned
   * restore may have started are dropped, since the retry replays them from the cursor.
   */
  #restoreExpired(id, restore) {
    if (this.#pending.get(id) !== restore) return;
    this.#abandon(id, restore.route.channel);
    const { route } = restore;
    if (this.#routes.get(route.channel) === route && route.awaiting === id) this.#restoreLater(route);
  }

  #restoreLater(route) {
    route.retryIn(RESTORE_RETRY_MS, () => this.#retryRestore(route));
  }

  #retryRestore(route) {
    if (this.#connection.isOpen && this.#routes.get(route.channel) === route) {
      this.#connection.send(this.#restoreFrames(route));
    }
  }

  /**
   * The server cannot replay what `route` missed after `since`: the subscription reads that
   * history over REST, up to at least `latest` (the seq of `subscribed`), while the server
   * keeps it subscribed and its live messages are dropped without moving the cursor. Then
   * it subscribes again from its cursor, and the server replays the rest (or answers
   * `recovered: false` again, and the catch-up goes on from there).
   */
  async #catchUp(route, since, latest) {
    const read = (after, signal) => this.#readHistory(route.channel, after, signal);
    const catchUp = route.beginCatchUp(since, latest, read);
    if (!(await catchUp.run())) return;
    route.catchUp = null;
    // Not connected: the next welcome restores it like any other subscription.
    if (this.#routes.get(route.channel) !== route || !this.#connection.isOpen) return;
    const frames = this.#restoreFrames(route);
    if (catchUp.subscribed) frames.unshift({ type: "unsubscribe", id: this.#nextId++, channel: route.channel });
    this.#connection.send(frames);
  }

  /**
   * The messages of `channel` after seq `after`, one page of them in ascending seq order,
   * read from the REST API beside the WebSocket endpoint with the session's token. Throws
   * on a network failure, a status other than 2xx, or a body without `messages`.
   */
  async #readHistory(channel, after, signal) {
    const url = `${this.#settings.apiUrl}/channels/${encodeURIComponent(channel)}/messages?after=${after}&limit=${CATCH_UP_PAGE}`;
    const headers = { authorization: `Bearer ${this.#connection.token}` };
    const response = await this.#env.fetch(url, { method: "GET", headers, signal });
    if (!response.ok) throw new RelayError("unavailable", `reading the history answered HTTP ${response.status}`);
    const body = await response.json();
    if (!Array.isArray(body?.messages)) throw new RelayError("protocol", "the history page has no messages");
    return body.messages;
  }

  /**
   * The server ended a live subscription on its own (the user was removed from the
   * channel's members). A subscription waiting on a subscribe gets that subscribe's answer.
   */
  #kicked(frame) {
    const route = this.#routes.get(frame.channel);
    if (route === undefined || route.awaiting !== null) return;
    this.#endRoute(route, { code: "forbidden", reason: frame.reason ?? "" });
  }

  /** The application unsubscribed: delivery stops now; the server is told if connected. */
  #unsubscribe(route) {
    if (this.#routes.get(route.channel) === route) {
      this.#endRoute(route, null);
      if (this.#connection.isOpen) this.#sendUnsubscribe(route.channel);
    }
    return Promise.resolve();
  }

  /**
   * Its reply needs no routing: the route is gone already, and a frame id keeps the reply
   * from looking like the server ending the subscription on its own.
   */
  #sendUnsubscribe(channel) {
    this.#connection.send([{ type: "unsubscribe", id: this.#nextId++, channel }]);
  }

  /** Forgets a subscription whose first subscribe (frame `id`) failed. */
  #dropRoute(route, id) {
    if (route.awaiting === id && this.#routes.get(route.channel) === route) {
      this.#routes.delete(route.channel);
    }
  }

  #endRoute(route, ended) {
    this.#routes.delete(route.channel);
    route.end(ended === null ? null : { type: "ended", ...ended });
  }
}

/** The reply each kind of request expects, and what its promise resolves with. */
const REPLY_TYPES = {
  subscribe: "subscribed",
  publish: "ack",
  ephemeral: "ack",
  signal: "pong",
  signalReceipt: "receipt",
  presence: "presence",
  read: "read",
};
const REPLY_VALUES = {
  publish: ackOf,
  ephemeral: ackOf,
  signal: () => undefined,
  signalReceipt: (frame) => ({ signal: frame.signal, status: frame.status }),
  presence: (frame) => frame.users,
  read: (frame) => frame.seq,
};

function ackOf(frame) {
  return { messageId: frame.message_id, seq: frame.seq ?? null };
}

function timeoutError(request) {
  const operation = request.operation ?? request.kind;
  if (request.kind === "publish" && request.sent) {
    return new RelayError(
      "unconfirmed",
      `${operation} sent but not acknowledged in time; ${operation} again with idempotency key ${request.idempotencyKey} to settle it`,
      { idempotencyKey: request.idempotencyKey },
    );
  }
  return new RelayError("timeout", `no reply to ${operation} within the request timeout`);
}

/** Why `seq` cannot name the message an edit or delete changes, or null. */
function refRefusal(seq) {
  if (Number.isSafeInteger(seq) && seq > 0) return null;
  const got = typeof seq === "number" ? seq : typeof seq;
  return new RelayError("bad_request", `seq must be a positive safe integer, got ${got}`);
}

/**
 * Why `signal` refuses its options, or null. The server refuses a `ttl_ms` above its own
 * maximum (300000 by default), which the client cannot know.
 */
function signalRefusal(receipt, ttlMs) {
  if (receipt !== undefined && typeof receipt !== "boolean") {
    return new RelayError("bad_request", `receipt must be a boolean, got ${typeof receipt}`);
  }
  if (ttlMs === undefined || (Number.isSafeInteger(ttlMs) && ttlMs > 0)) return null;
  const got = typeof ttlMs === "number" ? ttlMs : typeof ttlMs;
  return new RelayError("bad_request", `ttlMs must be a positive safe integer, got ${got}`);
}

/**
 * The `signal` event of a `signal` frame. A signal sent with a receipt or a time to live
 * carries the server's id, the same on every delivery of it, so that a repeat can be told.
 */
function signalEventOf(frame) {
  const event = { type: "signal", from: frame.from, event: frame.event ?? null, payload: frame.payload };
  if (frame.signal != null) event.signal = frame.signal;
  return event;
}

/** The `receipt` event of a `receipt` frame that answers no request. */
function receiptEventOf(frame) {
  return { type: "receipt", to: frame.to, signal: frame.signal, status: frame.status };
}

/**
 * Whether a `subscribed` for a subscribe with `since` leaves history to read over REST. A
 * `since` at or past the channel's latest seq (a wiped store, a client bug) has nothing to
 * page through: the subscription reports the gap and goes on from the latest seq.
 */
function mustCatchUp(since, frame) {
  return since !== null && frame.recovered === false && Number.isSafeInteger(frame.seq) && since < frame.seq;
}

/**
 * The `message` event of a `message` frame, or of a message of the REST history. An edit or
 * delete keeps its `ref`, the seq of the message it changes; other messages have none.
 */
function messageEventOf(frame) {
  const event = {
    type: "message",
    channel: frame.channel,
    id: frame.id,
    seq: frame.seq ?? null,
    from: frame.from ?? null,
    event: frame.event ?? null,
    payload: frame.payload,
    ts: frame.ts,
  };
  if (frame.ref != null) event.ref = frame.ref;
  return event;
}

/**
 * Applies an edit or delete (a `message` event with `ref`) to `messages`, a list the
 * application holds, without changing it: the result is a new list in which the message
 * whose seq is `ref` reads as it does now, like `GET …/messages?view=current` returns it.
 * An edit gives it the edit's payload and `edited` = the edit's seq; a delete makes it a
 * tombstone, with payload null and `deleted` = the delete's seq. `messages` itself comes
 * back when there is nothing to change: `revision` is not an edit or delete, its message is
 * not in the list, or the list already reflects it or something later (a deleted message,
 * an edit at or after this one), as after a reload of the current view and a replay.
 */
export function applyRevision(messages, revision) {
  const { event, ref, seq } = revision ?? {};
  if ((event !== "edit" && event !== "delete") || !Number.isSafeInteger(ref) || !Number.isSafeInteger(seq)) {
    return messages;
  }
  const index = messages.findLastIndex((message) => message?.seq === ref);
  if (index < 0) return messages;
  const target = messages[index];
  const stale = target.deleted != null || (event === "edit" && target.edited != null && target.edited >= seq);
  if (stale) return messages;
  const result = messages.slice();
  const revised =
    event === "edit" ? { ...target, payload: revision.payload, edited: seq } : { ...target, payload: null, deleted: seq };
  result[index] = revised;
  return result;
}

/**
 * Why `subscribe` refuses its options, or null. The server refuses `since` with `latest`
 * too; refusing it here names the mistake before anything is sent.
 */
function subscribeRefusal(since, mode) {
  if (!SUBSCRIBE_MODES.includes(mode)) {
    return new RelayError("bad_request", `mode must be one of ${SUBSCRIBE_MODES.join(", ")}, got ${mode}`);
  }
  if (mode === "latest" && since != null) {
    return new RelayError("bad_request", "since does not apply to a latest subscription, which starts at the newest message");
  }
  return null;
}

/** A reliable subscribe carries no `mode` (the default), so older servers accept it. */
function subscribeFrame(id, channel, since, mode) {
  const frame = { type: "subscribe", id, channel };
  if (since !== null) frame.since = since;
  if (mode === "latest") frame.mode = mode;
  return frame;
}

/** A request of the application, waiting to be sent or answered. */
class Request {
  constructor(id, kind, resolve, reject) {
    this.id = id;
    this.kind = kind;
    this.resolve = resolve;
    this.reject = reject;
    this.frames = [];
    this.timer = null;
    /** Whether it went out at least once: a publish timing out is then "unconfirmed". */
    this.sent = false;
    /** The id of the ping that follows a signal. */
    this.fence = null;
    /** A persistent publish's key, sent again unchanged with every repeat. */
    this.idempotencyKey = undefined;
    /**
     * What the request does, for its errors, when its kind does not say it: "publish",
     * "edit" or "delete" for a persistent publish, "signal" for a signal with a receipt.
     */
    this.operation = undefined;
    /** A subscribe's subscription, and the `since` it was sent with. */
    this.route = null;
    this.since = null;
  }
}

/** A live subscription: handlers, an async iterator, and `unsubscribe`. */
export class Subscription {
  #route;

  /** Made by `RelayClient.subscribe`. */
  constructor(route) {
    this.#route = route;
  }

  get channel() {
    return this.#route.channel;
  }

  /** "reliable" | "latest" */
  get mode() {
    return this.#route.mode;
  }

  /** The cursor: the highest persistent seq handed to the application, or the start point. */
  get lastSeq() {
    return this.#route.cursor;
  }

  on(type, handler) {
    return this.#route.listeners.on(type, handler);
  }

  unsubscribe() {
    return this.#route.unsubscribe();
  }

  /** Leaving a `for await` loop does not unsubscribe; `unsubscribe()` does. */
  [Symbol.asyncIterator]() {
    const queue = this.#route.queue;
    return {
      next: () => queue.next(),
      return: () => {
        queue.stopReading();
        return Promise.resolve({ value: undefined, done: true });
      },
      [Symbol.asyncIterator]() {
        return this;
      },
    };
  }
}

/**
 * One subscription's routing state: its cursor, the subscribe it waits for, and where its
 * events go (handlers at once, the iterator through a bounded queue).
 */
class Route {
  #env;

  constructor(channel, since, mode, bufferSize, env, unsubscribe) {
    this.#env = env;
    this.channel = channel;
    /** "reliable", or "latest": restored without `since`, its seqs have holes by design. */
    this.mode = mode;
    /**
     * The last persistent seq handed over, or the start point; restores of a reliable
     * subscription send it as `since`. Messages at or below it are repeats and dropped.
     */
    this.cursor = since;
    /**
     * The id of the subscribe whose `subscribed` this subscription waits for. Until it
     * arrives, frames for the channel belong to an earlier subscription and are dropped.
     */
    this.awaiting = null;
    /** Whether the server ever confirmed it; only confirmed ones are restored. */
    this.confirmed = false;
    /** Timer of a restore retried after a passing refusal. */
    this.retryTimer = null;
    /** Its catch-up over REST, while it reads history the server could not replay. */
    this.catchUp = null;
    this.unsubscribe = unsubscribe;
    this.listeners = new Listeners(SUBSCRIPTION_EVENTS);
    this.queue = new EventQueue(bufferSize, mode);
    this.subscription = new Subscription(this);
    this.ended = false;
    /** The notice of the first `subscribed`, held back for handlers not attached yet. */
    this.held = null;
    this.heldTimer = null;
  }

  /** What a restore sends as `since`: the cursor, except for a latest subscription. */
  get restoreSince() {
    return this.mode === "latest" ? null : this.cursor;
  }

  /** Applies a `subscribed` answering a subscribe sent with `since`; returns the notice due. */
  confirm(since, frame, restoring) {
    this.awaiting = null;
    this.confirmed = true;
    const recovered = frame.recovered === true;
    // A latest subscription's first message is the newest at or below the seq of
    // `subscribed`: its cursor stays at the last message delivered, so that only a repeat
    // of that one is dropped.
    if (!recovered && this.mode === "reliable") this.cursor = frame.seq;
    if (since === null) return null;
    if (recovered) return restoring ? { type: "recovered", since } : null;
    return { type: "gap", since, resumedAt: frame.seq };
  }

  /**
   * Applies a `subscribed` that starts a catch-up from `since`; returns the catch-up, which
   * the client runs.
   */
  beginCatchUp(since, latest, read) {
    this.awaiting = null;
    this.confirmed = true;
    this.cursor = since;
    this.catchUp = new CatchUp(this, latest, read, this.#env);
    return this.catchUp;
  }

  /**
   * Routes a `message`: drops duplicates and frames of a subscription being replaced. While
   * the subscription catches up, live messages are dropped without moving the cursor: the
   * resubscribe at the end of the catch-up replays them.
   */
  message(frame) {
    if (this.awaiting !== null || this.catchUp !== null) return;
    const seq = frame.seq ?? null;
    if (seq !== null) {
      if (this.cursor !== null && seq <= this.cursor) return;
      this.cursor = seq;
    }
    this.deliver(messageEventOf(frame));
  }

  /** Routes an event outside the sequence (join, leave, signal, read). */
  live(event) {
    if (this.awaiting === null) this.deliver(event);
  }

  /**
   * Routes a receipt that answers no request. It is about a signal this connection sent,
   * not part of the channel's stream, so a resubscribe in progress does not hold it back.
   */
  receipt(event) {
    this.deliver(event);
  }

  /**
   * The caller of `subscribe` attaches its handlers after `await` resumes, in a microtask
   * that runs after `subscribed` was handled. The notice of that first `subscribed` (a gap)
   * therefore waits until the next macrotask, or until the next event, whichever comes
   * first, so that it reaches those handlers and still precedes every later event.
   */
  hold(notice) {
    this.held = notice;
    this.heldTimer = this.#env.setTimeout(() => this.#release(), 0);
  }

  deliver(event) {
    if (this.ended) return;
    this.#release();
    this.listeners.emit(event.type, event);
    this.queue.push(event);
  }

  #release() {
    const notice = this.held;
    if (notice === null) return;
    this.held = null;
    this.deliver(notice);
  }

  /** Delivers the last event (if any); the iterator finishes once it is drained. */
  end(event) {
    if (event !== null) this.deliver(event);
    this.ended = true;
    this.catchUp?.stop();
    this.queue.close();
    this.cancelRetry();
    this.#env.clearTimeout(this.heldTimer);
  }

  retryIn(ms, restore) {
    this.retryTimer = this.#env.setTimeout(() => {
      this.retryTimer = null;
      restore();
    }, ms);
  }

  cancelRetry() {
    this.#env.clearTimeout(this.retryTimer);
    this.retryTimer = null;
  }
}

/**
 * A subscription's catch-up: it reads the history the server could not replay over REST, a
 * page at a time, and hands each message to the subscription as if it had arrived live,
 * skipping those at or below the cursor. A seq that jumps (history trimmed) is reported as a
 * `gap` first. The next page is read only once the subscription took the last one: while
 * its async iterator is read, each event waits for room in the iterator's buffer, so a
 * client a week behind holds one page at most. A page that cannot be read is tried again
 * with backoff; after CATCH_UP_ATTEMPTS failures in a row the rest is reported as a `gap`.
 */
class CatchUp {
  #route;
  #latest;
  #read;
  #env;
  #stopped = false;
  #abort = new AbortController();
  #retryTimer = null;
  #wakeRetry = null;

  /**
   * @param {Route} route
   * @param {number} latest the seq of the `subscribed` that started it
   * @param {(after: number, signal: AbortSignal) => Promise<object[]>} read one history page
   */
  constructor(route, latest, read, env) {
    this.#route = route;
    this.#latest = latest;
    this.#read = read;
    this.#env = env;
    /** The server still holds the subscription (false after a reconnect). */
    this.subscribed = true;
  }

  /**
   * Pages from the subscription's cursor until a page comes back short. Resolves with true
   * when the subscription should subscribe again from its cursor, false when it was stopped.
   */
  async run() {
    let failures = 0;
    let retryMs = CATCH_UP_RETRY_MS;
    for (;;) {
      let messages;
      try {
        messages = await this.#read(this.#route.cursor, this.#abort.signal);
      } catch {
        if (this.#stopped) return false;
        failures += 1;
        if (failures >= CATCH_UP_ATTEMPTS) break;
        await this.#sleep(retryMs);
        if (this.#stopped) return false;
        retryMs = Math.min(2 * retryMs, CATCH_UP_MAX_RETRY_MS);
        continue;
      }
      if (this.#stopped) return false;
      failures = 0;
      retryMs = CATCH_UP_RETRY_MS;
      for (const message of messages) {
        if (!(await this.#take(message))) return false;
      }
      if (messages.length < CATCH_UP_PAGE) break;
    }
    // Whatever the history did not yield up to the seq of `subscribed` is gone (trimmed) or
    // unreadable. Moving past it also keeps the resubscribe from asking for it again.
    const { cursor } = this.#route;
    if (cursor < this.#latest) return this.#give({ type: "gap", since: cursor, resumedAt: this.#latest }, this.#latest);
    return true;
  }

  /** Ends the catch-up: no more reads, nothing more handed over. */
  stop() {
    this.#stopped = true;
    this.#abort.abort();
    this.#env.clearTimeout(this.#retryTimer);
    this.#wakeRetry?.();
  }

  /** Hands one history message over, after a `gap` when seqs were skipped. */
  async #take(message) {
    const seq = message?.seq;
    const { cursor } = this.#route;
    if (!Number.isSafeInteger(seq) || seq <= cursor) return true;
    if (seq > cursor + 1 && !(await this.#give({ type: "gap", since: cursor, resumedAt: seq - 1 }, cursor))) {
      return false;
    }
    return this.#give(messageEventOf(message), seq);
  }

  /**
   * Delivers `event` once the iterator's buffer has room, moving the cursor to `cursor`;
   * false when the catch-up was stopped meanwhile.
   */
  async #give(event, cursor) {
    for (let room = this.#route.queue.room(); room !== null; room = this.#route.queue.room()) await room;
    if (this.#stopped) return false;
    this.#route.cursor = cursor;
    this.#route.deliver(event);
    return true;
  }

  #sleep(ms) {
    return new Promise((resolve) => {
      this.#wakeRetry = resolve;
      this.#retryTimer = this.#env.setTimeout(resolve, ms);
    });
  }
}

/**
 * The events of one subscription waiting for its async iterator, at most `capacity` of
 * them. When it is full, the oldest message is dropped (other events only when it holds no
 * message). The persistent messages dropped are reported to the iterator as one `gap`
 * before anything else, so that it can reload them over REST. A latest subscription's
 * buffer instead drops every older message (a newer state replaces them) and reports
 * nothing. Handlers never wait on it.
 */
class EventQueue {
  #capacity;
  #mode;
  #events = [];
  #waiting = [];
  #dropped = null;
  #closed = false;
  /** Whether an iterator reads the buffer: asked for an event, and did not return since. */
  #reading = false;
  /** Whoever waits for room (a catch-up). */
  #roomWaiting = [];

  constructor(capacity, mode) {
    this.#capacity = capacity;
    this.#mode = mode;
  }

  /**
   * Null when an event can be pushed without dropping one, or when no iterator reads the
   * buffer (handlers get every event anyway, and an unread buffer only keeps the newest);
   * otherwise a promise that resolves when the reader takes an event or stops reading.
   */
  room() {
    if (this.#closed || !this.#reading || this.#events.length < this.#capacity) return null;
    return new Promise((resolve) => this.#roomWaiting.push(resolve));
  }

  /** The iterator left its loop: nothing waits on it any more. */
  stopReading() {
    this.#reading = false;
    this.#madeRoom();
  }

  push(event) {
    if (this.#closed) return;
    // Someone waits only when nothing is buffered or dropped.
    const waiter = this.#waiting.shift();
    if (waiter !== undefined) {
      waiter({ value: event, done: false });
      return;
    }
    if (this.#events.length >= this.#capacity) {
      if (this.#mode === "latest") this.#dropStale(event);
      else this.#dropOldest();
    }
    this.#events.push(event);
  }

  next() {
    this.#reading = true;
    if (this.#dropped !== null) {
      const gap = { type: "gap", ...this.#dropped };
      this.#dropped = null;
      return Promise.resolve({ value: gap, done: false });
    }
    if (this.#events.length > 0) {
      const event = this.#events.shift();
      this.#madeRoom();
      return Promise.resolve({ value: event, done: false });
    }
    if (this.#closed) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => this.#waiting.push(resolve));
  }

  close() {
    this.#closed = true;
    for (const waiter of this.#waiting.splice(0)) waiter({ value: undefined, done: true });
    this.#madeRoom();
  }

  #madeRoom() {
    for (const resolve of this.#roomWaiting.splice(0)) resolve();
  }

  #dropOldest() {
    const index = Math.max(0, this.#events.findIndex((event) => event.type === "message"));
    const [event] = this.#events.splice(index, 1);
    if (event.type !== "message" || event.seq === null) return;
    // Buffered messages are in seq order and leave from the front, so the dropped ones
    // form one range.
    this.#dropped = { since: this.#dropped?.since ?? event.seq - 1, resumedAt: event.seq };
  }

  /**
   * Makes room for `incoming` in a latest subscription's buffer: its older messages are
   * stale states. They all go when `incoming` is a message; otherwise all but the newest,
   * which is the current state. Only when that frees nothing does the oldest other event go.
   */
  #dropStale(incoming) {
    const current = incoming.type === "message" ? null : this.#events.findLast((event) => event.type === "message");
    const kept = this.#events.filter((event) => event.type !== "message" || event === current);
    if (kept.length < this.#events.length) {
      this.#events = kept;
      return;
    }
    const oldest = this.#events.findIndex((event) => event !== current);
    this.#events.splice(Math.max(0, oldest), 1);
  }
}

/**
 * The connection: attempts, backoff, the choice of transport, the token, the heartbeat
 * watchdog. It hands frames and lifecycle changes to the client through `hooks`.
 */
class Connection {
  #settings;
  #env;
  #hooks;
  #backoff;
  #state = "idle";
  #kind;
  #webSocketWelcomed = false;
  #webSocketFailures = 0;
  #transport = null;
  /** The token of the current attempt or session. */
  #token = null;
  /** A token the server refused with 4001: automatic reconnects never use it again. */
  #refusedToken = null;
  /**
   * Bumped by each attempt, by its timeout and by `close`, so that a token provider's late
   * answer is ignored.
   */
  #generation = 0;
  /** The promise of `start`, until the first welcome or failure. */
  #first = null;
  #heartbeatMs = DEFAULT_HEARTBEAT_MS;
  #retryTimer = null;
  #connectTimer = null;
  #watchdogTimer = null;
  #pingTimer = null;

  constructor(settings, env, hooks) {
    this.#settings = settings;
    this.#env = env;
    this.#hooks = hooks;
    this.#kind = settings.transport === "sse" ? "sse" : "websocket";
    this.#backoff = new Backoff(settings.backoff.min, settings.backoff.max, env.random);
  }

  get state() {
    return this.#state;
  }

  get kind() {
    return this.#kind;
  }

  get isOpen() {
    return this.#state === "open";
  }

  /** The token of the current session (or attempt), for the client's REST calls. */
  get token() {
    return this.#token;
  }

  start() {
    if (this.#state === "closed") return Promise.reject(new RelayError("closed", "the client is closed"));
    if (this.#first !== null) return this.#first.promise;
    if (this.#state !== "idle") return Promise.resolve();
    this.#state = "connecting";
    // An explicit connect tries whatever token it gets, even one refused before.
    this.#refusedToken = null;
    this.#first = deferred();
    this.#attempt();
    return this.#first.promise;
  }

  /** Sends frames on the open session. */
  send(frames) {
    this.#transport.send(frames);
  }

  /** Returns false when it was closed already. */
  close() {
    if (this.#state === "closed") return false;
    this.#generation += 1;
    this.#env.clearTimeout(this.#retryTimer);
    this.#teardown();
    this.#state = "closed";
    this.#settleFirst(new RelayError("closed", "the client was closed"));
    return true;
  }

  async #attempt() {
    const generation = ++this.#generation;
    // The timeout runs from before the token is asked for: a provider that never settles
    // fails the attempt like a server that never welcomes, and the backoff tries again.
    this.#connectTimer = this.#env.setTimeout(() => this.#attemptTimedOut(), this.#settings.connectTimeout);
    let token;
    try {
      token = await this.#nextToken();
    } catch (cause) {
      if (generation !== this.#generation) return;
      const reason = `token provider failed: ${cause?.message ?? cause}`;
      this.#attemptFailed({ code: null, reason, error: new RelayError("unauthorized", reason, { cause }) });
      return;
    }
    if (generation !== this.#generation) return;
    if (token === this.#refusedToken) {
      this.#env.clearTimeout(this.#connectTimer);
      this.#retryIn(this.#backoff.next());
      return;
    }
    this.#token = token;
    try {
      this.#transport = this.#open(token);
    } catch (cause) {
      const reason = `cannot open a ${this.#kind} connection: ${cause?.message ?? cause}`;
      this.#attemptFailed({ code: null, reason, error: new RelayError("disconnected", reason, { cause }), transport: true });
    }
  }

  #attemptTimedOut() {
    // The attempt is over: a token that arrives from now on is ignored.
    this.#generation += 1;
    const waited = this.#transport === null ? "token" : "welcome";
    const reason = `no ${waited} within ${this.#settings.connectTimeout} ms`;
    const error = new RelayError("timeout", reason);
    // A slow token provider says nothing about whether the transport works.
    this.#attemptFailed({ code: null, reason, error, transport: waited === "welcome" });
  }

  async #nextToken() {
    const { token } = this.#settings;
    const value = typeof token === "function" ? await token() : token;
    if (typeof value !== "string" || value === "") throw new TypeError("no token (expected a non-empty string)");
    return value;
  }

  #open(token) {
    const events = {
      frame: (frame) => this.#received(frame),
      activity: () => this.#heard(),
      lost: (code, reason) => this.#transportLost(code, reason),
    };
    if (this.#kind === "sse") return new SseTransport(this.#settings.sseUrl, token, this.#env, events);
    return new WebSocketTransport(this.#settings.url, token, this.#env.WebSocket, events);
  }

  #received(frame) {
    if (this.#state === "open") {
      this.#heard();
      this.#hooks.frame(frame);
    } else if (frame.type === "welcome") {
      this.#welcomed(frame);
    } else {
      const reason = `expected welcome, got ${frame.type}`;
      this.#attemptFailed({ code: null, reason, error: new RelayError("protocol", reason) });
    }
  }

  #welcomed(frame) {
    this.#env.clearTimeout(this.#connectTimer);
    this.#backoff.reset();
    if (this.#kind === "websocket") this.#webSocketWelcomed = true;
    this.#state = "open";
    this.#heartbeatMs = heartbeatOf(frame);
    this.#heard();
    this.#schedulePing();
    this.#hooks.opened({
      connectionId: String(frame.connection_id),
      user: frame.user ?? null,
      transport: this.#kind,
    });
    this.#settleFirst(null);
  }

  /** Any sign of life re-arms the watchdog. */
  #heard() {
    if (this.#state !== "open") return;
    this.#env.clearTimeout(this.#watchdogTimer);
    this.#watchdogTimer = this.#env.setTimeout(
      () => this.#sessionLost(null, `no frame within ${WATCHDOG_HEARTBEATS} heartbeats`),
      WATCHDOG_HEARTBEATS * this.#heartbeatMs,
    );
  }

  /**
   * Browsers answer the server's WebSocket pings out of sight of scripts, so an application
   * ping each heartbeat is what makes a healthy connection send something back.
   */
  #schedulePing() {
    this.#pingTimer = this.#env.setTimeout(() => {
      this.send([{ type: "ping" }]);
      this.#schedulePing();
    }, this.#heartbeatMs);
  }

  #transportLost(code, reason) {
    if (this.#state === "open") {
      this.#sessionLost(code, reason);
      return;
    }
    // A refused token is the server's answer, not a sign that the transport does not work.
    const refused = code === UNAUTHORIZED;
    const error = refused
      ? new RelayError("unauthorized", reason || "the server refused the token")
      : new RelayError("disconnected", `connection failed (${code ?? "no close code"}): ${reason}`);
    this.#attemptFailed({ code, reason, error, transport: !refused });
  }

  #sessionLost(code, reason) {
    this.#teardown();
    this.#state = "reconnecting";
    this.#hooks.lost({ code, reason });
    if (this.#state !== "closed") this.#afterLoss(code, reason);
  }

  /** An attempt ended before its welcome. */
  #attemptFailed(failure) {
    this.#teardown();
    if (failure.transport && this.#fallBackToSse()) return;
    if (this.#first !== null) {
      this.#state = "idle";
      this.#settleFirst(failure.error);
      return;
    }
    if (failure.code === UNAUTHORIZED && typeof this.#settings.token === "string") {
      // A fixed token cannot be renewed: report the refusal as a disconnect before stopping.
      this.#hooks.lost({ code: failure.code, reason: failure.reason });
      if (this.#state === "closed") return;
    }
    this.#afterLoss(failure.code, failure.reason);
  }

  /**
   * "auto" starts with a WebSocket and settles on SSE for good when the first WebSocket
   * attempts fail before any WebSocket was ever welcomed (a proxy that drops upgrades).
   */
  #fallBackToSse() {
    if (this.#settings.transport !== "auto" || this.#kind !== "websocket" || this.#webSocketWelcomed) return false;
    this.#webSocketFailures += 1;
    if (this.#webSocketFailures < WEBSOCKET_FAILURES_BEFORE_SSE) {
      this.#retryIn(this.#backoff.next());
      return true;
    }
    this.#kind = "sse";
    this.#hooks.transport("sse");
    this.#retryIn(0);
    return true;
  }

  /** After a lost session or a failed reconnect: wait, then try again, or stop. */
  #afterLoss(code, reason) {
    if (code === UNAUTHORIZED) {
      if (typeof this.#settings.token === "string") {
        this.#state = "closed";
        this.#hooks.stopped(new RelayError("unauthorized", reason || "the server refused the token"));
        return;
      }
      this.#refusedToken = this.#token;
    }
    const delay = this.#backoff.next();
    this.#retryIn(ABUSE_CLOSE_CODES.has(code) ? Math.max(ABUSE_COOLDOWN_MS, delay) : delay);
  }

  #retryIn(delay) {
    if (this.#state === "closed") return;
    this.#retryTimer = this.#env.setTimeout(() => {
      this.#retryTimer = null;
      this.#attempt();
    }, delay);
  }

  /** Stops the current attempt or session. */
  #teardown() {
    this.#env.clearTimeout(this.#connectTimer);
    this.#env.clearTimeout(this.#watchdogTimer);
    this.#env.clearTimeout(this.#pingTimer);
    this.#transport?.close();
    this.#transport = null;
  }

  #settleFirst(error) {
    const first = this.#first;
    this.#first = null;
    if (first === null) return;
    if (error) first.reject(error);
    else first.resolve();
  }
}

/**
 * A WebSocket session. It reports frames, and `lost` once when the socket closes or fails;
 * after `close` it reports nothing.
 */
class WebSocketTransport {
  #socket;
  #events;
  #closed = false;

  constructor(url, token, WebSocketImpl, events) {
    if (typeof WebSocketImpl !== "function") throw new Error("this environment has no WebSocket");
    const target = new URL(url);
    target.searchParams.set("token", token);
    this.#events = events;
    this.#socket = new WebSocketImpl(target.href, SUBPROTOCOL);
    this.#socket.onmessage = (event) => this.#receive(event.data);
    this.#socket.onclose = (event) => this.#lose(event.code ?? null, event.reason ?? "");
    // A failing WebSocket fires `error`, then `close` with 1006; taking `error` as the loss
    // also covers implementations that never follow it with `close`.
    this.#socket.onerror = () => this.#lose(1006, "websocket error");
  }

  send(frames) {
    for (const frame of frames) this.#socket.send(JSON.stringify(frame));
  }

  close() {
    if (this.#closed) return;
    this.#closed = true;
    this.#socket.onmessage = null;
    this.#socket.onclose = null;
    this.#socket.onerror = null;
    this.#socket.close(1000);
  }

  #receive(data) {
    if (typeof data !== "string") return;
    const frame = parseFrame(data);
    if (frame !== null) this.#events.frame(frame);
  }

  #lose(code, reason) {
    if (this.#closed) return;
    this.close();
    this.#events.lost(code, reason);
  }
}

/**
 * A Server-Sent Events session: server frames arrive on an EventSource, client frames are
 * POSTed as JSON arrays, one POST in flight at a time, so that frames keep their order, and
 * each within the server's limits for one POST.
 */
class SseTransport {
  #base;
  #token;
  #env;
  #events;
  #source;
  /** Where frames are posted; known from the session's welcome. */
  #postUrl = null;
  #queue = [];
  #posting = false;
  #retryTimer = null;
  #abort = new AbortController();
  #closed = false;

  constructor(base, token, env, events) {
    if (typeof env.EventSource !== "function") throw new Error("this environment has no EventSource");
    if (typeof env.fetch !== "function") throw new Error("this environment has no fetch");
    this.#base = base;
    this.#token = token;
    this.#env = env;
    this.#events = events;
    this.#source = new env.EventSource(`${base}?token=${encodeURIComponent(token)}`);
    this.#source.onmessage = (event) => this.#receive(event.data);
    // EventSource would reconnect on its own, without `since` or backoff; the client's own
    // reconnect does both.
    this.#source.onerror = () => this.#lose(1006, "event stream failed");
    this.#source.addEventListener("heartbeat", () => {
      if (!this.#closed) this.#events.activity();
    });
    this.#source.addEventListener("close", (event) => this.#serverClosed(event.data));
  }

  send(frames) {
    this.#queue.push(...frames);
    this.#post();
  }

  close() {
    if (this.#closed) return;
    this.#closed = true;
    this.#env.clearTimeout(this.#retryTimer);
    this.#abort.abort();
    this.#source.onmessage = null;
    this.#source.onerror = null;
    this.#source.close();
  }

  #receive(data) {
    if (this.#closed) return;
    const frame = parseFrame(data);
    if (frame === null) return;
    if (frame.type === "welcome") {
      this.#postUrl = `${this.#base}/${encodeURIComponent(frame.connection_id)}`;
    }
    this.#events.frame(frame);
  }

  /** The server ended the session with a close code, as a WebSocket close would. */
  #serverClosed(data) {
    const close = parseJson(data) ?? {};
    this.#lose(Number.isInteger(close.code) ? close.code : 1006, typeof close.reason === "string" ? close.reason : "");
  }

  #post() {
    if (this.#posting || this.#closed || this.#queue.length === 0) return;
    this.#posting = true;
    this.#deliver(this.#nextBody());
  }

  /**
   * Takes the frames of the next POST from the front of the queue, as its JSON body: at
   * most as many as the server accepts in one request, since it refuses the whole request
   * (400 or 413) otherwise and the session would be lost again and again. The rest waits
   * for the next POST, which follows once this one is answered, so the order holds. A
   * frame that is too large on its own still goes, alone: only the server can judge it.
   */
  #nextBody() {
    const texts = [];
    let bytes = 2; // the brackets
    while (this.#queue.length > 0 && texts.length < SSE_MAX_FRAMES_PER_POST) {
      const text = JSON.stringify(this.#queue[0]);
      const size = utf8Length(text) + (texts.length > 0 ? 1 : 0); // and its comma
      if (texts.length > 0 && bytes + size > SSE_MAX_POST_BYTES) break;
      texts.push(text);
      bytes += size;
      this.#queue.shift();
    }
    return `[${texts.join(",")}]`;
  }

  #deliver(body) {
    const init = {
      method: "POST",
      headers: { authorization: `Bearer ${this.#token}`, "content-type": "application/json" },
      body,
      signal: this.#abort.signal,
    };
    this.#env.fetch(this.#postUrl, init).then(
      (response) => this.#delivered(body, response),
      (error) => this.#lose(null, `POST failed: ${error?.message ?? error}`),
    );
  }

  #delivered(body, response) {
    if (this.#closed) return;
    if (response.ok) {
      this.#posting = false;
      this.#post();
    } else if (response.status === 429) {
      this.#retryTimer = this.#env.setTimeout(() => this.#deliver(body), retryAfterMs(response.headers));
    } else if (response.status === 401) {
      // The token expired or was revoked: like a WebSocket closed with 4001, so that the
      // provider is asked for a new token (or a fixed token stops the client).
      this.#lose(UNAUTHORIZED, "the server refused the token (HTTP 401)");
    } else if (response.status === 404 || response.status === 410) {
      this.#lose(null, `the SSE session is gone (HTTP ${response.status})`);
    } else {
      this.#lose(null, `POST answered HTTP ${response.status}`);
    }
  }

  #lose(code, reason) {
    if (this.#closed) return;
    this.close();
    this.#events.lost(code, reason);
  }
}

/**
 * Exponential backoff with full jitter: attempt `n` waits a uniformly random whole number of
 * milliseconds in [0, min(max, min * 2^n)], so that clients dropped together do not return
 * together.
 */
class Backoff {
  #min;
  #max;
  #random;
  #attempt = 0;

  constructor(min, max, random) {
    this.#min = min;
    this.#max = Math.max(min, max);
    this.#random = random;
  }

  next() {
    const ceiling = Math.min(this.#max, this.#min * 2 ** Math.min(this.#attempt, 30));
    this.#attempt += 1;
    return Math.floor(this.#random() * (ceiling + 1));
  }

  reset() {
    this.#attempt = 0;
  }
}

/** Handlers by event type, called synchronously; `on` returns the function that removes one. */
class Listeners {
  #types;
  #handlers = new Map();

  constructor(types) {
    this.#types = types;
  }

  on(type, handler) {
    if (!this.#types.includes(type)) {
      throw new TypeError(`unknown event "${type}"; expected one of: ${this.#types.join(", ")}`);
    }
    if (typeof handler !== "function") throw new TypeError("the handler must be a function");
    // A wrapper per registration, so that adding one function twice means two registrations.
    const entry = { handler };
    let entries = this.#handlers.get(type);
    if (entries === undefined) {
      entries = new Set();
      this.#handlers.set(type, entries);
    }
    entries.add(entry);
    return () => {
      entries.delete(entry);
    };
  }

  emit(type, event) {
    const entries = this.#handlers.get(type);
    if (entries === undefined) return;
    for (const { handler } of [...entries]) {
      try {
        handler(event);
      } catch (error) {
        reportHandlerError(error);
      }
    }
  }
}

/** A handler's exception must not break frame handling: it is reported, not propagated. */
function reportHandlerError(error) {
  if (typeof globalThis.reportError === "function") globalThis.reportError(error);
  else
    queueMicrotask(() => {
      throw error;
    });
}

function settingsOf(options) {
  if (typeof options?.url !== "string") throw new TypeError("RelayClient: options.url is required");
  const url = new URL(options.url);
  if (url.protocol !== "ws:" && url.protocol !== "wss:") {
    throw new TypeError(`RelayClient: url must be a ws:// or wss:// URL, got ${options.url}`);
  }
  const { token } = options;
  if (!(typeof token === "string" && token !== "") && typeof token !== "function") {
    throw new TypeError("RelayClient: token must be a non-empty string or a function returning one");
  }
  const transport = options.transport ?? "auto";
  if (!TRANSPORTS.includes(transport)) {
    throw new TypeError(`RelayClient: transport must be one of ${TRANSPORTS.join(", ")}`);
  }
  const backoff = options.backoff ?? {};
  return Object.freeze({
    url: url.href,
    sseUrl: `${httpBaseOf(url)}/sse`,
    apiUrl: `${httpBaseOf(url)}/api`,
    token,
    transport,
    backoff: { min: positive(backoff.min, 250, "backoff.min"), max: positive(backoff.max, 30000, "backoff.max") },
    requestTimeout: positive(options.requestTimeout, 10000, "requestTimeout"),
    connectTimeout: positive(options.connectTimeout, 10000, "connectTimeout"),
    bufferSize: Math.floor(positive(options.bufferSize, 1024, "bufferSize")),
  });
}

function positive(value, fallback, name) {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !(value >= 1) || value === Infinity) {
    throw new TypeError(`RelayClient: ${name} must be a finite number >= 1`);
  }
  return value;
}

/** What the client uses from its environment; tests inject fakes. */
function environmentOf(options) {
  return {
    WebSocket: options.WebSocket ?? globalThis.WebSocket,
    EventSource: options.EventSource ?? globalThis.EventSource,
    // Browsers require `fetch` and the timer functions to be called on the global object.
    fetch: options.fetch ?? globalThis.fetch?.bind(globalThis),
    random: options.random ?? Math.random,
    setTimeout: options.setTimeout ?? globalThis.setTimeout.bind(globalThis),
    clearTimeout: options.clearTimeout ?? globalThis.clearTimeout.bind(globalThis),
  };
}

/**
 * Where the server's HTTP endpoints (`/sse`, `/api`) are, beside the WebSocket one: ws→http,
 * wss→https, without a trailing `/ws` (or `/`), so that a path prefix is kept.
 */
function httpBaseOf(wsUrl) {
  const url = new URL(wsUrl.href);
  url.protocol = url.protocol === "wss:" ? "https:" : "http:";
  url.pathname = url.pathname.replace(/\/(ws\/?)?$/, "");
  url.search = "";
  url.hash = "";
  return url.href.replace(/\/$/, "");
}

function heartbeatOf(welcome) {
  const ms = welcome.heartbeat_ms;
  return Number.isFinite(ms) && ms > 0 ? Math.max(MIN_HEARTBEAT_MS, ms) : DEFAULT_HEARTBEAT_MS;
}

function retryAfterMs(headers) {
  const value = headers?.get?.("retry-after");
  const seconds = value == null || value === "" ? NaN : Number(value);
  return Number.isFinite(seconds) && seconds >= 0 ? seconds * 1000 : DEFAULT_RETRY_AFTER_MS;
}

/** A server frame: a JSON object with a string `type`, or null for anything else. */
function parseFrame(text) {
  const frame = parseJson(text);
  return frame !== null && typeof frame === "object" && typeof frame.type === "string" ? frame : null;
}

/** The size of `text` in UTF-8, as `fetch` sends it. */
function utf8Length(text) {
  return new TextEncoder().encode(text).length;
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

/** A fresh idempotency key (visible ASCII, as the protocol requires). */
function randomKey() {
  const { crypto } = globalThis;
  // randomUUID exists only in secure contexts (https, localhost); getRandomValues everywhere.
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

function deferred() {
  let resolve;
  let reject;
  const promise = new Promise((onResolve, onReject) => {
    resolve = onResolve;
    reject = onReject;
  });
  return { promise, resolve, reject };
}
