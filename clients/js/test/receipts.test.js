// Signal receipts and held signals: `signal(…, {receipt: true, ttlMs})` sends `receipt` and
// `ttl_ms`, resolves with the first `receipt` frame ({signal, status}), and the receipt that
// follows `held` reaches the channel's subscription as a `receipt` event. Signals delivered
// with a server id carry it as `signal`.

import assert from "node:assert/strict";
import { test } from "node:test";

import { RelayError } from "../src/relay.js";
import { flush, harness, record } from "./fakes.js";

const EVENTS = ["message", "join", "leave", "signal", "receipt", "recovered", "gap", "ended"];
const SIGNAL_ID = "0193a6f2-9a11-7e4f-a1b2-3c4d5e6f7a8b";

/** The server's `receipt` frame for the `signal` frame `frame`. */
function receipt(frame, status, fields = {}) {
  return { type: "receipt", id: frame.id, channel: frame.channel, to: frame.to, signal: SIGNAL_ID, status, ...fields };
}

test("a signal with a receipt sends receipt and ttl_ms, no ping, and resolves with the first receipt", async () => {
  const { client, connect } = harness();
  const socket = await connect();

  const signalling = client.signal("call:1", "bob", { sdp: "v=0" }, { event: "offer", receipt: true, ttlMs: 30000 });
  const frame = await socket.sent.next("signal");
  assert.deepEqual(frame, {
    type: "signal",
    id: frame.id,
    channel: "call:1",
    to: "bob",
    payload: { sdp: "v=0" },
    event: "offer",
    receipt: true,
    ttl_ms: 30000,
  });
  await flush();
  assert.deepEqual(socket.sent.ofType("ping"), [], "the receipt answers the signal: no fence");

  socket.push(receipt(frame, "delivered"));
  assert.deepEqual(await signalling, { signal: SIGNAL_ID, status: "delivered" });
});

test("a signal with a receipt and no ttl that nobody can take resolves with expired", async () => {
  const { client, connect } = harness();
  const socket = await connect();

  const signalling = client.signal("call:1", "carol", 1, { receipt: true });
  const frame = await socket.sent.next("signal");
  assert.equal(frame.receipt, true);
  assert.equal("ttl_ms" in frame, false);
  assert.equal("event" in frame, false);

  socket.push(receipt(frame, "expired"));
  assert.deepEqual(await signalling, { signal: SIGNAL_ID, status: "expired" });
});

test("after held, the last receipt is a receipt event of the channel's subscription", async () => {
  const { client, connect, subscribe } = harness();
  const socket = await connect();
  const sub = await subscribe(socket, "call:1");
  const events = record(sub, EVENTS);
  const iterator = sub[Symbol.asyncIterator]();

  const signalling = client.signal("call:1", "bob", { sdp: "v=0" }, { event: "offer", receipt: true, ttlMs: 60000 });
  const frame = await socket.sent.next("signal");
  socket.push(receipt(frame, "held"));
  assert.deepEqual(await signalling, { signal: SIGNAL_ID, status: "held" });
  assert.deepEqual(events, [], "the first receipt answers the signal only");

  socket.push(receipt(frame, "delivered"));
  const event = { type: "receipt", to: "bob", signal: SIGNAL_ID, status: "delivered" };
  assert.deepEqual(events, [event]);
  assert.deepEqual((await iterator.next()).value, event);
});

test("a held signal that expires gives an expired receipt event; receipts find the subscription by channel", async () => {
  const { client, connect, subscribe } = harness();
  const socket = await connect();
  const call = await subscribe(socket, "call:1");
  const other = await subscribe(socket, "call:2");
  const callEvents = record(call, EVENTS);
  const otherEvents = record(other, EVENTS);

  const signalling = client.signal("call:1", "bob", {}, { receipt: true, ttlMs: 1000 });
  const frame = await socket.sent.next("signal");
  socket.push(receipt(frame, "held"));
  assert.equal((await signalling).status, "held");

  socket.push(receipt(frame, "expired"));
  assert.deepEqual(callEvents, [{ type: "receipt", to: "bob", signal: SIGNAL_ID, status: "expired" }]);
  assert.deepEqual(otherEvents, []);
});

