// Relay demo: a small chat room on the channel "demo:lobby".
//
// Flow: POST /demo/token → connect → load the last 50 messages over REST → subscribe with
// `since` = the last history seq, so that nothing between history and live is lost, and
// skip every seq already rendered so that nothing is shown twice.
//
// Every user-provided string is rendered with textContent, never innerHTML.
import { RelayClient, RelayError } from "/client/relay.js";

const CHANNEL = "demo:lobby";
const NAME_RE = /^[A-Za-z0-9_-]{1,32}$/; // the server's rule for demo names
const TYPING_MS = 3000;                   // how long "x is typing…" lasts after the last event
const ERROR_MS = 8000;                    // how long the publish error line stays
const NEAR_BOTTOM_PX = 80;
const MAX_RENDERED = 500;                 // messages kept in the list; older ones leave it
const RELOAD_LIMIT = 200;                 // messages reloaded after a gap (the REST maximum)

const $ = (id) => document.getElementById(id);

const state = {
  me: null,
  token: null,
  client: null,
  status: "connecting",
  transport: "",
  rendered: new Set(), // seqs already in the message list
  trimmedUpTo: 0,      // the highest seq that left the list to bound memory
  online: new Set(),   // users shown in the "Online" sidebar
  typing: new Map(),   // user → timeout id that removes them from the typing line
  errorTimer: 0,
  ended: null,         // why the subscription ended: shown for good in the error line
  unconfirmed: null,   // { text, idempotencyKey } of a send that may have been stored
};

// ---------- small helpers ----------

/** Creates an element with a class and (optional) text, set with textContent. */
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** A readable explanation for an error of any kind. */
function describe(err) {
  if (err instanceof RelayError && err.code) return `${err.message} (${err.code})`;
  return (err && err.message) || String(err);
}

