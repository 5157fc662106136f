import assert from "node:assert/strict";
import { test } from "node:test";

import { flush, harness, record } from "./fakes.js";

/** A client on SSE: "sse" from the start, welcomed; returns the event stream. */
async function connectSse(options = {}, welcome = {}) {
  const h = harness({ transport: "sse", ...options });
  const connecting = h.client.connect();
  const source = await h.sse.source(0);
  source.welcome({ connection_id: "17", ...welcome });
  await connecting;
  return { ...h, source };
}

/** Answers one POST and returns its body. */
async function answer(http, status = 204, headers = {}) {
  const request = await http.next();
  request.respond(status, headers);
  await flush();
  return request.body;
}

test("auto falls back to SSE after two failed WebSocket attempts, and posts frames in batches", async () => {
  const { client, clock, ws, sse, http } = harness({ transport: "auto", url: "wss://relay.test/ws" });
  const events = record(client, ["transport", "connected"]);
  const connecting = client.connect();

  (await ws.socket(0)).drop(1006);
  await clock.advance(0);
  (await ws.socket(1)).drop(1006);
  await clock.advance(0);
  assert.deepEqual(events, [{ type: "transport", transport: "sse" }]);
  assert.equal(client.transport, "sse");

  const source = await sse.source(0);
  assert.equal(source.url.href, "https://relay.test/sse?token=t1");
  source.welcome({ connection_id: "17" });
  await connecting;
  assert.deepEqual(events[1], { type: "connected", connectionId: "17", transport: "sse" });

  const first = client.publish("chat:42", "one");
  const post = await http.next();
  assert.equal(post.url, "https://relay.test/sse/17");
  assert.equal(post.method, "POST");
  assert.deepEqual(post.headers, { authorization: "Bearer t1", "content-type": "application/json" });
  assert.ok(Array.isArray(post.body));
  assert.deepEqual(post.body.map((frame) => frame.payload), ["one"]);

  // One POST in flight: what is sent meanwhile goes together in the next one, in order.
  const second = client.publish("chat:42", "two");
  const third = client.publish("chat:42", "three");
  await flush();
  assert.equal(http.requests.length, 1);
  post.respond(204);
  const batch = await answer(http);
  assert.deepEqual(batch.map((frame) => frame.payload), ["two", "three"]);

  for (const frame of [...post.body, ...batch]) {
    source.push({ type: "ack", id: frame.id, channel: "chat:42", message_id: `msg-${frame.id}`, seq: frame.id });
  }
  assert.equal((await first).seq, post.body[0].id);
  await Promise.all([second, third]);
  assert.equal(ws.sockets.length, 2, "no WebSocket is tried again");
});

test("auto falls back to SSE when the WebSocket constructor throws", async () => {
  const blocked = class {
    constructor() {
      throw new Error("blocked by policy");
    }
  };
  const { client, clock, sse } = harness({ transport: "auto", WebSocket: blocked });
  const connecting = client.connect();
  await clock.advance(0);
  (await sse.source(0)).welcome();
  await connecting;
  assert.equal(client.transport, "sse");
});

test("auto keeps the WebSocket once one was welcomed", async () => {
  const { client, clock, ws, sse, connect } = harness({ transport: "auto" });
  const socket = await connect();
  socket.drop(1006);
  for (let attempt = 1; attempt <= 3; attempt++) {
    await clock.advance(clock.nextDelay());
    (await ws.socket(attempt)).drop(1006);
  }
  assert.equal(sse.sources.length, 0);
  assert.equal(client.transport, "websocket");
});

test("a 4001 on the WebSocket is not a transport failure", async () => {
  const { client, ws, sse } = harness({ transport: "auto" });
  const connecting = client.connect();
  (await ws.socket(0)).drop(4001, "token expired");
  await assert.rejects(connecting, { code: "unauthorized" });
  assert.equal(sse.sources.length, 0);
});

test("an SSE close event is handled like a WebSocket close: 4008 reconnects and resubscribes", async () => {
  const { client, clock, sse, http, source } = await connectSse();
  const events = record(client, ["disconnected", "connected"]);
  http.autoStatus = 204;
  const subscribing = client.subscribe("chat:42");
  const [subscribe] = (await http.next()).body;
  source.push({ type: "subscribed", id: subscribe.id, channel: "chat:42", seq: 4 });
  await subscribing;

  source.closeWith(4008, "slow consumer: outbound queue overflowed");
  assert.ok(source.closed);
  assert.deepEqual(events, [{ type: "disconnected", code: 4008, reason: "slow consumer: outbound queue overflowed" }]);

  await clock.advance(0);
  const again = await sse.source(1);
  again.welcome({ connection_id: "18" });
  await flush();
  const [restore] = (await http.next()).body;
  assert.deepEqual(restore, { type: "subscribe", id: restore.id, channel: "chat:42", since: 4 });
  assert.equal(http.requests.at(-1).url, "http://relay.test/sse/18");
});

test("a 404 on a POST means the session is gone: the client reconnects", async () => {
  const { client, clock, sse, http, source } = await connectSse();
  const events = record(client, ["disconnected"]);

  const publishing = client.publish("chat:42", "hi");
  const [frame] = await answer(http, 404);
  assert.ok(source.closed);
  assert.equal(events.length, 1);
  assert.equal(events[0].code, null);

  await clock.advance(0);
  (await sse.source(1)).welcome({ connection_id: "18" });
  await flush();
  const [resent] = await answer(http);
  assert.equal(resent.idempotency_key, frame.idempotency_key);
  sse.sources[1].push({ type: "ack", id: resent.id, channel: "chat:42", message_id: "m", seq: 1 });
  assert.deepEqual(await publishing, { messageId: "m", seq: 1 });
});

