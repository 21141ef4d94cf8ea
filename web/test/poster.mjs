// A paced danmaku load generator for the browser load test, run as its own node
// process so its HTTP work never waits behind puppeteer's traffic in the test
// process (one event loop doing both reached ~60 posts/s on a busy box).
//
//   node poster.mjs '{"base":"http://127.0.0.1:7070","channel":"room:load","tokens":["…"],
//                     "rate":1000,"seconds":10,"conns":24}'
//
// Every 5 ms it queues the posts due by then (rate × elapsed), so the offered load
// is exactly `rate`/s however the server answers; `conns` keep-alive connections
// (HTTP/1.1, one request in flight each) take them from the queue. Prints one JSON
// line: posts, accepted (202), failures by status, how long dispatching and
// answering took, the answered rate, and the accepted count of each second.

import { Agent, request } from "node:http";

const o = JSON.parse(process.argv[2]);
const rate = o.rate ?? 1000;
const seconds = o.seconds ?? 10;
const conns = o.conns ?? 24;
const total = Math.round(rate * seconds);
const texts = o.texts ?? ["666", "前方高能！！！", "哈哈哈哈哈哈", "awesome play", "主播加油 💪", "这波操作可以", "gg", "打卡 🎉", "yyds", "太强了吧"];
const url = `${o.base}/v1/channels/${encodeURIComponent(o.channel)}/messages`;
const agent = new Agent({ keepAlive: true, maxSockets: conns });

function post(n) {
  const data = JSON.stringify({ kind: "danmaku", text: `${texts[n % texts.length]} ${n}` });
  return new Promise((res) => {
    const req = request(url, {
      method: "POST",
      agent,
      headers: {
        "content-type": "application/json",
        "content-length": Buffer.byteLength(data),
        authorization: `Bearer ${o.tokens[n % o.tokens.length]}`,
      },
    }, (r) => {
      r.resume();
      r.on("end", () => res(r.statusCode));
    });
    req.on("error", () => res(0));
    req.end(data);
  });
}

const queue = [];
let queued = 0;
let accepted = 0;
let maxBacklog = 0;
const failures = {};
const perSecond = Array.from({ length: Math.ceil(seconds) + 120 }, () => 0);
const waiters = [];
const wakeAll = () => { for (const w of waiters.splice(0)) w(); };
const t0 = performance.now();

async function worker() {
  for (;;) {
    while (queue.length === 0) {
      if (queued >= total) return;
      await new Promise((r) => waiters.push(r));
    }
    const n = queue.shift();
    const status = await post(n);
    if (status === 202) {
      accepted++;
      perSecond[Math.floor((performance.now() - t0) / 1000)]++;
    } else {
      failures[status] = (failures[status] ?? 0) + 1;
    }
  }
}

const workers = Array.from({ length: conns }, worker);
await new Promise((done) => {
  const timer = setInterval(() => {
    const due = Math.min(total, Math.floor(((performance.now() - t0) * rate) / 1000));
    while (queued < due) queue.push(queued++);
    maxBacklog = Math.max(maxBacklog, queue.length);
    wakeAll();
    if (queued >= total) {
      clearInterval(timer);
      done();
    }
  }, 5);
});
const dispatchSeconds = (performance.now() - t0) / 1000;
wakeAll(); // idle workers see queued >= total and return
await Promise.all(workers);
const answerSeconds = (performance.now() - t0) / 1000;
agent.destroy();
const full = perSecond.slice(0, Math.floor(dispatchSeconds));
console.log(JSON.stringify({
  posts: total,
  accepted,
  failures,
  offered_per_sec: rate,
  dispatch_seconds: dispatchSeconds,
  answer_seconds: answerSeconds,
  answered_per_sec: total / answerSeconds,
  max_backlog: maxBacklog,
  accepted_per_second: full,
  min_accepted_in_a_second: full.length ? Math.min(...full) : 0,
}));
