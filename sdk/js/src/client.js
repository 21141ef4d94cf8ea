// DanmakuClient: one long connection to an edge, kept alive for the app.
//
// * connects through the scheduler: `GET /v1/edges`, then races WebSockets to the
//   best few and keeps the first that authenticates;
// * speaks protobuf (`danmaku.v3.pb`, else `v2` or `v1` on an older edge; zstd
//   batches decoded here) by default and falls back to JSON (`danmaku.v1.json`)
//   when protobuf connections keep failing;
// * pings every heartbeat, and drops a connection silent for 2.5 heartbeats;
// * reconnects with exponential backoff and jitter, follows `redirect`, re-joins
//   every channel and resumes the reliable lane where the app left it;
// * keeps a connection past its token's expiry: `refreshBeforeSecs` ahead of `exp`
//   it asks `getToken("expiring")` and sends the new token in an `auth` frame
//   (the edge closes a connection whose token expired);
// * does the reliable lane for the app: each gift / chat is handed over exactly
//   once, in seq order, and acked cumulatively (see reliable.js);
// * stops for good on `token_revoked` or `user_blocked` (FINAL_CODES): every
//   reconnect would be refused the same way. It emits the `error` and goes to
//   state `closed` with `reason` = the code; the app signs the user in again.

import { Backoff } from "./backoff.js";
import { ApiError, HttpApi, TokenSource, tokenExpiry } from "./http.js";
import { decodeJsonFrame, encodeJsonFrame } from "./json.js";
import { DecodeError, decodeServerFrame, encodeClientFrame } from "./pb.js";
import { ReliableTracker } from "./reliable.js";
import { PollSocket, SseSocket, httpBase } from "./fallback.js";

export const SUBPROTOCOL_PB = "danmaku.v1.pb";
/** Protobuf with compact batches (timestamps as deltas, shorter danmaku ids). */
export const SUBPROTOCOL_PB_COMPACT = "danmaku.v2.pb";
/** Protobuf with dense batches (danmaku ids as counter steps too) compressed
 * with zstd dictionary 1: offered first, then `danmaku.v2.pb` and
 * `danmaku.v1.pb` for edges that do not know it. */
export const SUBPROTOCOL_PB_DENSE = "danmaku.v3.pb";
export const SUBPROTOCOL_JSON = "danmaku.v1.json";

/**
 * The transports in fallback order, by `client.protocol`: each is tried when
 * the one before keeps failing while HTTP answers (a proxy that breaks
 * WebSocket, or streaming responses). `client.transport` names the one in use.
 */
export const TRANSPORTS = { pb: "ws-pb", json: "ws-json", sse: "sse", poll: "long-poll" };
const NEXT_PROTOCOL = { json: "sse", sse: "poll" };

/** Codes after which reconnecting is pointless: the token was revoked, the user blocked. */
export const FINAL_CODES = new Set(["token_revoked", "user_blocked"]);

/** Errors of a join answered with an `error` frame instead of `joined`. */
const JOIN_ERRORS = new Set(["bad_channel", "too_many_channels", "not_member", "banned"]);

function defaultBaseUrl() {
  const loc = globalThis.location;
  return loc && /^https?:$/.test(loc.protocol) ? loc.origin : "http://127.0.0.1:7070";
}

function wsUrlFromBase(baseUrl) {
  return baseUrl.replace(/^http/, "ws").replace(/\/+$/, "") + "/v1/ws";
}

