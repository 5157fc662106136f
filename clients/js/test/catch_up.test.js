// Catch-up without a cap: a subscription further behind than the server replays (`subscribed`
// with `recovered: false`) reads the history over REST, page by page, then subscribes again
// from where it got to. These tests play the REST API with `FakeHistory` below.

import assert from "node:assert/strict";
import { test } from "node:test";

import { flush, harness, message, record } from "./fakes.js";

const EVENTS = ["message", "join", "leave", "signal", "recovered", "gap", "ended"];

/** What a recorded event shows of itself: its type and, for messages, its seq. */
function brief(events) {
  return events.map((event) => (event.type === "message" ? `message ${event.seq}` : event.type));
}

/** `message N` for each seq from `first` to `last`. */
function messages(first, last) {
  return Array.from({ length: last - first + 1 }, (_, index) => `message ${first + index}`);
}

/** Stored messages `first` to `last` of `channel`, as the history endpoint returns them. */
function stored(channel, first, last) {
  return Array.from({ length: last - first + 1 }, (_, index) => {
    const { type, ...fields } = message(channel, first + index);
    return fields;
  });
}

/**
 * The server side of `GET /api/channels/{name}/messages`: each read is recorded and waits
 * until the test answers it with a page, refuses it with a status, or fails it.
 */
class FakeHistory {
  requests = [];
  #read = 0;

  fetch = (url, init) =>
    new Promise((resolve, reject) => {
      const request = {
        url: new URL(url),
        method: init.method,
        headers: { ...init.headers },
        signal: init.signal,
        answer: (page) => resolve({ status: 200, ok: true, json: async () => ({ channel: "?", messages: page }) }),
        refuse: (status) => resolve({ status, ok: false, json: async () => ({ error: "unavailable" }) }),
        fail: () => reject(new TypeError("fetch failed")),
      };
      this.requests.push(request);
    });

