// Batch payloads: `count` Event messages, each length-delimited, concatenated, and
// zstd-compressed when `codec` is 1, with dictionary `dict_id` when not 0
// (docs/PROTOCOL.md, "Batches"). Decoding is bounded like the server's `Limits`:
// event count, decompressed size.

import { BinaryReader } from "@bufbuild/protobuf/wire";
import { dictionaryBytes } from "./dictionary.js";
import { DecodeError, readEvent } from "./event.js";
import { decompress, readDictionary, TOO_LARGE } from "./zstd.js";

export const CODEC_RAW = 0;
export const CODEC_ZSTD = 1;
/** `Batch.encoding`: events as they are. */
export const ENCODING_PLAIN = 0;
/** `Batch.encoding`: each `ts_ms` a zigzag delta from the previous event's, a
 * danmaku id without the 11 hex digits of its `ts_ms` (docs/PROTOCOL.md). */
export const ENCODING_COMPACT = 1;
/** `Batch.encoding`: the compact layout, and a danmaku id that continues the
 * previous one's node counter sent as "" (counter + 1) or "+<step>"
 * (`danmaku.v3.pb`). */
export const ENCODING_DENSE = 2;

// Zigzag back to signed; plain arithmetic, exact below 2^53 (a hostile value
// beyond reads as some other number, never as an exception).
const unzigzag = (v) => (v % 2 === 0 ? v / 2 : -(v + 1) / 2);
const hex = (v, digits) => v.toString(16).padStart(digits, "0");
const U32_MAX = 0xffffffff;

/**
 * Undoes the compact or dense layout in place, as the server's `expand`
 * (proto/src/batch.rs): an id of another shape, or a counter step with no
 * counter before it or past 2^32 - 1, is left as it is.
 */
function expand(events, dense) {
  let prevTs = 0;
  // The node tag (as its 8 hex digits) and counter of the last danmaku id read
  // whole or stepped to.
  let prevId = null;
  for (const ev of events) {
    ev.ts_ms = prevTs + unzigzag(ev.ts_ms);
    prevTs = ev.ts_ms;
    if (ev.kind !== "danmaku" || ev.ts_ms < 0) continue;
    const id = ev.id ?? ""; // an empty id is no field on the wire
    if (dense && (id === "" || id[0] === "+")) {
      const step = id === "" ? 1 : /^\+\d{1,10}$/.test(id) ? Number(id.slice(1)) : -1;
      if (prevId === null || step < 0 || prevId.counter + step > U32_MAX) continue;
      prevId = { tag: prevId.tag, counter: prevId.counter + step };
      ev.id = hex(ev.ts_ms, 11) + prevId.tag + hex(prevId.counter, 8);
    } else if (id.length === 16) {
      if (dense && /^[0-9a-f]{16}$/.test(id)) {
        prevId = { tag: id.slice(0, 8), counter: parseInt(id.slice(8), 16) };
      }
      ev.id = hex(ev.ts_ms, 11) + id;
    }
  }
}

const dictionaries = new Map();

/** Dictionary `id` read for the zstd decoder, once; null when this SDK does not know it. */
function dictionary(id) {
  let d = dictionaries.get(id);
  if (!d) {
    const bytes = dictionaryBytes(id);
    if (!bytes) return null;
    dictionaries.set(id, (d = readDictionary(bytes)));
  }
  return d;
}

/**
 * @typedef {object} BatchLimits
 * @property {number} [maxBatchEvents]   default 10,000
 * @property {number} [maxBatchRawBytes] default 8 MiB
 */
export const DEFAULT_LIMITS = Object.freeze({ maxBatchEvents: 10_000, maxBatchRawBytes: 8 << 20 });

/**
 * Decodes a batch payload into events.
 * @param {{codec:number, dictId:number, count:number, payload:Uint8Array, encoding?:number}} b
 * @param {BatchLimits} [limits]
 */
export function decodeBatchPayload(b, limits = DEFAULT_LIMITS) {
  const maxEvents = limits.maxBatchEvents ?? DEFAULT_LIMITS.maxBatchEvents;
  const maxRaw = limits.maxBatchRawBytes ?? DEFAULT_LIMITS.maxBatchRawBytes;
  if (b.count > maxEvents) throw new DecodeError("bad_batch", `batch claims ${b.count} events`);
  const dict = b.dictId === 0 ? null : dictionary(b.dictId);
  if (b.dictId !== 0 && !dict) throw new DecodeError("bad_compression", `unknown zstd dictionary ${b.dictId}`);
  const encoding = b.encoding ?? ENCODING_PLAIN;
  if (encoding !== ENCODING_PLAIN && encoding !== ENCODING_COMPACT && encoding !== ENCODING_DENSE) {
    throw new DecodeError("bad_batch", `unknown batch encoding ${encoding}`);
  }
  let raw;
  if (b.codec === CODEC_RAW) raw = b.payload;
  else if (b.codec === CODEC_ZSTD) {
    try {
      raw = decompress(b.payload, maxRaw, dict);
    } catch (e) {
      if (e.code === TOO_LARGE) throw new DecodeError("bad_batch", e.message);
      throw new DecodeError("bad_compression", `zstd: ${e.message}`);
    }
  } else throw new DecodeError("bad_compression", `unknown codec ${b.codec}`);
  if (raw.length > maxRaw) throw new DecodeError("bad_batch", `batch of ${raw.length} bytes`);
  const r = new BinaryReader(raw);
  const events = [];
  try {
    while (r.pos < r.len) {
      if (events.length >= b.count) throw new DecodeError("bad_batch", "more events than count");
      const len = r.uint32(); // read before r.pos: uint32() advances it
      const end = r.pos + len;
      if (end > r.len) throw new DecodeError("bad_batch", "event past the end of the batch");
      events.push(readEvent(r, end));
    }
  } catch (e) {
    // The wire reader's own errors (a bad tag or varint): zstd frames carry no
    // checksum here, so a corrupted one often decompresses into such bytes.
    if (e instanceof DecodeError) throw e;
    throw new DecodeError("malformed_frame", `bad event in batch: ${e.message}`);
  }
  if (events.length !== b.count) {
    throw new DecodeError("bad_batch", `batch holds ${events.length} events, count says ${b.count}`);
  }
  if (encoding !== ENCODING_PLAIN) expand(events, encoding === ENCODING_DENSE);
  return events;
}
