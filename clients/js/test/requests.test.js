import assert from "node:assert/strict";
import { test } from "node:test";

import { RelayError } from "../src/relay.js";
import { flush, harness } from "./fakes.js";

function ack(frame, fields = {}) {
  return { type: "ack", id: frame.id, channel: frame.channel, message_id: `msg-${frame.id}`, ...fields };
}

test("acks are routed to their publish by frame id", async () => {
  const { client, connect } = harness();
  const socket = await connect();

  const first = client.publish("chat:42", { text: "one" }, { event: "text" });
  const second = client.publish("chat:42", { text: "two" });
  const a = await socket.sent.next("publish");
  const b = await socket.sent.next("publish");
  assert.notEqual(a.id, b.id);
  assert.equal(typeof a.id, "number");
  assert.deepEqual(
    { ...a, idempotency_key: undefined },
    { type: "publish", id: a.id, channel: "chat:42", payload: { text: "one" }, event: "text", idempotency_key: undefined },
  );

  socket.push(ack(b, { seq: 8 }));
  socket.push(ack(a, { seq: 7 }));
  assert.deepEqual(await first, { messageId: `msg-${a.id}`, seq: 7 });
  assert.deepEqual(await second, { messageId: `msg-${b.id}`, seq: 8 });
});

test("every persistent publish carries an idempotency key, the caller's if given", async () => {
  const { client, connect } = harness();
  const socket = await connect();

  client.publish("chat:42", 1);
  client.publish("chat:42", 2);
  client.publish("chat:42", 3, { idempotencyKey: "order-17" });
  const keys = [];
  for (let i = 0; i < 3; i++) keys.push((await socket.sent.next("publish")).idempotency_key);

  assert.match(keys[0], /^[0-9a-f-]{32,36}$/);
  assert.notEqual(keys[0], keys[1]);
  assert.equal(keys[2], "order-17");
});

test("an ephemeral publish has no key and resolves with a null seq", async () => {
  const { client, connect } = harness();
  const socket = await connect();

  const publishing = client.publish("chat:42", { x: 1 }, { event: "cursor", ephemeral: true });
  const frame = await socket.sent.next("publish");
  assert.deepEqual(frame, { type: "publish", channel: "chat:42", payload: { x: 1 }, event: "cursor", id: frame.id, ephemeral: true });

  socket.push(ack(frame));
  assert.deepEqual(await publishing, { messageId: `msg-${frame.id}`, seq: null });
});

test("an error frame rejects its request with the server's code", async () => {
  const { client, connect } = harness();
  const socket = await connect();

  const publishing = client.publish("list:123", 1);
  const frame = await socket.sent.next("publish");
  socket.push({ type: "error", id: frame.id, code: "forbidden", message: "clients may not publish on channel list:123", channel: "list:123" });

  await assert.rejects(publishing, (error) => {
    assert.ok(error instanceof RelayError);
    assert.equal(error.code, "forbidden");
    assert.equal(error.message, "clients may not publish on channel list:123");
    return true;
  });
});

test("a persistent publish whose ack was lost is sent again with its key, first and in order", async () => {
  const { client, connect, reconnect } = harness();
  const socket = await connect();

  const first = client.publish("chat:42", "one");
  const second = client.publish("chat:42", "two");
  const sentFirst = await socket.sent.next("publish");
  const sentSecond = await socket.sent.next("publish");
  socket.drop(1006);
  const third = client.publish("chat:42", "three");

  const again = await reconnect();
  const resent = again.sent.frames.filter((frame) => frame.type === "publish");
  assert.deepEqual(
    resent.map((frame) => [frame.payload, frame.idempotency_key]),
    [
      ["one", sentFirst.idempotency_key],
      ["two", sentSecond.idempotency_key],
      ["three", resent[2].idempotency_key],
    ],
  );
  assert.notEqual(resent[2].idempotency_key, sentFirst.idempotency_key);

  for (const frame of resent) again.push(ack(frame, { seq: 30 + resent.indexOf(frame) }));
  assert.equal((await first).seq, 30);
  assert.equal((await second).seq, 31);
  assert.equal((await third).seq, 32);
});

test("requests other than persistent publishes reject with disconnected when the connection drops", async () => {
  const { client, connect } = harness();
  const socket = await connect();

  const ephemeral = client.publish("chat:42", {}, { ephemeral: true });
  const presence = client.presence("chat:42");
  await socket.sent.next("presence");
  socket.drop(1006);

  await assert.rejects(ephemeral, { code: "disconnected" });
  await assert.rejects(presence, { code: "disconnected" });
});

test("a publish never sent times out; one sent but unacknowledged is unconfirmed", async () => {
  const { client, clock, connect } = harness({ requestTimeout: 1000 });
  const socket = await connect();

  const sent = client.publish("chat:42", "sent");
  const frame = await socket.sent.next("publish");
  socket.drop(1006);
  const neverSent = client.publish("chat:42", "queued");

  const unconfirmed = assert.rejects(sent, (error) => {
    assert.equal(error.code, "unconfirmed");
    assert.equal(error.idempotencyKey, frame.idempotency_key);
    return true;
  });
  const timedOut = assert.rejects(neverSent, (error) => {
    assert.equal(error.code, "timeout");
    assert.equal(error.idempotencyKey, undefined);
    return true;
  });
  // Keep the client offline: the reconnect attempt never gets its welcome.
  await clock.advance(1000);
  await unconfirmed;
  await timedOut;
});

