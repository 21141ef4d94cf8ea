// The JSON subprotocol (`danmaku.v1.json`): one frame per text message, the
// same shapes the protobuf decoder produces (docs/PROTOCOL.md, "JSON frames").

import { DecodeError } from "./pb.js";

/**
 * @param {string} text
 * @returns {import("../types/index.d.ts").ServerFrame}
 */
export function decodeJsonFrame(text) {
  let f;
  try {
    f = JSON.parse(text);
  } catch (e) {
    throw new DecodeError("malformed_json", `bad JSON frame: ${e.message}`);
  }
  if (!f || typeof f !== "object" || typeof f.type !== "string") {
    throw new DecodeError("malformed_json", "frame without a type");
  }
  if (f.type === "batch") {
    if (!Array.isArray(f.events)) throw new DecodeError("malformed_json", "batch without events");
    for (const ev of f.events) normalizeEvent(ev);
  } else if (f.type === "joined") {
    // Present only when the channel has a pace of its own (0: auth_ok's).
    f.ack_interval_ms = Number(f.ack_interval_ms ?? 0);
  } else if (f.type === "reliable") {
    f.event = normalizeEvent(f.event ?? {});
    f.seq = Number(f.seq ?? f.event.seq ?? 0);
  }
  return f;
}

function normalizeEvent(ev) {
  ev.kind ??= "unspecified";
  ev.sender ??= "";
  ev.text ??= "";
  ev.ts_ms ??= 0;
  ev.seq ??= 0;
  return ev;
}

/** Client frames are sent with exactly the documented fields (the edge refuses others). */
export function encodeJsonFrame(f) {
  switch (f.type) {
    case "join":
    case "leave":
      return JSON.stringify({ type: f.type, channel: f.channel });
    case "ack":
      return JSON.stringify({ type: "ack", channel: f.channel, seq: f.seq });
    case "resume":
      return JSON.stringify({ type: "resume", channel: f.channel, after_seq: f.after_seq });
    case "ping":
      return '{"type":"ping"}';
    case "auth":
      return JSON.stringify({ type: "auth", token: f.token });
    default:
      throw new TypeError(`unknown client frame type ${f.type}`);
  }
}
