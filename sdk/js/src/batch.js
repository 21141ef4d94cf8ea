// Batch payloads: `count` Event messages, each length-delimited, concatenated, and
// zstd-compressed when `codec` is 1 (docs/PROTOCOL.md, "Batches"). Decoding is
// bounded like the server's `Limits`: event count, decompressed size.

import { decompress } from "fzstd";
import { BinaryReader } from "@bufbuild/protobuf/wire";
import { DecodeError, readEvent } from "./event.js";

export const CODEC_RAW = 0;
export const CODEC_ZSTD = 1;
/** `Batch.encoding`: events as they are. */
export const ENCODING_PLAIN = 0;
/** `Batch.encoding`: each `ts_ms` a zigzag delta from the previous event's, a
 * danmaku id without the 11 hex digits of its `ts_ms` (docs/PROTOCOL.md). */
export const ENCODING_COMPACT = 1;

// Zigzag back to signed; plain arithmetic, exact below 2^53 (a hostile value
// beyond reads as some other number, never as an exception).
const unzigzag = (v) => (v % 2 === 0 ? v / 2 : -(v + 1) / 2);

/** Undoes the compact layout in place. */
function expand(events) {
  let prev = 0;
  for (const ev of events) {
    ev.ts_ms = prev + unzigzag(ev.ts_ms);
    prev = ev.ts_ms;
    if (ev.kind === "danmaku" && typeof ev.id === "string" && ev.id.length === 16 && ev.ts_ms >= 0) {
      ev.id = ev.ts_ms.toString(16).padStart(11, "0") + ev.id;
    }
  }
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
  if (b.dictId !== 0) throw new DecodeError("bad_compression", `unknown zstd dictionary ${b.dictId}`);
  const encoding = b.encoding ?? ENCODING_PLAIN;
  if (encoding !== ENCODING_PLAIN && encoding !== ENCODING_COMPACT) {
    throw new DecodeError("bad_batch", `unknown batch encoding ${encoding}`);
  }
  let raw;
  if (b.codec === CODEC_RAW) raw = b.payload;
  else if (b.codec === CODEC_ZSTD) {
    try {
      raw = decompress(b.payload);
    } catch (e) {
      throw new DecodeError("bad_compression", `zstd: ${e.message}`);
    }
  } else throw new DecodeError("bad_compression", `unknown codec ${b.codec}`);
  if (raw.length > maxRaw) throw new DecodeError("bad_batch", `batch of ${raw.length} bytes`);
  const r = new BinaryReader(raw);
  const events = [];
  while (r.pos < r.len) {
    if (events.length >= b.count) throw new DecodeError("bad_batch", "more events than count");
    const len = r.uint32(); // read before r.pos: uint32() advances it
    const end = r.pos + len;
    if (end > r.len) throw new DecodeError("bad_batch", "event past the end of the batch");
    events.push(readEvent(r, end));
  }
  if (events.length !== b.count) {
    throw new DecodeError("bad_batch", `batch holds ${events.length} events, count says ${b.count}`);
  }
  if (encoding === ENCODING_COMPACT) expand(events);
  return events;
}
