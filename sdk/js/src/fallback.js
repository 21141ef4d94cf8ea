// The fallback transports, for networks that break WebSocket (corporate
// proxies, some carriers, old WebViews): server-sent events (`GET /v1/sse`) and
// long-poll (`GET /v1/poll`). Each is a small object with the WebSocket surface
// the client uses (`readyState`, `onopen`/`onmessage`/`onclose`/`onerror`,
// `send`, `close`), so DanmakuClient keeps one connection loop, one reliable
// tracker and one frame handler for every transport. Messages are the JSON
// frames of `danmaku.v1.json`, as text.
//
// What the client sends is read here:
// * `join`/`resume`: the stream (or the poll loop) was opened with the client's
//   channels and each one's delivered seq (`after=` / `cursor=0.0.<seq>`), so
//   these are already done; a join of a new channel or a resume of a gap
//   reopens the connection (the client's loop reconnects with what it has);
// * `ack`: the edge acks for SSE clients itself, and long-poll reads by seq,
//   so acks are dropped;
// * `ping`: answered with a `pong` while the stream (or poll) is healthy, so the
//   client's idle check keeps working;
// * `leave`, `auth`: reopen (without the channel / with the fresh token).
//
// Both read with `fetch` (streamed body for SSE), so they work in browsers and in
// Node alike, and a broken stream is reported to the client's loop (which
// reconnects with `after=`) instead of being retried behind its back.

const CONNECTING = 0;
const OPEN = 1;
const CLOSED = 3;

function tokenSub(token) {
  try {
    const b64 = token.split(".")[0].replace(/-/g, "+").replace(/_/g, "/");
    const json = typeof atob === "function" ? atob(b64) : Buffer.from(b64, "base64").toString("binary");
    return JSON.parse(json).sub ?? null;
  } catch {
    return null;
  }
}

/** `http(s)://host[:port]` from an edge's WebSocket URL or a base URL. */
export function httpBase(url) {
  return url.replace(/^ws/, "http").replace(/\/v1\/ws(\?.*)?$/, "").replace(/\?.*$/, "").replace(/\/+$/, "");
}

class FallbackSocket {
  constructor({ base, token, channels, fetch }) {
    this.base = base;
    this.token = token;
    /** @type {Map<string, number|null>} channel -> delivered seq to resume after */
    this.channels = channels;
    this.fetch = fetch;
    this.readyState = CONNECTING;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    this.binaryType = "arraybuffer";
    this.abort = new AbortController();
  }

  // The client reads the first frame (`auth_ok`) with its connect race's
  // handler and sets its own after an await; a WebSocket's next frames only
  // come after the client asks (join), but a stream's follow at once. So after
  // the first frame, frames wait here until the client sets its handler.
  #onmessage = null;
  #held = null;

  get onmessage() {
    return this.#onmessage;
  }

  set onmessage(fn) {
    this.#onmessage = fn;
    if (fn && this.#held !== null) queueMicrotask(() => this.#flush());
  }

  #flush() {
    const q = this.#held ?? [];
    this.#held = null;
    while (q.length) {
      if (this.#held !== null || !this.#onmessage) {
        this.#held = (this.#held ?? []).concat(q);
        return;
      }
      this.#deliverNow(q.shift());
    }
  }

  _deliver(text) {
    if (this.readyState === CLOSED) return;
    if (this.#held !== null || !this.#onmessage) {
      (this.#held ??= []).push(text);
      return;
    }
    this.#deliverNow(text);
  }

  #deliverNow(text) {
    if (this.readyState === CLOSED) return;
    const first = !this.delivered;
    this.delivered = true;
    this.#onmessage?.({ data: text });
    if (first) this.#held = [];
  }

  _end(err) {
    if (this.readyState === CLOSED) return;
    this.readyState = CLOSED;
    this.abort.abort();
    if (err) this.onerror?.(err);
    this.onclose?.({ code: err ? 1006 : 1000 });
  }

  close() {
    this._end(null);
  }

