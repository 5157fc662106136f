import assert from "node:assert/strict";
import { test } from "node:test";

import { flush, harness, message, record } from "./fakes.js";

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

test("subscribe resolves on subscribed and delivers messages once, in seq order", async () => {
  const { client, connect } = harness();
  const socket = await connect();

  const subscribing = client.subscribe("chat:42");
  const frame = await socket.sent.next("subscribe");
  assert.deepEqual(frame, { type: "subscribe", id: frame.id, channel: "chat:42" });
  socket.push({ type: "subscribed", id: frame.id, channel: "chat:42", seq: 17 });
  const sub = await subscribing;
  assert.equal(sub.channel, "chat:42");
  assert.equal(sub.lastSeq, 17);

  const events = record(sub, EVENTS);
  socket.push(message("chat:42", 18, { text: "hi" }, { event: "text" }));
  socket.push(message("chat:42", 18));
  socket.push(message("chat:42", 17));
  socket.push(message("chat:42", null, {}, { event: "typing" }));
  socket.push(message("chat:42", 19));
  socket.push(message("chat:7", 20));

  assert.deepEqual(brief(events), ["message 18", "message null", "message 19"]);
  assert.deepEqual(events[0], {
    type: "message",
    channel: "chat:42",
    id: "m18",
    seq: 18,
    from: "bob",
    event: "text",
    payload: { text: "hi" },
    ts: "2025-11-21T10:00:00.123Z",
  });
  assert.equal(sub.lastSeq, 19);
});

test("join, leave and signal frames reach the subscription of their channel", async () => {
  const { client, connect, subscribe } = harness();
  const socket = await connect();
  const sub = await subscribe(socket, "call:1");
  const events = record(sub, EVENTS);

  socket.push({ type: "join", channel: "call:1", user: "bob" });
  socket.push({ type: "signal", channel: "call:1", from: "bob", event: "offer", payload: { sdp: "v=0" } });
  socket.push({ type: "leave", channel: "call:1", user: "bob" });

  assert.deepEqual(events, [
    { type: "join", user: "bob" },
    { type: "signal", from: "bob", event: "offer", payload: { sdp: "v=0" } },
    { type: "leave", user: "bob" },
  ]);
});

test("after a reconnect each subscription resubscribes from its last seq and reports recovered", async () => {
  const { client, connect, reconnect, subscribe } = harness();
  const socket = await connect();
  const sub = await subscribe(socket, "chat:42", {}, { seq: 5 });
  const events = record(sub, EVENTS);
  socket.push(message("chat:42", 6));
  socket.push(message("chat:42", 7));
  socket.drop(1006);

  const again = await reconnect();
  const restore = await again.sent.next("subscribe");
  assert.deepEqual(restore, { type: "subscribe", id: restore.id, channel: "chat:42", since: 7 });

  // Until `subscribed` arrives, frames for the channel belong to the old subscription.
  again.push(message("chat:42", 8));
  again.push({ type: "join", channel: "chat:42", user: "carol" });
  again.push({ type: "subscribed", id: restore.id, channel: "chat:42", seq: 9, recovered: true });
  for (const seq of [7, 8, 9]) again.push(message("chat:42", seq));

  assert.deepEqual(brief(events), ["message 6", "message 7", "recovered", "message 8", "message 9"]);
  assert.deepEqual(events[2], { type: "recovered", since: 7 });
  assert.equal(sub.lastSeq, 9);
});

test("a subscription that saw nothing resubscribes from the seq it started at", async () => {
  const { connect, reconnect, subscribe } = harness();
  const socket = await connect();
  await subscribe(socket, "chat:42", {}, { seq: 12 });
  socket.drop(1006);

  const again = await reconnect();
  assert.equal((await again.sent.next("subscribe")).since, 12);
});

