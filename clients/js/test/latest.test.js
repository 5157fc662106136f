import assert from "node:assert/strict";
import { test } from "node:test";

import { harness, message, record } from "./fakes.js";

const EVENTS = ["message", "join", "leave", "signal", "recovered", "gap", "ended"];

/** What a recorded event shows of itself: its type and, for messages, its seq. */
function brief(events) {
  return events.map((event) => (event.type === "message" ? `message ${event.seq}` : event.type));
}

/** Takes `count` events from an async iterator. */
async function take(iterator, count) {
  const events = [];
  for (let i = 0; i < count; i++) {
    const { value, done } = await iterator.next();
    if (done) break;
    events.push(value);
  }
  return events;
}

test("a latest subscribe sends mode latest without since and delivers the newest message first", async () => {
  const { client, connect } = harness();
  const socket = await connect();

  const subscribing = client.subscribe("prices:eur", { mode: "latest" });
  const frame = await socket.sent.next("subscribe");
  assert.deepEqual(frame, { type: "subscribe", id: frame.id, channel: "prices:eur", mode: "latest" });
  socket.push({ type: "subscribed", id: frame.id, channel: "prices:eur", seq: 41 });
  const sub = await subscribing;
  assert.equal(sub.mode, "latest");
  assert.equal(sub.lastSeq, null, "the cursor does not jump to the seq of subscribed");

  const events = record(sub, EVENTS);
  socket.push(message("prices:eur", 41));
  assert.deepEqual(brief(events), ["message 41"]);
  assert.equal(sub.lastSeq, 41);
});

test("since with mode latest, or an unknown mode, is refused before anything is sent", async () => {
  const { client, connect } = harness();
  const socket = await connect();

  await assert.rejects(client.subscribe("prices:eur", { mode: "latest", since: 3 }), { code: "bad_request" });
  await assert.rejects(client.subscribe("prices:eur", { mode: "newest" }), { code: "bad_request" });
  assert.equal(socket.sent.ofType("subscribe").length, 0);
});

test("holes in the seqs of a latest subscription raise no gap, for handlers or the iterator", async () => {
  const { connect, subscribe } = harness();
  const socket = await connect();
  const sub = await subscribe(socket, "prices:eur", { mode: "latest" }, { seq: 10 });
  const events = record(sub, EVENTS);

  for (const seq of [10, 14, 15, 40]) socket.push(message("prices:eur", seq));

  assert.deepEqual(brief(events), ["message 10", "message 14", "message 15", "message 40"]);
  assert.deepEqual(brief(await take(sub[Symbol.asyncIterator](), 4)), brief(events));
  assert.equal(sub.lastSeq, 40);
});

test("after a reconnect a latest subscription restarts at the newest message and drops a repeat of the last one", async () => {
  const { connect, http, reconnect, subscribe } = harness();
  const socket = await connect();
  const sub = await subscribe(socket, "prices:eur", { mode: "latest" }, { seq: 5 });
  const events = record(sub, EVENTS);
  socket.push(message("prices:eur", 5));
  socket.push(message("prices:eur", 9));
  socket.drop(1006);

  const again = await reconnect();
  const restore = await again.sent.next("subscribe");
  assert.deepEqual(restore, { type: "subscribe", id: restore.id, channel: "prices:eur", mode: "latest" });
  // Nothing was published meanwhile: the newest message is the one already delivered.
  again.push({ type: "subscribed", id: restore.id, channel: "prices:eur", seq: 9 });
  again.push(message("prices:eur", 9));
  again.push(message("prices:eur", 12));

  assert.deepEqual(brief(events), ["message 5", "message 9", "message 12"]);
  assert.equal(sub.lastSeq, 12);
  assert.equal(http.requests.length, 0, "no catch-up over REST");
});

test("a latest subscription restored far behind starts at the newest message without a gap or a catch-up", async () => {
  const { connect, http, reconnect, subscribe } = harness();
  const socket = await connect();
  const sub = await subscribe(socket, "prices:eur", { mode: "latest" }, { seq: 3 });
  const events = record(sub, EVENTS);
  socket.push(message("prices:eur", 3));
  socket.drop(4008, "slow consumer: outbound queue overflowed");

  const again = await reconnect();
  const restore = await again.sent.next("subscribe");
  again.push({ type: "subscribed", id: restore.id, channel: "prices:eur", seq: 5000, recovered: false });
  again.push(message("prices:eur", 5000));

  assert.deepEqual(brief(events), ["message 3", "message 5000"]);
  assert.equal(http.requests.length, 0);
});

test("a latest restore retried after a passing refusal still carries no since", async () => {
  const { clock, connect, reconnect, subscribe } = harness();
  const socket = await connect();
  const sub = await subscribe(socket, "prices:eur", { mode: "latest" }, { seq: 7 });
  socket.push(message("prices:eur", 7));
  socket.drop(1006);

  const again = await reconnect();
  const restore = await again.sent.next("subscribe");
  again.push({ type: "error", id: restore.id, code: "unavailable", message: "store down", channel: "prices:eur" });
  await clock.advance(1000);

  const retry = await again.sent.next("subscribe");
  assert.deepEqual(retry, { type: "subscribe", id: retry.id, channel: "prices:eur", mode: "latest" });
  again.push({ type: "subscribed", id: retry.id, channel: "prices:eur", seq: 8 });
  again.push(message("prices:eur", 8));
  assert.equal(sub.lastSeq, 8);
});

test("a full iterator buffer of a latest subscription keeps the newest message and other events, without a gap", async () => {
  const { connect, subscribe } = harness({ bufferSize: 3 });
  const socket = await connect();
  const sub = await subscribe(socket, "prices:eur", { mode: "latest" }, { seq: 10 });
  const handled = record(sub, ["message"]);

  socket.push(message("prices:eur", 10));
  socket.push({ type: "join", channel: "prices:eur", user: "bob" });
  for (const seq of [11, 12, 13]) socket.push(message("prices:eur", seq));
  socket.push({ type: "leave", channel: "prices:eur", user: "bob" });

  assert.equal(handled.length, 4, "handlers get every message");
  const iterator = sub[Symbol.asyncIterator]();
  assert.deepEqual(brief(await take(iterator, 3)), ["join", "message 13", "leave"]);

  const waiting = iterator.next();
  socket.push(message("prices:eur", 14));
  assert.equal((await waiting).value.seq, 14);
});

test("reliable subscriptions send no mode and are restored from their cursor", async () => {
  const { client, connect, reconnect, subscribe } = harness();
  const socket = await connect();

  const explicit = await subscribe(socket, "chat:1", { mode: "reliable" }, { seq: 4 });
  const implicit = await subscribe(socket, "chat:2", {}, { seq: 6 });
  const [first, second] = socket.sent.ofType("subscribe");
  assert.deepEqual(first, { type: "subscribe", id: first.id, channel: "chat:1" });
  assert.deepEqual(second, { type: "subscribe", id: second.id, channel: "chat:2" });
  assert.equal(explicit.mode, "reliable");
  assert.equal(implicit.mode, "reliable");
  assert.equal(explicit.lastSeq, 4);
  socket.drop(1006);

  const again = await reconnect();
  const restores = [await again.sent.next("subscribe"), await again.sent.next("subscribe")];
  const since = Object.fromEntries(restores.map((frame) => [frame.channel, frame.since]));
  assert.deepEqual(since, { "chat:1": 4, "chat:2": 6 });
  assert.ok(restores.every((frame) => !("mode" in frame)));
  assert.equal(client.state, "open");
});