export class DanmakuClient {
  /** @param {import("../types/index.d.ts").ClientOptions} o */
  constructor(o = {}) {
    this.baseUrl = (o.baseUrl ?? defaultBaseUrl()).replace(/\/+$/, "");
    this.tokens = new TokenSource({ token: o.token, getToken: o.getToken, refreshBeforeSecs: o.refreshBeforeSecs });
    this.http = new HttpApi({ baseUrl: this.baseUrl, tokens: this.tokens, fetch: o.fetch });
    this.WebSocket = o.WebSocket ?? globalThis.WebSocket;
    this.fetch = o.fetch ?? globalThis.fetch?.bind(globalThis);
    this.pollWaitSecs = o.pollWaitSecs ?? 25;
    // "auto" = pb, falling back to json, then sse, then long-poll; or one of them.
    this.protocolOption = o.protocol ?? "auto";
    this.protocol = this.protocolOption === "auto" ? "pb" : this.protocolOption;
    if (!this.WebSocket && (this.protocol === "pb" || this.protocol === "json")) {
      if (this.protocolOption !== "auto") throw new TypeError("no WebSocket implementation (pass options.WebSocket)");
      this.protocol = "sse";
    }
    this.staticEdges = o.edges ?? null;
    this.raceCount = o.raceCount ?? 3;
    this.heartbeatMs = o.heartbeatMs ?? 30_000;
    this.idleMs = o.idleMs ?? this.heartbeatMs * 2.5;
    this.connectTimeoutMs = o.connectTimeoutMs ?? 10_000;
    this.backoff = new Backoff(o.backoff);
    this.limits = o.limits;
    this.tracker = new ReliableTracker();
    /** channels to (re)join, in join order */
    this.channels = new Set();
    this.state = "idle";
    this.user = null;
    /** How often the edge asked for acks at most (`auth_ok`; 0: once per frame);
     * a channel's `joined` may ask for a slower pace (ackIntervalFor). */
    this.ackIntervalMs = 0;
    this.stats = { frames: 0, batches: 0, events: 0, reliable: 0, duplicates: 0, reconnects: 0, decodeMs: 0, rttMs: null };
    this.#listeners = new Map();
    this.#pendingJoins = [];
  }

  #listeners;
  #pendingJoins;
  #ws = null;
  #closed = false;
  #running = null;
  #redirectEdges = null;
  #dropConnection = null;
  #pbFailures = 0;
  #fallbackFailures = 0;
  #httpOk = false;
  #connectedOnce = false;
  #timers = [];
  #lastFrameAt = 0;
  /** channel → its own ack pace from its latest `joined` (0: the connection's) */
  #joinedAckMs = new Map();
  /** channel → the seq its next ack carries */
  #ackDue = new Map();
  /** channel → its paced ack's timer (null: a microtask) */
  #ackTimers = new Map();
  /** channel → when its last ack went out */
  #lastAckAt = new Map();

  /**
   * Subscribes to an event kind: `danmaku`, `gift`, `chat` (one event each),
   * `event` (every event), `batch` ({channel, events}), `reliable` ({channel, seq, event}),
   * `online` ({channel, online}), `joined`, `left` ({channel, reason?}: `removed`,
   * `banned`), `state` ({state, resumed, protocol}), `error` (Error or {code, message}),
   * `redirect`; moderation: `retract` ({channel, id}: take that comment off screen;
   * `id` is a danmaku's `id`, or a gift's / chat message's seq in decimal),
   * `sampled_out` ({channel, count}: a tick left `count` danmaku out, show "+count"),
   * `notice` ({channel, code: "muted", until_ms}: to the muted user only).
   * @returns {() => void} unsubscribe
   */
  on(kind, fn) {
    let set = this.#listeners.get(kind);
    if (!set) this.#listeners.set(kind, (set = new Set()));
    set.add(fn);
    return () => set.delete(fn);
  }

