// The fallback transports against a REAL `danmaku standalone`: server-sent
// events and long-poll deliver danmaku and every gift once, in order; and with
// WebSocket refused by a proxy, "auto" falls back by itself (observable in
// `client.transport`).

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { WebSocket as WsWebSocket } from "ws";
import { DanmakuClient, devToken } from "../src/index.js";
import { RefusingProxy } from "./refusing-proxy.mjs";
import { Standalone } from "./standalone.mjs";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const WebSocket = globalThis.WebSocket ?? WsWebSocket;

async function until(what, cond, ms = 20_000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await cond()) return;
    await sleep(25);
  }
  assert.fail(`timed out waiting for ${what}`);
}

function client(baseUrl, user, o = {}) {
  return new DanmakuClient({
    baseUrl,
    getToken: async () => devToken(baseUrl, user),
    heartbeatMs: 2_000,
    WebSocket,
    backoff: { initialMs: 50, maxMs: 300 },
    pollWaitSecs: 5,
    ...o,
  });
}

describe("fallback transports", () => {
  const server = new Standalone({ args: ["--user-rate", "1000", "--user-burst", "1000"] });
  const proxy = { p: null };
  before(async () => {
    await server.start();
    proxy.p = new RefusingProxy(server.baseUrl);
    await proxy.p.start();
  });
  after(async () => {
    await proxy.p.stop();
    await server.stop();
  });

  for (const [protocol, transport] of [["sse", "sse"], ["poll", "long-poll"]]) {
    test(`danmaku and gifts over ${transport}: every gift once, in order`, async () => {
      const room = `room:fb-${protocol}`;
      const viewer = client(server.baseUrl, `v-${protocol}`, { protocol });
      const danmaku = [];
      const gifts = [];
      viewer.on("danmaku", (ev) => danmaku.push(ev.text));
      viewer.on("gift", (ev) => gifts.push(ev.seq));
      await viewer.connect();
      assert.equal(viewer.transport, transport);
      await viewer.join(room);
      const sender = client(server.baseUrl, "poster");
      const seqs = [];
      for (let i = 0; i < 20; i++) {
        await sender.send(room, `弹幕 ${i}`);
        if (i % 4 === 0) seqs.push((await sender.send(room, { kind: "gift", text: "rocket" })).seq);
      }
      await until("every gift", () => gifts.length >= seqs.length);
      await until("every danmaku", () => danmaku.length >= 20);
      await sleep(1500); // past a resend: nothing comes twice
      assert.deepEqual(gifts, seqs);
      assert.equal(new Set(danmaku).size, 20);
      viewer.close();
    });
  }

  test("WebSocket refused by a proxy: auto falls back to sse", async () => {
    const room = "room:fb-proxy";
    const viewer = client(proxy.p.baseUrl, "v-proxy", { edges: [proxy.p.baseUrl.replace(/^http/, "ws") + "/v1/ws"] });
    const transports = [];
    viewer.on("state", (s) => transports.push(`${s.state}:${s.protocol}`));
    const gifts = [];
    viewer.on("gift", (ev) => gifts.push(ev.seq));
    await viewer.connect();
    assert.equal(viewer.transport, "sse", transports.join(" "));
    assert.ok(proxy.p.upgradesRefused >= 2, `upgrades refused: ${proxy.p.upgradesRefused}`);
    await viewer.join(room);
    const sender = client(server.baseUrl, "poster2");
    const seqs = [];
    for (let i = 0; i < 5; i++) seqs.push((await sender.send(room, { kind: "gift", text: "rocket" })).seq);
    await until("gifts through the proxy", () => gifts.length >= seqs.length);
    assert.deepEqual(gifts, seqs);
    viewer.close();
  });
});
