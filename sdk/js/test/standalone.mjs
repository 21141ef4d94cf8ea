// Starts a REAL `danmaku standalone` process for tests: a free port, a temp data
// dir, waits for /healthz. The binary is $DANMAKU_BIN, else the newer of
// {debug,release}/danmaku in the first of $CARGO_TARGET_DIR,
// ~/.cache/danmaku/target (scripts/test.sh's default) and ./target that has one.

import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { createServer } from "node:net";
import { homedir, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");

export function findBinary() {
  if (process.env.DANMAKU_BIN) return process.env.DANMAKU_BIN;
  // The first target dir that has a build wins (another checkout's build under a
  // shared default dir would serve another version of the page); within it, the
  // newer of debug and release.
  const dirs = [process.env.CARGO_TARGET_DIR, join(homedir(), ".cache/danmaku/target"), join(REPO, "target")].filter(Boolean);
  for (const d of dirs) {
    const found = [];
    for (const p of ["debug", "release"]) {
      const bin = join(d, p, "danmaku");
      if (existsSync(bin)) found.push({ bin, t: statSync(bin).mtimeMs });
    }
    if (found.length) return found.sort((a, b) => b.t - a.t)[0].bin;
  }
  throw new Error(`no danmaku binary: build it (cargo build) or set DANMAKU_BIN; looked in ${dirs.join(", ")}`);
}

/** A TCP port free right now (the server binds TCP and UDP on it). */
export function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export class Standalone {
  /** @param {{args?: string[], port?: number, data?: string}} o */
  constructor(o = {}) {
    this.bin = findBinary();
    this.args = o.args ?? [];
    this.port = o.port ?? null;
    this.data = o.data ?? mkdtempSync(join(tmpdir(), "danmaku-sdk-test-"));
    this.ownData = !o.data;
    this.child = null;
    this.log = "";
  }

  get baseUrl() {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Starts (or restarts on the same port and data dir) and waits until healthy. */
  async start() {
    for (let attempt = 0; attempt < 5; attempt++) {
      this.port ??= await freePort();
      const child = spawn(this.bin, ["standalone", "--listen", `127.0.0.1:${this.port}`, "--data", this.data, ...this.args], {
        stdio: ["ignore", "pipe", "pipe"],
        env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" },
      });
      this.child = child;
      let exited = false;
      child.on("exit", () => (exited = true));
      const keep = (b) => { this.log = (this.log + b.toString()).slice(-20_000); };
      child.stdout.on("data", keep);
      child.stderr.on("data", keep);
      const deadline = Date.now() + 30_000;
      while (Date.now() < deadline && !exited) {
        try {
          const r = await fetch(`${this.baseUrl}/healthz`);
          if (r.ok) return this;
        } catch { /* not yet */ }
        await sleep(50);
      }
      if (!exited) {
        child.kill("SIGKILL");
        throw new Error(`standalone not healthy within 30 s:\n${this.log}`);
      }
      // The port was taken between choosing and binding (or AddrInUse after a
      // restart): retry, on a new port only when we chose it.
      await sleep(200);
    }
    throw new Error(`standalone did not start:\n${this.log}`);
  }

  /** SIGKILL: connections die without a close frame, like a crashed process. */
  async kill() {
    const c = this.child;
    // A process killed by a signal keeps exitCode null: signalCode says it is gone.
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const gone = new Promise((r) => c.once("exit", r));
    c.kill("SIGKILL");
    await gone;
  }

  async stop() {
    await this.kill();
    if (this.ownData) rmSync(this.data, { recursive: true, force: true });
  }

  async token(user, role) {
    const r = await fetch(`${this.baseUrl}/v1/dev/token`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(role ? { user, role } : { user }),
    });
    if (!r.ok) throw new Error(`dev token: ${r.status} ${await r.text()}`);
    return (await r.json()).token;
  }

  /** POSTs a message as `token`; returns the JSON answer (throws on non-2xx). */
  async post(token, channel, body) {
    const r = await fetch(`${this.baseUrl}/v1/channels/${encodeURIComponent(channel)}/messages`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
      body: JSON.stringify(body),
    });
    const text = await r.text();
    if (!r.ok) throw new Error(`post: ${r.status} ${text}`);
    return JSON.parse(text);
  }
}
