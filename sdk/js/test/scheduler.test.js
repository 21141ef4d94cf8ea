// The SDK's scheduler path against REAL servers:
//   * `redirect`: a `danmaku edge` process registered with a standalone's scheduler
//     is drained (`POST /admin/drain`, app token); the SDK connected to it gets a
//     `redirect` frame naming the standalone, moves there, re-joins its rooms and
//     receives what is posted there;
//   * the protobuf → JSON fallback: between the SDK and a real standalone sits a
//     TCP proxy that refuses WebSocket upgrades asking for `danmaku.v1.pb` (as an
//     old middlebox that only passes text frames would); `protocol: "auto"` gives
//     up on protobuf after repeated failures while HTTP answers, and the JSON
//     connection through the same proxy delivers danmaku.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { WebSocket as WsWebSocket } from "ws";
import { DanmakuClient } from "../src/index.js";
import { Standalone, findBinary, freePort } from "./standalone.mjs";

const WebSocket = globalThis.WebSocket ?? WsWebSocket;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const SECRET = "sdk-scheduler-test-secret";

/** A token signed with SECRET (no `kid`: every process holding the secret verifies it). */
function mint(sub, role = "user", ttl = 3600) {
  const b64 = (b) => Buffer.from(b).toString("base64url");
  const body = b64(JSON.stringify({ sub, exp: Math.floor(Date.now() / 1000) + ttl, role }));
  return `${body}.${b64(createHmac("sha256", SECRET).update(body).digest())}`;
}

async function until(what, cond, ms = 20_000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await cond()) return;
    await sleep(50);
  }
  assert.fail(`timed out waiting for ${what}`);
}

/** `danmaku ROLE --listen <free port> ARGS…`, killed by `stop()`; resolves when /healthz answers. */
async function startProc(role, args, data) {
  const port = await freePort();
  const child = spawn(findBinary(), [role, "--listen", `127.0.0.1:${port}`, ...args],
    { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" } });
  let log = "";
  child.stderr.on("data", (b) => (log = (log + b).slice(-10_000)));
  const base = `http://127.0.0.1:${port}`;
  const proc = {
    base,
    addr: `127.0.0.1:${port}`,
    ws: `ws://127.0.0.1:${port}/v1/ws`,
    child,
    log: () => log,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const gone = new Promise((r) => child.once("exit", r));
        child.kill("SIGKILL");
        await gone;
      }
      if (data) rmSync(data, { recursive: true, force: true });
    },
  };
  await until(`${role} healthy`, async () => {
    if (child.exitCode !== null) throw new Error(`${role} exited with ${child.exitCode}`);
    try { return (await fetch(`${base}/healthz`)).ok; } catch { return false; }
  }, 30_000).catch((e) => { throw new Error(`${e.message}\n${log}`); });
  return proc;
}

/** `danmaku edge` (memory bus, embedded store) registering with `scheduler`. */
function startEdge(scheduler) {
  const data = mkdtempSync(join(tmpdir(), "danmaku-sdk-edge-"));
  return startProc("edge", [
    "--bus", "memory", "--store", `embedded:${join(data, "store.db")}`,
    "--auth-secret", SECRET, "--scheduler", scheduler, "--drain-deadline", "30s",
  ], data);
}

