// Types of @danmaku/sdk. Frames follow docs/PROTOCOL.md of the danmaku repository.

export type Kind = "danmaku" | "gift" | "chat" | "retract" | "unspecified";

/** One thing that happened in a channel. */
export interface DanmakuEvent {
  kind: Kind;
  sender: string;
  text: string;
  /** ingest accept time, ms since the Unix epoch */
  ts_ms: number;
  /** per-channel seq of reliable events (gift, chat); 0 for danmaku */
  seq: number;
  /** the sender's JSON object (gift id, colour…) when given */
  payload?: Record<string, unknown>;
  /** a payload that was not valid JSON, as sent */
  payload_json?: string;
  client_msg_id?: string;
  /** a danmaku's id (what a moderator's retraction names); on a `retract`
   * event, the id of the event taken back */
  id?: string;
  /** sent by an app token or a room moderator: never thinned */
  priority?: boolean;
  /** notify-pull: the id of a blob the message carries (an image for a gift
   * banner…); fetch it on demand with `blobUrl(id)` / `fetchBlob(id)` */
  blob?: string;
}

export interface EdgeAddr { id: string; ws: string; quic: string; load: number }

export type ServerFrame =
  | { type: "auth_ok"; user: string; ack_interval_ms?: number }
  /** `ack_interval_ms`: how often to ack this channel at most when slower than
   * `auth_ok`'s (0 or absent: that pace); rooms get a slower one than groups */
  | { type: "joined"; channel: string; last_seq: number; ack_interval_ms?: number }
  /** `reason`: absent for the client's own leave, `removed` (from the group),
   * `banned` (by a moderator; a new join is refused with `banned`) */
  | { type: "left"; channel: string; reason?: string }
  /** A tick: its danmaku, and its reliable events (seq > 0), which the client
   * hands out as `reliable` (deduplicated, in order); `first_seq`/`last_seq`
   * are their range, `codec`, `dict_id` and `encoding` how it came (protobuf
   * only); `online`, when present, is the channel's member count riding the
   * tick (the client emits it as `online`). */
  | { type: "batch"; channel: string; events: DanmakuEvent[]; codec?: number; dict_id?: number; encoding?: number; first_seq?: number; last_seq?: number; online?: number; sampled_out?: number }
  | { type: "reliable"; channel: string; seq: number; event: DanmakuEvent }
  | { type: "pong"; ts_ms?: number }
  | { type: "redirect"; edges: EdgeAddr[] }
  | { type: "error"; code: string; message: string }
  | { type: "online"; channel: string; online: number }
  /** to the user concerned only: muted in `channel` until `until_ms` */
  | { type: "notice"; channel: string; code: string; until_ms: number }
  | { type: "unknown" };

export type ClientFrame =
  | { type: "join" | "leave"; channel: string }
  | { type: "ack"; channel: string; seq: number }
  | { type: "resume"; channel: string; after_seq: number }
  | { type: "ping"; ts_ms?: number }
  | { type: "auth"; token: string };

export type TokenReason = "initial" | "expiring" | "rejected";

export interface BackoffOptions { initialMs?: number; maxMs?: number; factor?: number; jitter?: number }

export interface BatchLimits { maxBatchEvents?: number; maxBatchRawBytes?: number }

export interface ClientOptions {
  /** HTTP base of ingest + scheduler; default: the page's origin, else http://127.0.0.1:7070 */
  baseUrl?: string;
  /** a token to start with */
  token?: string;
  /** called for a first token, before one expires (also on an open connection, whose
   * new token is sent in an `auth` frame), and after one was refused */
  getToken?: (reason: TokenReason) => string | Promise<string>;
  /** refresh this many seconds before `exp` (default 60) */
  refreshBeforeSecs?: number;
  /** "auto" (default: protobuf; JSON after repeated protobuf failures; then
   * server-sent events, then long-poll, when WebSocket keeps failing while HTTP
   * answers), or one of "pb", "json", "sse", "poll" */
  protocol?: "auto" | Protocol;
  /** long-poll: how long the edge may hold each poll, seconds (default 25, max 30) */
  pollWaitSecs?: number;
  /** fixed WebSocket URLs instead of asking the scheduler */
  edges?: string[];
  /** how many edges to race (default 3) */
  raceCount?: number;
  /** ping interval, default 30,000 ms; a connection silent 2.5× this long is dropped */
  heartbeatMs?: number;
  idleMs?: number;
  connectTimeoutMs?: number;
  backoff?: BackoffOptions;
  limits?: BatchLimits;
  WebSocket?: typeof WebSocket;
  fetch?: typeof fetch;
}

