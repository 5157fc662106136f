import assert from "node:assert/strict";
import { test } from "node:test";

import { RelayError } from "../src/relay.js";
import { flush, harness, record } from "./fakes.js";

test("connect resolves after welcome and reports the session", async () => {
  const { client, ws } = harness();
  const events = record(client, ["connected"]);
  assert.equal(client.state, "idle");

  const connecting = client.connect();
  const socket = await ws.socket(0);
  assert.equal(client.state, "connecting");
  assert.equal(socket.url.href, "ws://relay.test/ws?token=t1");
  assert.equal(socket.protocols, "relay.v1.json");

  socket.welcome({ connection_id: "42", user: "alice" });
  await connecting;
  assert.equal(client.state, "open");
  assert.equal(client.user, "alice");
  assert.equal(client.transport, "websocket");
  assert.deepEqual(events, [{ type: "connected", connectionId: "42", transport: "websocket" }]);
});

test("connect rejects with unauthorized when the server closes with 4001", async () => {
  const { client, ws } = harness();
  const connecting = client.connect();
  (await ws.socket(0)).drop(4001, "token expired");

  await assert.rejects(connecting, (error) => {
    assert.ok(error instanceof RelayError);
    assert.equal(error.code, "unauthorized");
    assert.equal(error.message, "token expired");
    return true;
  });
  assert.equal(client.state, "idle");
});

test("connect rejects with timeout when no welcome arrives", async () => {
  const { client, clock, ws } = harness({ connectTimeout: 5000 });
  const connecting = client.connect();
  const socket = await ws.socket(0);

  const rejected = assert.rejects(connecting, { code: "timeout" });
  await clock.advance(5000);
  await rejected;
  assert.deepEqual(socket.closedByClient, { code: 1000, reason: undefined });
});

test("connect rejects with protocol when the first frame is not welcome", async () => {
  const { client, ws } = harness();
  const connecting = client.connect();
  (await ws.socket(0)).push({ type: "pong" });
  await assert.rejects(connecting, { code: "protocol" });
});

test("a failed connect can be retried", async () => {
  const { client, ws } = harness();
  const first = client.connect();
  (await ws.socket(0)).drop(1006);
  await assert.rejects(first, { code: "disconnected" });

  const second = client.connect();
  (await ws.socket(1)).welcome();
  await second;
  assert.equal(client.state, "open");
});

test("close is final and idempotent", async () => {
  const { client, connect } = harness();
  const socket = await connect();
  const events = record(client, ["closed", "disconnected"]);

  client.close();
  client.close();
  assert.equal(client.state, "closed");
  assert.deepEqual(events, [{ type: "closed" }]);
  assert.deepEqual(socket.closedByClient, { code: 1000, reason: undefined });
  await assert.rejects(client.connect(), { code: "closed" });
  await assert.rejects(client.publish("chat:1", 1), { code: "closed" });
});

test("close during connect rejects it with closed", async () => {
  const { client, ws } = harness();
  const connecting = client.connect();
  await ws.socket(0);
  client.close();
  await assert.rejects(connecting, { code: "closed" });
});

test("a lost connection is reported and reconnected, with the welcome resetting the backoff", async () => {
  const { client, connect, reconnect } = harness();
  const events = record(client, ["connected", "disconnected"]);
  const socket = await connect();

  socket.drop(1001, "server shutting down");
  assert.equal(client.state, "reconnecting");
  await reconnect({ connection_id: "18" });

  assert.equal(client.state, "open");
  assert.deepEqual(events, [
    { type: "connected", connectionId: "17", transport: "websocket" },
    { type: "disconnected", code: 1001, reason: "server shutting down" },
    { type: "connected", connectionId: "18", transport: "websocket" },
  ]);
});

test("backoff delays are full jitter under a ceiling that doubles up to the max", async () => {
  let random = 0.999999;
  const { client, clock, ws, connect } = harness({ backoff: { min: 100, max: 1000 }, random: () => random });
  const socket = await connect();

  socket.drop(1006);
  const delays = [];
  for (let attempt = 0; attempt < 6; attempt++) {
    delays.push(clock.nextDelay());
    await clock.advance(clock.nextDelay());
    (await ws.socket(attempt + 1)).drop(1006);
  }
  assert.deepEqual(delays, [100, 200, 400, 800, 1000, 1000]);

  random = 0.5;
  await clock.advance(clock.nextDelay());
  (await ws.socket(7)).drop(1006);
  assert.equal(clock.nextDelay(), 500, "uniform in [0, ceiling]: half of 1000");

  await clock.advance(clock.nextDelay());
  (await ws.socket(8)).welcome();
  await flush();
  random = 0.999999;
  ws.sockets[8].drop(1006);
  assert.equal(clock.nextDelay(), 100, "a welcome resets the backoff");
  assert.equal(client.state, "reconnecting");
});

