// The HTTP side of danmaku (docs/PROTOCOL.md, "HTTP API"): sending, reliable
// history, acks, unread counts, online counts, the scheduler's edge list, and dev
// tokens. Errors come back as ApiError with the server's stable `code`.

/** An HTTP answer that is not 2xx, or a request that never got one. */
export class ApiError extends Error {
  /**
   * @param {number} status HTTP status (0 when the request failed before an answer)
   * @param {string} code   the server's snake_case code (`network` for no answer)
   * @param {string} message
   * @param {number|null} [retryAfterSecs]
   */
  constructor(status, code, message, retryAfterSecs = null) {
    super(`${status} ${code}: ${message}`);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.retryAfterSecs = retryAfterSecs;
  }
}

/** Seconds-since-epoch expiry of a danmaku token, or null if unreadable. */
export function tokenExpiry(token) {
  try {
    const b64 = token.split(".")[0].replace(/-/g, "+").replace(/_/g, "/");
    const json = typeof atob === "function" ? atob(b64) : Buffer.from(b64, "base64").toString("binary");
    const exp = JSON.parse(json).exp;
    return typeof exp === "number" ? exp : null;
  } catch {
    return null;
  }
}

/**
 * Holds the current token and asks the app for a new one when it is missing,
 * about to expire, or was refused (`getToken(reason)`).
 */
export class TokenSource {
  /**
   * @param {{token?: string, getToken?: (reason: "initial"|"expiring"|"rejected") => string|Promise<string>, refreshBeforeSecs?: number}} o
   */
  constructor(o) {
    this.token = o.token ?? null;
    this.getToken = o.getToken ?? null;
    this.refreshBeforeSecs = o.refreshBeforeSecs ?? 60;
    if (!this.token && !this.getToken) throw new TypeError("a token or a getToken callback is needed");
  }

  /** The token to use now, refreshed first if it expires soon. */
  async get() {
    if (!this.token) return this.#fetch("initial");
    const exp = tokenExpiry(this.token);
    if (this.getToken && exp !== null && exp - Date.now() / 1000 < this.refreshBeforeSecs) {
      return this.#fetch("expiring");
    }
    return this.token;
  }

  /** The token expires soon: ask for a new one now (no-op without a callback). */
  async renew() {
    return this.#fetch("expiring");
  }

  /** The server refused the token: ask for a new one (no-op without a callback). */
  async refresh() {
    if (!this.getToken) return this.token;
    return this.#fetch("rejected");
  }

  async #fetch(reason) {
    if (!this.getToken) return this.token;
    this.token = await this.getToken(reason);
    return this.token;
  }
}

const RELIABLE_KINDS = new Set(["gift", "chat"]);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A random id for `client_msg_id` (idempotent retries of gifts and chat). */
export function newClientMsgId() {
  const c = globalThis.crypto;
  if (c?.randomUUID) return c.randomUUID();
  return `m-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 12)}`;
}

/** `text` as JSON, or null (empty, or not JSON). */
function parseJson(text) {
  try {
    return text ? JSON.parse(text) : null;
  } catch {
    return null;
  }
}

/** The ApiError of a non-2xx answer: the API's `{"error":{code,message}}`, else the text. */
function errorOf(res, json, text) {
  const err = json?.error ?? {};
  const ra = res.headers.get("retry-after");
  return new ApiError(res.status, err.code ?? "http_error", err.message ?? text.slice(0, 200), ra ? Number(ra) : null);
}

export class HttpApi {
  /**
   * @param {{baseUrl: string, tokens?: TokenSource, fetch?: typeof fetch}} o
   */
  constructor(o) {
    this.baseUrl = o.baseUrl.replace(/\/+$/, "");
    this.tokens = o.tokens ?? null;
    this.fetch = o.fetch ?? globalThis.fetch.bind(globalThis);
  }

