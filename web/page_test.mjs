// Runs the demo page's script against a tiny fake DOM, a fake fetch and a fake
// WebSocket, and checks the flow docs/PROTOCOL.md describes: dev token, socket
// URL and subprotocol, join frame, batch rendering with textContent, counter,
// send with bearer token, error message on 429, reconnect after a close.
// No browser or npm packages needed: `node web/page_test.mjs` (Node 18+).

import { readFileSync } from "node:fs";
import assert from "node:assert/strict";

const html = readFileSync(new URL("./index.html", import.meta.url), "utf8");
const script = html.match(/<script>([\s\S]*)<\/script>/)[1];

// ---------- fake DOM ----------
class El {
  constructor(id, tag = "div") {
    Object.assign(this, { id, tag, children: [], listeners: {}, style: {}, value: "", textContent: "",
      className: "", disabled: false, hidden: false, clientWidth: 960, clientHeight: 540, offsetWidth: 80 });
    this.classList = { add: (c) => { this.className += " " + c; } };
  }
  addEventListener(t, f) { (this.listeners[t] ||= []).push(f); }
  async fire(t) { for (const f of this.listeners[t] || []) await f({ preventDefault() {} }); }
  append(...c) { this.children.push(...c); }
  appendChild(c) { this.children.push(c); c.parent = this; }
  remove() { if (this.parent) this.parent.children = this.parent.children.filter((x) => x !== this); }
  animate() { return {}; }
  focus() {}
  set innerHTML(_) { throw new Error("innerHTML must not be used"); }
}
const els = {};
for (const id of ["stage", "stage-info", "room", "user", "join", "comment", "send", "join-form", "send-form",
  "dot", "conn", "count", "dropped-wrap", "dropped", "message"]) els[id] = new El(id);
els.room.value = "room:1";
const document = { getElementById: (id) => els[id], createElement: (t) => new El(null, t), hidden: false };

// ---------- fake network ----------
const requests = [];
let nextPost = { status: 202, body: { accepted: true } };
async function fetch(url, opts) {
  requests.push({ url, opts });
  if (url === "/v1/dev/token") return resp(200, { token: "tok+" + JSON.parse(opts.body).user });
  const r = nextPost;
  return resp(r.status, r.body, r.headers);
}
function resp(status, body, headers = {}) {
  return { ok: status < 300, status, json: async () => body, headers: { get: (h) => headers[h] ?? null } };
}
const sockets = [];
class FakeWebSocket {
  static OPEN = 1;
  constructor(url, proto) { Object.assign(this, { url, proto, sent: [], readyState: 0 }); sockets.push(this); }
  send(d) { this.sent.push(JSON.parse(d)); }
  close() { this.readyState = 3; this.onclose?.({ code: 1000 }); }
  open() { this.readyState = 1; this.onopen(); }
  recv(f) { this.onmessage({ data: JSON.stringify(f) }); }
}

const timers = [];
const ctx = {
  document, fetch, WebSocket: FakeWebSocket, URL, URLSearchParams, JSON, Math, String, Array, Error,
  location: { protocol: "http:", host: "127.0.0.1:7070", search: "" },
  window: { addEventListener() {} },
  performance: { now: () => 0 },
  setTimeout: (f, ms) => { timers.push({ f, ms }); return timers.length; },
  clearTimeout() {}, setInterval: () => 1, clearInterval() {},
};
new Function(...Object.keys(ctx), script)(...Object.values(ctx));
const tick = () => new Promise((r) => setImmediate(r));

// ---------- the flow ----------
els.user.value = "alice";
await els["join-form"].fire("submit");
await tick();
assert.equal(requests[0].url, "/v1/dev/token");
assert.deepEqual(JSON.parse(requests[0].opts.body), { user: "alice" });
assert.equal(sockets.length, 1);
const ws = sockets[0];
assert.equal(ws.url, "ws://127.0.0.1:7070/v1/ws?token=" + encodeURIComponent("tok+alice"));
assert.equal(ws.proto, "danmaku.v1.json");
ws.open();
assert.deepEqual(ws.sent[0], { type: "join", channel: "room:1" });
ws.recv({ type: "auth_ok", user: "alice" });
ws.recv({ type: "joined", channel: "room:1", last_seq: 0 });
assert.equal(els.comment.disabled, false);

ws.recv({ type: "batch", channel: "room:1", events: [
  { kind: "danmaku", sender: "bob", text: "<img src=x onerror=alert(1)>", ts_ms: 1 },
  { kind: "danmaku", sender: "carol", text: "666", ts_ms: 2 },
] });
assert.equal(els.count.textContent, "2");
const drawn = els.stage.children.filter((c) => c.className.startsWith("dm"));
assert.equal(drawn.length, 2);
assert.equal(drawn[0].children[1].textContent, "<img src=x onerror=alert(1)>");
assert.equal(drawn[0].children[0].textContent, "bob");

els.comment.value = "hello";
await els["send-form"].fire("submit");
const post = requests.at(-1);
assert.equal(post.url, "/v1/channels/room:1/messages");
assert.equal(post.opts.headers.Authorization, "Bearer tok+alice");
assert.deepEqual(JSON.parse(post.opts.body), { kind: "danmaku", text: "hello" });
assert.equal(els.comment.value, "");

nextPost = { status: 429, body: { error: { code: "rate_limited", message: "user rate limit reached" } },
  headers: { "Retry-After": "2" } };
els.comment.value = "again";
await els["send-form"].fire("submit");
assert.match(els.message.textContent, /user rate limit reached.*retry in 2 s/);
assert.equal(els.message.className, "error");

// Close: a reconnect is scheduled with backoff, renews the token, opens a new socket.
ws.onclose({ code: 1006 });
assert.equal(els.comment.disabled, true);
const t = timers.at(-1);
assert.ok(t.ms >= 500 && t.ms <= 1000, "first retry within the minimum backoff");
await t.f();
assert.equal(sockets.length, 2);
sockets[1].open();
assert.deepEqual(sockets[1].sent[0], { type: "join", channel: "room:1" });

console.log("page_test: ok");