test("after an abuse close the client waits out the server's cooldown", async () => {
  const { clock, ws, connect } = harness();
  const socket = await connect();

  socket.drop(4029, "rate limit exceeded repeatedly");
  await clock.advance(9999);
  assert.equal(ws.sockets.length, 1);
  await clock.advance(1);
  await ws.socket(1);
});

test("the watchdog reconnects after 2.5 heartbeats of silence", async () => {
  const { client, clock, connect, reconnect } = harness();
  const events = record(client, ["disconnected"]);
  const socket = await connect({ heartbeat_ms: 1000 });

  await clock.advance(1000);
  assert.equal(socket.sent.ofType("ping").length, 1, "a ping each heartbeat asks for traffic");
  socket.push({ type: "pong" });
  await clock.advance(2499);
  assert.equal(client.state, "open", "the pong at 1000 ms re-armed the watchdog");

  await clock.advance(1);
  assert.deepEqual(events, [{ type: "disconnected", code: null, reason: "no frame within 2.5 heartbeats" }]);
  assert.ok(socket.closedByClient);
  await reconnect();
  assert.equal(client.state, "open");
});

test("a refused token is never reused: the provider is asked until it yields a new one", async () => {
  const tokens = ["t1", "t1", "t1", "t2"];
  let calls = 0;
  const provider = async () => tokens[Math.min(calls++, tokens.length - 1)];
  const { client, clock, ws, connect } = harness({ token: provider });
  const socket = await connect();
  assert.equal(socket.token, "t1");

  socket.drop(4001, "token expired");
  await clock.advance(0);
  const next = await ws.socket(1);
  assert.equal(next.token, "t2");
  assert.equal(calls, 4, "two more calls yielded the refused token and opened nothing");
  assert.equal(ws.sockets.length, 2);
  next.welcome();
  await flush();
  assert.equal(client.state, "open");
});

test("a fixed token refused with 4001 closes the client", async () => {
  const { client, clock, ws, connect } = harness({ token: "t1" });
  const events = record(client, ["disconnected", "closed"]);
  const socket = await connect();
  const pending = client.presence("chat:1");

  socket.drop(4001, "token expired");
  await assert.rejects(pending, { code: "disconnected" });
  assert.equal(client.state, "closed");
  assert.deepEqual(events, [
    { type: "disconnected", code: 4001, reason: "token expired" },
    { type: "closed" },
  ]);
  await clock.advance(60000);
  assert.equal(ws.sockets.length, 1);
});

test("a fixed token refused on a reconnect attempt reports the 4001 and closes", async () => {
  const { client, clock, ws, connect } = harness({ token: "t1" });
  const socket = await connect();
  socket.drop(1006);
  const events = record(client, ["disconnected", "closed"]);
  const queued = client.publish("chat:1", "hi");

  await clock.advance(0);
  (await ws.socket(1)).drop(4001, "token expired");
  await assert.rejects(queued, { code: "unauthorized" });
  assert.equal(client.state, "closed");
  assert.deepEqual(events, [
    { type: "disconnected", code: 4001, reason: "token expired" },
    { type: "closed" },
  ]);
});

test("handlers are removed by the function that on returns, and unknown events are refused", async () => {
  const { client, connect } = harness();
  let calls = 0;
  const off = client.on("connected", () => calls++);
  off();
  await connect();
  assert.equal(calls, 0);
  assert.throws(() => client.on("conected", () => {}), TypeError);
});

test("a token provider that never settles fails the attempt after connectTimeout; its late token is ignored", async () => {
  let hung;
  const answers = [() => "t1", () => new Promise((resolve) => (hung = resolve)), () => "t2"];
  let calls = 0;
  const { client, clock, ws, connect } = harness({ token: async () => answers[calls++](), connectTimeout: 5000 });
  const events = record(client, ["disconnected", "connected"]);
  const socket = await connect();

  socket.drop(1006);
  await clock.advance(0);
  assert.equal(calls, 2);
  await clock.advance(4999);
  assert.equal(ws.sockets.length, 1, "still waiting for the token");
  await clock.advance(1);
  assert.equal(calls, 3, "the timed-out attempt was followed by a new one");
  const next = await ws.socket(1);
  assert.equal(next.token, "t2");
  next.welcome();
  await flush();
  assert.equal(client.state, "open");

  hung("late");
  await clock.advance(60000);
  assert.equal(ws.sockets.length, 2, "the late token opened nothing");
  assert.deepEqual(events.map((event) => event.type), ["connected", "disconnected", "connected"]);
});

test("connect rejects with timeout when the token provider never settles", async () => {
  const { client, clock, ws } = harness({ token: () => new Promise(() => {}), transport: "auto", connectTimeout: 5000 });
  const connecting = client.connect();
  const rejected = assert.rejects(connecting, { code: "timeout", message: "no token within 5000 ms" });
  await clock.advance(5000);
  await rejected;
  assert.equal(client.state, "idle");
  assert.equal(client.transport, "websocket", "a slow token provider is not a transport failure");
  assert.equal(ws.sockets.length, 0);
});
