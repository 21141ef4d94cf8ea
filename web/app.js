// The player page: draws what the SDK hands it. No protocol code here — the
// connection, decoding, the reliable lane (each gift exactly once) and reconnects
// are sdk/js's job (served prebuilt at /sdk/danmaku.min.js).
//
// * stage: a canvas where danmaku scroll right-to-left in lanes at ONE constant
//   speed, so a comment placed behind another never catches up with it: a lane takes
//   a new comment only when the previous one has fully entered. What cannot find a
//   lane within a moment is dropped (counted); the user's own comments are never
//   dropped and shown at once (queued in front, behind the lane's last comment).
// * gift lane: a banner per gift, plus the gift feed under the stage; gifts are
//   never dropped. A gift carrying an image blob (notify-pull: only the id rides
//   the push) shows that picture in its banner, fetched when the banner shows.
// * side panel: group chat with history (paged over HTTP) and unread badges.
// * window.__danmaku: counters and frame times for the browser tests.

import { DanmakuClient, devToken } from "/sdk/danmaku.min.js";

const params = new URLSearchParams(location.search);
const room = params.get("room") || "room:1";
const user = params.get("user") || `guest-${Math.random().toString(36).slice(2, 8)}`;
const protocol = params.get("protocol") || "auto";
const staticToken = params.get("token") || undefined;
const wantGroups = (params.get("groups") || "").split(",").map((s) => s.trim()).filter(Boolean);
const heartbeatMs = Number(params.get("heartbeat_ms")) || undefined;
// Fixed edge URLs instead of the scheduler's (e.g. an edge behind a proxy).
const edges = (params.get("edges") || "").split(",").map((s) => s.trim()).filter(Boolean);

const $ = (id) => document.getElementById(id);

/** What the browser tests read. */
const debug = (window.__danmaku = {
  room, user,
  received: 0, shown: 0, dropped: 0, own: 0,
  texts: [], // the last 500 danmaku texts received (own echoes included)
  gifts: [], // {channel, seq, sender, text, blob?} in the order shown
  giftImages: 0, // banners that showed a gift's image blob
  states: [],
  frameTimes: [], // ms between animation frames (performance.now deltas)
  longTasks: 0,
  errors: [],
  retracted: [], // ids of comments a moderator took back (removed from screen)
  sampledOut: 0, // danmaku hot-room thinning left out ("+N")
  notices: [], // {channel, code, until_ms} sent to this user (mutes)
});

// ---------------------------------------------------------------- the stage ----

const LANE_HEIGHT = 32;
const TOP_RESERVED = 46; // the gift banner lane
const FONT = '600 22px system-ui, "Noto Sans CJK SC", "PingFang SC", "Microsoft YaHei", sans-serif';
const GAP = 28; // px between two comments of a lane
const MAX_QUEUE = 120; // comments waiting for a lane
const MAX_WAIT_MS = 2_500; // a comment older than this is no longer worth showing

