// Protobuf codec of the frames in proto/danmaku.proto (package danmaku.v1), written
// over @bufbuild/protobuf's wire reader and writer. Only the messages a client sees
// are here; the field numbers are checked against the .proto file by
// test/pb.test.js, so a schema change that is not mirrored here fails the tests.
//
// Decoded frames have the same shape as the JSON subprotocol's frames
// (`{type: "batch", channel, …}`), so the rest of the SDK handles one form.

import { BinaryReader, BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import { decodeBatchPayload } from "./batch.js";
import { DecodeError, readEvent, toNum } from "./event.js";

export { DecodeError, KINDS, readEvent } from "./event.js";

/** Protocol version written in every ClientFrame. */
export const PROTOCOL_VERSION = 1;

/** Field numbers (mirrors proto/danmaku.proto; checked by the tests). */
export const FIELDS = {
  Event: { kind: 1, sender: 2, text: 3, ts_ms: 4, seq: 5, payload_json: 6, client_msg_id: 7, id: 8, priority: 9, blob: 10 },
  Batch: { channel: 1, codec: 2, dict_id: 3, count: 4, payload: 5, first_seq: 6, last_seq: 7, online: 8, sampled_out: 9, encoding: 10 },
  ClientFrame: { version: 1, auth: 2, join: 3, leave: 4, ack: 5, resume: 6, ping: 7 },
  ServerFrame: {
    version: 1, joined: 2, left: 3, batch: 4, reliable: 5, pong: 6, redirect: 7, error: 8,
    auth_ok: 9, online: 10, notice: 11,
  },
  Joined: { channel: 1, last_seq: 2, ack_interval_ms: 3 },
  Reliable: { channel: 1, seq: 2, event: 3 },
  EdgeAddr: { id: 1, ws: 2, quic: 3, load: 4 },
  Online: { channel: 1, online: 2 },
  Error: { code: 1, message: 2 },
};

/**
 * Encodes a client frame (`{type:"join",channel}`, `ack`, `resume`, `leave`, `ping`)
 * as a protobuf ClientFrame.
 * @param {import("../types/index.d.ts").ClientFrame} f
 * @returns {Uint8Array}
 */
export function encodeClientFrame(f) {
  const w = new BinaryWriter();
  w.tag(FIELDS.ClientFrame.version, WireType.Varint).uint32(PROTOCOL_VERSION);
  const F = FIELDS.ClientFrame;
  switch (f.type) {
    case "join":
    case "leave":
      w.tag(F[f.type], WireType.LengthDelimited).fork();
      w.tag(1, WireType.LengthDelimited).string(f.channel);
      w.join();
      break;
    case "ack":
      w.tag(F.ack, WireType.LengthDelimited).fork();
      w.tag(1, WireType.LengthDelimited).string(f.channel);
      w.tag(2, WireType.Varint).uint64(f.seq);
      w.join();
      break;
    case "resume":
      w.tag(F.resume, WireType.LengthDelimited).fork();
      w.tag(1, WireType.LengthDelimited).string(f.channel);
      w.tag(2, WireType.Varint).uint64(f.after_seq);
      w.join();
      break;
    case "ping":
      w.tag(F.ping, WireType.LengthDelimited).fork();
      w.tag(1, WireType.Varint).int64(f.ts_ms ?? 0);
      w.join();
      break;
    case "auth":
      w.tag(F.auth, WireType.LengthDelimited).fork();
      w.tag(1, WireType.LengthDelimited).string(f.token);
      w.join();
      break;
    default:
      throw new TypeError(`unknown client frame type ${f.type}`);
  }
  return w.finish();
}

/** Reads a sub-message's fields with `onField(fieldNo, wireType)` until its end. */
function sub(r, onField) {
  const len = r.uint32(); // read before r.pos: uint32() advances it
  const end = r.pos + len;
  if (end > r.len) throw new DecodeError("malformed_frame", "sub-message past the end");
  while (r.pos < end) {
    const [no, wt] = r.tag();
    if (!onField(no, wt)) r.skip(wt, no);
  }
  if (r.pos !== end) throw new DecodeError("malformed_frame", "sub-message length mismatch");
}

function readEventMsg(r) {
  const len = r.uint32();
  const end = r.pos + len;
  if (end > r.len) throw new DecodeError("malformed_frame", "event past the end");
  return readEvent(r, end);
}

/**
 * Decodes a protobuf ServerFrame into the JSON frame shape. Batches are decoded
 * (zstd and all) into `events`; `stats` (if given) receives `rawBytes` and `decodeMs`.
 * @param {Uint8Array} bytes
 * @param {import("./batch.js").BatchLimits} [limits]
 * @returns {import("../types/index.d.ts").ServerFrame}
 */
export function decodeServerFrame(bytes, limits) {
  const r = new BinaryReader(bytes);
  let version = 0;
  /** @type {any} */
  let frame = null;
  try {
    while (r.pos < r.len) {
      const [no, wt] = r.tag();
      const F = FIELDS.ServerFrame;
      if (wt !== WireType.LengthDelimited && no !== F.version) {
        r.skip(wt, no);
        continue;
      }
      switch (no) {
        case F.version: version = r.uint32(); break;
        case F.joined: {
          const f = { type: "joined", channel: "", last_seq: 0, ack_interval_ms: 0 };
          sub(r, (n) => {
            if (n === 1) f.channel = r.string();
            else if (n === 2) f.last_seq = toNum(r.uint64());
            else if (n === 3) f.ack_interval_ms = r.uint32();
            else return false;
            return true;
          });
          frame = f;
          break;
        }
        case F.left: {
          const f = { type: "left", channel: "" };
          sub(r, (n) => (n === 1 ? ((f.channel = r.string()), true) : n === 2 ? ((f.reason = r.string()), true) : false));
          if (!f.reason) delete f.reason;
          frame = f;
          break;
        }
        case F.batch: {
          let channel = "", codec = 0, dictId = 0, count = 0, payload = new Uint8Array(0);
          let firstSeq = 0, lastSeq = 0, online = 0, sampledOut = 0, encoding = 0;
          sub(r, (n) => {
            switch (n) {
              case 1: channel = r.string(); return true;
              case 2: codec = r.int32(); return true;
              case 3: dictId = r.uint32(); return true;
              case 4: count = r.uint32(); return true;
              case 5: payload = r.bytes(); return true;
              case 6: firstSeq = toNum(r.uint64()); return true;
              case 7: lastSeq = toNum(r.uint64()); return true;
              case 8: online = toNum(r.uint64()); return true;
              case 9: sampledOut = toNum(r.uint64()); return true;
              case 10: encoding = r.uint32(); return true;
              default: return false;
            }
          });
          const events = decodeBatchPayload({ codec, dictId, count, payload, encoding }, limits);
          frame = { type: "batch", channel, events, codec, dict_id: dictId, encoding, first_seq: firstSeq, last_seq: lastSeq };
          if (online > 0) frame.online = online;
          if (sampledOut > 0) frame.sampled_out = sampledOut;
          break;
        }
        case F.reliable: {
          const f = { type: "reliable", channel: "", seq: 0, event: null };
          sub(r, (n) => {
            if (n === 1) f.channel = r.string();
            else if (n === 2) f.seq = toNum(r.uint64());
            else if (n === 3) f.event = readEventMsg(r);
            else return false;
            return true;
          });
          frame = f;
          break;
        }
        case F.pong: {
          const f = { type: "pong", ts_ms: 0 };
          sub(r, (n) => (n === 1 ? ((f.ts_ms = toNum(r.int64())), true) : false));
          frame = f;
          break;
        }
        case F.redirect: {
          const f = { type: "redirect", edges: [] };
          sub(r, (n) => {
            if (n !== 1) return false;
            const e = { id: "", ws: "", quic: "", load: 0 };
            sub(r, (m) => {
              if (m === 1) e.id = r.string();
              else if (m === 2) e.ws = r.string();
              else if (m === 3) e.quic = r.string();
              else if (m === 4) e.load = r.double();
              else return false;
              return true;
            });
            f.edges.push(e);
            return true;
          });
          frame = f;
          break;
        }
        case F.error: {
          const f = { type: "error", code: "", message: "" };
          sub(r, (n) => (n === 1 ? ((f.code = r.string()), true) : n === 2 ? ((f.message = r.string()), true) : false));
          frame = f;
          break;
        }
        case F.auth_ok: {
          const f = { type: "auth_ok", user: "", ack_interval_ms: 0 };
          sub(r, (n) => (n === 1 ? ((f.user = r.string()), true) : n === 2 ? ((f.ack_interval_ms = r.uint32()), true) : false));
          frame = f;
          break;
        }
        case F.online: {
          const f = { type: "online", channel: "", online: 0 };
          sub(r, (n) => (n === 1 ? ((f.channel = r.string()), true) : n === 2 ? ((f.online = toNum(r.uint64())), true) : false));
          frame = f;
          break;
        }
        case F.notice: {
          const f = { type: "notice", channel: "", code: "", until_ms: 0 };
          sub(r, (n) => {
            if (n === 1) f.channel = r.string();
            else if (n === 2) f.code = r.string();
            else if (n === 3) f.until_ms = toNum(r.int64());
            else return false;
            return true;
          });
          frame = f;
          break;
        }
        default:
          r.skip(wt, no);
      }
    }
  } catch (e) {
    if (e instanceof DecodeError) throw e;
    throw new DecodeError("malformed_frame", `bad protobuf frame: ${e.message}`);
  }
  if (version > PROTOCOL_VERSION) {
    throw new DecodeError("unsupported_version", `server frame version ${version}`);
  }
  // A frame whose body this SDK does not know (a newer server): ignored by the caller.
  return frame ?? { type: "unknown" };
}