test("a receipt for a channel without a subscription is dropped", async () => {
  const { client, connect } = harness();
  const socket = await connect();

  const signalling = client.signal("call:1", "bob", {}, { receipt: true, ttlMs: 1000 });
  const frame = await socket.sent.next("signal");
  socket.push(receipt(frame, "held"));
  assert.equal((await signalling).status, "held");
  socket.push(receipt(frame, "delivered"));
  socket.push(receipt(frame, "delivered", { id: undefined, channel: "call:9" }));

  // Nothing broke: the next request is answered as usual.
  const asking = client.presence("call:1");
  const presence = await socket.sent.next("presence");
  socket.push({ type: "presence", id: presence.id, channel: "call:1", users: ["alice"] });
  assert.deepEqual(await asking, ["alice"]);
});

test("a signal with a ttl and no receipt is fenced by a ping as before and gets no receipt", async () => {
  const { client, connect, subscribe } = harness();
  const socket = await connect();
  const sub = await subscribe(socket, "call:1");
  const events = record(sub, EVENTS);

  const signalling = client.signal("call:1", "bob", { candidate: "x" }, { event: "ice", ttlMs: 5000 });
  const frame = await socket.sent.next("signal");
  const fence = await socket.sent.next("ping");
  assert.deepEqual(frame, {
    type: "signal",
    id: frame.id,
    channel: "call:1",
    to: "bob",
    payload: { candidate: "x" },
    event: "ice",
    ttl_ms: 5000,
  });

  socket.push({ type: "pong", id: fence.id });
  assert.equal(await signalling, undefined);
  assert.deepEqual(events, []);
});

test("receipt: false sends a plain signal", async () => {
  const { client, connect } = harness();
  const socket = await connect();

  const signalling = client.signal("call:1", "bob", 1, { receipt: false });
  const frame = await socket.sent.next("signal");
  const fence = await socket.sent.next("ping");
  assert.equal("receipt" in frame, false);
  assert.equal("ttl_ms" in frame, false);
  socket.push({ type: "pong", id: fence.id });
  assert.equal(await signalling, undefined);
});

test("a refused signal with a receipt rejects with the server's code", async () => {
  const { client, connect } = harness();
  const socket = await connect();

  const refusals = [
    ["bad_request", "ttl_ms: at most 300000 on this server"],
    ["forbidden", "subscribe to call:1 before signalling in it"],
    ["rate_limited", "64 signals for bob in call:1 are held already; retry later"],
  ];
  for (const [code, text] of refusals) {
    const signalling = client.signal("call:1", "bob", {}, { receipt: true, ttlMs: 600000 });
    const frame = await socket.sent.next("signal");
    socket.push({ type: "error", id: frame.id, code, message: text, channel: "call:1" });
    await assert.rejects(signalling, (error) => {
      assert.ok(error instanceof RelayError);
      assert.equal(error.code, code);
      assert.equal(error.message, text);
      return true;
    });
  }
});

test("signal refuses a ttlMs that is not a positive safe integer, or a receipt that is not a boolean, at once", async () => {
  const { client, connect } = harness();
  const socket = await connect();

  for (const ttlMs of [0, -1, 1.5, Number.NaN, Infinity, 2 ** 53, "1000", 1000n, null]) {
    for (const options of [{ ttlMs }, { ttlMs, receipt: true }]) {
      await assert.rejects(client.signal("call:1", "bob", {}, options), (error) => {
        assert.ok(error instanceof RelayError);
        assert.equal(error.code, "bad_request");
        assert.match(error.message, /ttlMs must be a positive safe integer/);
        return true;
      });
    }
  }
  for (const receipt of ["yes", 1, null]) {
    await assert.rejects(client.signal("call:1", "bob", {}, { receipt }), (error) => {
      assert.equal(error.code, "bad_request");
      assert.match(error.message, /receipt must be a boolean/);
      return true;
    });
  }
  await assert.rejects(client.signal("call:1", "bob", { n: 1n }, { receipt: true }), { code: "bad_request" });
  await flush();
  assert.deepEqual(socket.sent.ofType("signal"), []);
  assert.deepEqual(socket.sent.ofType("ping"), []);

  // The largest safe integer passes the client: the server judges it against its maximum.
  client.signal("call:1", "bob", {}, { ttlMs: Number.MAX_SAFE_INTEGER });
  assert.equal((await socket.sent.next("signal")).ttl_ms, Number.MAX_SAFE_INTEGER);
});

