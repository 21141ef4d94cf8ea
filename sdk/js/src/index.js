// @danmaku/sdk — the JavaScript client of danmaku. See README.md.
export { DanmakuClient, FINAL_CODES, SUBPROTOCOL_JSON, SUBPROTOCOL_PB, SUBPROTOCOL_PB_COMPACT, SUBPROTOCOL_PB_DENSE, TRANSPORTS } from "./client.js";
export { PollSocket, SseSocket } from "./fallback.js";
export { ApiError, HttpApi, TokenSource, newClientMsgId, tokenExpiry } from "./http.js";
export { ReliableTracker } from "./reliable.js";
export { Backoff } from "./backoff.js";
export { DecodeError, decodeServerFrame, encodeClientFrame, PROTOCOL_VERSION } from "./pb.js";
export { decodeBatchPayload, CODEC_RAW, CODEC_ZSTD } from "./batch.js";
export { decodeJsonFrame, encodeJsonFrame } from "./json.js";

import { HttpApi } from "./http.js";

/**
 * Mints a development token (`POST /v1/dev/token`, standalone without --auth-secret).
 * Real apps get tokens from their backend instead.
 */
export function devToken(baseUrl, user, role) {
  return new HttpApi({ baseUrl }).devToken(user, role);
}