class Stage {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.items = [];
    this.queue = [];
    this.ownQueue = [];
    this.lanes = [];
    this.width = 0;
    this.height = 0;
    this.last = performance.now();
    new ResizeObserver(() => this.resize()).observe(canvas);
    this.resize();
    requestAnimationFrame((t) => this.frame(t));
  }

  resize() {
    const dpr = window.devicePixelRatio || 1;
    const r = this.canvas.getBoundingClientRect();
    this.width = r.width;
    this.height = r.height;
    this.canvas.width = Math.round(r.width * dpr);
    this.canvas.height = Math.round(r.height * dpr);
    this.ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const n = Math.max(1, Math.floor((this.height - TOP_RESERVED - 8) / LANE_HEIGHT));
    while (this.lanes.length < n) this.lanes.push({ tail: null });
    this.lanes.length = n;
    // One speed for all: crossing the stage takes ~7 s.
    this.speed = Math.max(60, this.width / 7);
  }

  /** A comment from the wire (dropped if it cannot find a lane in time). */
  add(ev) {
    this.queue.push({ text: ev.text, sender: ev.sender, id: ev.id, at: performance.now(), color: colorOf(ev) });
    if (this.queue.length > MAX_QUEUE) {
      const drop = this.queue.length - MAX_QUEUE;
      this.queue.splice(0, drop);
      debug.dropped += drop;
    }
  }

  /** The user's own comment: never dropped, placed now; returns it (its `id`
   * is set once ingest answers). */
  addOwn(text) {
    const c = { text, sender: user, own: true, color: "#fff" };
    this.place(c, true);
    return this.items[this.items.length - 1];
  }

  /** A moderator took comment `id` back: off the stage and out of the queue. */
  retract(id) {
    if (!id) return;
    this.queue = this.queue.filter((c) => c.id !== id);
    const keep = this.items.filter((it) => it.id !== id);
    for (const it of this.items) if (it.id === id) it.gone = true;
    this.items = keep;
  }

  laneEnd(lane) {
    const t = lane.tail;
    return t && !t.gone ? t.x + t.w : -Infinity;
  }

  freeLane() {
    for (let i = 0; i < this.lanes.length; i++) {
      if (this.laneEnd(this.lanes[i]) + GAP <= this.width) return i;
    }
    return -1;
  }

  /** Puts `c` in a lane; `force` queues it behind the emptiest lane's last comment. */
  place(c, force = false) {
    this.ctx.font = FONT;
    let i = this.freeLane();
    let x = this.width;
    if (i < 0) {
      if (!force) return false;
      i = 0;
      for (let j = 1; j < this.lanes.length; j++) if (this.laneEnd(this.lanes[j]) < this.laneEnd(this.lanes[i])) i = j;
      x = Math.max(this.width, this.laneEnd(this.lanes[i]) + GAP);
    }
    const item = { ...c, x, y: TOP_RESERVED + i * LANE_HEIGHT + 24, w: this.ctx.measureText(c.text).width, lane: i };
    this.items.push(item);
    this.lanes[i].tail = item;
    debug.shown++;
    return true;
  }

  frame(now) {
    const dt = Math.min(0.1, (now - this.last) / 1000);
    debug.frameTimes.push(now - this.last);
    if (debug.frameTimes.length > 5000) debug.frameTimes.splice(0, 1000);
    this.last = now;
    // Move, and forget what left the stage.
    const dx = this.speed * dt;
    let keep = 0;
    for (const it of this.items) {
      it.x -= dx;
      if (it.x + it.w > 0) this.items[keep++] = it;
      else it.gone = true;
    }
    this.items.length = keep;
    // Fill free lanes: stale comments are dropped, fresh ones placed oldest first.
    while (this.queue.length && now - this.queue[0].at > MAX_WAIT_MS) {
      this.queue.shift();
      debug.dropped++;
    }
    while (this.queue.length && this.freeLane() >= 0) this.place(this.queue.shift());
    this.draw();
    $("stage-info").textContent = `shown ${debug.shown} · dropped ${debug.dropped}`;
    requestAnimationFrame((t) => this.frame(t));
  }

  draw() {
    const ctx = this.ctx;
    ctx.clearRect(0, 0, this.width, this.height);
    ctx.font = FONT;
    ctx.lineWidth = 3;
    ctx.lineJoin = "round";
    ctx.strokeStyle = "rgba(0,0,0,.75)";
    for (const it of this.items) {
      if (it.x > this.width) continue;
      ctx.strokeText(it.text, it.x, it.y);
      ctx.fillStyle = it.color;
      ctx.fillText(it.text, it.x, it.y);
      if (it.own) {
        ctx.strokeStyle = "rgba(255,255,255,.8)";
        ctx.lineWidth = 1;
        ctx.strokeRect(it.x - 4, it.y - 22, it.w + 8, 28);
        ctx.lineWidth = 3;
        ctx.strokeStyle = "rgba(0,0,0,.75)";
      }
    }
  }
}

