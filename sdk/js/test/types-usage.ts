// Compiled (not run) by `npm run typecheck`: the published types describe the API
// the README shows.
import { DanmakuClient, devToken, SUBPROTOCOL_PB_DENSE, type DanmakuEvent, type StateChange } from "@danmaku/sdk";

async function main(): Promise<void> {
  const client = new DanmakuClient({
    baseUrl: "http://127.0.0.1:7070",
    getToken: (reason) => devToken("http://127.0.0.1:7070", `user-${reason}`),
    protocol: "auto",
    backoff: { initialMs: 100, maxMs: 5_000, jitter: 0.5 },
  });
  const off = client.on("danmaku", (ev: DanmakuEvent, channel: string) => console.log(channel, ev.text, ev.ts_ms));
  client.on("gift", (ev) => console.log(ev.seq, ev.payload?.gift));
  client.on("gift", async (ev) => {
    if (ev.blob !== undefined) console.log(client.blobUrl(ev.blob), (await client.fetchBlob(ev.blob)).contentType);
  });
  client.on("online", ({ channel, online }) => console.log(channel, online.toFixed(0)));
  client.on("batch", (b) => console.log(SUBPROTOCOL_PB_DENSE, b.codec, b.dict_id, b.encoding));
  client.on("state", (s: StateChange) => console.log(s.state, s.resumed === true));
  await client.connect();
  const joined = await client.join("room:1");
  console.log(joined.last_seq + 1, joined.ack_interval_ms ?? 0, client.ackIntervalFor("room:1") >= client.ackIntervalMs);
  const sent = await client.send("room:1", { kind: "gift", text: "rocket", payload: { n: 1 } });
  console.log(sent.seq);
  const { id } = await client.http.uploadBlob(new Uint8Array([1]), "image/png");
  await client.send("room:1", { kind: "gift", text: "rocket", blob: id });
  for await (const page of client.historyPages("group:7", { limit: 50 })) console.log(page.map((m) => m.seq));
  const unread = await client.unread();
  console.log(unread.total, client.deliveredUpto("room:1"), client.stats.decodeMs);
  off();
  client.close();
}
void main;
