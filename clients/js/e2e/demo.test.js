// Browser tests of the demo app and the client, in headless Chromium (Debian's package)
// driven by playwright-core, against the real relay-server binary.
//
// Inputs (set by `cargo xtask test`): RELAY_SERVER_BIN, the server binary; CHROMIUM, the
// browser (default /usr/bin/chromium); DATABASE_URL for the restart test, which needs
// Postgres and is skipped by name without it; RELAY_E2E_SCREENSHOT, where the screenshot of
// the demo goes.

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { createServer } from "node:net";
import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { randomUUID } from "node:crypto";
import { chromium } from "playwright-core";

const BIN = process.env.RELAY_SERVER_BIN;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const DATABASE_URL = process.env.DATABASE_URL || "";
const SCREENSHOT = process.env.RELAY_E2E_SCREENSHOT;
const SECRET = "e2e-test-secret-0123456789abcdefghij";
const CHANNEL = "demo:lobby";
/** Every wait in these tests is for a condition, bounded by this. */
const WAIT = 30_000;

if (!BIN) throw new Error("RELAY_SERVER_BIN must name the relay-server binary");

const started = Date.now();
/** Logs a step, so that a failing run shows how far it got. */
function step(what) {
  console.error(`  [${((Date.now() - started) / 1000).toFixed(1)}s] ${what}`);
}

/** A free loopback port (so that a restarted server can take the same one). */
function freePort() {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

/** Starts the server on `port`; resolves once it listens. */
function startServer(port, databaseUrl) {
  const args = ["--listen", `127.0.0.1:${port}`, "--demo", "--log-format", "json", "--jwt-secret", SECRET];
  if (databaseUrl) args.push("--database-url", databaseUrl);
  const proc = spawn(BIN, args, { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, RUST_LOG: "info" } });
  return new Promise((resolve, reject) => {
    let buffered = "";
    const timer = setTimeout(() => reject(new Error("the server did not start within 30 s")), WAIT);
    const exited = (code) => reject(new Error(`the server exited with ${code}: ${buffered.slice(-2000)}`));
    proc.once("exit", exited);
    const onLog = (chunk) => {
      buffered += chunk;
      if (buffered.includes('"listening"')) {
        clearTimeout(timer);
        proc.off("exit", exited);
        // Keep draining its log, so that the server never blocks on a full pipe.
        proc.stderr.off("data", onLog);
        proc.stderr.resume();
        resolve({
          base: `http://127.0.0.1:${port}`,
          stop(signal = "SIGTERM") {
            return new Promise((done) => {
              if (proc.exitCode !== null) return done();
              proc.once("exit", () => done());
              proc.kill(signal);
            });
          },
        });
      }
    };
    proc.stderr.on("data", onLog);
  });
}

/** A token signed with the test secret, minted by the server's own `gentoken`. */
function token(user) {
  return execFileSync(BIN, ["gentoken", "--user", user, "--jwt-secret", SECRET], { encoding: "utf8" }).trim();
}

/** A fresh database on the server of DATABASE_URL, dropped by the returned function. */
function createDatabase() {
  const name = `relay_e2e_${randomUUID().replaceAll("-", "")}`;
  execFileSync("psql", [DATABASE_URL, "-qc", `CREATE DATABASE ${name}`]);
  const url = new URL(DATABASE_URL);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    drop: () => execFileSync("psql", [DATABASE_URL, "-qc", `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`]),
  };
}

function launch() {
  // Root in a container has no user namespaces for Chromium's sandbox.
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] });
}

/** Opens the demo in a new context and joins as `name`; `blockWebSocket` makes every
 * WebSocket close before it says anything, as a proxy that blocks them would. */
async function join(browser, base, name, { blockWebSocket = false } = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  if (blockWebSocket) await context.routeWebSocket(/\/ws/, (ws) => ws.close());
  const page = await context.newPage();
  step(`${name} opens the demo`);
  page.on("pageerror", (error) => console.error(`[${name}] page error:`, error));
  await page.goto(base + "/");
  await page.fill("#name", name);
  await page.click("#join");
  await page.waitForSelector('#status[data-state="online"]', { timeout: WAIT });
  step(`${name} is online`);
  return page;
}