test("a 429 on a POST sends the same batch again after Retry-After", async () => {
  const { client, clock, http } = await connectSse();

  client.presence("chat:42");
  const refused = await answer(http, 429, { "retry-after": "2" });
  await clock.advance(1999);
  assert.equal(http.requests.length, 1);
  await clock.advance(1);
  assert.deepEqual(await answer(http), refused);
});

test("SSE heartbeat events keep the watchdog quiet; silence reconnects", async () => {
  const { client, clock, sse, http, source } = await connectSse({}, { heartbeat_ms: 1000 });
  http.autoStatus = 204;
  const events = record(client, ["disconnected"]);

  for (let i = 0; i < 4; i++) {
    await clock.advance(1000);
    source.heartbeat();
  }
  assert.equal(client.state, "open");
  assert.equal(http.requests.length, 4, "a ping is posted each heartbeat");
  await clock.advance(2500);
  assert.equal(events[0]?.reason, "no frame within 2.5 heartbeats");
  await clock.advance(0);
  await sse.source(1);
});

test("an EventSource error closes it and reconnects through the client's backoff", async () => {
  const { client, clock, sse, source } = await connectSse({ backoff: { min: 400, max: 1000 }, random: () => 0.999999 });
  source.fail();
  assert.ok(source.closed);
  assert.equal(client.state, "reconnecting");
  assert.equal(clock.nextDelay(), 400);
  await clock.advance(400);
  await sse.source(1);
});

test("a burst is POSTed 32 frames at a time, each POST after the previous one's answer, in order", async () => {
  const { client, http } = await connectSse();

  // The first publish is POSTed at once; the others wait for its answer.
  const publishing = [];
  for (let i = 0; i < 70; i++) publishing.push(client.publish("chat:42", i));
  const batches = [];
  for (let post = 0; post < 4; post++) {
    await flush();
    assert.equal(http.requests.length, post + 1, "one POST in flight");
    batches.push(await answer(http));
  }
  assert.deepEqual(batches.map((batch) => batch.length), [1, 32, 32, 5]);
  assert.deepEqual(batches.flat().map((frame) => frame.payload), Array.from({ length: 70 }, (_, i) => i));
  client.close();
  await Promise.allSettled(publishing);
});

test("the restores after a reconnect are split into POSTs of at most 32 frames", async () => {
  const { client, clock, sse, http, source } = await connectSse();
  http.autoStatus = 204;
  for (let i = 0; i < 33; i++) {
    const subscribing = client.subscribe(`c:${i}`);
    await flush();
    const [subscribe] = http.requests.at(-1).body;
    source.push({ type: "subscribed", id: subscribe.id, channel: `c:${i}`, seq: 0 });
    await subscribing;
  }
  http.autoStatus = null;
  const events = record(client, ["disconnected"]);
  source.fail();

  await clock.advance(0);
  (await sse.source(1)).welcome({ connection_id: "18" });
  await flush();
  const restoring = http.requests.slice(33);
  assert.equal(restoring.length, 1, "one POST in flight");
  restoring[0].respond(204);
  await flush();
  const [first, second] = http.requests.slice(33).map((request) => request.body);
  assert.deepEqual([first.length, second.length], [32, 1]);
  assert.deepEqual([...first, ...second].map((frame) => frame.channel), Array.from({ length: 33 }, (_, i) => `c:${i}`));
  assert.equal(events.length, 1, "no reconnect loop");
});

test("a POST body stays within 512 KiB, counted in UTF-8 bytes; a larger frame goes alone", async () => {
  const { client, http } = await connectSse();
  const wide = "é".repeat(150000); // 150000 characters, 300000 bytes

  // The first publish is POSTed at once; the others wait for its answer.
  const sending = ["first", wide, wide, "small", "x".repeat(600000), "last"].map((payload) => client.publish("chat:42", payload));
  await answer(http);
  const batches = [];
  for (let post = 0; post < 4; post++) batches.push(await answer(http));

  const sizes = (batch) => batch.map((frame) => (frame.payload.length > 10 ? frame.payload.length : frame.payload));
  assert.deepEqual(batches.map(sizes), [[150000], [150000, "small"], [600000], ["last"]]);
  client.close();
  await Promise.allSettled(sending);
});

test("a 401 on a POST is handled like a 4001: the provider is asked for a new token", async () => {
  const tokens = ["t1", "t2"];
  let calls = 0;
  const { client, clock, sse, http } = await connectSse({ token: async () => tokens[Math.min(calls++, 1)] });
  const events = record(client, ["disconnected"]);

  client.presence("chat:42").catch(() => {});
  await answer(http, 401);
  assert.equal(events[0].code, 4001);
  await clock.advance(0);
  const again = await sse.source(1);
  assert.equal(again.url.searchParams.get("token"), "t2");
  again.welcome({ connection_id: "18" });
  await flush();
  assert.equal(client.state, "open");
});

test("a 401 on a POST with a fixed token closes the client", async () => {
  const { client, clock, sse, http } = await connectSse();
  const events = record(client, ["disconnected", "closed"]);

  const refused = assert.rejects(client.publish("chat:42", "hi"), { code: "unauthorized" });
  await answer(http, 401);
  await refused;
  assert.equal(client.state, "closed");
  assert.deepEqual(events.map((event) => event.code ?? event.type), [4001, "closed"]);
  await clock.advance(60000);
  assert.equal(sse.sources.length, 1);
});