test("requests wait for the connection, and at most 1000 may be queued", async () => {
  const { client, clock, ws, connect } = harness({ requestTimeout: 60000 });
  const first = await connect();
  first.drop(1006);

  const queued = [];
  for (let i = 0; i < 1000; i++) queued.push(client.publish("chat:42", i, { ephemeral: true }));
  await assert.rejects(client.presence("chat:42"), { code: "disconnected" });

  await clock.advance(0);
  const socket = await ws.opening();
  socket.welcome();
  await flush();
  const frames = socket.sent.ofType("publish");
  assert.equal(frames.length, 1000);
  assert.deepEqual(frames.slice(0, 3).map((frame) => frame.payload), [0, 1, 2]);
  for (const frame of frames) socket.push(ack(frame));
  await Promise.all(queued);
});

test("presence resolves with the users", async () => {
  const { client, connect } = harness();
  const socket = await connect();

  const asking = client.presence("chat:42");
  const frame = await socket.sent.next("presence");
  assert.deepEqual(frame, { type: "presence", id: frame.id, channel: "chat:42" });
  socket.push({ type: "presence", id: frame.id, channel: "chat:42", users: ["alice", "bob"] });
  assert.deepEqual(await asking, ["alice", "bob"]);
});

test("a signal resolves when the ping after it is answered without an error", async () => {
  const { client, connect } = harness();
  const socket = await connect();

  const signalling = client.signal("call:1", "bob", { sdp: "v=0" }, { event: "offer" });
  const signal = await socket.sent.next("signal");
  const fence = await socket.sent.next("ping");
  assert.deepEqual(signal, { type: "signal", id: signal.id, channel: "call:1", to: "bob", payload: { sdp: "v=0" }, event: "offer" });
  assert.notEqual(fence.id, signal.id);

  socket.push({ type: "pong", id: fence.id });
  assert.equal(await signalling, undefined);
});

test("a refused signal rejects with the server's code", async () => {
  const { client, connect } = harness();
  const socket = await connect();

  const signalling = client.signal("call:1", "bob", {});
  const signal = await socket.sent.next("signal");
  const fence = await socket.sent.next("ping");
  socket.push({ type: "error", id: signal.id, code: "not_found", message: "user bob is not subscribed to call:1" });
  socket.push({ type: "pong", id: fence.id });
  await assert.rejects(signalling, { code: "not_found" });
});

test("a reply of the wrong type rejects with protocol", async () => {
  const { client, connect } = harness();
  const socket = await connect();

  const asking = client.presence("chat:42");
  const frame = await socket.sent.next("presence");
  socket.push({ type: "ack", id: frame.id, channel: "chat:42", message_id: "x" });
  await assert.rejects(asking, { code: "protocol" });
});

test("close rejects pending and queued requests with closed", async () => {
  const { client, connect } = harness();
  const socket = await connect();

  const inFlight = client.publish("chat:42", 1);
  await socket.sent.next("publish");
  client.close();
  const afterClose = client.presence("chat:42");

  await assert.rejects(inFlight, { code: "closed" });
  await assert.rejects(afterClose, { code: "closed" });
});

test("typing sends at most one ephemeral notice per channel every two seconds", async () => {
  const { client, clock, connect } = harness();
  const socket = await connect();
  const notices = () => socket.sent.ofType("publish").map((frame) => frame.channel);

  client.typing("chat:1");
  client.typing("chat:1");
  client.typing("chat:2");
  await flush();
  assert.deepEqual(notices(), ["chat:1", "chat:2"]);
  assert.deepEqual(
    { ...socket.sent.ofType("publish")[0], id: 0 },
    { type: "publish", channel: "chat:1", payload: {}, event: "typing", id: 0, ephemeral: true },
  );

  await clock.advance(1999);
  client.typing("chat:1");
  await flush();
  assert.equal(notices().length, 2);
  await clock.advance(1);
  client.typing("chat:1");
  await flush();
  assert.deepEqual(notices(), ["chat:1", "chat:2", "chat:1"]);
});

test("typing never rejects", async () => {
  const { client, connect } = harness();
  const socket = await connect();

  const refused = client.typing("chat:1");
  const frame = await socket.sent.next("publish");
  socket.push({ type: "error", id: frame.id, code: "forbidden", message: "no" });
  assert.equal(await refused, undefined);

  client.close();
  assert.equal(await client.typing("chat:2"), undefined);
});

test("a payload that cannot be encoded is refused at once and stalls nothing", async () => {
  const { client, connect } = harness();
  const socket = await connect();
  const cyclic = {};
  cyclic.self = cyclic;

  for (const attempt of [
    () => client.publish("chat:1", { n: 1n }),
    () => client.publish("chat:1", cyclic, { ephemeral: true }),
    () => client.signal("chat:1", "bob", cyclic),
  ]) {
    await assert.rejects(attempt(), (e) => e instanceof RelayError && e.code === "bad_request");
  }
  // The next publish goes out and is answered as usual.
  const publishing = client.publish("chat:1", { ok: true });
  const frame = await socket.sent.next("publish");
  assert.deepEqual(frame.payload, { ok: true });
  socket.push(ack(frame, { seq: 1 }));
  assert.equal((await publishing).seq, 1);
});
