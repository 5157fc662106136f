import assert from "node:assert/strict";
import { test } from "node:test";

import { RelayError } from "../src/relay.js";
import { flush, harness, message, record } from "./fakes.js";

const EVENTS = ["message", "join", "leave", "signal", "read", "recovered", "gap", "ended"];

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

test("markRead resolves with the marker the server stored, not the seq asked for", async () => {
  const { client, connect } = harness();
  const socket = await connect();

  const marking = client.markRead("chat:1", 42);
  const frame = await socket.sent.next("read");
  assert.deepEqual(frame, { type: "read", id: frame.id, channel: "chat:1", seq: 42 });

  // The marker was already further on another device: it never moves back.
  socket.push({ type: "read", id: frame.id, channel: "chat:1", seq: 57 });
  assert.equal(await marking, 57);
});

test("markRead accepts seq 0 and resolves with a marker capped at the channel's latest seq", async () => {
  const { client, connect } = harness();
  const socket = await connect();

  const first = client.markRead("chat:1", 0);
  const second = client.markRead("chat:1", 900);
  const a = await socket.sent.next("read");
  const b = await socket.sent.next("read");
  socket.push({ type: "read", id: b.id, channel: "chat:1", seq: 12 });
  socket.push({ type: "read", id: a.id, channel: "chat:1", seq: 0 });
  assert.equal(await first, 0);
  assert.equal(await second, 12);
});

test("a refused markRead rejects with the server's code", async () => {
  const { client, connect } = harness();
  const socket = await connect();

  const marking = client.markRead("dm:#bob,carol", 3);
  const frame = await socket.sent.next("read");
  socket.push({ type: "error", id: frame.id, code: "forbidden", message: "not a member of dm:#bob,carol" });

  await assert.rejects(marking, (error) => {
    assert.ok(error instanceof RelayError);
    assert.equal(error.code, "forbidden");
    assert.equal(error.message, "not a member of dm:#bob,carol");
    return true;
  });
});

test("markRead refuses a seq that is not a non-negative safe integer at once, sending nothing", async () => {
  const { client, connect } = harness();
  const socket = await connect();

  for (const seq of [-1, 1.5, Number.NaN, Infinity, 2 ** 53, "42", 42n, null, undefined]) {
    await assert.rejects(client.markRead("chat:1", seq), (error) => {
      assert.ok(error instanceof RelayError);
      assert.equal(error.code, "bad_request");
      assert.match(error.message, /non-negative safe integer/);
      return true;
    });
  }
  await flush();
  assert.deepEqual(socket.sent.ofType("read"), []);
});

test("markRead rejects with disconnected when the connection drops before the reply", async () => {
  const { client, connect } = harness();
  const socket = await connect();

  const marking = client.markRead("chat:1", 5);
  await socket.sent.next("read");
  socket.drop(1006);
  await assert.rejects(marking, { code: "disconnected" });
});

test("markRead without a reply rejects with timeout", async () => {
  const { client, clock, connect } = harness({ requestTimeout: 1000 });
  const socket = await connect();

  const marking = client.markRead("chat:1", 5);
  await socket.sent.next("read");
  const rejected = assert.rejects(marking, { code: "timeout" });
  await clock.advance(1000);
  await rejected;
});

test("markRead made while disconnected is sent after the next welcome", async () => {
  const { client, connect, reconnect } = harness();
  const socket = await connect();
  socket.drop(1006);

  const marking = client.markRead("chat:1", 8);
  const again = await reconnect();
  const frame = await again.sent.next("read");
  again.push({ type: "read", id: frame.id, channel: "chat:1", seq: 8 });
  assert.equal(await marking, 8);
});

test("markRead over SSE is posted and answered on the event stream", async () => {
  const { client, sse, http } = harness({ transport: "sse" });
  const connecting = client.connect();
  const source = await sse.source(0);
  source.welcome({ connection_id: "17" });
  await connecting;

  const marking = client.markRead("chat:1", 4);
  const post = await http.next();
  assert.equal(post.url, "http://relay.test/sse/17");
  const [frame] = post.body;
  assert.deepEqual(frame, { type: "read", id: frame.id, channel: "chat:1", seq: 4 });
  post.respond(204);

  source.push({ type: "read", id: frame.id, channel: "chat:1", seq: 4 });
  assert.equal(await marking, 4);
});

test("a read frame without an id reaches the handlers and iterator of its channel's subscription only", async () => {
  const { connect, subscribe } = harness();
  const socket = await connect();
  const chat = await subscribe(socket, "chat:1");
  const other = await subscribe(socket, "chat:2");
  const chatEvents = record(chat, EVENTS);
  const otherEvents = record(other, EVENTS);

  socket.push({ type: "read", channel: "chat:1", seq: 42 });
  socket.push({ type: "read", channel: "chat:9", seq: 7 });
  socket.push(message("chat:2", 1));

  assert.deepEqual(chatEvents, [{ type: "read", seq: 42 }]);
  assert.deepEqual(otherEvents.map((event) => event.type), ["message"]);
  assert.deepEqual(await take(chat[Symbol.asyncIterator](), 1), [{ type: "read", seq: 42 }]);
  assert.deepEqual((await take(other[Symbol.asyncIterator](), 1)).map((event) => event.type), ["message"]);
});

test("a read frame with an id that answers nothing pending is not an event", async () => {
  const { connect, subscribe } = harness();
  const socket = await connect();
  const chat = await subscribe(socket, "chat:1");
  const events = record(chat, EVENTS);

  socket.push({ type: "read", id: 999, channel: "chat:1", seq: 42 });
  assert.deepEqual(events, []);
});
