// A tiny HTTP proxy that forwards plain requests (streamed both ways, so
// server-sent events and long-polls pass) and refuses every WebSocket upgrade
// with 403: what a corporate proxy that breaks WebSocket looks like to a client.

import { createServer, request } from "node:http";

export class RefusingProxy {
  /** @param {string} target base URL, e.g. http://127.0.0.1:7070 */
  constructor(target) {
    this.target = new URL(target);
    this.upgradesRefused = 0;
    this.requests = 0;
    this.server = createServer((req, res) => {
      this.requests++;
      const up = request(
        { host: this.target.hostname, port: this.target.port, method: req.method, path: req.url, headers: req.headers },
        (r) => {
          res.writeHead(r.statusCode ?? 502, r.headers);
          r.pipe(res);
        },
      );
      up.on("error", () => { res.destroy(); });
      res.on("close", () => up.destroy());
      req.pipe(up);
    });
    this.server.on("upgrade", (_req, socket) => {
      this.upgradesRefused++;
      socket.end("HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    });
  }

  /** Listens on a free loopback port; resolves with the proxy's base URL. */
  start() {
    return new Promise((resolve) => {
      this.server.listen(0, "127.0.0.1", () => resolve(this.baseUrl));
    });
  }

  get baseUrl() {
    return `http://127.0.0.1:${this.server.address().port}`;
  }

  stop() {
    this.server.closeAllConnections?.();
    return new Promise((r) => this.server.close(() => r()));
  }
}