export type Protocol = "pb" | "json" | "sse" | "poll";
export type TransportName = "ws-pb" | "ws-json" | "sse" | "long-poll";
export const TRANSPORTS: Record<Protocol, TransportName>;

export type ConnectionState = "idle" | "connecting" | "connected" | "reconnecting" | "closed";

export interface StateChange {
  state: ConnectionState;
  /** on "connected": true when this is a reconnection (channels re-joined and resumed) */
  resumed?: boolean;
  protocol: Protocol;
  user?: string;
  /** on "closed" by the server for good: `token_revoked` or `user_blocked` (no reconnect) */
  reason?: "token_revoked" | "user_blocked";
}

export interface SendMessage {
  kind?: "danmaku" | "gift" | "chat";
  text: string;
  payload?: Record<string, unknown>;
  /** the id of an uploaded blob (`uploadBlob`, app tokens) to carry: `400
   * bad_blob` if not 64 lowercase hex digits, `400 unknown_blob` if never uploaded */
  blob?: string;
  /** idempotency key; generated for gifts and chat when absent */
  client_msg_id?: string;
}

export interface HistoryMessage {
  seq: number;
  kind: Kind;
  sender: string;
  text: string;
  ts_ms: number;
  payload?: Record<string, unknown>;
  blob?: string;
}

export interface FetchedBlob { contentType: string; body: Blob }

export interface HistoryPage { messages: HistoryMessage[]; next_after_seq: number }
export interface Unread { total: number; channels: Record<string, number> }

export interface ClientStats {
  frames: number;
  batches: number;
  events: number;
  reliable: number;
  duplicates: number;
  reconnects: number;
  /** total ms spent decoding protobuf batches (zstd + events) */
  decodeMs: number;
  rttMs: number | null;
}

export interface EventMap {
  danmaku: (ev: DanmakuEvent, channel: string) => void;
  gift: (ev: DanmakuEvent, channel: string) => void;
  chat: (ev: DanmakuEvent, channel: string) => void;
  event: (ev: DanmakuEvent, channel: string) => void;
  batch: (b: { channel: string; events: DanmakuEvent[]; codec?: number; dict_id?: number; encoding?: number }) => void;
  reliable: (r: { channel: string; seq: number; event: DanmakuEvent }) => void;
  online: (o: { channel: string; online: number }) => void;
  joined: (j: { channel: string; last_seq: number; ack_interval_ms?: number }) => void;
  left: (l: { channel: string; reason?: string }) => void;
  /** a moderator took back a comment: remove it from screen */
  retract: (r: { channel: string; id: string }) => void;
  /** hot-room thinning left `count` danmaku of a tick out */
  sampled_out: (s: { channel: string; count: number }) => void;
  /** to this user only: `code` "muted" until `until_ms` */
  notice: (n: { channel: string; code: string; until_ms: number }) => void;
  state: (s: StateChange) => void;
  redirect: (r: { edges: EdgeAddr[] }) => void;
  error: (e: Error | ApiError) => void;
}

export class ApiError extends Error {
  status: number;
  code: string;
  retryAfterSecs: number | null;
}

export class DecodeError extends Error {
  code: string;
}