/** "HH:MM" in local time, or "" for an unreadable timestamp. */
function hhmm(ts) {
  const d = new Date(ts);
  if (Number.isNaN(d.getTime())) return "";
  return `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
}

/** The text of a payload: `{text}` normally, anything else as JSON. */
function payloadText(payload) {
  if (payload && typeof payload.text === "string") return payload.text;
  return JSON.stringify(payload);
}

/** Reads a JSON body and throws the server's error message on a non-2xx status. */
async function readJson(res, what) {
  const body = await res.json().catch(() => null);
  if (!res.ok) {
    throw new Error((body && body.error && body.error.message) || `${what} failed (HTTP ${res.status})`);
  }
  return body;
}

async function fetchToken(name) {
  const res = await fetch("/demo/token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name }),
  });
  return readJson(res, "token request");
}

/** GET /api/channels/demo:lobby/messages?QUERY → the messages, ascending by seq. */
async function fetchHistory(query) {
  const res = await fetch(`/api/channels/${CHANNEL}/messages?${query}`, {
    headers: { authorization: `Bearer ${state.token}` },
  });
  const body = await readJson(res, "history request");
  return (body && body.messages) || [];
}

// ---------- status pill ----------

/** state: connecting | online | reconnecting | offline. The transport shows only when online. */
function setStatus(status, transport) {
  state.status = status;
  if (transport) state.transport = transport;
  $("status").dataset.state = status;
  $("status-text").textContent = status;
  const show = status === "online" && state.transport;
  $("status-sep").textContent = show ? " · " : "";
  $("transport").textContent = show ? state.transport : "";
}

// ---------- message list ----------

function isNearBottom(list) {
  return list.scrollHeight - list.scrollTop - list.clientHeight < NEAR_BOTTOM_PX;
}

function scrollToBottom() {
  $("messages").scrollTop = $("messages").scrollHeight;
}

/**
 * Adds a persistent message in seq order; a seq already rendered is skipped, and so is one
 * at or below the messages trimmed from the list (it was rendered before, or is older).
 */
function renderMessage(m) {
  if (typeof m.seq !== "number" || state.rendered.has(m.seq) || m.seq <= state.trimmedUpTo) return;
  state.rendered.add(m.seq);

  const list = $("messages");
  // Server publishes have no author: `from` is absent over REST and null from the client.
  const hasFrom = m.from != null;
  const own = hasFrom && m.from === state.me;
  const stick = own || isNearBottom(list);

  const li = el("li", own ? "message own" : "message");
  li.dataset.seq = String(m.seq);
  if (hasFrom) li.dataset.from = m.from;
  const meta = el("div", "meta");
  const time = el("time", "time", hhmm(m.ts));
  if (m.ts) time.dateTime = m.ts;
  meta.append(el("span", "from", hasFrom ? m.from : "server"), time);
  li.append(meta, el("div", "text", payloadText(m.payload)));

  // Usually appended at the end; reloaded messages may arrive late, so insert before the
  // trailing messages with a larger seq. Notes are passed over and keep their place.
  let before = null;
  for (let n = list.lastElementChild; n; n = n.previousElementSibling) {
    if (!n.classList.contains("message")) continue;
    if (Number(n.dataset.seq) < m.seq) break;
    before = n;
  }
  list.insertBefore(li, before);
  trimMessages(list);

  if (stick) scrollToBottom();
}

/** Bounds memory on long runs: the oldest messages, and notes above them, leave the list. */
function trimMessages(list) {
  while (state.rendered.size > MAX_RENDERED && list.firstElementChild) {
    const oldest = list.firstElementChild;
    if (oldest.classList.contains("message")) {
      const seq = Number(oldest.dataset.seq);
      state.rendered.delete(seq);
      state.trimmedUpTo = Math.max(state.trimmedUpTo, seq);
    }
    oldest.remove();
  }
}

/** A system note in the list, e.g. after a gap. */
function addNote(text) {
  const list = $("messages");
  const stick = isNearBottom(list);
  list.append(el("li", "note", text));
  if (stick) scrollToBottom();
}

function clearMessages() {
  $("messages").replaceChildren();
  state.rendered.clear();
  state.trimmedUpTo = 0;
}

/**
 * After a gap: reload the newest messages up to `resumedAt` over REST, the ones right
 * before what arrives live. (Paging forward from `since` stops after a few pages and can
 * miss exactly those.) Older missed ones may stay missing; the note above says so.
 */
async function reloadHistory(since, resumedAt) {
  if (typeof resumedAt !== "number") {
    (await fetchHistory("limit=50")).forEach(renderMessage);
    return;
  }
  const msgs = await fetchHistory(`before=${resumedAt + 1}&limit=${RELOAD_LIMIT}`);
  // Those up to `since` were handled before the gap (unless the store was reset, which
  // cleared the list).
  const missed = typeof since === "number" && since <= resumedAt ? msgs.filter((m) => m.seq > since) : msgs;
  missed.forEach(renderMessage);
}

// ---------- online list ----------

function renderOnline() {
  if (state.me) state.online.add(state.me); // we are always online in our own view
  const items = [...state.online].sort().map((user) => {
    const li = el("li", user === state.me ? "me" : "", user);
    li.dataset.user = user;
    li.title = user; // the full name when it is cut short
    return li;
  });
  $("online").replaceChildren(...items);
}

async function refreshPresence() {
  if (!state.client) return;
  try {
    state.online = new Set(await state.client.presence(CHANNEL));
  } catch {
    // Not subscribed yet, or offline: keep the current list; join/leave keep it up to date.
  }
  renderOnline();
}

// ---------- typing line ----------

function renderTyping() {
  const users = [...state.typing.keys()].sort();
  let text = "";
  if (users.length === 1) text = `${users[0]} is typing…`;
  else if (users.length > 3) text = "several people are typing…";
  else if (users.length > 1) text = `${users.slice(0, -1).join(", ")} and ${users.at(-1)} are typing…`;
  $("typing").textContent = text;
}

function markTyping(user) {
  clearTimeout(state.typing.get(user));
  state.typing.set(user, setTimeout(() => {
    state.typing.delete(user);
    renderTyping();
  }, TYPING_MS));
  renderTyping();
}

function clearTyping(user) {
  if (!state.typing.has(user)) return;
  clearTimeout(state.typing.get(user));
  state.typing.delete(user);
  renderTyping();
}

// ---------- error line ----------

function showError(text) {
  const line = $("error");
  line.textContent = text;
  line.hidden = false;
  clearTimeout(state.errorTimer);
  state.errorTimer = setTimeout(hideError, ERROR_MS);
}

/** Hides a passing error; once the subscription ended, its explanation comes back instead. */
function hideError() {
  clearTimeout(state.errorTimer);
  $("error").textContent = state.ended || "";
  $("error").hidden = !state.ended;
}

// ---------- joining ----------

function onMessage(m) {
  if (m.event === "typing") {
    if (m.from && m.from !== state.me) markTyping(m.from);
    return;
  }
  if (typeof m.seq !== "number") return; // other ephemeral events are not shown
  renderMessage(m);
  if (m.from) clearTyping(m.from); // they sent it: no longer typing
}

async function join(name) {
  const { user, token } = await fetchToken(name);
  state.me = user;
  state.token = token;

  $("me").textContent = user;
  $("login").hidden = true;
  $("room").hidden = false;
  setStatus("connecting");
  renderOnline();

  let firstUsed = false;
  const client = new RelayClient({
    url: (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws",
    // The first connect uses the token just fetched; a reconnect (after a restart, or a
    // 4001 when the token expired) asks the server for a fresh one.
    token: async () => {
      if (!firstUsed) {
        firstUsed = true;
        return token;
      }
      state.token = (await fetchToken(user)).token;
      return state.token;
    },
    transport: new URLSearchParams(location.search).get("transport") || "auto",
  });
  state.client = client;

  client.on("connected", ({ transport }) => {
    setStatus("online", transport || client.transport);
    refreshPresence();
  });
  client.on("disconnected", () => setStatus("reconnecting"));
  client.on("closed", () => setStatus("offline"));
  client.on("transport", ({ transport }) => setStatus(state.status, transport));

  await client.connect();
  setStatus("online", client.transport);

  // History first, then live from the last history seq: nothing lost, nothing twice.
  const history = await fetchHistory("limit=50");
  history.forEach(renderMessage);
  scrollToBottom();
  const since = history.length ? history[history.length - 1].seq : 0;

  const sub = await client.subscribe(CHANNEL, { since });
  sub.on("message", onMessage);
  sub.on("join", ({ user: who }) => { state.online.add(who); renderOnline(); });
  sub.on("leave", ({ user: who }) => {
    if (who !== state.me) state.online.delete(who); // another tab of ours may leave
    clearTyping(who);
    renderOnline();
  });
  sub.on("gap", async ({ since: from, resumedAt }) => {
    // The store was reset (e.g. a server restart with the in-memory store): start over.
    if (typeof resumedAt === "number" && typeof from === "number" && resumedAt < from) {
      clearMessages();
    }
    addNote("some messages could not be recovered");
    refreshPresence();
    try {
      await reloadHistory(from, resumedAt);
    } catch (err) {
      showError(`Could not reload history: ${describe(err)}`);
    }
  });
  sub.on("recovered", () => refreshPresence()); // resubscribed after a reconnect
  sub.on("ended", ({ code, reason }) => {
    // Nothing more arrives for the room, so the connection is closed too: its reconnects
    // would only turn the status back to "online".
    state.ended = `You are no longer in ${CHANNEL}: ${reason || "the subscription ended"} (${code}). ` +
      "Reload the page to join again.";
    client.close();
    setStatus("offline");
    hideError(); // shows state.ended, for good
  });

  await refreshPresence();
  $("text").focus();
}

/** Back to the name card after a failed join. */
function leaveRoom() {
  if (state.client && typeof state.client.close === "function") {
    try { state.client.close(); } catch { /* already closed */ }
  }
  state.client = null;
  state.ended = null;
  state.unconfirmed = null;
  state.online.clear();
  state.transport = "";
  for (const user of [...state.typing.keys()]) clearTyping(user);
  clearMessages();
  hideError();
  $("room").hidden = true;
  $("login").hidden = false;
}

// ---------- UI wiring ----------

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const name = $("name").value.trim();
  const errorLine = $("login-error");
  if (!NAME_RE.test(name)) {
    errorLine.textContent = "Names are 1–32 letters, digits, _ or -.";
    $("name").focus();
    return;
  }
  errorLine.textContent = "";
  $("join").disabled = true;
  try {
    await join(name);
  } catch (err) {
    leaveRoom();
    errorLine.textContent = `Could not join: ${describe(err)}`;
    $("join").disabled = false;
  }
});

$("composer").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const input = $("text");
  const text = input.value;
  if (!text.trim() || !state.client) return; // empty text is ignored
  input.value = "";
  // The same text as a send that may have been stored goes with that send's key, so that
  // the server stores it at most once; a different text is a new message with a fresh key.
  const idempotencyKey = state.unconfirmed?.text === text ? state.unconfirmed.idempotencyKey : undefined;
  state.unconfirmed = null;
  try {
    const ack = await state.client.publish(CHANNEL, { text }, { event: "text", idempotencyKey });
    hideError();
    // Normally our own message arrives as a `message` first; if not (echo off), show it now.
    if (ack && typeof ack.seq === "number") {
      renderMessage({ seq: ack.seq, id: ack.messageId, from: state.me, event: "text",
        payload: { text }, ts: new Date().toISOString() });
    }
  } catch (err) {
    showError(`Could not send: ${describe(err)}`);
    if (!input.value) input.value = text; // give the text back to retry
    // "unconfirmed": maybe stored. A retry with the key already used keeps that key too,
    // whatever its own failure, since the first attempt may still have been stored.
    const key = (err instanceof RelayError && err.idempotencyKey) || idempotencyKey;
    if (key) state.unconfirmed = { text, idempotencyKey: key };
  }
});

$("text").addEventListener("input", () => {
  if (!state.client || !$("text").value) return;
  // typing() is throttled by the client; ignore its failures (it is best-effort).
  Promise.resolve().then(() => state.client.typing(CHANNEL)).catch(() => {});
});
