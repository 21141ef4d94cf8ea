// The SDK against a REAL `danmaku standalone` process (see standalone.js): the
// scheduler race, protobuf + zstd and JSON, the reliable lane across a server
// restart, token refresh, history paging and unread counts.

import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { WebSocket as WsWebSocket } from "ws";
import { DanmakuClient, devToken } from "../src/index.js";
import { Standalone } from "./standalone.mjs";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// Node 22+ has a WebSocket like the browser's; older Node uses the `ws` package.
const WebSocket = globalThis.WebSocket ?? WsWebSocket;

async function until(what, cond, ms = 15_000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await cond()) return;
    await sleep(25);
  }
  assert.fail(`timed out waiting for ${what}`);
}

function client(server, user, o = {}) {
  let refreshes = 0;
  const c = new DanmakuClient({
    baseUrl: server.baseUrl,
    getToken: async () => {
      refreshes++;
      return devToken(server.baseUrl, user);
    },
    heartbeatMs: 2_000,
    WebSocket,
    backoff: { initialMs: 100, maxMs: 1_000 },
    ...o,
  });
  c.refreshes = () => refreshes;
  return c;
}

const RATE = ["--user-rate", "1000", "--user-burst", "1000"];
/** The edge's first resend of an unacked gift in these tests (default 3 s). */
const RETRANSMIT_MS = 1_000;

/** `Ack`s a protobuf `ClientFrame` carries (field 5: {channel = 1, seq = 2}), read
 * with a minimal wire-format walk: the SDK only encodes client frames. */
function pbAcks(bytes) {
  const b = new Uint8Array(bytes);
  let i = 0;
  const varint = () => {
    let v = 0n, shift = 0n;
    for (;;) {
      const x = b[i++];
      v |= BigInt(x & 0x7f) << shift;
      if (!(x & 0x80)) return v;
      shift += 7n;
    }
  };
  const fields = (end, f) => {
    while (i < end) {
      const key = Number(varint());
      const [no, wt] = [key >> 3, key & 7];
      if (wt === 0) f(no, varint());
      else if (wt === 2) {
        const len = Number(varint());
        const start = i;
        i += len;
        f(no, b.subarray(start, i), start);
      } else throw new Error(`wire type ${wt}`);
    }
  };
  const acks = [];
  fields(b.length, (no, v, start) => {
    if (no !== 5) return;
    const ack = { channel: "", seq: 0 };
    const save = i;
    i = start;
    fields(start + v.length, (n, x) => {
      if (n === 1) ack.channel = new TextDecoder().decode(x);
      if (n === 2) ack.seq = Number(x);
    });
    i = save;
    acks.push(ack);
  });
  return acks;
}

/** A WebSocket class that records every frame the SDK sends. */
function recordingWebSocket(sent, times = []) {
  return class extends WebSocket {
    send(data) {
      sent.push(data);
      times.push(Date.now());
      super.send(data);
    }
  };
}

/** A WebSocket class that keeps its sockets in `sockets` (to read the subprotocol
 * each one negotiated). */
function keepingWebSocket(sockets) {
  return class extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      sockets.push(this);
    }
  };
}

