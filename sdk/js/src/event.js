// One Event message (proto/danmaku.proto) and the error every decoder throws:
// the ground both the frame codec (pb.js) and the batch codec (batch.js) stand on.

/** Kind enum of proto/danmaku.proto, by number. */
export const KINDS = ["unspecified", "danmaku", "gift", "chat", "retract"];

/** A frame that could not be decoded (bad bytes, limits exceeded). */
export class DecodeError extends Error {
  /** @param {string} code @param {string} message */
  constructor(code, message) {
    super(message);
    this.name = "DecodeError";
    this.code = code;
  }
}

export const toNum = (v) => (typeof v === "number" ? v : Number(v));

/**
 * Decodes one Event message occupying `r` up to `end`.
 * @returns {import("../types/index.d.ts").DanmakuEvent}
 */
export function readEvent(r, end) {
  const ev = { kind: "unspecified", sender: "", text: "", ts_ms: 0, seq: 0 };
  let payloadJson = "";
  let cmid = "";
  let blob = "";
  while (r.pos < end) {
    const [no, wt] = r.tag();
    switch (no) {
      case 1: ev.kind = KINDS[r.int32()] ?? "unspecified"; break;
      case 2: ev.sender = r.string(); break;
      case 3: ev.text = r.string(); break;
      case 4: ev.ts_ms = toNum(r.int64()); break;
      case 5: ev.seq = toNum(r.uint64()); break;
      case 6: payloadJson = r.string(); break;
      case 7: cmid = r.string(); break;
      case 8: ev.id = r.string(); break;
      case 9: ev.priority = r.bool(); break;
      case 10: blob = r.string(); break;
      default: r.skip(wt, no);
    }
  }
  if (r.pos !== end) throw new DecodeError("malformed_frame", "event length mismatch");
  if (payloadJson) {
    try {
      ev.payload = JSON.parse(payloadJson);
    } catch {
      ev.payload_json = payloadJson;
    }
  }
  if (cmid) ev.client_msg_id = cmid;
  // Notify-pull: only the id rides the push; fetch the body with blobUrl(id).
  if (blob) ev.blob = blob;
  return ev;
}