// Resubscribes that the server cannot replay because the client is behind are caught up over
// REST (catch_up.test.js); a cursor past the channel's latest seq leaves nothing to read.
test("a resubscribe from past the channel's latest seq (a wiped store) reports a gap and continues live", async () => {
  const { connect, reconnect, subscribe } = harness();
  const socket = await connect();
  const sub = await subscribe(socket, "chat:42", {}, { seq: 2000 });
  const events = record(sub, EVENTS);
  socket.drop(4008, "slow consumer: outbound queue overflowed");

  const again = await reconnect();
  const restore = await again.sent.next("subscribe");
  assert.equal(restore.since, 2000);
  again.push({ type: "subscribed", id: restore.id, channel: "chat:42", seq: 3, recovered: false });
  again.push(message("chat:42", 4));

  assert.deepEqual(events, [
    { type: "gap", since: 2000, resumedAt: 3 },
    { type: "message", channel: "chat:42", id: "m4", seq: 4, from: "bob", event: null, payload: { seq: 4 }, ts: "2025-11-21T10:00:00.123Z" },
  ]);
  assert.equal(sub.lastSeq, 4);
});

test("subscribing with since replays after it, or reports a gap to handlers attached after await", async () => {
  const { clock, connect, subscribe } = harness();
  const socket = await connect();

  const recovered = await subscribe(socket, "chat:1", { since: 17 }, { seq: 20, recovered: true });
  assert.equal(recovered.lastSeq, 17);
  assert.deepEqual(socket.sent.ofType("subscribe")[0].since, 17);

  // A `since` past the channel's latest seq (a wiped store) leaves nothing to catch up on.
  const missed = await subscribe(socket, "chat:2", { since: 5000 }, { seq: 100, recovered: false });
  const events = record(missed, EVENTS);
  await clock.advance(0);
  assert.deepEqual(events, [{ type: "gap", since: 5000, resumedAt: 100 }]);
  assert.equal(missed.lastSeq, 100);
});

test("the gap of a first subscribe precedes the messages that follow it", async () => {
  const { connect, subscribe } = harness();
  const socket = await connect();
  const sub = await subscribe(socket, "chat:2", { since: 5000 }, { seq: 100, recovered: false });
  const events = record(sub, EVENTS);

  socket.push(message("chat:2", 101));
  assert.deepEqual(brief(events), ["gap", "message 101"]);
  assert.deepEqual(brief(await take(sub[Symbol.asyncIterator](), 2)), ["gap", "message 101"]);
});

test("a subscribe refused by the server rejects, and subscribing twice is refused locally", async () => {
  const { client, connect, subscribe } = harness();
  const socket = await connect();

  const refused = client.subscribe("group:1");
  const frame = await socket.sent.next("subscribe");
  socket.push({ type: "error", id: frame.id, code: "forbidden", message: "not a member", channel: "group:1" });
  await assert.rejects(refused, { code: "forbidden" });

  await subscribe(socket, "chat:1");
  await assert.rejects(client.subscribe("chat:1"), { code: "bad_request" });
});

test("a resubscribe refused for good ends the subscription; unavailable is retried after 1 s", async () => {
  const { clock, connect, reconnect, subscribe } = harness();
  const socket = await connect();
  const gone = await subscribe(socket, "group:1", {}, { seq: 1 });
  const flaky = await subscribe(socket, "chat:1", {}, { seq: 1 });
  const goneEvents = record(gone, EVENTS);
  const flakyEvents = record(flaky, EVENTS);
  socket.drop(1006);

  const again = await reconnect();
  const restores = [await again.sent.next("subscribe"), await again.sent.next("subscribe")];
  const [group, chat] = restores[0].channel === "group:1" ? restores : restores.reverse();
  again.push({ type: "error", id: group.id, code: "forbidden", message: "not a member", channel: "group:1" });
  again.push({ type: "error", id: chat.id, code: "unavailable", message: "store down", channel: "chat:1" });
  assert.deepEqual(goneEvents, [{ type: "ended", code: "forbidden", reason: "not a member" }]);

  await clock.advance(999);
  assert.equal(again.sent.ofType("subscribe").length, 2);
  await clock.advance(1);
  const retry = await again.sent.next("subscribe");
  assert.deepEqual(retry, { type: "subscribe", id: retry.id, channel: "chat:1", since: 1 });
  again.push({ type: "subscribed", id: retry.id, channel: "chat:1", seq: 1, recovered: true });
  assert.deepEqual(flakyEvents, [{ type: "recovered", since: 1 }]);
});