test("signals delivered with a server id carry it as signal, the same on a repeat", async () => {
  const { connect, subscribe } = harness();
  const socket = await connect();
  const sub = await subscribe(socket, "call:1");
  const events = record(sub, EVENTS);

  const tracked = { type: "signal", channel: "call:1", from: "bob", event: "offer", payload: { sdp: "v=0" }, signal: SIGNAL_ID };
  socket.push(tracked);
  socket.push(tracked);
  socket.push({ type: "signal", channel: "call:1", from: "bob", payload: 2 });

  const event = { type: "signal", from: "bob", event: "offer", payload: { sdp: "v=0" }, signal: SIGNAL_ID };
  assert.deepEqual(events, [event, event, { type: "signal", from: "bob", event: null, payload: 2 }]);
  assert.equal("signal" in events[2], false, "a plain signal has no id");
});

test("a connection lost while a signal waits for its first receipt rejects it with disconnected; its receipts are gone", async () => {
  const { client, connect, reconnect, subscribe } = harness();
  const socket = await connect();
  const sub = await subscribe(socket, "call:1");
  const events = record(sub, EVENTS);

  const signalling = client.signal("call:1", "bob", {}, { receipt: true, ttlMs: 30000 });
  await socket.sent.next("signal");
  socket.drop(1006);
  await assert.rejects(signalling, (error) => {
    assert.ok(error instanceof RelayError);
    assert.equal(error.code, "disconnected");
    return true;
  });

  // Not sent again after the reconnect, unlike a persistent publish; the server may still
  // deliver it, but its receipts went to the lost connection.
  const again = await reconnect();
  const restore = await again.sent.next("subscribe");
  again.push({ type: "subscribed", id: restore.id, channel: "call:1", seq: 0, recovered: true });
  await flush();
  assert.deepEqual(again.sent.ofType("signal"), []);
  assert.deepEqual(
    events.filter((event) => event.type === "receipt"),
    [],
  );
});

test("a signal with a receipt made while disconnected is sent after the next welcome", async () => {
  const { client, connect, reconnect } = harness();
  const socket = await connect();
  socket.drop(1006);
  await flush();

  const signalling = client.signal("call:1", "bob", {}, { receipt: true });
  const again = await reconnect();
  const frame = await again.sent.next("signal");
  assert.equal(frame.receipt, true);
  again.push(receipt(frame, "delivered"));
  assert.equal((await signalling).status, "delivered");
});

test("no first receipt within the request timeout rejects with timeout; a late one is an event", async () => {
  const { client, clock, connect, subscribe } = harness({ requestTimeout: 1000 });
  const socket = await connect();
  const sub = await subscribe(socket, "call:1");
  const events = record(sub, EVENTS);

  const signalling = client.signal("call:1", "bob", {}, { receipt: true, ttlMs: 30000 });
  const frame = await socket.sent.next("signal");
  const timedOut = assert.rejects(signalling, (error) => {
    assert.equal(error.code, "timeout");
    assert.match(error.message, /no reply to signal/);
    return true;
  });
  await clock.advance(1000);
  await timedOut;

  socket.push(receipt(frame, "held"));
  assert.deepEqual(events, [{ type: "receipt", to: "bob", signal: SIGNAL_ID, status: "held" }]);
});

test("close while a signal waits for its first receipt rejects it with closed", async () => {
  const { client, connect } = harness();
  const socket = await connect();

  const signalling = client.signal("call:1", "bob", {}, { receipt: true });
  await socket.sent.next("signal");
  client.close();
  await assert.rejects(signalling, { code: "closed" });
});

test("a reply of another type to a signal with a receipt rejects with protocol", async () => {
  const { client, connect } = harness();
  const socket = await connect();

  const signalling = client.signal("call:1", "bob", {}, { receipt: true });
  const frame = await socket.sent.next("signal");
  socket.push({ type: "pong", id: frame.id });
  await assert.rejects(signalling, { code: "protocol" });
});