function colorOf(ev) {
  const c = ev.payload && typeof ev.payload.color === "string" ? ev.payload.color : null;
  return c && /^#[0-9a-fA-F]{3,8}$/.test(c) ? c : "#ffffff";
}

// ------------------------------------------------------------ the gift lane ----

const GIFT_ICONS = { rocket: "🚀", heart: "❤️", flower: "🌸", car: "🏎️" };
const giftQueue = [];
let giftShowing = false;

function showGift(ev, channel) {
  debug.gifts.push({ channel, seq: ev.seq, sender: ev.sender, text: ev.text, blob: ev.blob });
  const li = document.createElement("li");
  li.dataset.seq = String(ev.seq);
  li.dataset.channel = channel;
  const name = (ev.payload && ev.payload.gift) || ev.text;
  li.textContent = `${GIFT_ICONS[name] ?? "🎁"} ${ev.sender} sent ${ev.text}${ev.payload?.n > 1 ? ` ×${ev.payload.n}` : ""} (#${ev.seq})`;
  const feed = $("gift-feed");
  feed.prepend(li);
  while (feed.children.length > 500) feed.lastChild.remove();
  giftQueue.push({ ev, name });
  if (!giftShowing) nextBanner();
}

// Object URLs of image blobs already fetched, by id (blobs never change), oldest
// first; bounded, since every distinct picture holds its bytes.
const blobImages = new Map();
const MAX_BLOB_IMAGES = 64;

/** The object URL of blob `id` when it is an image, else null (never throws). */
async function blobImage(id) {
  if (!blobImages.has(id)) {
    const p = client
      .fetchBlob(id)
      .then(({ contentType, body }) => (contentType.startsWith("image/") ? URL.createObjectURL(body) : null))
      .catch((err) => {
        debug.errors.push(`blob ${id}: ${err.message}`);
        blobImages.delete(id);
        return null;
      });
    blobImages.set(id, p);
    if (blobImages.size > MAX_BLOB_IMAGES) {
      const [oldest, url] = blobImages.entries().next().value;
      blobImages.delete(oldest);
      url.then((u) => u && URL.revokeObjectURL(u));
    }
  }
  return blobImages.get(id);
}

function nextBanner() {
  const g = giftQueue.shift();
  const lane = $("gift-lane");
  if (!g) {
    giftShowing = false;
    return;
  }
  giftShowing = true;
  const b = document.createElement("div");
  b.className = "banner";
  b.dataset.seq = String(g.ev.seq);
  const icon = document.createElement("span");
  icon.className = "icon";
  icon.textContent = GIFT_ICONS[g.name] ?? "🎁";
  const t = document.createElement("span");
  t.textContent = `${g.ev.sender} sent ${g.ev.text}`;
  b.append(icon, t);
  lane.replaceChildren(b);
  if (g.ev.blob) {
    blobImage(g.ev.blob).then((url) => {
      if (!url || !b.isConnected) return;
      const img = document.createElement("img");
      img.className = "gift-image";
      img.alt = g.name;
      img.src = url;
      icon.replaceChildren(img);
      debug.giftImages++;
    });
  }
  // Busy room: banners go faster, none is skipped (the feed lists them all).
  const ms = giftQueue.length > 4 ? 500 : 2_600;
  setTimeout(nextBanner, ms);
}

// ------------------------------------------------------------- the client ----

const client = new DanmakuClient({
  token: staticToken,
  getToken: staticToken ? undefined : () => devToken(location.origin, user),
  protocol,
  heartbeatMs,
  edges: edges.length ? edges : undefined,
});
debug.client = client;
const stage = new Stage($("canvas"));
// For the browser tests' render benchmark: comments straight onto the stage.
debug.inject = (text, sender = "bench") => {
  debug.received++;
  stage.add({ text, sender });
};
const pendingOwn = new Map(); // text → how many echoes to skip
// For the browser tests: whether comment `id` is on the stage or waiting for a lane.
debug.onStage = (id) => stage.items.some((it) => it.id === id) || stage.queue.some((c) => c.id === id);

$("room-name").textContent = room;
$("me").textContent = user;