test("a subscription the server ends on its own ends its iterator", async () => {
  const { connect, subscribe } = harness();
  const socket = await connect();
  const sub = await subscribe(socket, "group:1", {}, { seq: 1 });
  const events = record(sub, ["ended"]);

  socket.push(message("group:1", 2));
  socket.push({ type: "unsubscribed", channel: "group:1", reason: "removed from the channel's members" });
  socket.push(message("group:1", 3));

  const seen = [];
  for await (const event of sub) seen.push(event.type === "message" ? event.seq : event);
  assert.deepEqual(seen, [2, { type: "ended", code: "forbidden", reason: "removed from the channel's members" }]);
  assert.deepEqual(events, [{ type: "ended", code: "forbidden", reason: "removed from the channel's members" }]);
});

test("the iterator yields events in order, waiting for the next one", async () => {
  const { connect, subscribe } = harness();
  const socket = await connect();
  const sub = await subscribe(socket, "chat:42");
  const iterator = sub[Symbol.asyncIterator]();

  socket.push({ type: "join", channel: "chat:42", user: "bob" });
  socket.push(message("chat:42", 1));
  assert.deepEqual(brief(await take(iterator, 2)), ["join", "message 1"]);

  const waiting = iterator.next();
  socket.push(message("chat:42", 2));
  assert.equal((await waiting).value.seq, 2);
});

test("a full iterator buffer drops the oldest messages and reports them as a gap; handlers get everything", async () => {
  const { connect, subscribe } = harness({ bufferSize: 3 });
  const socket = await connect();
  const sub = await subscribe(socket, "chat:42", {}, { seq: 10 });
  const handled = record(sub, ["message"]);

  socket.push({ type: "join", channel: "chat:42", user: "bob" });
  for (const seq of [11, 12, 13, 14]) socket.push(message("chat:42", seq));
  socket.push(message("chat:42", null));

  assert.equal(handled.length, 5);
  const iterator = sub[Symbol.asyncIterator]();
  const buffered = await take(iterator, 4);
  assert.deepEqual(buffered[0], { type: "gap", since: 10, resumedAt: 13 });
  assert.deepEqual(brief(buffered.slice(1)), ["join", "message 14", "message null"]);

  const waiting = iterator.next();
  socket.push(message("chat:42", 15));
  assert.equal((await waiting).value.seq, 15, "once drained, nothing more is dropped");
});

test("unsubscribe stops delivery, tells the server and finishes the iterator", async () => {
  const { client, connect, subscribe } = harness();
  const socket = await connect();
  const sub = await subscribe(socket, "chat:42");
  const events = record(sub, EVENTS);
  const iterator = sub[Symbol.asyncIterator]();
  const waiting = iterator.next();

  await sub.unsubscribe();
  const frame = await socket.sent.next("unsubscribe");
  assert.deepEqual(frame, { type: "unsubscribe", id: frame.id, channel: "chat:42" });
  socket.push(message("chat:42", 1));
  socket.push({ type: "unsubscribed", id: frame.id, channel: "chat:42" });

  assert.deepEqual(events, []);
  assert.deepEqual(await waiting, { value: undefined, done: true });
  client.subscribe("chat:42");
  assert.equal((await socket.sent.next("subscribe")).channel, "chat:42", "the channel can be subscribed again");
});

test("close ends every subscription", async () => {
  const { client, connect, subscribe } = harness();
  const socket = await connect();
  const sub = await subscribe(socket, "chat:42");
  const events = record(sub, ["ended"]);

  client.close();
  assert.deepEqual(events, [{ type: "ended", code: "closed", reason: "the client was closed" }]);
  assert.deepEqual(await sub[Symbol.asyncIterator]().next(), { value: { type: "ended", code: "closed", reason: "the client was closed" }, done: false });
});

test("a subscribe that timed out is undone when the server confirms it late", async () => {
  const { client, clock, connect } = harness({ requestTimeout: 1000 });
  const socket = await connect();

  const subscribing = client.subscribe("chat:42");
  const frame = await socket.sent.next("subscribe");
  const timedOut = assert.rejects(subscribing, { code: "timeout" });
  await clock.advance(1000);
  await timedOut;

  socket.push({ type: "subscribed", id: frame.id, channel: "chat:42", seq: 3 });
  const undo = await socket.sent.next("unsubscribe");
  assert.equal(undo.channel, "chat:42");
});