  /** The next read not looked at yet; fails the test when none comes. */
  async next() {
    for (let turn = 0; turn < 100; turn++) {
      if (this.requests[this.#read] !== undefined) return this.requests[this.#read++];
      await flush();
    }
    throw new Error("timed out waiting for a history read from the client");
  }

  /** The `after` of the latest read. */
  get after() {
    return Number(this.requests.at(-1).url.searchParams.get("after"));
  }
}

/** A connected client whose REST history is `history`. */
async function catchingUpClient(options = {}) {
  const history = new FakeHistory();
  const h = harness({ fetch: history.fetch, ...options });
  const socket = await h.connect();
  return { ...h, history, socket };
}

test("a subscription further behind than the server replays pages through the history, then resubscribes from the last paged seq", async () => {
  const { socket, subscribe, history } = await catchingUpClient();
  const channel = "dm:#alice,bob";
  const sub = await subscribe(socket, channel, { since: 100 }, { seq: 450, recovered: false });
  const events = record(sub, EVENTS);

  const first = await history.next();
  assert.equal(first.url.href, "http://relay.test/api/channels/dm%3A%23alice%2Cbob/messages?after=100&limit=200");
  assert.equal(first.method, "GET");
  assert.deepEqual(first.headers, { authorization: "Bearer t1" });
  assert.equal(sub.lastSeq, 100);

  // Live messages while paging are dropped without moving the cursor: the resubscribe replays them.
  socket.push(message(channel, 451));
  first.answer(stored(channel, 101, 300));
  await flush();
  assert.equal(sub.lastSeq, 300);
  const second = await history.next();
  assert.equal(history.after, 300);
  socket.push(message(channel, 452));
  second.answer(stored(channel, 300, 451)); // 300 again: delivered once
  const unsubscribe = await socket.sent.next("unsubscribe");
  const resubscribe = await socket.sent.next("subscribe");
  assert.deepEqual(resubscribe, { type: "subscribe", id: resubscribe.id, channel, since: 451 });
  assert.ok(socket.sent.frames.indexOf(unsubscribe) < socket.sent.frames.indexOf(resubscribe), "unsubscribed first");
  assert.equal(unsubscribe.channel, channel);
  assert.equal(history.requests.length, 2, "a short page ends the catch-up");

  socket.push({ type: "subscribed", id: resubscribe.id, channel, seq: 452, recovered: true });
  socket.push(message(channel, 452));
  assert.deepEqual(brief(events), [...messages(101, 451), "recovered", "message 452"]);
  assert.deepEqual(events[0], {
    type: "message",
    channel,
    id: "m101",
    seq: 101,
    from: "bob",
    event: null,
    payload: { seq: 101 },
    ts: "2025-11-21T10:00:00.123Z",
  });
  assert.equal(sub.lastSeq, 452);
});

test("history trimmed below the first page is reported as a gap, then the rest arrives", async () => {
  const { socket, subscribe, history } = await catchingUpClient();
  const sub = await subscribe(socket, "chat:42", { since: 100 }, { seq: 450, recovered: false });
  const events = record(sub, EVENTS);

  // The namespace keeps the last 200 messages.
  (await history.next()).answer(stored("chat:42", 251, 450));
  (await history.next()).answer([]);
  assert.equal(history.after, 450);
  const resubscribe = await socket.sent.next("subscribe");
  assert.equal(resubscribe.since, 450);

  assert.deepEqual(events[0], { type: "gap", since: 100, resumedAt: 250 });
  assert.deepEqual(brief(events), ["gap", ...messages(251, 450)]);
});

test("a history page that fails is read again after 100 ms, then 200 ms", async () => {
  const { socket, subscribe, history, clock } = await catchingUpClient();
  const sub = await subscribe(socket, "chat:42", { since: 100 }, { seq: 120, recovered: false });
  const events = record(sub, EVENTS);

  (await history.next()).fail();
  await clock.advance(99);
  assert.equal(history.requests.length, 1);
  await clock.advance(1);
  (await history.next()).refuse(503);
  await clock.advance(199);
  assert.equal(history.requests.length, 2);
  await clock.advance(1);
  const third = await history.next();
  assert.equal(history.after, 100);
  third.answer(stored("chat:42", 101, 120));

  const resubscribe = await socket.sent.next("subscribe");
  assert.equal(resubscribe.since, 120);
  assert.deepEqual(brief(events), messages(101, 120));
});

test("after five failed reads in a row the catch-up reports a gap up to the latest seq and resubscribes from there", async () => {
  const { socket, subscribe, history, clock } = await catchingUpClient();
  const sub = await subscribe(socket, "chat:42", { since: 100 }, { seq: 450, recovered: false });
  const events = record(sub, EVENTS);

  for (const wait of [100, 200, 400, 800]) {
    (await history.next()).fail();
    await clock.advance(wait);
  }
  (await history.next()).refuse(500);

  const unsubscribe = await socket.sent.next("unsubscribe");
  const resubscribe = await socket.sent.next("subscribe");
  assert.equal(unsubscribe.channel, "chat:42");
  assert.deepEqual(resubscribe, { type: "subscribe", id: resubscribe.id, channel: "chat:42", since: 450 });
  assert.deepEqual(events, [{ type: "gap", since: 100, resumedAt: 450 }]);
  assert.equal(sub.lastSeq, 450);

  await clock.advance(5000);
  assert.equal(history.requests.length, 5, "given up");
  socket.push({ type: "subscribed", id: resubscribe.id, channel: "chat:42", seq: 451, recovered: true });
  socket.push(message("chat:42", 451));
  assert.deepEqual(brief(events), ["gap", "recovered", "message 451"]);
});

test("unsubscribing while a page is read stops the catch-up", async () => {
  const { socket, subscribe, history, clock } = await catchingUpClient();
  const sub = await subscribe(socket, "chat:42", { since: 100 }, { seq: 450, recovered: false });
  const events = record(sub, EVENTS);
  const reading = await history.next();

  await sub.unsubscribe();
  assert.equal(reading.signal.aborted, true, "the read is aborted");
  reading.answer(stored("chat:42", 101, 300));
  await clock.advance(10000);

  assert.deepEqual(events, []);
  assert.equal(history.requests.length, 1);
  assert.equal(socket.sent.ofType("subscribe").length, 1, "not subscribed again");
});

test("closing the client while a failed read waits to be retried stops the catch-up", async () => {
  const { client, socket, subscribe, history, clock } = await catchingUpClient();
  const sub = await subscribe(socket, "chat:42", { since: 100 }, { seq: 450, recovered: false });
  const events = record(sub, EVENTS);
  (await history.next()).fail();
  await flush();

  client.close();
  await clock.advance(10000);

  assert.equal(history.requests.length, 1);
  assert.deepEqual(brief(events), ["ended"]);
});

test("a subscription catching up across a reconnect is subscribed again only when it is done", async () => {
  const { socket, subscribe, history, reconnect } = await catchingUpClient();
  const sub = await subscribe(socket, "chat:42", { since: 100 }, { seq: 150, recovered: false });
  const other = await subscribe(socket, "chat:7", {}, { seq: 3 });
  const events = record(sub, EVENTS);
  const reading = await history.next();
  socket.drop(1006);

  const again = await reconnect();
  const restore = await again.sent.next("subscribe");
  assert.equal(restore.channel, other.channel, "only the subscription not catching up is restored");
  reading.answer(stored("chat:42", 101, 150));

  const resubscribe = await again.sent.next("subscribe");
  assert.deepEqual(resubscribe, { type: "subscribe", id: resubscribe.id, channel: "chat:42", since: 150 });
  assert.deepEqual(again.sent.ofType("unsubscribe"), [], "the new connection has nothing to undo");
  assert.deepEqual(brief(events), messages(101, 150));
});

test("while the iterator is read, the next page waits until it took the last one", async () => {
  const { socket, subscribe, history } = await catchingUpClient({ bufferSize: 50 });
  const sub = await subscribe(socket, "chat:42", { since: 0 }, { seq: 300, recovered: false });
  const iterator = sub[Symbol.asyncIterator]();
  const first = iterator.next();

  (await history.next()).answer(stored("chat:42", 1, 200));
  assert.equal((await first).value.seq, 1);
  await flush();
  assert.equal(history.requests.length, 1, "the iterator's buffer is full: no further read");

  /** The next `count` events of the iterator: seqs for messages, types for the rest. */
  async function take(count) {
    const seqs = [];
    for (let taken = 0; taken < count; taken++) {
      const { value } = await iterator.next();
      seqs.push(value.type === "message" ? value.seq : value.type);
    }
    return seqs;
  }

  assert.deepEqual(await take(199), Array.from({ length: 199 }, (_, index) => index + 2), "nothing dropped");
  (await history.next()).answer(stored("chat:42", 201, 300));
  assert.equal(history.after, 200);
  await flush();
  assert.equal(socket.sent.ofType("subscribe").length, 1, "not subscribed again before the last page is taken");

  assert.deepEqual(await take(100), Array.from({ length: 100 }, (_, index) => index + 201));
  assert.equal((await socket.sent.next("subscribe")).since, 300);
});