/** Metric value from a Prometheus exposition (first series whose line starts with `prefix`). */
async function metric(base, prefix) {
  const text = await (await fetch(`${base}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(prefix));
  return line ? Number(line.split(" ").at(-1)) : undefined;
}

/**
 * A TCP proxy to `target` that answers 400 to any WebSocket upgrade asking for the
 * protobuf subprotocol and passes everything else through byte for byte.
 */
async function pbRefusingProxy(target) {
  const [host, port] = target.split(":");
  const refused = { count: 0 };
  const server = createServer((client) => {
    let head = Buffer.alloc(0);
    const onData = (b) => {
      head = Buffer.concat([head, b]);
      const end = head.indexOf("\r\n\r\n");
      if (end < 0 && head.length < 16_384) return;
      client.off("data", onData);
      const request = head.subarray(0, end < 0 ? head.length : end).toString("latin1");
      if (/^sec-websocket-protocol:.*danmaku\.v1\.pb/im.test(request)) {
        refused.count++;
        client.end("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        return;
      }
      const upstream = connect(Number(port), host, () => {
        upstream.write(head);
        client.pipe(upstream).pipe(client);
      });
      const close = () => { client.destroy(); upstream.destroy(); };
      upstream.on("error", close);
      client.on("error", close);
      upstream.on("close", close);
      client.on("close", close);
    };
    client.on("data", onData);
    client.on("error", () => client.destroy());
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const sockets = new Set();
  server.on("connection", (s) => { sockets.add(s); s.on("close", () => sockets.delete(s)); });
  return {
    base: `http://127.0.0.1:${server.address().port}`,
    refused,
    close: () => { for (const s of sockets) s.destroy(); return new Promise((r) => server.close(r)); },
  };
}

/** A TCP server that accepts connections and never answers (a hung edge). */
async function blackHole() {
  const sockets = [];
  const server = createServer((s) => {
    const entry = { socket: s, closed: false };
    s.on("error", () => {});
    s.on("close", () => (entry.closed = true));
    s.resume(); // read (and ignore) the upgrade request, so the peer's close is seen
    sockets.push(entry);
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return {
    ws: `ws://127.0.0.1:${server.address().port}/v1/ws`,
    sockets,
    close: () => { for (const s of sockets) s.socket.destroy(); return new Promise((r) => server.close(r)); },
  };
}

describe("the SDK's scheduler path against real servers", () => {
  const cleanup = [];
  after(async () => { for (const f of cleanup.reverse()) await f(); });

  test("redirect: a drained edge sends its clients to the scheduler's pick; the SDK follows and re-joins", async () => {
    const standalone = new Standalone({ args: ["--auth-secret", SECRET] });
    await standalone.start();
    cleanup.push(() => standalone.stop());
    // A scheduler that hands out the standalone (static) and every edge that
    // registers with an app token signed by SECRET.
    const sa = `127.0.0.1:${standalone.port}`;
    const scheduler = await startProc("scheduler", ["--auth-secret", SECRET, "--edge", `sa=ws://${sa}/v1/ws|${sa}`]);
    cleanup.push(() => scheduler.stop());
    const edge = await startEdge(scheduler.base);
    cleanup.push(() => edge.stop());
    await until("edge registered and handed out", async () => {
      const r = await (await fetch(`${scheduler.base}/v1/edges?k=5`)).json();
      return r.edges?.some((e) => e.ws === edge.ws);
    }, 30_000);

    const viewer = new DanmakuClient({
      baseUrl: edge.base,
      edges: [edge.ws],
      token: mint("mover"),
      WebSocket,
      heartbeatMs: 2_000,
      backoff: { initialMs: 100, maxMs: 1_000 },
    });
    cleanup.push(() => viewer.close());
    const redirects = [];
    const states = [];
    const texts = [];
    viewer.on("redirect", (f) => redirects.push(f));
    viewer.on("state", (s) => states.push(s.state));
    viewer.on("danmaku", (ev) => texts.push(ev.text));
    await viewer.connect();
    await viewer.join("room:move");
    await until("viewer on the edge", async () => (await metric(edge.base, 'danmaku_edge_connections{transport="ws_pb"}')) === 1);

    const r = await fetch(`${edge.base}/admin/drain`, { method: "POST", headers: { authorization: `Bearer ${mint("ops", "app")}` } });
    assert.equal(r.status, 202);
    await until("redirect frame", () => redirects.length === 1);
    assert.ok(redirects[0].edges.some((e) => e.ws === `${standalone.baseUrl.replace("http", "ws")}/v1/ws`),
      `redirect names the standalone: ${JSON.stringify(redirects[0])}`);
    // The SDK left the draining edge for the standalone and re-joined its room there.
    await until("reconnected", () => states.at(-1) === "connected" && states.includes("reconnecting"));
    await until("re-joined on the standalone", async () => {
      const o = await (await fetch(`${standalone.baseUrl}/v1/channels/room:move/online`)).json();
      return o.online === 1;
    });
    await standalone.post(mint("poster"), "room:move", { kind: "danmaku", text: "welcome to the new edge" });
    await until("danmaku from the new edge", () => texts.includes("welcome to the new edge"));
    // Nobody left: the drained edge exits by itself (the client moved, not closed).
    await until("drained edge exited", () => edge.child.exitCode !== null, 30_000);
    assert.equal(edge.child.exitCode, 0, edge.log());
    assert.equal(viewer.stats.reconnects, 1);
    viewer.close();
  });

  test("the race: of four edges (hung, refusing, two real) one real edge wins, the rest are closed; on its loss the other wins", async () => {
    const args = ["--auth-secret", SECRET];
    const a = new Standalone({ args });
    const b = new Standalone({ args });
    await Promise.all([a.start(), b.start()]);
    cleanup.push(() => a.stop(), () => b.stop());
    const hole = await blackHole();
    cleanup.push(() => hole.close());
    const refusing = `ws://127.0.0.1:${await freePort()}/v1/ws`; // nothing listens
    const wsOf = (s) => `${s.baseUrl.replace("http", "ws")}/v1/ws`;
    const viewer = new DanmakuClient({
      baseUrl: a.baseUrl,
      edges: [hole.ws, refusing, wsOf(a), wsOf(b)],
      raceCount: 4,
      token: mint("racer"),
      WebSocket,
      connectTimeoutMs: 5_000,
      backoff: { initialMs: 100, maxMs: 500 },
    });
    cleanup.push(() => viewer.close());
    const texts = [];
    const states = [];
    viewer.on("danmaku", (ev) => texts.push(ev.text));
    viewer.on("state", (s) => states.push(s.state));
    viewer.on("error", () => {});
    await viewer.connect();
    await viewer.join("room:race");
    // Exactly one connection is left, on one of the real edges; the hung edge's
    // socket was opened by the race and closed once another edge won.
    const conns = async (s) => (await metric(s.baseUrl, 'danmaku_edge_connections{transport="ws_pb"}')) ?? 0;
    await until("one connection left", async () => (await conns(a)) + (await conns(b)) === 1);
    await until("the hung edge's socket closed", () => hole.sockets.length >= 1 && hole.sockets.every((s) => s.closed));
    const [winner, other] = (await conns(a)) === 1 ? [a, b] : [b, a];
    await winner.post(mint("poster"), "room:race", { kind: "danmaku", text: "on the winner" });
    await until("danmaku from the winner", () => texts.includes("on the winner"));
    // The winner dies: the next race (same four URLs) lands on the other real edge.
    await winner.kill();
    await until("reconnected to the other edge", async () => (await conns(other)) === 1, 30_000);
    await until("rejoined", async () => (await (await fetch(`${other.baseUrl}/v1/channels/room:race/online`)).json()).online === 1);
    await other.post(mint("poster"), "room:race", { kind: "danmaku", text: "on the other" });
    await until("danmaku from the other edge", () => texts.includes("on the other"));
    assert.equal(viewer.stats.reconnects, 1);
    assert.ok(states.includes("reconnecting"));
    viewer.close();
  });

  test("protobuf refused on the way: auto falls back to the JSON subprotocol", async () => {
    const standalone = new Standalone({ args: ["--dev-app-tokens"] });
    await standalone.start();
    cleanup.push(() => standalone.stop());
    const proxy = await pbRefusingProxy(`127.0.0.1:${standalone.port}`);
    cleanup.push(() => proxy.close());
    const wsViaProxy = `${proxy.base.replace("http", "ws")}/v1/ws`;
    const token = await standalone.token("fallback-viewer");
    const viewer = new DanmakuClient({
      baseUrl: proxy.base,
      edges: [wsViaProxy],
      getToken: async () => token,
      WebSocket,
      backoff: { initialMs: 50, maxMs: 400 },
    });
    cleanup.push(() => viewer.close());
    const texts = [];
    viewer.on("danmaku", (ev) => texts.push(ev.text));
    viewer.on("error", () => {});
    assert.equal(viewer.protocol, "pb");
    await viewer.connect();
    assert.equal(viewer.protocol, "json", "switched after protobuf upgrades kept failing");
    assert.ok(proxy.refused.count >= 4, `protobuf upgrades refused: ${proxy.refused.count}`);
    await viewer.join("room:fallback");
    const sender = await standalone.token("fallback-poster");
    for (let i = 0; i < 5; i++) await standalone.post(sender, "room:fallback", { kind: "danmaku", text: `over json ${i}` });
    await until("danmaku over JSON through the proxy", () => texts.length === 5);
    assert.deepEqual(texts, [0, 1, 2, 3, 4].map((i) => `over json ${i}`));
    // A gift too: the reliable lane works the same over JSON.
    const gifts = [];
    viewer.on("gift", (g) => gifts.push(g.seq));
    const { seq } = await standalone.post(sender, "room:fallback", { kind: "gift", text: "rocket", client_msg_id: "fb-1" });
    await until("gift over JSON", () => gifts.length === 1);
    assert.deepEqual(gifts, [seq]);
    viewer.close();
  });
});