  send(text) {
    if (this.readyState !== OPEN) return;
    let f;
    try {
      f = JSON.parse(text);
    } catch {
      return;
    }
    switch (f.type) {
      case "ping":
        queueMicrotask(() => this._deliver(JSON.stringify({ type: "pong", ts_ms: f.ts_ms })));
        break;
      case "ack":
        break;
      case "join":
      case "resume":
        if (f.type === "join" && this.channels.has(f.channel)) break;
        if (f.type === "resume" && this.channels.get(f.channel) === f.after_seq) break;
        // Not what this connection was opened with: reconnect with it.
        queueMicrotask(() => this._end(null));
        break;
      default: // leave, auth
        queueMicrotask(() => this._end(null));
    }
  }
}

/** Server-sent events over a streamed `fetch`. */
export class SseSocket extends FallbackSocket {
  constructor(o) {
    super(o);
    this.#run().catch((e) => this._end(e instanceof Error ? e : new Error(String(e))));
  }

  async #run() {
    const q = new URLSearchParams({ token: this.token });
    for (const [c, seq] of this.channels) {
      q.append("channel", c);
      if (seq !== null && seq !== undefined) q.append("after", `${c}:${seq}`);
    }
    const resp = await this.fetch(`${this.base}/v1/sse?${q}`, {
      headers: { accept: "text/event-stream" },
      signal: this.abort.signal,
    });
    if (!resp.ok || !resp.body) {
      // A refusal (token revoked, user blocked, bad channel) as the error frame
      // a WebSocket would have sent, so the client reacts the same way.
      let body = null;
      try { body = await resp.json(); } catch { /* not JSON */ }
      if (body?.error) {
        this.readyState = OPEN;
        this._deliver(JSON.stringify({ type: "error", code: body.error.code, message: body.error.message }));
      }
      throw new Error(`GET /v1/sse answered ${resp.status}`);
    }
    this.readyState = OPEN;
    this.onopen?.({});
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let end;
      while ((end = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        let data = null;
        for (const line of block.split("\n")) {
          if (line.startsWith("data:")) {
            const v = line.slice(5).replace(/^ /, "");
            data = data === null ? v : data + "\n" + v;
          }
        }
        if (data !== null) this._deliver(data);
      }
    }
    this._end(new Error("the event stream ended"));
  }
}

/** Long-poll: one request loop per channel, each holding its cursor. */
export class PollSocket extends FallbackSocket {
  constructor(o) {
    super(o);
    this.waitSecs = o.waitSecs ?? 25;
    this.#run().catch((e) => this._end(e instanceof Error ? e : new Error(String(e))));
  }

  async #get(channel, cursor, wait) {
    const q = new URLSearchParams({ token: this.token, channel });
    if (cursor) q.set("cursor", cursor);
    if (wait !== undefined) q.set("wait", String(wait));
    const resp = await this.fetch(`${this.base}/v1/poll?${q}`, { signal: this.abort.signal });
    const body = await resp.json().catch(() => null);
    if (!resp.ok) {
      if (body?.error) {
        this.readyState = OPEN;
        this._deliver(JSON.stringify({ type: "error", code: body.error.code, message: body.error.message }));
      }
      throw new Error(`GET /v1/poll answered ${resp.status}`);
    }
    return body;
  }

  async #run() {
    // The first poll of each channel: a fresh cursor, or `0.0.<seq>` to resume.
    const cursors = new Map();
    const lastSeqs = new Map();
    for (const [channel, seq] of this.channels) {
      const first = await this.#get(channel, seq !== null && seq !== undefined ? `0.0.${seq}` : null, 0);
      cursors.set(channel, first);
      lastSeqs.set(channel, Number(String(first.cursor).split(".")[2] ?? 0));
    }
    this.readyState = OPEN;
    this.onopen?.({});
    this._deliver(JSON.stringify({ type: "auth_ok", user: tokenSub(this.token) ?? "" }));
    for (const [channel, first] of cursors) {
      const seq = this.channels.get(channel);
      this._deliver(JSON.stringify({ type: "joined", channel, last_seq: seq ?? lastSeqs.get(channel) }));
      for (const f of first.events ?? []) this._deliver(JSON.stringify(f));
    }
    await Promise.all([...cursors].map(([channel, first]) => this.#loop(channel, first.cursor)));
  }

  async #loop(channel, cursor) {
    while (this.readyState === OPEN) {
      const a = await this.#get(channel, cursor, this.waitSecs);
      for (const f of a.events ?? []) this._deliver(JSON.stringify(f));
      cursor = a.cursor;
    }
  }
}
