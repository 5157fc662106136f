// Test doubles for the client's environment: a manual clock, and the server side of fake
// WebSockets, EventSources and fetch. Tests play the server: they push frames, read what the
// client sent, and close connections with chosen codes. Nothing here sleeps: waits end when
// the awaited thing happens, or fail after a short real deadline with a clear message.

import { RelayClient } from "../src/relay.js";

/** Lets every queued microtask (promise continuation) run. */
export function flush() {
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * Polls `ready()` after each turn of the event loop until it returns something other than
 * undefined. Gives up after a short real deadline, so that a missing frame fails the test
 * with a clear message instead of hanging it.
 */
function until(ready, what) {
  return new Promise((resolve, reject) => {
    let expired = false;
    const deadline = setTimeout(() => {
      expired = true;
      reject(new Error(`timed out waiting for ${what}`));
    }, 1000);
    const poll = () => {
      if (expired) return;
      const value = ready();
      if (value === undefined) {
        setImmediate(poll);
        return;
      }
      clearTimeout(deadline);
      resolve(value);
    };
    poll();
  });
}

/** Timers that fire only when the test advances time. */
export class FakeClock {
  now = 0;
  #timers = new Map();
  #nextHandle = 1;

  setTimeout = (callback, ms = 0) => {
    const handle = this.#nextHandle++;
    this.#timers.set(handle, { at: this.now + Math.max(0, ms), callback });
    return handle;
  };

  clearTimeout = (handle) => {
    this.#timers.delete(handle);
  };

  /** Milliseconds until the earliest timer, or null when none is set. */
  nextDelay() {
    const times = [...this.#timers.values()].map((timer) => timer.at);
    return times.length === 0 ? null : Math.min(...times) - this.now;
  }

  /** Moves time forward, firing due timers in order and letting promises settle after each. */
  async advance(ms) {
    const until = this.now + ms;
    for (let fired = 0; ; fired++) {
      if (fired > 10000) throw new Error("timers keep firing: a retry loop without delay?");
      await flush();
      const due = this.#earliest(until);
      if (due === undefined) break;
      this.#timers.delete(due.handle);
      this.now = due.at;
      due.callback();
    }
    this.now = until;
    await flush();
  }

  #earliest(until) {
    let earliest;
    for (const [handle, timer] of this.#timers) {
      if (timer.at <= until && (earliest === undefined || timer.at < earliest.at)) {
        earliest = { handle, ...timer };
      }
    }
    return earliest;
  }
}

/** The frames a client sent on one connection, read in order, with one cursor per type. */
class SentFrames {
  frames = [];
  #cursors = new Map();

  add(frames) {
    this.frames.push(...frames);
  }

  /** The next frame of `type` not read yet; without a type, the next frame that is not a ping. */
  next(type) {
    const matches = (frame) => (type === undefined ? frame.type !== "ping" : frame.type === type);
    return until(() => {
      for (let index = this.#cursors.get(type) ?? 0; index < this.frames.length; index++) {
        if (matches(this.frames[index])) {
          this.#cursors.set(type, index + 1);
          return this.frames[index];
        }
      }
      return undefined;
    }, `a ${type ?? "non-ping"} frame from the client`);
  }

  /** Frames of `type` sent so far. */
  ofType(type) {
    return this.frames.filter((frame) => frame.type === type);
  }
}

/** The server side of the client's WebSockets. */
export class FakeWebSocketServer {
  sockets = [];

  constructor() {
    const server = this;
    this.WebSocket = class extends FakeWebSocket {
      constructor(url, protocols) {
        super(url, protocols);
        server.sockets.push(this);
      }
    };
  }

  /** The `index`th socket the client opened (0 is the first), once it exists. */
  socket(index) {
    return until(() => this.sockets[index], `WebSocket #${index}`);
  }

  /** The socket the client is opening now (not welcomed, not closed), once it exists. */
  opening() {
    return until(
      () => this.sockets.find((socket) => socket.readyState === FakeWebSocket.CONNECTING && !socket.closedByClient),
      "a WebSocket being opened",
    );
  }
}

class FakeWebSocket {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSING = 2;
  static CLOSED = 3;

  readyState = FakeWebSocket.CONNECTING;
  onopen = null;
  onmessage = null;
  onclose = null;
  onerror = null;
  /** The close the client asked for, if it closed the socket. */
  closedByClient = null;
  #sent = new SentFrames();

  constructor(url, protocols) {
    this.url = new URL(url);
    this.protocols = protocols;
  }

  get token() {
    return this.url.searchParams.get("token");
  }

  // The client's side.

  send(text) {
    if (this.readyState !== FakeWebSocket.OPEN) throw new Error(`send in readyState ${this.readyState}`);
    this.#sent.add([JSON.parse(text)]);
  }

  close(code, reason) {
    if (this.readyState >= FakeWebSocket.CLOSING) return;
    this.readyState = FakeWebSocket.CLOSED;
    this.closedByClient = { code, reason };
  }

  // The server's side.

  get sent() {
    return this.#sent;
  }

  /** Completes the upgrade and sends `welcome`. */
  welcome(fields = {}) {
    this.readyState = FakeWebSocket.OPEN;
    this.onopen?.({});
    this.push({ type: "welcome", connection_id: "17", user: "alice", heartbeat_ms: 25000, ...fields });
  }

  push(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  /** The server closes with `code`; 1006 is a failure, reported with an `error` first. */
  drop(code = 1006, reason = "") {
    this.readyState = FakeWebSocket.CLOSED;
    if (code === 1006) this.onerror?.({});
    this.onclose?.({ code, reason, wasClean: code !== 1006 });
  }
}

/** The server side of the client's EventSources. */
export class FakeSseServer {
  sources = [];

  constructor() {
    const server = this;
    this.EventSource = class extends FakeEventSource {
      constructor(url) {
        super(url);
        server.sources.push(this);
      }
    };
  }

  source(index) {
    return until(() => this.sources[index], `EventSource #${index}`);
  }
}

class FakeEventSource {
  onmessage = null;
  onerror = null;
  closed = false;
  #listeners = new Map();

  constructor(url) {
    this.url = new URL(url);
  }

  addEventListener(type, listener) {
    const listeners = this.#listeners.get(type) ?? [];
    this.#listeners.set(type, [...listeners, listener]);
  }

  close() {
    this.closed = true;
  }

  // The server's side.

  welcome(fields = {}) {
    this.push({ type: "welcome", connection_id: "17", user: "alice", heartbeat_ms: 25000, ...fields });
  }

  /** A server frame, as a default `message` event. */
  push(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  heartbeat() {
    this.#dispatch("heartbeat", "{}");
  }

  /** The server ends the session with a close code. */
  closeWith(code, reason = "") {
    this.#dispatch("close", JSON.stringify({ code, reason }));
  }

  fail() {
    this.onerror?.({});
  }

  #dispatch(type, data) {
    for (const listener of this.#listeners.get(type) ?? []) listener({ type, data });
  }
}

/**
 * The server side of `fetch`: each call is recorded and waits until the test answers it,
 * or is answered at once with `autoStatus` when that is set.
 */
export class FakeHttp {
  requests = [];
  autoStatus = null;
  #read = 0;

  fetch = (url, init) =>
    new Promise((resolve) => {
      const request = {
        url,
        method: init.method,
        headers: { ...init.headers },
        body: JSON.parse(init.body),
        respond: (status, headers = {}) =>
          resolve({ status, ok: status >= 200 && status < 300, headers: new Headers(headers) }),
      };
      this.requests.push(request);
      if (this.autoStatus !== null) request.respond(this.autoStatus);
    });

  /** The next request not read yet. */
  next() {
    return until(() => this.requests[this.#read] && this.requests[this.#read++], "a POST from the client");
  }
}

/**
 * A client wired to fakes. Reconnect delays are zero (random() is 0) unless overridden, so
 * `clock.advance(0)` lets the client reconnect.
 */
export function harness(options = {}) {
  const clock = new FakeClock();
  const ws = new FakeWebSocketServer();
  const sse = new FakeSseServer();
  const http = new FakeHttp();
  const client = new RelayClient({
    url: "ws://relay.test/ws",
    token: "t1",
    transport: "websocket",
    random: () => 0,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    WebSocket: ws.WebSocket,
    EventSource: sse.EventSource,
    fetch: http.fetch,
    ...options,
  });

  /** Connects: the client's first socket is welcomed; returns that socket. */
  async function connect(welcome = {}) {
    const connecting = client.connect();
    const socket = await ws.socket(0);
    socket.welcome(welcome);
    await connecting;
    return socket;
  }

  /** After a loss: lets the backoff elapse and welcomes the next socket. */
  async function reconnect(welcome = {}) {
    await clock.advance(0);
    const socket = await ws.opening();
    socket.welcome(welcome);
    await flush();
    return socket;
  }

  /** Subscribes and answers the subscribe with `subscribed` (plus `reply` fields). */
  async function subscribe(socket, channel, options = {}, reply = {}) {
    const subscribing = client.subscribe(channel, options);
    const frame = await socket.sent.next("subscribe");
    socket.push({ type: "subscribed", id: frame.id, channel, seq: 0, ...reply });
    return subscribing;
  }

  return { client, clock, ws, sse, http, connect, reconnect, subscribe };
}

/** Records the events a `client.on` / `sub.on` target emits, by type. */
export function record(target, types) {
  const events = [];
  for (const type of types) target.on(type, (event) => events.push({ type, ...event }));
  return events;
}

/** A server `message` frame. */
export function message(channel, seq, payload = { seq }, fields = {}) {
  const frame = { type: "message", channel, id: `m${seq ?? "e"}`, from: "bob", payload, ts: "2025-11-21T10:00:00.123Z", ...fields };
  if (seq !== null) frame.seq = seq;
  return frame;
}