client.on("state", (s) => {
  const label = s.state === "connected" ? (s.resumed ? "resumed" : "connected") : s.state;
  if (debug.states[debug.states.length - 1] !== label) debug.states.push(label);
  const el = $("conn");
  el.dataset.state = label;
  el.textContent = label;
});
client.on("error", (e) => {
  debug.errors.push(String(e?.message ?? e));
  if (debug.errors.length > 50) debug.errors.shift();
});
client.on("danmaku", (ev, channel) => {
  if (channel !== room) return;
  debug.received++;
  debug.texts.push(ev.text);
  if (debug.texts.length > 500) debug.texts.shift();
  if (ev.sender === user && pendingOwn.get(ev.text) > 0) {
    pendingOwn.set(ev.text, pendingOwn.get(ev.text) - 1); // already shown when sent
    return;
  }
  stage.add(ev);
});
client.on("gift", (ev, channel) => showGift(ev, channel));
// Moderation: a retraction takes the comment (or gift) off screen; a tick
// thinned in a flooded room says how many were left out; a muted viewer sees
// the time left.
client.on("retract", (r) => {
  if (r.channel !== room) return;
  debug.retracted.push(r.id);
  stage.retract(r.id);
  for (const li of $("gift-feed").querySelectorAll("li")) {
    if (li.dataset.seq === r.id && li.dataset.channel === r.channel) li.remove();
  }
  // A retracted gift's banner: gone from the queue, and off the lane if showing.
  for (let i = giftQueue.length - 1; i >= 0; i--) if (String(giftQueue[i].ev.seq) === r.id) giftQueue.splice(i, 1);
  for (const b of $("gift-lane").querySelectorAll(".banner")) if (b.dataset.seq === r.id) b.remove();
});
client.on("sampled_out", (s) => {
  if (s.channel !== room) return;
  debug.sampledOut += s.count;
  $("sampled").textContent = `+${debug.sampledOut.toLocaleString()}`;
  $("sampled").title = "comments not shown: the room is busier than anyone can read";
});
let noticeTimer = null;
function showNotice(text) {
  const el = $("notice");
  el.textContent = text;
  el.hidden = !text;
}
client.on("notice", (n) => {
  debug.notices.push(n);
  if (n.code !== "muted" || n.channel !== room) return;
  clearInterval(noticeTimer);
  const tick = () => {
    const left = Math.ceil((n.until_ms - Date.now()) / 1000);
    if (left <= 0) {
      clearInterval(noticeTimer);
      showNotice("");
      return;
    }
    showNotice(`You are muted in this room for ${left} s more.`);
  };
  tick();
  noticeTimer = setInterval(tick, 1000);
});
client.on("left", (l) => {
  if (l.channel === room && l.reason === "banned") showNotice("You were banned from this room.");
});
client.on("online", (o) => {
  if (o.channel === room) $("online").textContent = String(o.online);
});

async function pollOnline() {
  try {
    $("online").textContent = String(await client.online(room));
  } catch (e) {
    if (e.status === 404) return; // a server without the endpoint: rely on frames
  }
  setTimeout(pollOnline, 5_000);
}

$("send-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = $("send-text");
  const text = input.value.trim();
  if (!text) return;
  input.value = "";
  const own = stage.addOwn(text); // at once, before the round trip
  debug.own++;
  pendingOwn.set(text, (pendingOwn.get(text) ?? 0) + 1);
  try {
    const answer = await client.send(room, text);
    if (own && answer?.id) own.id = answer.id; // so a retraction finds it
  } catch (err) {
    pendingOwn.set(text, Math.max(0, (pendingOwn.get(text) ?? 1) - 1));
    debug.errors.push(`send: ${err.message}`);
  }
});
$("send-gift").addEventListener("click", () => {
  client.send(room, { kind: "gift", text: "rocket", payload: { gift: "rocket", n: 1 } }).catch((err) => debug.errors.push(`gift: ${err.message}`));
});

// ----------------------------------------------------------- the chat panel ----