test("a subscribe retried after a timeout ends with exactly one subscription", async () => {
  const { client, clock, connect } = harness({ requestTimeout: 1000 });
  const socket = await connect();

  const timedOut = assert.rejects(client.subscribe("chat:42"), { code: "timeout" });
  const abandoned = await socket.sent.next("subscribe");
  await clock.advance(1000);
  await timedOut;

  // The retry undoes whatever became of the abandoned subscribe before subscribing again.
  const retrying = client.subscribe("chat:42");
  const retry = await socket.sent.next("subscribe");
  const undo = socket.sent.frames.at(-2);
  assert.deepEqual(
    [undo, retry],
    [
      { type: "unsubscribe", id: undo.id, channel: "chat:42" },
      { type: "subscribe", id: retry.id, channel: "chat:42" },
    ],
  );

  // The server handles them in order: the late subscribe succeeds, is undone, and the retry succeeds.
  socket.push({ type: "subscribed", id: abandoned.id, channel: "chat:42", seq: 3 });
  socket.push(message("chat:42", 4));
  socket.push({ type: "unsubscribed", id: undo.id, channel: "chat:42" });
  socket.push({ type: "subscribed", id: retry.id, channel: "chat:42", seq: 4 });
  const sub = await retrying;
  const events = record(sub, EVENTS);
  socket.push(message("chat:42", 5));

  assert.deepEqual(brief(events), ["message 5"]);
  assert.equal(socket.sent.ofType("unsubscribe").length, 1, "the late subscribed undid nothing more");
  assert.equal(socket.sent.ofType("subscribe").length, 2);
});

test("a restore without a matching reply is retried after requestTimeout and 1 s", async () => {
  const { clock, connect, reconnect, subscribe } = harness({ requestTimeout: 5000 });
  const socket = await connect();
  const sub = await subscribe(socket, "chat:42", {}, { seq: 3 });
  const events = record(sub, EVENTS);
  socket.drop(1006);

  const again = await reconnect();
  const restore = await again.sent.next("subscribe");
  // Over the connection's frame rate: refused without an id, so nothing matches the restore.
  again.push({ type: "error", code: "rate_limited", message: "too many frames: slow down" });
  await clock.advance(5999);
  assert.equal(again.sent.ofType("subscribe").length, 1);
  await clock.advance(1);

  const undo = await again.sent.next("unsubscribe");
  const retry = await again.sent.next("subscribe");
  assert.notEqual(retry.id, restore.id);
  assert.deepEqual(retry, { type: "subscribe", id: retry.id, channel: "chat:42", since: 3 });
  assert.ok(again.sent.frames.indexOf(undo) < again.sent.frames.indexOf(retry), "undone first");
  again.push({ type: "subscribed", id: retry.id, channel: "chat:42", seq: 4, recovered: true });
  again.push(message("chat:42", 4));
  assert.deepEqual(brief(events), ["recovered", "message 4"]);
});

test("frames of a timed-out restore are dropped, and its late subscribed is undone before the retry", async () => {
  const { clock, connect, reconnect, subscribe } = harness({ requestTimeout: 5000 });
  const socket = await connect();
  const sub = await subscribe(socket, "chat:42", {}, { seq: 3 });
  const events = record(sub, EVENTS);
  socket.drop(1006);

  const again = await reconnect();
  const restore = await again.sent.next("subscribe");
  await clock.advance(5000);
  again.push({ type: "subscribed", id: restore.id, channel: "chat:42", seq: 4, recovered: true });
  again.push(message("chat:42", 4));
  const undo = await again.sent.next("unsubscribe");
  assert.equal(undo.channel, "chat:42");

  await clock.advance(1000);
  const retry = await again.sent.next("subscribe");
  assert.equal(retry.since, 3);
  assert.equal(again.sent.ofType("unsubscribe").length, 1, "undone once");
  again.push({ type: "subscribed", id: retry.id, channel: "chat:42", seq: 4, recovered: true });
  again.push(message("chat:42", 4));
  assert.deepEqual(brief(events), ["recovered", "message 4"]);
});
