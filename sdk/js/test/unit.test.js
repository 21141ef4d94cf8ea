// Pure parts: the protobuf field table against proto/danmaku.proto, client frame
// encoding, batches (bounds, layouts, zstd with and without the dictionary,
// against batches the server's encoder made: test/fixtures/batches.json), the
// reliable tracker, backoff; and the client's ack pacing against a fake edge
// socket on mocked timers (no server).

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { BinaryReader, BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import { Backoff, DanmakuClient, DecodeError, decodeBatchPayload, decodeJsonFrame, decodeServerFrame, encodeClientFrame, ReliableTracker, tokenExpiry } from "../src/index.js";
import { dictionaryBytes } from "../src/dictionary.js";
import { FIELDS } from "../src/pb.js";

const PROTO = readFileSync(new URL("../../../proto/danmaku.proto", import.meta.url), "utf8");

/** message name → {field: number} parsed from the .proto text. */
function protoFields() {
  const out = {};
  for (const m of PROTO.matchAll(/message\s+(\w+)\s*\{/g)) {
    let depth = 1;
    let i = m.index + m[0].length;
    const start = i;
    while (depth > 0 && i < PROTO.length) {
      if (PROTO[i] === "{") depth++;
      else if (PROTO[i] === "}") depth--;
      i++;
    }
    const body = PROTO.slice(start, i - 1).replace(/\/\/.*$/gm, "");
    out[m[1]] = {};
    for (const f of body.matchAll(/(?:repeated\s+)?[\w.]+\s+(\w+)\s*=\s*(\d+)\s*;/g)) out[m[1]][f[1]] = Number(f[2]);
  }
  return out;
}

test("field numbers match proto/danmaku.proto", () => {
  const proto = protoFields();
  for (const [msg, fields] of Object.entries(FIELDS)) {
    // `Online` is the edge's new presence frame; an older .proto may not have it yet.
    if (msg === "Online" && !proto.Online) continue;
    assert.ok(proto[msg], `message ${msg} in the .proto`);
    for (const [name, no] of Object.entries(fields)) {
      if (msg === "ServerFrame" && name === "online" && !proto.Online) continue;
      assert.equal(proto[msg][name], no, `${msg}.${name}`);
    }
  }
});

test("client frames encode as protobuf ClientFrame with version 1", () => {
  const bytes = encodeClientFrame({ type: "resume", channel: "group:7", after_seq: 12 });
  const r = new BinaryReader(bytes);
  assert.deepEqual(r.tag(), [1, WireType.Varint]);
  assert.equal(r.uint32(), 1);
  assert.deepEqual(r.tag(), [6, WireType.LengthDelimited]);
  const inner = new BinaryReader(r.bytes());
  assert.deepEqual(inner.tag(), [1, WireType.LengthDelimited]);
  assert.equal(inner.string(), "group:7");
  assert.deepEqual(inner.tag(), [2, WireType.Varint]);
  assert.equal(Number(inner.uint64()), 12);
  assert.throws(() => encodeClientFrame({ type: "nope" }), TypeError);
});

function eventBytes(ev) {
  const w = new BinaryWriter();
  w.tag(1, WireType.Varint).int32(ev.kind);
  w.tag(2, WireType.LengthDelimited).string(ev.sender);
  w.tag(3, WireType.LengthDelimited).string(ev.text);
  w.tag(4, WireType.Varint).int64(ev.ts_ms);
  if (ev.seq) w.tag(5, WireType.Varint).uint64(ev.seq);
  if (ev.payload_json) w.tag(6, WireType.LengthDelimited).string(ev.payload_json);
  if (ev.id) w.tag(8, WireType.LengthDelimited).string(ev.id);
  if (ev.priority) w.tag(9, WireType.Varint).bool(true);
  if (ev.blob) w.tag(10, WireType.LengthDelimited).string(ev.blob);
  return w.finish();
}

function rawPayload(events) {
  const w = new BinaryWriter();
  for (const e of events) w.bytes(eventBytes(e));
  return w.finish();
}

test("raw batches decode; counts and codecs are checked", () => {
  const evs = [
    { kind: 1, sender: "alice", text: "666", ts_ms: 1732350000000 },
    { kind: 1, sender: "鲍勃", text: "前方高能", ts_ms: 1732350000001, payload_json: '{"c":"#fff"}' },
    { kind: 2, sender: "carol", text: "rocket", ts_ms: 1732350000002, seq: 4, blob: "ab".repeat(32) },
  ];
  const payload = rawPayload(evs);
  const out = decodeBatchPayload({ codec: 0, dictId: 0, count: 3, payload });
  assert.equal(out.length, 3);
  assert.deepEqual(out[1], { kind: "danmaku", sender: "鲍勃", text: "前方高能", ts_ms: 1732350000001, seq: 0, payload: { c: "#fff" } });
  assert.equal(out[0].blob, undefined, "no blob: no field");
  assert.deepEqual(out[2], { kind: "gift", sender: "carol", text: "rocket", ts_ms: 1732350000002, seq: 4, blob: "ab".repeat(32) });
  assert.throws(() => decodeBatchPayload({ codec: 0, dictId: 0, count: 4, payload }), { code: "bad_batch" });
  assert.throws(() => decodeBatchPayload({ codec: 0, dictId: 0, count: 20_000, payload }), { code: "bad_batch" });
  assert.throws(() => decodeBatchPayload({ codec: 1, dictId: 0, count: 3, payload }), { code: "bad_compression" });
  assert.throws(() => decodeBatchPayload({ codec: 7, dictId: 0, count: 3, payload }), { code: "bad_compression" });
});

test("compact batches rebuild timestamps and danmaku ids; unknown layouts are refused", () => {
  const zz = (d) => (d >= 0 ? 2 * d : -2 * d - 1);
  const ts = [1732350000000, 1732350000007, 1732350000003];
  const hex = (t) => t.toString(16).padStart(11, "0");
  const tails = ["3f2a91c400000001", "3f2a91c400000002", "3f2a91c400000003"];
  const evs = [
    { kind: 1, sender: "a", text: "666", ts_ms: zz(ts[0]), id: tails[0] },
    // Out of order by 4 ms: a negative delta.
    { kind: 1, sender: "b", text: "233", ts_ms: zz(ts[1] - ts[0]), id: tails[1] },
    { kind: 1, sender: "c", text: "gg", ts_ms: zz(ts[2] - ts[1]), id: tails[2] },
    // A gift: its time is a delta too, it has no id to rebuild.
    { kind: 2, sender: "d", text: "rocket", ts_ms: zz(0), seq: 9 },
  ];
  const payload = rawPayload(evs);
  const out = decodeBatchPayload({ codec: 0, dictId: 0, count: 4, payload, encoding: 1 });
  assert.deepEqual(out.map((e) => e.ts_ms), [...ts, ts[2]]);
  assert.deepEqual(out.slice(0, 3).map((e) => e.id), ts.map((t, i) => hex(t) + tails[i]));
  assert.equal(out[3].id, undefined);
  // The same bytes read plainly keep their deltas: the flag matters.
  assert.equal(decodeBatchPayload({ codec: 0, dictId: 0, count: 4, payload }).at(1).ts_ms, zz(7));
  assert.throws(() => decodeBatchPayload({ codec: 0, dictId: 0, count: 4, payload, encoding: 3 }), { code: "bad_batch" });
});

// Made by `cargo run --release -p danmaku-proto --example batch_vectors` (proto/examples/batch_vectors.rs):
// event sets, each encoded by the server's BatchEncoder for every layout, and the events
// the server's `decode_batch` reads back from them.
const FIXTURES = JSON.parse(readFileSync(new URL("./fixtures/batches.json", import.meta.url), "utf8"));
const fixtureBatch = (b, o = {}) => ({
  codec: b.codec, dictId: b.dict_id, count: b.count, encoding: b.encoding, payload: Buffer.from(b.payload, "base64"), ...o,
});
const dense = (name) => fixtureBatch(FIXTURES.sets.find((s) => s.name === name).batches.find((b) => b.layout === "dense"));

test("batches the server encoded decode to the events the server decodes them to", () => {
  let n = 0;
  for (const set of FIXTURES.sets) {
    for (const b of set.batches) {
      assert.deepEqual(decodeBatchPayload(fixtureBatch(b)), set.events, `${set.name}, ${b.layout}`);
      n++;
    }
  }
  assert.ok(n >= 28, `${n} batches`);
  // Every dense tick went with dictionary 1, however small, and most in the dense layout.
  const denseBatches = FIXTURES.sets.flatMap((s) => s.batches.filter((b) => b.layout === "dense"));
  assert.ok(denseBatches.every((b) => b.codec === 1 && b.dict_id === 1), JSON.stringify(denseBatches));
  assert.ok(denseBatches.filter((b) => b.encoding === 2).length >= 6);
  // In a server frame, as a `danmaku.v3.pb` edge sends it.
  const b = dense("40 danmaku, two nodes interleaved");
  const w = new BinaryWriter();
  w.tag(1, WireType.Varint).uint32(1);
  w.tag(4, WireType.LengthDelimited).fork();
  w.tag(1, WireType.LengthDelimited).string("room:1");
  w.tag(2, WireType.Varint).int32(b.codec);
  w.tag(3, WireType.Varint).uint32(b.dictId);
  w.tag(4, WireType.Varint).uint32(b.count);
  w.tag(5, WireType.LengthDelimited).bytes(b.payload);
  w.tag(10, WireType.Varint).uint32(b.encoding);
  w.join();
  const f = decodeServerFrame(w.finish());
  assert.deepEqual([f.type, f.codec, f.dict_id, f.encoding], ["batch", 1, 1, 2]);
  assert.deepEqual(f.events, FIXTURES.sets[3].events);
});

test("dictionary 1 is proto/dict/danmaku-1.zdict, and dictionary frames need it", () => {
  const file = readFileSync(new URL("../../../proto/dict/danmaku-1.zdict", import.meta.url));
  assert.deepEqual(dictionaryBytes(1), new Uint8Array(file), "src/dictionary.js is stale: npm run dictionary");
  assert.equal(dictionaryBytes(0), null);
  assert.equal(dictionaryBytes(2), null);
  const b = dense("3 danmaku, one node");
  const compact = FIXTURES.sets[0].batches.find((x) => x.layout === "compact");
  assert.equal(compact.codec, 0, "3 events are too few for zstd alone");
  assert.ok(b.payload.length * 10 < fixtureBatch(compact).payload.length * 8, "the dictionary does its work");
  // Without the dictionary, or with one this SDK does not know, the payload is
  // refused, never misread; so is a frame whose header names another one.
  for (const dictId of [0, 2, 0xffffffff]) {
    assert.throws(() => decodeBatchPayload({ ...b, dictId }), { code: "bad_compression" }, `dict ${dictId}`);
  }
  const named = (id) => {
    const p = b.payload;
    assert.equal(p[4], 0x20, "single segment, 1-byte content size, no dictionary id");
    return { ...b, payload: Uint8Array.from([...p.subarray(0, 4), 0x21, id, ...p.subarray(5)]) };
  };
  assert.deepEqual(decodeBatchPayload(named(1)), decodeBatchPayload(b));
  assert.throws(() => decodeBatchPayload(named(9)), { code: "bad_compression" });
  // The server never sends dictionary 1 on a raw payload; read as raw, it is.
  assert.deepEqual(decodeBatchPayload(fixtureBatch(compact, { dictId: 1 })), FIXTURES.sets[0].events);
});

test("a corrupted dictionary frame is refused or misread, never a crash", () => {
  const b = dense("20 danmaku, one node");
  const codes = new Set();
  const tryDecode = (payload) => {
    try {
      decodeBatchPayload({ ...b, payload });
    } catch (e) {
      assert.ok(e instanceof DecodeError, `${e.name}: ${e.message}`);
      codes.add(e.code);
    }
  };
  for (let i = 0; i < b.payload.length; i++) {
    for (const x of [0x01, 0x80, 0xff]) {
      const p = Uint8Array.from(b.payload);
      p[i] ^= x;
      tryDecode(p);
    }
    tryDecode(b.payload.subarray(0, i));
  }
  assert.ok(codes.has("bad_compression"), [...codes].join());
  assert.throws(() => decodeBatchPayload({ ...b, payload: b.payload.subarray(0, 40) }), { code: "bad_compression" });
});

test("a frame declaring more than maxBatchRawBytes is refused before it is decoded", () => {
  const b = dense("300 danmaku, one node");
  assert.equal(b.payload[4], 0x60, "single segment, 2-byte content size");
  const size = b.payload[5] + (b.payload[6] << 8) + 256;
  assert.equal(decodeBatchPayload(b, { maxBatchRawBytes: size }).length, 300);
  assert.throws(() => decodeBatchPayload(b, { maxBatchRawBytes: size - 1 }), { code: "bad_batch" });
  // Headers claiming 4 GiB (4-byte size) and 1 TiB (8-byte size) with nothing
  // after them: allocating first would run out of memory.
  const header = (fhd, size) => Uint8Array.from([0x28, 0xb5, 0x2f, 0xfd, fhd, ...size]);
  for (const payload of [header(0xa0, [0, 0, 0, 0x80]), header(0xe0, [0, 0, 0, 0, 0, 1, 0, 0])]) {
    assert.throws(() => decodeBatchPayload({ codec: 1, dictId: 0, count: 1, payload }), { code: "bad_batch" });
  }
  // A frame that does not declare its size is decoded up to the limit: the same
  // blocks behind a header with a 128 KiB window and no content size.
  const plain = fixtureBatch(FIXTURES.sets[2].batches.find((x) => x.layout === "plain"));
  const p = plain.payload;
  assert.equal(p[4], 0x60, "single segment, 2-byte content size");
  const unsized = { ...plain, payload: Uint8Array.from([...p.subarray(0, 4), 0x00, 7 << 3, ...p.subarray(7)]) };
  assert.deepEqual(decodeBatchPayload(unsized), FIXTURES.sets[2].events);
  assert.throws(() => decodeBatchPayload(unsized, { maxBatchRawBytes: 4000 }), { code: "bad_batch" });
});

test("dense ids: counter steps rebuild ids; hostile steps are left as they are", () => {
  const zz = (d) => (d >= 0 ? 2 * d : -2 * d - 1);
  const t = 1732350000000;
  const h = t.toString(16).padStart(11, "0");
  const evs = [
    // Not lowercase hex: read whole, but no counter to step from.
    [{ kind: 1, ts_ms: zz(t), id: "ABCDEF0100000001" }, h + "ABCDEF0100000001"],
    [{ kind: 1, ts_ms: 0, id: "+5" }, "+5"],
    [{ kind: 1, ts_ms: 0, id: "00000001fffffff0" }, h + "00000001fffffff0"],
    [{ kind: 1, ts_ms: 0, id: "+15" }, h + "00000001ffffffff"],
    // Past 2^32 - 1, or steps that are no u32 number: unchanged.
    [{ kind: 1, ts_ms: 0 }, undefined],
    [{ kind: 1, ts_ms: 0, id: "+0" }, h + "00000001ffffffff"],
    ...["+4294967296", "+00000000001", "+x1", "+", "+-1", "+1 "].map((id) => [{ kind: 1, ts_ms: 0, id }, id]),
    // A gift's empty id is no step.
    [{ kind: 2, ts_ms: 0, seq: 3 }, undefined],
    [{ kind: 1, ts_ms: 0, id: "00000002000000ff" }, h + "00000002000000ff"],
    // Before 1970: no id to rebuild, and the counter waits for the next one.
    [{ kind: 1, ts_ms: zz(-t - 5) }, undefined],
    [{ kind: 1, ts_ms: zz(t + 5), id: "+1" }, h + "0000000200000100"],
    [{ kind: 1, ts_ms: 0, id: "+4294967039" }, h + "00000002ffffffff"],
  ];
  const events = evs.map(([e]) => ({ sender: "s", text: "x", ...e }));
  // A time no danmaku has (2^62 ms on): still no exception.
  events.push({ kind: 1, sender: "s", text: "x", ts_ms: "9223372036854775806", id: "+0" });
  const out = decodeBatchPayload({ codec: 0, dictId: 0, count: events.length, payload: rawPayload(events), encoding: 2 });
  assert.deepEqual(out.slice(0, -1).map((e) => e.id), evs.map(([, id]) => id));
  const last = out.at(-1);
  assert.equal(last.ts_ms, t + 2 ** 62);
  assert.equal(last.id, last.ts_ms.toString(16) + "00000002ffffffff");
});

test("server frames decode; garbage is a DecodeError, unknown bodies are skipped", () => {
  const w = new BinaryWriter();
  w.tag(1, WireType.Varint).uint32(1);
  w.tag(5, WireType.LengthDelimited).fork();
  w.tag(1, WireType.LengthDelimited).string("room:1");
  w.tag(2, WireType.Varint).uint64(18);
  w.tag(3, WireType.LengthDelimited).bytes(eventBytes({ kind: 2, sender: "bob", text: "rocket", ts_ms: 5, seq: 18 }));
  w.join();
  const f = decodeServerFrame(w.finish());
  assert.equal(f.type, "reliable");
  assert.equal(f.seq, 18);
  assert.equal(f.event.kind, "gift");
  assert.throws(() => decodeServerFrame(new Uint8Array([0x22, 0x50, 1, 2])), { name: "DecodeError" });
  const future = new BinaryWriter();
  future.tag(1, WireType.Varint).uint32(1);
  future.tag(42, WireType.LengthDelimited).bytes(new Uint8Array([1, 2, 3]));
  assert.equal(decodeServerFrame(future.finish()).type, "unknown");
  const v2 = new BinaryWriter().tag(1, WireType.Varint).uint32(2).finish();
  assert.throws(() => decodeServerFrame(v2), { code: "unsupported_version" });
});

test("a batch carries its room's online count when one rides the tick", () => {
  const batch = (online) => {
    const w = new BinaryWriter();
    w.tag(1, WireType.Varint).uint32(1);
    w.tag(4, WireType.LengthDelimited).fork();
    w.tag(1, WireType.LengthDelimited).string("room:1");
    w.tag(4, WireType.Varint).uint32(1);
    w.tag(5, WireType.LengthDelimited).bytes(rawPayload([{ kind: 1, sender: "a", text: "hi", ts_ms: 1 }]));
    if (online) w.tag(8, WireType.Varint).uint64(online);
    w.join();
    return decodeServerFrame(w.finish());
  };
  const f = batch(100000);
  assert.equal(f.type, "batch");
  assert.equal(f.online, 100000);
  assert.equal(f.events[0].text, "hi");
  assert.equal("online" in batch(0), false);
});

test("moderation frames decode: sampled_out, retract and priority events, left reason, notice", () => {
  const frame = (field, build) => {
    const w = new BinaryWriter();
    w.tag(1, WireType.Varint).uint32(1);
    w.tag(field, WireType.LengthDelimited).fork();
    build(w);
    w.join();
    return decodeServerFrame(w.finish());
  };
  const b = frame(4, (w) => {
    w.tag(1, WireType.LengthDelimited).string("room:1");
    w.tag(4, WireType.Varint).uint32(2);
    w.tag(5, WireType.LengthDelimited).bytes(rawPayload([
      { kind: 1, sender: "host", text: "hi", ts_ms: 1, id: "0193a5e1f2c4b8d2e6f10000002", priority: true },
      { kind: 4, sender: "mia", text: "", ts_ms: 2, id: "0193a5e1f2c4b8d2e6f10000001" },
    ]));
    w.tag(9, WireType.Varint).uint64(1234);
  });
  assert.equal(b.sampled_out, 1234);
  assert.deepEqual(b.events.map((e) => [e.kind, e.id, e.priority ?? false]), [
    ["danmaku", "0193a5e1f2c4b8d2e6f10000002", true],
    ["retract", "0193a5e1f2c4b8d2e6f10000001", false],
  ]);
  const left = frame(3, (w) => {
    w.tag(1, WireType.LengthDelimited).string("room:1");
    w.tag(2, WireType.LengthDelimited).string("banned");
  });
  assert.deepEqual(left, { type: "left", channel: "room:1", reason: "banned" });
  const notice = frame(11, (w) => {
    w.tag(1, WireType.LengthDelimited).string("room:1");
    w.tag(2, WireType.LengthDelimited).string("muted");
    w.tag(3, WireType.Varint).int64(1732350600000);
  });
  assert.deepEqual(notice, { type: "notice", channel: "room:1", code: "muted", until_ms: 1732350600000 });
});

test("joined carries the channel's ack pace over protobuf and JSON (absent: 0)", () => {
  const joined = (pace) => {
    const w = new BinaryWriter();
    w.tag(1, WireType.Varint).uint32(1);
    w.tag(2, WireType.LengthDelimited).fork();
    w.tag(1, WireType.LengthDelimited).string("room:1");
    w.tag(2, WireType.Varint).uint64(41);
    if (pace) w.tag(3, WireType.Varint).uint32(pace);
    w.join();
    return decodeServerFrame(w.finish());
  };
  assert.deepEqual(joined(5000), { type: "joined", channel: "room:1", last_seq: 41, ack_interval_ms: 5000 });
  assert.deepEqual(joined(0), { type: "joined", channel: "room:1", last_seq: 41, ack_interval_ms: 0 });
  assert.deepEqual(decodeJsonFrame('{"type":"joined","channel":"room:1","last_seq":41,"ack_interval_ms":5000}'),
    { type: "joined", channel: "room:1", last_seq: 41, ack_interval_ms: 5000 });
  assert.deepEqual(decodeJsonFrame('{"type":"joined","channel":"group:7","last_seq":3}'),
    { type: "joined", channel: "group:7", last_seq: 3, ack_interval_ms: 0 });
});

/** A WebSocket stand-in on the JSON subprotocol: the test plays the edge with
 * `push(frame)`; `sent` holds what the client sent, with the (mocked) time. */
class FakeEdgeSocket {
  static last = null;
  constructor(url, protocol) {
    this.url = url;
    this.protocol = protocol;
    this.readyState = 1;
    this.sent = [];
    FakeEdgeSocket.last = this;
    // The client sets its handlers right after construction.
    queueMicrotask(() => this.push({ type: "auth_ok", user: "viewer", ack_interval_ms: 1000 }));
  }
  send(data) { this.sent.push({ at: Date.now(), ...JSON.parse(data) }); }
  close() {
    this.readyState = 3;
    this.onclose?.();
  }
  push(frame) { this.onmessage?.({ data: JSON.stringify(frame) }); }
  acks() { return this.sent.filter((f) => f.type === "ack").map(({ at, channel, seq }) => ({ at, channel, seq })); }
}

test("a channel's joined pace slows its acks; other channels keep auth_ok's", async (t) => {
  const T0 = 1_000_000;
  t.mock.timers.enable({ apis: ["setTimeout", "setInterval", "Date"], now: T0 });
  const flush = async () => { for (let i = 0; i < 5; i++) await Promise.resolve(); };
  const c = new DanmakuClient({ token: "t", edges: ["ws://edge.test/v1/ws"], protocol: "json", WebSocket: FakeEdgeSocket });
  await c.connect();
  const ws = FakeEdgeSocket.last;
  assert.equal(ws.protocol, "danmaku.v1.json");
  assert.equal(c.ackIntervalMs, 1000);
  const gift = (channel, seq) => ws.push({ type: "reliable", channel, seq, event: { kind: "gift", sender: "b", text: "rocket", ts_ms: 1, seq } });
  const room = c.join("room:1");
  const group = c.join("group:7");
  ws.push({ type: "joined", channel: "room:1", last_seq: 0, ack_interval_ms: 5000 });
  ws.push({ type: "joined", channel: "group:7", last_seq: 0 }); // an edge without the field
  assert.equal((await room).ack_interval_ms, 5000);
  assert.equal((await group).ack_interval_ms, 0);
  assert.equal(c.ackIntervalFor("room:1"), 5000);
  assert.equal(c.ackIntervalFor("group:7"), 1000, "0: auth_ok's pace");

  // The first acks go out at once, then each channel waits for its own pace.
  gift("room:1", 1);
  gift("group:7", 1);
  await flush();
  assert.deepEqual(ws.acks(), [{ at: T0, channel: "room:1", seq: 1 }, { at: T0, channel: "group:7", seq: 1 }]);
  t.mock.timers.tick(100);
  gift("room:1", 2);
  gift("group:7", 2);
  gift("room:1", 3);
  await flush();
  assert.equal(ws.acks().length, 2, "paced: nothing yet");
  t.mock.timers.tick(899);
  await flush();
  assert.equal(ws.acks().length, 2);
  t.mock.timers.tick(1);
  await flush();
  assert.deepEqual(ws.acks().slice(2), [{ at: T0 + 1000, channel: "group:7", seq: 2 }], "the group at auth_ok's pace");
  t.mock.timers.tick(3999);
  await flush();
  assert.equal(ws.acks().length, 3, "the room waits 5 s");
  t.mock.timers.tick(1);
  await flush();
  assert.deepEqual(ws.acks().slice(3), [{ at: T0 + 5000, channel: "room:1", seq: 3 }], "cumulative: one ack for 2 and 3");

  // A re-join's joined is the newest word: without the field, auth_ok's pace.
  ws.push({ type: "joined", channel: "room:1", last_seq: 3 });
  assert.equal(c.ackIntervalFor("room:1"), 1000);
  gift("room:1", 4);
  await flush();
  t.mock.timers.tick(1000);
  await flush();
  assert.deepEqual(ws.acks().slice(4), [{ at: T0 + 6000, channel: "room:1", seq: 4 }]);

  // Leaving sends the ack still waiting, then the leave; the pace is forgotten.
  ws.push({ type: "joined", channel: "room:1", last_seq: 3, ack_interval_ms: 5000 });
  gift("room:1", 5);
  await flush();
  c.leave("room:1");
  assert.deepEqual(ws.sent.slice(-2).map(({ type, seq }) => [type, seq]), [["ack", 5], ["leave", undefined]]);
  assert.equal(c.ackIntervalFor("room:1"), 1000);
  t.mock.timers.tick(10_000);
  await flush();
  assert.equal(ws.acks().length, 6, "no ack after the leave");
  c.close();
});

test("reliable tracker: dedupe, order, holes, cumulative acks", () => {
  const t = new ReliableTracker();
  const ev = (seq) => ({ seq });
  let r = t.onReliable("room:1", 5, ev(5)); // fresh join: anchored by the first seq
  assert.deepEqual(r.deliver, [ev(5)]);
  assert.equal(r.ack, 5);
  r = t.onReliable("room:1", 5, ev(5)); // retransmission
  assert.equal(r.duplicate, true);
  assert.deepEqual(r.deliver, []);
  assert.equal(r.ack, 5);
  r = t.onReliable("room:1", 8, ev(8)); // ahead of a hole
  assert.deepEqual(r.deliver, []);
  assert.equal(r.resume, 5);
  r = t.onReliable("room:1", 7, ev(7));
  assert.equal(r.resume, null, "one resume per after_seq");
  r = t.onReliable("room:1", 6, ev(6));
  assert.deepEqual(r.deliver.map((e) => e.seq), [6, 7, 8]);
  assert.equal(r.ack, 8);
  t.anchor("room:2", 10);
  assert.equal(t.onReliable("room:2", 10, ev(10)).duplicate, true);
  assert.deepEqual(t.onReliable("room:2", 11, ev(11)).deliver, [ev(11)]);
  t.onReconnect();
  assert.equal(t.onReliable("room:1", 10, ev(10)).resume, 8);
});

test("backoff grows exponentially, with jitter, up to the cap", () => {
  const b = new Backoff({ initialMs: 100, maxMs: 1000, jitter: 0.5 }, () => 1);
  assert.deepEqual([1, 2, 3, 4, 5].map(() => b.next()), [100, 200, 400, 800, 1000]);
  const lo = new Backoff({ initialMs: 100, maxMs: 1000, jitter: 0.5 }, () => 0);
  assert.deepEqual([1, 2, 3].map(() => lo.next()), [50, 100, 200]);
  b.reset();
  assert.equal(b.next(), 100);
});

test("token expiry is read from the claims", () => {
  // The example token of docs/PROTOCOL.md (exp 4102444800).
  const t = "eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMCwicm9sZSI6InVzZXIifQ.XQtGWBQuKCC0jte07c6jy97130b4aRsAKIxew1sOOYk";
  assert.equal(tokenExpiry(t), 4102444800);
  assert.equal(tokenExpiry("garbage"), null);
});