  #emit(kind, ...args) {
    const set = this.#listeners.get(kind);
    if (!set) return;
    for (const fn of set) {
      try {
        fn(...args);
      } catch (e) {
        if (kind !== "error") this.#emit("error", e);
      }
    }
  }

  #setState(state, extra = {}) {
    this.state = state;
    this.#emit("state", { state, protocol: this.protocol, ...extra });
  }

  /** Starts the connection; resolves once the first edge authenticated us. */
  connect() {
    if (this.#running) return this.#firstConnect;
    this.#closed = false;
    this.#firstConnect = new Promise((resolve, reject) => {
      this.#resolveFirst = resolve;
      this.#rejectFirst = reject;
    });
    this.#running = this.#run();
    return this.#firstConnect;
  }

  #firstConnect = null;
  #resolveFirst = null;
  #rejectFirst = null;

  /** The transport in use (or being tried): "ws-pb", "ws-json", "sse" or "long-poll". */
  get transport() {
    return TRANSPORTS[this.protocol];
  }

  /** Closes for good (no reconnect). */
  close() {
    this.#closed = true;
    this.#rejectFirst?.(new Error("client closed"));
    this.#dropConnection?.();
    this.#setState("closed");
  }

  /** Refused for good (FINAL_CODES): tell the app, close, never reconnect. */
  #stopFinal(err) {
    if (this.#closed) return;
    this.#closed = true;
    this.#emit("error", err);
    this.#rejectFirst?.(err);
    this.#rejectFirst = null;
    this.#dropConnection?.();
    this.#setState("closed", { reason: err.code });
  }

  /**
   * Joins a channel (re-joined after every reconnect). Resolves with its `joined`
   * frame: `{channel, last_seq, ack_interval_ms}` (see ackIntervalFor).
   * `afterSeq`: resume the reliable lane after an offset the app stored.
   */
  join(channel, { afterSeq } = {}) {
    this.channels.add(channel);
    if (afterSeq !== undefined) this.tracker.anchor(channel, afterSeq);
    return new Promise((resolve, reject) => {
      const p = { channel, resolve, reject, timer: null };
      this.#pendingJoins.push(p);
      if (this.#ws && this.state === "connected") {
        this.#send({ type: "join", channel });
        if (afterSeq !== undefined) this.#send({ type: "resume", channel, after_seq: afterSeq });
      }
    });
  }

  /** Leaves a channel and forgets its reliable state. */
  leave(channel) {
    this.channels.delete(channel);
    this.tracker.forget(channel);
    // A paced ack still waiting goes out first: the edge stores a group's
    // offset as it handles the leave.
    const seq = this.#ackDue.get(channel);
    this.#dropAcks(channel);
    if (this.#ws && this.state === "connected") {
      if (seq !== undefined) this.#send({ type: "ack", channel, seq });
      this.#send({ type: "leave", channel });
    }
  }

  /**
   * How often `channel`'s reliable seqs are acked at most: the slower of the
   * connection's pace (`ackIntervalMs`, from `auth_ok`) and the channel's own
   * from its `joined` (rooms get a slower one than groups).
   */
  ackIntervalFor(channel) {
    return Math.max(this.ackIntervalMs, this.#joinedAckMs.get(channel) ?? 0);
  }

  /** Sends over HTTP (see HttpApi.send); gifts and chat are idempotent on retry. */
  send(channel, msg, o) {
    return this.http.send(channel, typeof msg === "string" ? { kind: "danmaku", text: msg } : msg, o);
  }
  history(channel, o) { return this.http.history(channel, o); }
  /** The URL of the blob an event carries (`event.blob`). */
  blobUrl(id) { return this.http.blobUrl(id); }
  /** Fetches the blob an event carries, on demand: `{contentType, body}`. */
  fetchBlob(id) { return this.http.fetchBlob(id); }
  historyPages(channel, o) { return this.http.historyPages(channel, o); }
  unread() { return this.http.unread(); }
  online(channel) { return this.http.online(channel); }
  ackHttp(channel, seq) { return this.http.ack(channel, seq); }
  /** The highest reliable seq handed to the app on `channel` (null before any). */
  deliveredUpto(channel) { return this.tracker.deliveredUpto(channel); }

  // ---- connection loop --------------------------------------------------------

  async #run() {
    while (!this.#closed) {
      let closedPromise = null;
      try {
        const conn = await this.#open();
        if (this.#closed) {
          conn.ws.close(1000);
          break;
        }
        closedPromise = this.#attach(conn);
      } catch (e) {
        if (e instanceof ApiError && FINAL_CODES.has(e.code)) {
          this.#stopFinal(e);
          break;
        }
        this.#emit("error", e);
      }
      if (closedPromise) {
        await closedPromise;
        if (this.#closed) break;
        this.stats.reconnects++;
      }
      if (this.#closed) break;
      this.#setState("reconnecting");
      const delay = this.#redirectEdges ? Math.round(Math.random() * 250) : this.backoff.next();
      await new Promise((r) => setTimeout(r, delay));
    }
    this.#running = null;
  }

  async #edgeUrls() {
    if (this.#redirectEdges) {
      const r = this.#redirectEdges;
      this.#redirectEdges = null;
      const urls = r.map((e) => e.ws).filter(Boolean);
      if (urls.length) return urls;
    }
    this.#httpOk = true;
    if (this.staticEdges?.length) return this.staticEdges;
    try {
      const edges = await this.http.edges(this.raceCount);
      const urls = edges.map((e) => e.ws).filter(Boolean);
      if (urls.length) return urls;
    } catch (e) {
      this.#httpOk = e instanceof ApiError && e.status !== 0;
      this.#emit("error", e);
    }
    return [wsUrlFromBase(this.baseUrl)];
  }

  /** Races connections to the best edges; the first `auth_ok` wins. */
  async #open() {
    if (this.#connectedOnce) this.#setState("reconnecting");
    else this.#setState("connecting");
    const token = await this.tokens.get();
    const urls = (await this.#edgeUrls()).slice(0, Math.max(1, this.raceCount));
    const protocol = this.protocol;
    const sub = protocol === "pb" ? [SUBPROTOCOL_PB_DENSE, SUBPROTOCOL_PB_COMPACT, SUBPROTOCOL_PB] : SUBPROTOCOL_JSON;
    const attempts = [];
    const winner = await new Promise((resolve, reject) => {
      let failed = 0;
      let done = false;
      const timer = setTimeout(() => finish(null, new Error("connect timeout")), this.connectTimeoutMs);
      const finish = (win, err) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        for (const a of attempts) if (a !== win) {
          a.ws.onopen = a.ws.onmessage = a.ws.onclose = null;
          // Closing one still connecting reports an error (the `ws` package throws
          // it when nothing listens): keep a listener that ignores it.
          a.ws.onerror = () => {};
          try { a.ws.close(1000); } catch { /* closing anyway */ }
        }
        if (win) resolve(win);
        else reject(err);
      };
      for (const url of urls) {
        const full = url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
        let ws;
        try {
          ws = this.#socket(url, full, token, sub, protocol);
        } catch (e) {
          if (++failed === urls.length) finish(null, e);
          continue;
        }
        ws.binaryType = "arraybuffer";
        const a = { ws, url, protocol, early: [] };
        attempts.push(a);
        ws.onmessage = (m) => {
          let f;
          try {
            f = this.#decode(m.data, protocol);
          } catch (e) {
            ws.close(1002);
            return;
          }
          if (f.type === "auth_ok") {
            a.user = f.user;
            a.ackIntervalMs = f.ack_interval_ms || 0;
            finish(a);
          } else if (f.type === "error") {
            a.error = f;
            // Revoked or blocked: the race is over, whatever the other edges say.
            if (FINAL_CODES.has(f.code)) finish(null, new ApiError(0, f.code, f.message));
          }
        };
        // A failed socket reports `error` and then `close`: count the attempt once,
        // or two dead edges would end a race a third one is about to win.
        const fail = () => {
          if (a.failed) return;
          a.failed = true;
          if (++failed === urls.length) finish(null, new Error(`no edge accepted the connection (${urls.join(", ")})`));
        };
        ws.onerror = fail;
        ws.onclose = () => { ws.onerror = null; fail(); };
      }
      if (attempts.length === 0 && !done) finish(null, new Error("no edge to connect to"));
    }).catch(async (e) => {
      // Before the upgrade a refused token and a refused subprotocol look alike to a
      // browser. The second failure in a row asks for a fresh token (and every fifth
      // after it); protobuf failures while HTTP answers, four in a row after that
      // refresh, switch to JSON. A server that is down (HTTP fails too) changes nothing.
      const failures = this.backoff.attempt + 1;
      if (failures === 2 || (failures > 2 && failures % 5 === 0)) {
        await this.tokens.refresh().catch(() => {});
        if (failures === 2) this.#pbFailures = 0;
      }
      if (protocol === "pb" && this.protocolOption === "auto" && this.#httpOk && ++this.#pbFailures >= 4) {
        this.protocol = "json";
      } else if (NEXT_PROTOCOL[protocol] && this.protocolOption === "auto" && this.#httpOk && ++this.#fallbackFailures >= 2) {
        // WebSocket (then streaming) keeps failing while HTTP answers: next transport.
        this.protocol = NEXT_PROTOCOL[protocol];
        this.#fallbackFailures = 0;
        this.backoff.reset();
      }
      throw e;
    });
    if (protocol === "pb") this.#pbFailures = 0;
    this.#fallbackFailures = 0;
    return winner;
  }

  /** A connection of `protocol`: a WebSocket, or a fallback with its surface (fallback.js). */
  #socket(url, full, token, sub, protocol) {
    if (protocol === "sse" || protocol === "poll") {
      const channels = new Map([...this.channels].map((c) => [c, this.tracker.deliveredUpto(c)]));
      const o = { base: httpBase(url), token, channels, fetch: this.fetch, waitSecs: this.pollWaitSecs };
      return protocol === "sse" ? new SseSocket(o) : new PollSocket(o);
    }
    return new this.WebSocket(full, sub);
  }

  #decode(data, protocol) {
    if (protocol === "pb") {
      if (typeof data === "string") throw new DecodeError("malformed_frame", "text frame on the protobuf subprotocol");
      const t0 = performance.now();
      const f = decodeServerFrame(new Uint8Array(data), this.limits);
      if (f.type === "batch") this.stats.decodeMs += performance.now() - t0;
      return f;
    }
    if (typeof data !== "string") throw new DecodeError("malformed_json", "binary frame on the JSON subprotocol");
    return decodeJsonFrame(data);
  }

  /** Makes `conn` the live connection; resolves when it ends. */
  #attach(conn) {
    const { ws } = conn;
    this.#ws = ws;
    this.#connProtocol = conn.protocol;
    this.user = conn.user;
    this.ackIntervalMs = conn.ackIntervalMs || 0;
    this.backoff.reset();
    this.tracker.onReconnect();
    const resumed = this.#connectedOnce;
    this.#connectedOnce = true;
    this.#lastFrameAt = Date.now();
    let resolveClosed;
    const closed = new Promise((r) => (resolveClosed = r));
    let ended = false;
    const end = () => {
      if (ended) return;
      ended = true;
      for (const t of this.#timers) clearInterval(t);
      this.#timers = [];
      // A paced ack that had not gone out: the resume after reconnecting
      // tells the next edge where this client is.
      for (const t of this.#ackTimers.values()) clearTimeout(t);
      this.#ackTimers.clear();
      this.#ackDue.clear();
      ws.onmessage = ws.onclose = ws.onerror = null;
      if (this.#ws === ws) this.#ws = null;
      this.#dropConnection = null;
      resolveClosed();
    };
    this.#dropConnection = () => {
      try { ws.close(1000); } catch { /* gone */ }
      end();
    };
    ws.onmessage = (m) => {
      this.#lastFrameAt = Date.now();
      let f;
      try {
        f = this.#decode(m.data, conn.protocol);
      } catch (e) {
        this.#emit("error", e);
        if (conn.protocol === "pb" && this.protocolOption === "auto") this.protocol = "json";
        this.#dropConnection?.();
        return;
      }
      this.#onFrame(f);
    };
    ws.onclose = end;
    ws.onerror = () => {};
    this.#timers.push(setInterval(() => this.#send({ type: "ping", ts_ms: Date.now() }), this.heartbeatMs));
    this.#timers.push(setInterval(() => {
      if (Date.now() - this.#lastFrameAt > this.idleMs) this.#dropConnection?.();
    }, Math.min(1000, this.idleMs / 2)));

    this.#scheduleTokenRefresh(ws);

    this.#setState("connected", { resumed, user: this.user });
    // Join everything again; resume the channels whose reliable lane is anchored.
    for (const channel of this.channels) {
      this.#send({ type: "join", channel });
      const upto = this.tracker.deliveredUpto(channel);
      if (upto !== null) this.#send({ type: "resume", channel, after_seq: upto });
    }
    this.#resolveFirst?.();
    this.#resolveFirst = null;
    return closed;
  }

  #connProtocol = "pb";

  /**
   * While `ws` is the live connection, sends a fresh token (`auth`) ahead of the
   * current one's expiry, again for each new token. Needs `getToken`; a token
   * without `exp`, or a callback that returns no later one, stops the cycle (the
   * edge then closes at expiry and the reconnect fetches a token).
   */
  #scheduleTokenRefresh(ws) {
    if (!this.tokens.getToken) return;
    const exp = tokenExpiry(this.tokens.token);
    if (exp === null) return;
    const dueMs = (exp - this.tokens.refreshBeforeSecs) * 1000 - Date.now();
    if (dueMs > 2 ** 31 - 1) return; // beyond setTimeout's range: a far-off expiry
    this.#timers.push(setTimeout(async () => {
      if (this.#ws !== ws) return;
      let token;
      try {
        token = await this.tokens.renew();
      } catch (e) {
        this.#emit("error", e);
        return;
      }
      if (this.#ws !== ws || !((tokenExpiry(token) ?? 0) > exp)) return;
      if (this.#send({ type: "auth", token })) this.#scheduleTokenRefresh(ws);
    }, Math.max(0, dueMs)));
  }

  #send(frame) {
    const ws = this.#ws;
    if (!ws || ws.readyState !== 1) return false;
    try {
      ws.send(this.#connProtocol === "pb" ? encodeClientFrame(frame) : encodeJsonFrame(frame));
      return true;
    } catch (e) {
      this.#emit("error", e);
      return false;
    }
  }

  // Acks are cumulative: one per channel covers everything delivered. They go
  // out once the frame that brought them is handled, but no more often than
  // the channel's pace (ackIntervalFor: in a hot room each ack is a frame the
  // edge reads, so a room's pace is slower than a group's).
  #queueAck(channel, seq) {
    this.#ackDue.set(channel, seq);
    if (this.#ackTimers.has(channel)) return;
    const flush = () => {
      if (!this.#ackTimers.delete(channel)) return; // dropped meanwhile
      const seq = this.#ackDue.get(channel);
      this.#ackDue.delete(channel);
      this.#lastAckAt.set(channel, Date.now());
      this.#send({ type: "ack", channel, seq });
    };
    const wait = (this.#lastAckAt.get(channel) ?? -Infinity) + this.ackIntervalFor(channel) - Date.now();
    if (wait > 0) this.#ackTimers.set(channel, setTimeout(flush, wait));
    else {
      this.#ackTimers.set(channel, null);
      queueMicrotask(flush);
    }
  }

  /** Forgets a channel's ack pace and any ack waiting for it (leave, or `left`). */
  #dropAcks(channel) {
    clearTimeout(this.#ackTimers.get(channel));
    this.#ackTimers.delete(channel);
    this.#ackDue.delete(channel);
    this.#lastAckAt.delete(channel);
    this.#joinedAckMs.delete(channel);
  }

  /** One reliable event, alone or from a tick: deduplicated, ordered, acked. */
  #onReliable(channel, seq, event) {
    const r = this.tracker.onReliable(channel, seq, event);
    if (r.duplicate) this.stats.duplicates++;
    for (const ev of r.deliver) {
      this.stats.reliable++;
      this.#emit("reliable", { channel, seq: ev.seq, event: ev });
      this.#emit("event", ev, channel);
      this.#emit(ev.kind, ev, channel);
    }
    if (r.resume !== null) this.#send({ type: "resume", channel, after_seq: r.resume });
    if (r.ack !== null) this.#queueAck(channel, r.ack);
  }

  #onFrame(f) {
    this.stats.frames++;
    switch (f.type) {
      case "batch": {
        // A tick: its online count (when one rides it) is an `online` event
        // like the frame of its own a quiet room gets; its reliable events
        // (seq > 0) go through the tracker like `reliable` frames; the batch
        // the app sees holds the danmaku.
        this.stats.batches++;
        // Moderation rides the tick too: `sampled_out` (danmaku hot-room
        // thinning left out) is a `sampled_out` event before the batch, and
        // retractions are `retract` events after it, never in `batch.events`.
        if (f.online > 0) this.#emit("online", { type: "online", channel: f.channel, online: f.online });
        if (f.sampled_out > 0) this.#emit("sampled_out", { channel: f.channel, count: f.sampled_out });
        let danmaku = f.events;
        const retracts = [];
        if (f.events.some((ev) => ev.seq > 0 || ev.kind === "retract")) {
          danmaku = [];
          for (const ev of f.events) {
            if (ev.seq > 0) this.#onReliable(f.channel, ev.seq, ev);
            else if (ev.kind === "retract") retracts.push(ev);
            else danmaku.push(ev);
          }
        }
        this.stats.events += danmaku.length;
        this.#emit("batch", { ...f, events: danmaku });
        for (const ev of danmaku) {
          this.#emit("event", ev, f.channel);
          this.#emit(ev.kind, ev, f.channel);
        }
        for (const ev of retracts) this.#emit("retract", { channel: f.channel, id: ev.id ?? "" });
        break;
      }
      case "reliable":
        this.#onReliable(f.channel, f.seq, f.event);
        break;
      case "joined": {
        // The channel's ack pace, fresh on every (re-)join: 0 = the connection's.
        if (this.channels.has(f.channel)) this.#joinedAckMs.set(f.channel, f.ack_interval_ms || 0);
        // A room pushes every gift after `last_seq`: anchor there on a first join.
        if (f.channel.startsWith("room:") && !this.tracker.anchored(f.channel)) {
          this.tracker.anchor(f.channel, f.last_seq);
        }
        const i = this.#pendingJoins.findIndex((p) => p.channel === f.channel);
        if (i >= 0) this.#pendingJoins.splice(i, 1)[0].resolve(f);
        this.#emit("joined", f);
        break;
      }
      case "left":
        // Removed from the group or banned: not re-joined after a reconnect,
        // and no ack for it goes out (the edge would ignore it).
        if (f.reason === "removed" || f.reason === "banned") {
          this.channels.delete(f.channel);
          this.#dropAcks(f.channel);
        }
        this.#emit("left", f);
        break;
      case "notice":
        this.#emit("notice", f);
        break;
      case "online":
        this.#emit("online", f);
        break;
      case "pong":
        if (f.ts_ms) this.stats.rttMs = Date.now() - f.ts_ms;
        break;
      case "redirect":
        this.#emit("redirect", f);
        this.#redirectEdges = f.edges;
        this.#dropConnection?.();
        break;
      case "error": {
        const err = new ApiError(0, f.code, f.message);
        if (FINAL_CODES.has(f.code)) {
          this.#stopFinal(err);
          break;
        }
        if (JOIN_ERRORS.has(f.code) && this.#pendingJoins.length) {
          const p = this.#pendingJoins.shift();
          this.channels.delete(p.channel);
          p.reject(err);
        }
        this.#emit("error", err);
        break;
      }
      default:
        break; // a newer server's frame: ignored
    }
  }
}