export class DanmakuClient {
  constructor(options?: ClientOptions);
  readonly state: ConnectionState;
  readonly protocol: Protocol;
  /** the transport in use (or being tried): "ws-pb" → "ws-json" → "sse" → "long-poll" */
  readonly transport: TransportName;
  readonly user: string | null;
  /** How often the edge asked for acks at most (from `auth_ok`; 0: once per frame). */
  readonly ackIntervalMs: number;
  /** How often `channel` is acked at most: the slower of `ackIntervalMs` and the
   * pace its `joined` asked for (rooms get a slower one than groups). */
  ackIntervalFor(channel: string): number;
  readonly stats: ClientStats;
  readonly http: HttpApi;
  on<K extends keyof EventMap>(kind: K, fn: EventMap[K]): () => void;
  connect(): Promise<void>;
  close(): void;
  join(channel: string, options?: { afterSeq?: number }): Promise<{ channel: string; last_seq: number; ack_interval_ms?: number }>;
  leave(channel: string): void;
  send(channel: string, msg: string | SendMessage, options?: { retries?: number }): Promise<{ accepted?: boolean; seq?: number }>;
  history(channel: string, options?: { afterSeq?: number; limit?: number }): Promise<HistoryPage>;
  historyPages(channel: string, options?: { afterSeq?: number; limit?: number }): AsyncGenerator<HistoryMessage[]>;
  unread(): Promise<Unread>;
  online(channel: string): Promise<number>;
  blobUrl(id: string): string;
  fetchBlob(id: string): Promise<FetchedBlob>;
  ackHttp(channel: string, seq: number): Promise<number>;
  deliveredUpto(channel: string): number | null;
}

export class HttpApi {
  constructor(options: { baseUrl: string; tokens?: TokenSource; fetch?: typeof fetch });
  request(method: string, path: string, body?: unknown, options?: { auth?: boolean; contentType?: string }): Promise<any>;
  devToken(user: string, role?: "user" | "app"): Promise<string>;
  edges(k?: number): Promise<EdgeAddr[]>;
  send(channel: string, msg: SendMessage, options?: { retries?: number }): Promise<{ accepted?: boolean; seq?: number }>;
  history(channel: string, options?: { afterSeq?: number; limit?: number }): Promise<HistoryPage>;
  historyPages(channel: string, options?: { afterSeq?: number; limit?: number }): AsyncGenerator<HistoryMessage[]>;
  ack(channel: string, seq: number): Promise<number>;
  unread(): Promise<Unread>;
  online(channel: string): Promise<number>;
  blobUrl(id: string): string;
  fetchBlob(id: string): Promise<FetchedBlob>;
  uploadBlob(body: Blob | ArrayBuffer | Uint8Array | string, contentType: string): Promise<{ id: string; url: string }>;
}

export class TokenSource {
  constructor(options: { token?: string; getToken?: (reason: TokenReason) => string | Promise<string>; refreshBeforeSecs?: number });
  get(): Promise<string>;
  /** asks getToken("expiring") now (the client does, refreshBeforeSecs ahead of exp) */
  renew(): Promise<string | null>;
  refresh(): Promise<string | null>;
}

export interface ReliableDecision { deliver: DanmakuEvent[]; ack: number | null; resume: number | null; duplicate: boolean }

export class ReliableTracker {
  deliveredUpto(channel: string): number | null;
  anchor(channel: string, seq: number): void;
  anchored(channel: string): boolean;
  forget(channel: string): void;
  onReconnect(): void;
  onReliable(channel: string, seq: number, event: DanmakuEvent): ReliableDecision;
}

export class Backoff {
  constructor(options?: BackoffOptions, random?: () => number);
  attempt: number;
  next(): number;
  reset(): void;
}

export const SUBPROTOCOL_PB: "danmaku.v1.pb";
export const SUBPROTOCOL_PB_COMPACT: "danmaku.v2.pb";
export const SUBPROTOCOL_PB_DENSE: "danmaku.v3.pb";
export const SUBPROTOCOL_JSON: "danmaku.v1.json";
/** Error codes after which the client stops for good instead of reconnecting. */
export const FINAL_CODES: ReadonlySet<string>;
export const PROTOCOL_VERSION: 1;
export const CODEC_RAW: 0;
export const CODEC_ZSTD: 1;
export function devToken(baseUrl: string, user: string, role?: "user" | "app"): Promise<string>;
export function newClientMsgId(): string;
export function tokenExpiry(token: string): number | null;
export function decodeServerFrame(bytes: Uint8Array, limits?: BatchLimits): ServerFrame;
export function encodeClientFrame(frame: ClientFrame): Uint8Array;
export function decodeBatchPayload(batch: { codec: number; dictId: number; count: number; payload: Uint8Array; encoding?: number }, limits?: BatchLimits): DanmakuEvent[];
export function decodeJsonFrame(text: string): ServerFrame;
export function encodeJsonFrame(frame: ClientFrame): string;