/** A metric's value from a Prometheus exposition (unlabelled, or the first series). */
async function metric(base, name) {
  const text = await (await fetch(`${base}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
  return line ? Number(line.split(" ").at(-1)) : 0;
}

describe("against a real standalone", () => {
  const server = new Standalone({ args: [...RATE, "--dev-app-tokens", "--retransmit-initial", `${RETRANSMIT_MS}ms`, "--client-ack-interval", "200ms"] });
  before(() => server.start());
  after(() => server.stop());

  for (const protocol of ["auto", "json"]) {
    test(`danmaku arrive over ${protocol === "auto" ? "protobuf (zstd batches)" : "JSON"}`, async () => {
      const sockets = [];
      const viewer = client(server, `v-${protocol}`, { protocol, WebSocket: keepingWebSocket(sockets) });
      const seen = [];
      let zstd = 0;
      let dict = 0;
      const layouts = [0, 0, 0]; // batches by `encoding`
      viewer.on("danmaku", (ev, channel) => seen.push({ ...ev, channel }));
      viewer.on("batch", (b) => {
        if (b.codec === 1) zstd++;
        if (b.dict_id === 1) dict++;
        layouts[b.encoding ?? 0]++;
      });
      const states = [];
      viewer.on("state", (s) => states.push(s.state));
      await viewer.connect();
      assert.equal(viewer.protocol, protocol === "auto" ? "pb" : "json");
      const joined = await viewer.join("room:dm");
      assert.equal(joined.channel, "room:dm");
      await until("online count", async () => (await viewer.online("room:dm")) === 1);
      const sender = client(server, "poster");
      const n = 60;
      const accepted = await Promise.all(
        Array.from({ length: n }, (_, i) => sender.send("room:dm", `弹幕 ${protocol} number ${i} — 前方高能 awesome play!`)),
      );
      await until(`${n} danmaku`, () => seen.length >= n);
      assert.equal(seen.length, n);
      assert.deepEqual(new Set(seen.map((e) => e.text)).size, n);
      assert.ok(seen.every((e) => e.channel === "room:dm" && e.sender === "poster" && e.kind === "danmaku"));
      // Each danmaku arrives with the id its post was answered with, and its
      // time is the id's first 11 hex digits (the compact and dense layouts rebuild both).
      assert.deepEqual(new Set(seen.map((e) => e.id)), new Set(accepted.map((a) => a.id)));
      assert.ok(seen.every((e) => parseInt(e.id.slice(0, 11), 16) === e.ts_ms), JSON.stringify(seen[0]));
      if (protocol === "auto") {
        assert.ok(zstd > 0, "at least one zstd-compressed batch");
        // The SDK offers v3, v2 and v1; an edge from before v3 picks v2.
        const sub = sockets.at(-1).protocol;
        if (sub === "danmaku.v3.pb") {
          assert.ok(layouts[2] > 0 && dict > 0, `dense batches with dictionary 1 (${layouts}, ${dict})`);
        } else {
          assert.equal(sub, "danmaku.v2.pb");
          assert.ok(layouts[1] > 0, "the edge sent the compact layout the SDK offered");
        }
      }
      assert.deepEqual(states.slice(0, 2), ["connecting", "connected"]);
      viewer.close();
    });
  }

  test("gifts: exactly once, in order, acked (no retransmits shown)", async () => {
    const sent = [];
    const viewer = client(server, "giftwatcher", { WebSocket: recordingWebSocket(sent) });
    const retransmits0 = await metric(server.baseUrl, "danmaku_edge_reliable_retransmits_total");
    const acked0 = await metric(server.baseUrl, "danmaku_edge_reliable_acked_total");
    const gifts = [];
    viewer.on("gift", (ev) => gifts.push(ev.seq));
    await viewer.connect();
    await viewer.join("room:gifts");
    const sender = client(server, "giver");
    const seqs = [];
    for (let i = 0; i < 5; i++) seqs.push((await sender.send("room:gifts", { kind: "gift", text: "rocket", payload: { n: i } })).seq);
    // A retry with the same client_msg_id is the same gift.
    const again = await sender.send("room:gifts", { kind: "gift", text: "rocket", client_msg_id: "same-id" });
    const again2 = await sender.send("room:gifts", { kind: "gift", text: "rocket", client_msg_id: "same-id" });
    assert.equal(again.seq, again2.seq);
    seqs.push(again.seq);
    await until("6 gifts", () => gifts.length >= 6);
    // This server resends an unacked gift after RETRANSMIT_MS (then 2×): wait
    // past the first resend. Acked gifts are not resent: nothing new arrives.
    await sleep(RETRANSMIT_MS * 1.5 + 500);
    assert.deepEqual(gifts, seqs);
    // The acks are on the socket: cumulative, for the room, up to the last seq
    // (the last one within the room's pace, which its `joined` may make slower).
    const acksSent = () => sent.filter((d) => typeof d !== "string").flatMap(pbAcks);
    await until("the last gift acked", () => acksSent().some((a) => a.seq === seqs.at(-1)), viewer.ackIntervalFor("room:gifts") + 5_000);
    const acks = acksSent();
    assert.ok(acks.length >= 1, "the SDK sent acks");
    assert.ok(acks.every((a) => a.channel === "room:gifts"), JSON.stringify(acks));
    assert.equal(Math.max(...acks.map((a) => a.seq)), seqs.at(-1), JSON.stringify(acks));
    // And the edge took them: nothing was resent, every gift counted acked.
    assert.equal(viewer.stats.duplicates, 0, "no retransmission reached the SDK");
    assert.equal(await metric(server.baseUrl, "danmaku_edge_reliable_retransmits_total"), retransmits0);
    assert.ok((await metric(server.baseUrl, "danmaku_edge_reliable_acked_total")) - acked0 >= 6);
    viewer.close();
  });

  test("acks follow the edge's pace (auth_ok, or the room's joined), however fast gifts arrive", async () => {
    const sent = [];
    const times = [];
    const viewer = client(server, "pacewatcher", { WebSocket: recordingWebSocket(sent, times) });
    const gifts = [];
    viewer.on("gift", (ev) => gifts.push(ev.seq));
    await viewer.connect();
    assert.equal(viewer.ackIntervalMs, 200, "the server's --client-ack-interval");
    const joined = await viewer.join("room:pace");
    // An edge may ask for a slower pace for a room in its `joined`; one that
    // predates the field leaves auth_ok's.
    const pace = viewer.ackIntervalFor("room:pace");
    assert.equal(pace, Math.max(200, joined.ack_interval_ms ?? 0));
    const sender = client(server, "pacegiver");
    const seqs = [];
    // One gift every ~40 ms for 1.2 s: unpaced, about one ack per gift.
    for (let i = 0; i < 30; i++) {
      seqs.push((await sender.send("room:pace", { kind: "gift", text: "heart" })).seq);
      await sleep(40);
    }
    await until("30 gifts", () => gifts.length >= 30);
    const ackList = () => sent
      .map((d, i) => ({ d, at: times[i] }))
      .filter(({ d }) => typeof d !== "string")
      .flatMap(({ d, at }) => pbAcks(d).map((a) => ({ ...a, at })));
    await until("the last gift acked", () => ackList().some((a) => a.seq === seqs.at(-1)), pace + 5_000);
    assert.deepEqual(gifts, seqs);
    const acks = ackList();
    assert.equal(Math.max(...acks.map((a) => a.seq)), seqs.at(-1), "the last gift is acked");
    assert.ok(acks.length < 15, `paced: ${acks.length} acks for 30 gifts`);
    for (let i = 1; i < acks.length; i++) {
      // setTimeout may fire a millisecond early on some platforms.
      assert.ok(acks[i].at - acks[i - 1].at >= pace - 5, `acks ${i - 1} and ${i} ${acks[i].at - acks[i - 1].at} ms apart (pace ${pace} ms)`);
    }
    viewer.close();
    sender.close();
  });

  for (const protocol of ["pb", "json"]) {
    test(`a gift carrying a blob arrives with its id over ${protocol}; fetched on demand`, async () => {
      const app = client(server, "backend", { getToken: async () => devToken(server.baseUrl, "backend", "app") });
      const png = new Uint8Array([0x89, 0x50, 0x4e, 0x47, 1, 2, 3, protocol.length]);
      const { id, url } = await app.http.uploadBlob(png, "image/png");
      assert.match(id, /^[0-9a-f]{64}$/);
      assert.equal(url, `/v1/blobs/${id}`);
      const viewer = client(server, `blobwatcher-${protocol}`, { protocol });
      const gifts = [];
      viewer.on("gift", (ev) => gifts.push(ev));
      await viewer.connect();
      const room = `room:blob-${protocol}`;
      await viewer.join(room);
      const sender = client(server, "giver");
      const { seq } = await sender.send(room, { kind: "gift", text: "rocket", blob: id });
      await sender.send(room, { kind: "gift", text: "heart" });
      await until("2 gifts", () => gifts.length >= 2);
      assert.equal(gifts[0].seq, seq);
      assert.equal(gifts[0].blob, id);
      assert.equal(gifts[1].blob, undefined, "no blob: no field");
      assert.equal(viewer.blobUrl(id), `${server.baseUrl}/v1/blobs/${id}`);
      const got = await viewer.fetchBlob(gifts[0].blob);
      assert.equal(got.contentType, "image/png");
      assert.deepEqual(new Uint8Array(await got.body.arrayBuffer()), png);
      const page = await sender.history(room);
      assert.deepEqual(page.messages.map((m) => m.blob), [id, undefined]);
      const unknown = "0".repeat(64);
      await assert.rejects(sender.send(room, { kind: "gift", text: "x", blob: unknown }), { status: 400, code: "unknown_blob" });
      await assert.rejects(sender.send(room, { kind: "danmaku", text: "x", blob: "nope" }), { status: 400, code: "bad_blob" });
      await assert.rejects(viewer.fetchBlob(unknown), { status: 404, code: "not_found" });
      viewer.close();
    });
  }

  test("history pages, group chat and unread counts over HTTP", async () => {
    const app = await devToken(server.baseUrl, "backend", "app");
    const put = await fetch(`${server.baseUrl}/v1/groups/group:g1/members/carol`, { method: "PUT", headers: { authorization: `Bearer ${app}` } });
    assert.equal(put.status, 200);
    const carol = client(server, "carol");
    for (let i = 0; i < 5; i++) await carol.send("group:g1", { kind: "chat", text: `hello ${i}` });
    const pages = [];
    for await (const page of carol.historyPages("group:g1", { limit: 2 })) pages.push(page.map((m) => m.text));
    assert.deepEqual(pages, [["hello 0", "hello 1"], ["hello 2", "hello 3"], ["hello 4"]]);
    let unread = await carol.unread();
    assert.equal(unread.channels["group:g1"], 5);
    const h = await carol.history("group:g1", { afterSeq: 0, limit: 50 });
    assert.equal(await carol.ackHttp("group:g1", h.next_after_seq), h.next_after_seq);
    unread = await carol.unread();
    assert.equal(unread.channels["group:g1"], 0);
    // Joining the group over the socket pushes nothing already acked; new chat arrives once.
    const chats = [];
    carol.on("chat", (ev) => chats.push(ev.text));
    await carol.connect();
    await carol.join("group:g1");
    await carol.send("group:g1", { kind: "chat", text: "live" });
    await until("live chat", () => chats.length >= 1);
    await sleep(300);
    assert.deepEqual(chats, ["live"]);
    await assert.rejects(carol.join("group:nope"), { code: "not_member" });
    carol.close();
  });
});

describe("across a server restart", () => {
  test("reconnecting, then resumed: every gift once, token refreshed", async () => {
    const server = new Standalone({ args: RATE });
    await server.start();
    try {
      const viewer = client(server, "survivor");
      const gifts = [];
      const states = [];
      viewer.on("gift", (ev) => gifts.push(ev.seq));
      viewer.on("state", (s) => states.push(s.resumed ? "resumed" : s.state));
      await viewer.connect();
      await viewer.join("room:restart");
      const giver = await server.token("giver");
      const expected = [];
      for (let i = 0; i < 3; i++) expected.push((await server.post(giver, "room:restart", { kind: "gift", text: "before", client_msg_id: `b${i}` })).seq);
      await until("3 gifts before", () => gifts.length >= 3);
      await server.kill();
      await until("reconnecting", () => states.includes("reconnecting"));
      await server.start(); // same port and data dir, a NEW random token key
      const giver2 = await server.token("giver");
      for (let i = 0; i < 3; i++) expected.push((await server.post(giver2, "room:restart", { kind: "gift", text: "after", client_msg_id: `a${i}` })).seq);
      await until("resumed", () => states.includes("resumed"), 30_000);
      await until("6 gifts", () => gifts.length >= 6, 20_000);
      await sleep(1_500);
      assert.deepEqual(gifts, expected);
      assert.deepEqual(expected, [1, 2, 3, 4, 5, 6]);
      assert.ok(viewer.refreshes() >= 2, "the old token was refused and a new one fetched");
      assert.equal(viewer.protocol, "pb", "a restart is no reason to leave protobuf");
      viewer.close();
    } finally {
      await server.stop();
    }
  });

  test("an expiring token is refreshed on the open connection: the session outlives it", async () => {
    const secret = "sdk-test-secret";
    const server = new Standalone({ args: ["--auth-secret", secret] });
    await server.start();
    const b64 = (b) => Buffer.from(b).toString("base64url");
    const mint = (sub, exp) => {
      const body = b64(JSON.stringify({ sub, exp, role: "user" }));
      return `${body}.${b64(createHmac("sha256", secret).update(body).digest())}`;
    };
    try {
      await Promise.all(["pb", "json"].map(async (protocol) => {
        const reasons = [];
        // The first token has 6-7 s left: the SDK connects with it, and asks for
        // a new one 3 s before it expires.
        const firstExp = Math.floor(Date.now() / 1000) + 7;
        const c = new DanmakuClient({
          baseUrl: server.baseUrl,
          WebSocket,
          protocol,
          token: mint(`dave-${protocol}`, firstExp),
          refreshBeforeSecs: 3,
          getToken: (reason) => {
            reasons.push(reason);
            return mint(`dave-${protocol}`, Math.floor(Date.now() / 1000) + 3600);
          },
        });
        const states = [];
        const errors = [];
        const texts = [];
        c.on("state", (s) => states.push(s.state));
        c.on("error", (e) => errors.push(e.code ?? String(e)));
        c.on("danmaku", (ev) => texts.push(ev.text));
        await c.connect();
        assert.deepEqual(reasons, [], "connected with the first token");
        assert.equal(c.user, `dave-${protocol}`);
        await c.join(`room:expiry-${protocol}`);
        // Past the first token's expiry (and the edge's check a second later).
        await until("past the first token", () => Date.now() / 1000 > firstExp + 1.5, 15_000);
        assert.deepEqual(reasons, ["expiring"]);
        const poster = mint("poster", Math.floor(Date.now() / 1000) + 60);
        await server.post(poster, `room:expiry-${protocol}`, { kind: "danmaku", text: `still here ${protocol}` });
        await until("danmaku on the same connection", () => texts.includes(`still here ${protocol}`));
        assert.deepEqual(states, ["connecting", "connected"], `${protocol}: one connection all along`);
        assert.equal(c.stats.reconnects, 0);
        assert.deepEqual(errors, []);
        c.close();
      }));
    } finally {
      await server.stop();
    }
  });
});

describe("account protection", () => {
  test("a revoked token and a blocked user end the client for good: no reconnect loop", async () => {
    const secret = "sdk-account-secret";
    const server = new Standalone({ args: ["--auth-secret", secret] });
    await server.start();
    const b64 = (b) => Buffer.from(b).toString("base64url");
    const now = () => Math.floor(Date.now() / 1000);
    const mint = (sub, jti, role = "user") => {
      const body = b64(JSON.stringify({ sub, exp: now() + 3600, role, jti, iat: now() }));
      return `${body}.${b64(createHmac("sha256", secret).update(body).digest())}`;
    };
    const admin = (method, path, body) =>
      fetch(`${server.baseUrl}${path}`, {
        method,
        headers: { authorization: `Bearer ${mint("backend", "admin-1", "app")}`, "content-type": "application/json" },
        body: JSON.stringify(body),
      });
    const watch = (c) => {
      const seen = { states: [], errors: [], reasons: [] };
      c.on("state", (s) => { seen.states.push(s.state); if (s.reason) seen.reasons.push(s.reason); });
      c.on("error", (e) => seen.errors.push(e.code ?? String(e)));
      return seen;
    };
    try {
      for (const protocol of ["pb", "json"]) {
        // Revoked by id while connected: the token would be handed out again on
        // every reconnect, so a reconnect loop would show here.
        const token = mint(`erin-${protocol}`, `jti-${protocol}`);
        let asked = 0;
        const c = new DanmakuClient({
          baseUrl: server.baseUrl, WebSocket, protocol, token,
          getToken: () => { asked++; return token; },
          backoff: { initialMs: 50, maxMs: 100 },
        });
        const seen = watch(c);
        await c.connect();
        await c.join(`room:acct-${protocol}`);
        const r = await admin("POST", "/v1/admin/revocations", { jti: `jti-${protocol}`, expire_at: now() + 3600 });
        assert.equal(r.status, 200, await r.text());
        await until("closed for good", () => c.state === "closed", 5_000);
        await sleep(1_000);
        assert.deepEqual(seen.errors, ["token_revoked"]);
        assert.deepEqual(seen.reasons, ["token_revoked"]);
        assert.deepEqual(seen.states, ["connecting", "connected", "closed"], "never reconnecting");
        assert.equal(c.stats.reconnects, 0);
        assert.equal(asked, 0, "no fresh token asked for");

        // Connecting with it again: refused with the code, once.
        const again = new DanmakuClient({ baseUrl: server.baseUrl, WebSocket, protocol, token, backoff: { initialMs: 50, maxMs: 100 } });
        const seenAgain = watch(again);
        await assert.rejects(again.connect(), (e) => e.code === "token_revoked");
        await sleep(500);
        assert.deepEqual(seenAgain.states, ["connecting", "closed"]);

        // A blocked user: same, with user_blocked.
        const user = `fred-${protocol}`;
        const b = new DanmakuClient({ baseUrl: server.baseUrl, WebSocket, protocol, token: mint(user, `f-${protocol}`), backoff: { initialMs: 50, maxMs: 100 } });
        const seenB = watch(b);
        await b.connect();
        const blocked = await admin("PUT", `/v1/users/${user}/block`, { seconds: 60 });
        assert.equal(blocked.status, 200, await blocked.text());
        await until("blocked client closed", () => b.state === "closed", 5_000);
        await sleep(500);
        assert.deepEqual(seenB.errors, ["user_blocked"]);
        assert.deepEqual(seenB.states, ["connecting", "connected", "closed"]);
      }
    } finally {
      await server.stop();
    }
  });
});