const unread = new Map(); // group → count
const rendered = new Map(); // group → Set of seqs shown (history and live overlap)
let openGroup = null;

function renderGroups() {
  const ul = $("groups");
  ul.replaceChildren();
  for (const g of [...unread.keys()].sort()) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.group = g;
    b.className = g === openGroup ? "open" : "";
    b.textContent = g.slice("group:".length);
    const badge = document.createElement("span");
    badge.className = "badge";
    const n = g === openGroup ? 0 : unread.get(g);
    badge.dataset.n = String(n);
    badge.textContent = n > 99 ? "99+" : String(n);
    b.append(badge);
    b.addEventListener("click", () => open(g));
    li.append(b);
    ul.append(li);
  }
}

function appendChat(group, m) {
  if (group !== openGroup) return;
  const seen = rendered.get(group);
  if (seen.has(m.seq)) return;
  seen.add(m.seq);
  const log = $("chat-log");
  const li = document.createElement("li");
  li.dataset.seq = String(m.seq);
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = m.sender;
  li.append(who, document.createTextNode(m.kind === "gift" ? `🎁 ${m.text}` : m.text));
  log.append(li);
  log.scrollTop = log.scrollHeight;
}

async function open(group) {
  if (openGroup && openGroup !== group) client.leave(openGroup);
  openGroup = group;
  rendered.set(group, new Set());
  $("chat-log").replaceChildren();
  $("chat-text").disabled = false;
  $("chat-send").disabled = false;
  renderGroups();
  let last = 0;
  try {
    for await (const page of client.historyPages(group, { limit: 50 })) {
      for (const m of page) {
        appendChat(group, m);
        last = m.seq;
      }
      if (rendered.get(group).size >= 1000) break;
    }
    if (last) await client.ackHttp(group, last);
  } catch (e) {
    debug.errors.push(`history: ${e.message}`);
  }
  unread.set(group, 0);
  renderGroups();
  client.join(group).catch((e) => debug.errors.push(`join ${group}: ${e.message}`));
}

client.on("chat", (ev, channel) => {
  if (channel === openGroup) appendChat(channel, ev);
  else if (unread.has(channel)) {
    unread.set(channel, unread.get(channel) + 1);
    renderGroups();
  }
});

async function refreshUnread() {
  try {
    const u = await client.unread();
    for (const [ch, n] of Object.entries(u.channels ?? {})) {
      if (!ch.startsWith("group:")) continue;
      unread.set(ch, ch === openGroup ? 0 : n);
    }
    renderGroups();
  } catch (e) {
    debug.errors.push(`unread: ${e.message}`);
  }
  setTimeout(refreshUnread, 5_000);
}

$("chat-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = $("chat-text");
  const text = input.value.trim();
  if (!text || !openGroup) return;
  input.value = "";
  client.send(openGroup, { kind: "chat", text }).catch((err) => debug.errors.push(`chat: ${err.message}`));
});

/** Dev convenience: `&groups=group:fans` makes the user a member (dev tokens only). */
async function joinDevGroups() {
  if (!wantGroups.length || staticToken) return;
  try {
    const app = await devToken(location.origin, "player-page", "app");
    for (const g of wantGroups) {
      await fetch(`/v1/groups/${encodeURIComponent(g)}/members/${encodeURIComponent(user)}`, {
        method: "PUT",
        headers: { authorization: `Bearer ${app}` },
      });
      unread.set(g, unread.get(g) ?? 0);
    }
  } catch (e) {
    debug.errors.push(`groups: ${e.message}`);
  }
}

// ----------------------------------------------------------------- start ----

if ("PerformanceObserver" in window) {
  try {
    new PerformanceObserver((l) => (debug.longTasks += l.getEntries().length)).observe({ type: "longtask", buffered: true });
  } catch { /* not supported */ }
}

(async () => {
  await joinDevGroups();
  client.join(room).catch((e) => debug.errors.push(`join ${room}: ${e.message}`));
  await client.connect();
  debug.ready = true;
  pollOnline();
  refreshUnread();
})();