  /**
   * One request; JSON in and out (or, with `contentType`, `body` sent as is:
   * a blob upload). A 401 refreshes the token once and retries.
   * @returns {Promise<any>}
   */
  async request(method, path, body, { auth = true, contentType } = {}) {
    for (let attempt = 0; ; attempt++) {
      const headers = {};
      if (body !== undefined) headers["content-type"] = contentType ?? "application/json";
      if (auth && this.tokens) headers.authorization = `Bearer ${await this.tokens.get()}`;
      const res = await this.#send(this.baseUrl + path, {
        method,
        headers,
        body: body === undefined || contentType ? body : JSON.stringify(body),
      });
      const text = await res.text();
      const json = parseJson(text);
      if (res.ok) return json;
      if (res.status === 401 && auth && this.tokens?.getToken && attempt === 0) {
        await this.tokens.refresh();
        continue;
      }
      throw errorOf(res, json, text);
    }
  }

  /** `fetch`, its failure (no answer) as ApiError `network`. */
  async #send(url, init) {
    try {
      return await this.fetch(url, init);
    } catch (e) {
      throw new ApiError(0, "network", String(e?.message ?? e));
    }
  }

  /** `POST /v1/dev/token` (standalone without --auth-secret only). */
  async devToken(user, role) {
    const body = role ? { user, role } : { user };
    return (await this.request("POST", "/v1/dev/token", body, { auth: false })).token;
  }

  /** `GET /v1/edges?k=N`: the best edges, best first. */
  async edges(k = 3) {
    return (await this.request("GET", `/v1/edges?k=${k}`, undefined, { auth: false })).edges ?? [];
  }

  /**
   * Sends a message. Gifts and chat get a `client_msg_id` (unless given) and are
   * retried with the same id on 503, network failures and 429 (after Retry-After), so a
   * retry never shows twice. Danmaku is sent once.
   * @param {string} channel
   * @param {{kind?: "danmaku"|"gift"|"chat", text: string, payload?: object, blob?: string, client_msg_id?: string}} msg
   * @param {{retries?: number}} [o]
   * @returns {Promise<{accepted?: boolean, seq?: number}>}
   */
  async send(channel, msg, o = {}) {
    const body = { kind: msg.kind ?? "danmaku", text: msg.text };
    if (msg.payload !== undefined) body.payload = msg.payload;
    if (msg.blob) body.blob = msg.blob;
    const reliable = RELIABLE_KINDS.has(body.kind);
    if (msg.client_msg_id) body.client_msg_id = msg.client_msg_id;
    else if (reliable) body.client_msg_id = newClientMsgId();
    const retries = reliable ? (o.retries ?? 5) : 0;
    const path = `/v1/channels/${encodeURIComponent(channel)}/messages`;
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.request("POST", path, body);
      } catch (e) {
        const retryable = e instanceof ApiError && (e.status === 0 || e.status === 503 || e.status === 429);
        if (!retryable || attempt >= retries) throw e;
        await sleep(e.retryAfterSecs != null ? e.retryAfterSecs * 1000 : Math.min(4000, 200 * 2 ** attempt));
      }
    }
  }

  /**
   * The absolute URL of the blob `id` (what an event's `blob` names): usable
   * as an <img src> as is, since blobs need no token and never change.
   * @param {string} id
   */
  blobUrl(id) {
    return `${this.baseUrl}/v1/blobs/${encodeURIComponent(id)}`;
  }

  /**
   * `GET /v1/blobs/{id}` on demand: `{contentType, body}` (body a Blob).
   * A missing blob throws ApiError `not_found`, a malformed id `bad_blob`.
   * @param {string} id
   * @returns {Promise<{contentType: string, body: Blob}>}
   */
  async fetchBlob(id) {
    const res = await this.#send(this.blobUrl(id));
    if (!res.ok) {
      const text = await res.text();
      throw errorOf(res, parseJson(text), text);
    }
    return { contentType: res.headers.get("content-type") ?? "application/octet-stream", body: await res.blob() };
  }

  /**
   * `POST /v1/blobs` (an `app` token): stores `body` and answers `{id, url}`;
   * a message then carries `blob: id`.
   * @param {Blob|ArrayBuffer|Uint8Array|string} body
   * @param {string} contentType
   * @returns {Promise<{id: string, url: string}>}
   */
  async uploadBlob(body, contentType) {
    return this.request("POST", "/v1/blobs", body, { contentType });
  }

  /** One page of reliable history: `{messages, next_after_seq}`. */
  async history(channel, { afterSeq = 0, limit = 50 } = {}) {
    return this.request("GET", `/v1/channels/${encodeURIComponent(channel)}/messages?after_seq=${afterSeq}&limit=${limit}`);
  }

  /** Every page of history after `afterSeq`, oldest first, until it runs out. */
  async *historyPages(channel, { afterSeq = 0, limit = 50 } = {}) {
    let after = afterSeq;
    for (;;) {
      const page = await this.history(channel, { afterSeq: after, limit });
      if (!page.messages?.length) return;
      yield page.messages;
      after = page.next_after_seq;
    }
  }

  /** `POST …/ack`: stores the caller's read offset (cumulative). */
  async ack(channel, seq) {
    return (await this.request("POST", `/v1/channels/${encodeURIComponent(channel)}/ack`, { seq })).acked;
  }

  /** `GET /v1/unread`: `{total, channels: {channel: n}}`. */
  async unread() {
    return this.request("GET", "/v1/unread");
  }

  /** `GET /v1/channels/{channel}/online`: viewers in the channel now. */
  async online(channel) {
    return (await this.request("GET", `/v1/channels/${encodeURIComponent(channel)}/online`)).online;
  }
}
