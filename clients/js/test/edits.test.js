// Edits and deletes of stored messages: `edit` and `delete` are persistent publishes with
// event "edit" or "delete" and `ref` = the seq they change, sent exactly once like any
// persistent publish; subscribers get them as ordinary messages carrying `ref`, and
// `applyRevision` folds them into a list the application holds.

import assert from "node:assert/strict";
import { test } from "node:test";

import { RelayError, applyRevision } from "../src/relay.js";
import { flush, harness, message, record } from "./fakes.js";

const EVENTS = ["message", "recovered", "gap", "ended"];

function ack(frame, fields = {}) {
  return { type: "ack", id: frame.id, channel: frame.channel, message_id: `msg-${frame.id}`, ...fields };
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

/** The `message` event a subscription delivers for `message(channel, seq, payload, fields)`. */
function delivered(channel, seq, payload, fields = {}) {
  const { type, ...frame } = message(channel, seq, payload, fields);
  return { type: "message", event: null, ...frame };
}

test("edit sends a persistent publish with event edit, ref and a key, and resolves with the edit's own seq", async () => {
  const { client, connect } = harness();
  const socket = await connect();

  const editing = client.edit("chat:42", 17, { text: "hi, fixed" });
  const frame = await socket.sent.next("publish");
  assert.match(frame.idempotency_key, /^[0-9a-f-]{32,36}$/);
  assert.deepEqual(frame, {
    type: "publish",
    id: frame.id,
    channel: "chat:42",
    event: "edit",
    ref: 17,
    payload: { text: "hi, fixed" },
    idempotency_key: frame.idempotency_key,
  });

  socket.push(ack(frame, { seq: 23 }));
  assert.deepEqual(await editing, { messageId: `msg-${frame.id}`, seq: 23 });
});

test("delete sends a persistent publish with event delete, ref, a null payload and a key, and resolves with the delete's own seq", async () => {
  const { client, connect } = harness();
  const socket = await connect();

  const deleting = client.delete("chat:42", 17);
  const frame = await socket.sent.next("publish");
  assert.match(frame.idempotency_key, /^[0-9a-f-]{32,36}$/);
  assert.deepEqual(frame, {
    type: "publish",
    id: frame.id,
    channel: "chat:42",
    event: "delete",
    ref: 17,
    payload: null,
    idempotency_key: frame.idempotency_key,
  });

  socket.push(ack(frame, { seq: 24 }));
  assert.deepEqual(await deleting, { messageId: `msg-${frame.id}`, seq: 24 });
});

test("edits and deletes carry the caller's idempotency key if given, a fresh one otherwise", async () => {
  const { client, connect } = harness();
  const socket = await connect();

  client.edit("chat:42", 1, "a");
  client.edit("chat:42", 1, "b");
  client.edit("chat:42", 1, "c", { idempotencyKey: "edit-row-9" });
  client.delete("chat:42", 1, { idempotencyKey: "delete-row-3" });
  const keys = [];
  for (let i = 0; i < 4; i++) keys.push((await socket.sent.next("publish")).idempotency_key);

  assert.notEqual(keys[0], keys[1]);
  assert.deepEqual(keys.slice(2), ["edit-row-9", "delete-row-3"]);
});

test("an edit without a payload sends null", async () => {
  const { client, connect } = harness();
  const socket = await connect();

  client.edit("chat:42", 3);
  const frame = await socket.sent.next("publish");
  assert.equal(frame.payload, null);
  assert.equal(frame.ref, 3);
});

test("edit and delete refuse a seq that is not a positive safe integer at once, sending nothing", async () => {
  const { client, connect } = harness();
  const socket = await connect();

  for (const seq of [0, -1, 1.5, Number.NaN, Infinity, 2 ** 53, "42", 42n, null, undefined]) {
    for (const attempt of [() => client.edit("chat:1", seq, { text: "x" }), () => client.delete("chat:1", seq)]) {
      await assert.rejects(attempt(), (error) => {
        assert.ok(error instanceof RelayError);
        assert.equal(error.code, "bad_request");
        assert.match(error.message, /positive safe integer/);
        return true;
      });
    }
  }
  await flush();
  assert.deepEqual(socket.sent.ofType("publish"), []);
});

test("an edit whose payload cannot be encoded is refused at once and stalls nothing", async () => {
  const { client, connect } = harness();
  const socket = await connect();

  await assert.rejects(client.edit("chat:1", 4, { n: 1n }), (e) => e instanceof RelayError && e.code === "bad_request");
  const editing = client.edit("chat:1", 4, { ok: true });
  const frame = await socket.sent.next("publish");
  assert.deepEqual(frame.payload, { ok: true });
  socket.push(ack(frame, { seq: 5 }));
  assert.equal((await editing).seq, 5);
});

test("a refused edit or delete rejects with the server's code", async () => {
  const { client, connect } = harness();
  const socket = await connect();

  const refusals = [
    [() => client.edit("chat:1", 9, "x"), "not_found", "no message 9 in chat:1"],
    [() => client.edit("chat:1", 3, "x"), "conflict", "message 3 is deleted"],
    [() => client.delete("chat:1", 8), "not_found", "no message 8 in chat:1"],
    [() => client.delete("chat:1", 2), "forbidden", "not the sender of message 2"],
  ];
  for (const [attempt, code, text] of refusals) {
    const pending = attempt();
    const frame = await socket.sent.next("publish");
    socket.push({ type: "error", id: frame.id, code, message: text, channel: "chat:1" });
    await assert.rejects(pending, (error) => {
      assert.ok(error instanceof RelayError);
      assert.equal(error.code, code);
      assert.equal(error.message, text);
      return true;
    });
  }
});

test("edits and deletes whose ack was lost are sent again with their keys, in order with publishes", async () => {
  const { client, connect, reconnect } = harness();
  const socket = await connect();

  const publishing = client.publish("chat:42", "one");
  const editing = client.edit("chat:42", 5, "five, fixed");
  const deleting = client.delete("chat:42", 6);
  const sent = [];
  for (let i = 0; i < 3; i++) sent.push(await socket.sent.next("publish"));
  socket.drop(1006);
  await flush();
  const queued = client.edit("chat:42", 7, "seven, fixed");

  const again = await reconnect();
  const resent = again.sent.ofType("publish");
  assert.deepEqual(
    resent.slice(0, 3).map(({ id, ...frame }) => frame),
    sent.map(({ id, ...frame }) => frame),
  );
  assert.deepEqual(
    resent.map((frame) => [frame.event ?? null, frame.ref ?? null, frame.payload]),
    [
      [null, null, "one"],
      ["edit", 5, "five, fixed"],
      ["delete", 6, null],
      ["edit", 7, "seven, fixed"],
    ],
  );

  for (const frame of resent) again.push(ack(frame, { seq: 40 + resent.indexOf(frame) }));
  assert.equal((await publishing).seq, 40);
  assert.equal((await editing).seq, 41);
  assert.equal((await deleting).seq, 42);
  assert.equal((await queued).seq, 43);
});

test("an edit sent but not acknowledged in time is unconfirmed, with its key; one never sent times out", async () => {
  const { client, clock, connect } = harness({ requestTimeout: 1000 });
  const socket = await connect();

  const sent = client.edit("chat:42", 5, "x", { idempotencyKey: "edit-1" });
  await socket.sent.next("publish");
  socket.drop(1006);
  const neverSent = client.delete("chat:42", 5);

  const unconfirmed = assert.rejects(sent, (error) => {
    assert.equal(error.code, "unconfirmed");
    assert.equal(error.idempotencyKey, "edit-1");
    assert.match(error.message, /^edit sent but not acknowledged in time; edit again with idempotency key edit-1/);
    return true;
  });
  const timedOut = assert.rejects(neverSent, (error) => {
    assert.equal(error.code, "timeout");
    assert.equal(error.message, "no reply to delete within the request timeout");
    return true;
  });
  await clock.advance(1000);
  await unconfirmed;
  await timedOut;
});

test("close rejects a pending edit or delete with closed", async () => {
  const { client, connect } = harness();
  const socket = await connect();

  const editing = client.edit("chat:42", 1, "x");
  await socket.sent.next("publish");
  client.close();
  await assert.rejects(editing, { code: "closed" });
  await assert.rejects(client.delete("chat:42", 1), { code: "closed" });
});

test("edits and deletes reach subscribers as messages with ref; other messages carry none", async () => {
  const { connect, subscribe } = harness();
  const socket = await connect();
  const room = await subscribe(socket, "chat:42", {}, { seq: 4 });
  const events = record(room, EVENTS);

  socket.push(message("chat:42", 5, { text: "helo" }, { event: "text" }));
  socket.push(message("chat:42", 6, { text: "hello" }, { event: "edit", ref: 5 }));
  socket.push(message("chat:42", 7, null, { event: "delete", ref: 5, from: "carol" }));

  const expected = [
    delivered("chat:42", 5, { text: "helo" }, { event: "text" }),
    delivered("chat:42", 6, { text: "hello" }, { event: "edit", ref: 5 }),
    delivered("chat:42", 7, null, { event: "delete", ref: 5, from: "carol" }),
  ];
  assert.deepEqual(events, expected);
  assert.equal("ref" in events[0], false);
  assert.deepEqual(await take(room[Symbol.asyncIterator](), 3), expected);
  assert.equal(room.lastSeq, 7);
});

test("edits and deletes replayed after a reconnect arrive once, with ref", async () => {
  const { connect, reconnect, subscribe } = harness();
  const socket = await connect();
  const room = await subscribe(socket, "chat:42", {}, { seq: 4 });
  const events = record(room, EVENTS);
  socket.push(message("chat:42", 5, { text: "helo" }));
  socket.drop(1006);

  const again = await reconnect();
  const restore = await again.sent.next("subscribe");
  assert.equal(restore.since, 5);
  again.push({ type: "subscribed", id: restore.id, channel: "chat:42", seq: 7, recovered: true });
  // The server replays what was stored meanwhile; a deleted message's edits read null.
  again.push(message("chat:42", 5, { text: "helo" }));
  again.push(message("chat:42", 6, null, { event: "edit", ref: 5 }));
  again.push(message("chat:42", 7, null, { event: "delete", ref: 5 }));

  assert.deepEqual(events, [
    delivered("chat:42", 5, { text: "helo" }),
    { type: "recovered", since: 5 },
    delivered("chat:42", 6, null, { event: "edit", ref: 5 }),
    delivered("chat:42", 7, null, { event: "delete", ref: 5 }),
  ]);
});

test("edits and deletes read while catching up over REST keep their ref", async () => {
  const reads = [];
  const fetch = (url) => {
    reads.push(new URL(url));
    const page = [
      message("chat:42", 6, { text: "six" }),
      message("chat:42", 7, { text: "six, fixed" }, { event: "edit", ref: 6 }),
      message("chat:42", 8, null, { event: "delete", ref: 3 }),
    ].map(({ type, ...fields }) => fields);
    return Promise.resolve({ status: 200, ok: true, json: async () => ({ channel: "chat:42", messages: page }) });
  };
  const { connect, subscribe } = harness({ fetch });
  const socket = await connect();
  const room = await subscribe(socket, "chat:42", { since: 5 }, { seq: 8, recovered: false });

  const restore = await socket.sent.next("subscribe");
  assert.equal(restore.since, 8);
  assert.equal(reads[0].searchParams.get("after"), "5");
  assert.equal(reads[0].searchParams.get("view"), null);
  assert.deepEqual(await take(room[Symbol.asyncIterator](), 3), [
    delivered("chat:42", 6, { text: "six" }),
    delivered("chat:42", 7, { text: "six, fixed" }, { event: "edit", ref: 6 }),
    delivered("chat:42", 8, null, { event: "delete", ref: 3 }),
  ]);
});

test("applyRevision gives the edited message the edit's payload and seq, in a new list", () => {
  const held = [
    { seq: 5, payload: { text: "helo" }, from: "bob" },
    { seq: 6, payload: { text: "bye" }, from: "carol" },
  ];
  const snapshot = structuredClone(held);

  const edited = applyRevision(held, delivered("chat:42", 7, { text: "hello" }, { event: "edit", ref: 5 }));
  assert.deepEqual(edited, [
    { seq: 5, payload: { text: "hello" }, from: "bob", edited: 7 },
    { seq: 6, payload: { text: "bye" }, from: "carol" },
  ]);
  assert.notEqual(edited, held);
  assert.equal(edited[1], held[1]);
  assert.deepEqual(held, snapshot);
});

test("applyRevision turns a deleted message into a tombstone, kept in place", () => {
  const held = [
    { seq: 5, payload: { text: "hello" }, edited: 7 },
    { seq: 6, payload: { text: "bye" } },
  ];

  const deleted = applyRevision(held, delivered("chat:42", 8, null, { event: "delete", ref: 5 }));
  assert.deepEqual(deleted, [
    { seq: 5, payload: null, edited: 7, deleted: 8 },
    { seq: 6, payload: { text: "bye" } },
  ]);
});

test("applyRevision returns the list itself when there is nothing to change", () => {
  const held = [
    { seq: 5, payload: { text: "hello" }, edited: 9 },
    { seq: 6, payload: null, deleted: 10 },
  ];

  const unchanged = [
    // Not an edit or delete.
    delivered("chat:42", 11, { text: "new" }, { event: "text" }),
    delivered("chat:42", 11, { text: "new" }, { event: "edit" }),
    null,
    // Its message is not held (older than the list, or trimmed).
    delivered("chat:42", 11, { text: "x" }, { event: "edit", ref: 2 }),
    delivered("chat:42", 11, null, { event: "delete", ref: 2 }),
    // The list already shows this edit or a later one (the current view, then a replay).
    delivered("chat:42", 8, { text: "helo" }, { event: "edit", ref: 5 }),
    delivered("chat:42", 9, { text: "hello" }, { event: "edit", ref: 5 }),
    // Deleted already.
    delivered("chat:42", 7, null, { event: "edit", ref: 6 }),
    delivered("chat:42", 10, null, { event: "delete", ref: 6 }),
  ];
  for (const revision of unchanged) assert.equal(applyRevision(held, revision), held);

  // A later edit still applies.
  assert.deepEqual(applyRevision(held, delivered("chat:42", 12, { text: "hello!" }, { event: "edit", ref: 5 }))[0], {
    seq: 5,
    payload: { text: "hello!" },
    edited: 12,
  });
});

test("applyRevision folds a subscription's messages into what the current view returns", async () => {
  const { connect, subscribe } = harness();
  const socket = await connect();
  const room = await subscribe(socket, "chat:42", {}, { seq: 0 });
  let messages = [];
  room.on("message", (m) => {
    messages = m.ref === undefined ? [...messages, m] : applyRevision(messages, m);
  });

  socket.push(message("chat:42", 1, { text: "one" }));
  socket.push(message("chat:42", 2, { text: "too" }));
  socket.push(message("chat:42", 3, { text: "two" }, { event: "edit", ref: 2 }));
  socket.push(message("chat:42", 4, null, { event: "delete", ref: 1 }));

  assert.deepEqual(
    messages.map(({ seq, payload, edited, deleted }) => ({ seq, payload, edited, deleted })),
    [
      { seq: 1, payload: null, edited: undefined, deleted: 4 },
      { seq: 2, payload: { text: "two" }, edited: 3, deleted: undefined },
    ],
  );
});