async function say(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

/** Waits until `page` shows a message with exactly `text`. */
function waitForMessage(page, text) {
  return page.waitForFunction(
    (t) => [...document.querySelectorAll("#messages li.message .text")].some((e) => e.textContent === t),
    text,
    { timeout: WAIT },
  );
}

function waitForOnline(page, user) {
  return page.waitForSelector(`#online li[data-user="${user}"]`, { timeout: WAIT });
}

/** The messages a page shows: [seq, text] in display order. */
function shown(page) {
  return page.$$eval("#messages li.message", (items) =>
    items.map((li) => [Number(li.dataset.seq), li.querySelector(".text").textContent]),
  );
}

test("two users chat, see each other typing and online, and recover after a restart", { skip: DATABASE_URL ? false : "needs DATABASE_URL (Postgres) for the restart" }, async () => {
  const db = createDatabase();
  const port = await freePort();
  let server = await startServer(port, db.url);
  const browser = await launch();
  try {
    const alice = await join(browser, server.base, "alice");
    const bob = await join(browser, server.base, "bob");
    for (const page of [alice, bob]) {
      await waitForOnline(page, "alice");
      await waitForOnline(page, "bob");
    }

    step("both see both online");
    await alice.type("#text", "hello b", { delay: 20 });
    await bob.waitForFunction(() => document.querySelector("#typing").textContent.includes("alice is typing"), null, { timeout: WAIT });
    step("bob sees alice typing");
    await alice.fill("#text", "");
    await say(alice, "hello bob");
    await waitForMessage(bob, "hello bob");
    await say(bob, "hi alice, how are you?");
    await waitForMessage(alice, "hi alice, how are you?");
    await say(alice, "fine! this room recovers everything after a restart");
    await waitForMessage(bob, "fine! this room recovers everything after a restart");
    if (SCREENSHOT) {
      mkdirSync(dirname(SCREENSHOT), { recursive: true });
      await alice.screenshot({ path: SCREENSHOT });
    }

    step("they chatted");
    step("they chatted");
    // The server dies; while it is down another node on the same database takes messages.
    await server.stop("SIGKILL");
    step("the server was killed");
    for (const page of [alice, bob]) {
      await page.waitForSelector('#status[data-state="reconnecting"]', { timeout: WAIT });
    }
    const other = await startServer(await freePort(), db.url);
    const carol = token("carol");
    for (const n of [1, 2, 3]) {
      const response = await fetch(`${other.base}/api/channels/${CHANNEL}/messages`, {
        method: "POST",
        headers: { authorization: `Bearer ${carol}`, "content-type": "application/json" },
        body: JSON.stringify({ event: "text", payload: { text: `while down ${n}` } }),
      });
      assert.equal(response.status, 201);
    }
    await other.stop();

    step("messages published while the server was down");
    server = await startServer(port, db.url);
    for (const page of [alice, bob]) {
      await page.waitForSelector('#status[data-state="online"]', { timeout: WAIT });
      await waitForMessage(page, "while down 3");
      const messages = await shown(page);
      const seqs = messages.map(([seq]) => seq);
      assert.deepEqual(seqs, [...new Set(seqs)].sort((a, b) => a - b), "each seq once, in order");
      for (const n of [1, 2, 3]) {
        assert.equal(messages.filter(([, text]) => text === `while down ${n}`).length, 1, `"while down ${n}" exactly once`);
      }
      assert.equal(messages.length, 6, "three before, three while down");
    }
    // And the room goes on.
    await say(bob, "welcome back");
    await waitForMessage(alice, "welcome back");
  } finally {
    await browser.close();
    await server.stop();
    db.drop();
  }
});

test("a browser whose WebSockets are blocked chats over Server-Sent Events", async () => {
  const server = await startServer(await freePort());
  const browser = await launch();
  try {
    const eve = await join(browser, server.base, "eve");
    const dave = await join(browser, server.base, "dave", { blockWebSocket: true });
    assert.equal(await dave.textContent("#transport"), "sse");
    assert.equal(await eve.textContent("#transport"), "websocket");
    await waitForOnline(dave, "eve");
    await waitForOnline(eve, "dave");
    await dave.type("#text", "sent over", { delay: 20 });
    await eve.waitForFunction(() => document.querySelector("#typing").textContent.includes("dave is typing"), null, { timeout: WAIT });
    await say(dave, "sent over a POST");
    await waitForMessage(eve, "sent over a POST");
    await say(eve, "received as an event");
    await waitForMessage(dave, "received as an event");
  } finally {
    await browser.close();
    await server.stop();
  }
});
