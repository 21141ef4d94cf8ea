// Reconnect delays: exponential with full jitter, so that thousands of viewers
// cut off by one edge do not all come back in the same millisecond.

/**
 * @typedef {object} BackoffOptions
 * @property {number} [initialMs] first delay ceiling, default 200
 * @property {number} [maxMs]     largest delay ceiling, default 10,000
 * @property {number} [factor]    growth per attempt, default 2
 * @property {number} [jitter]    0..1: part of the delay that is random, default 0.5
 */
export class Backoff {
  /** @param {BackoffOptions} [o] @param {() => number} [random] */
  constructor(o = {}, random = Math.random) {
    this.initialMs = o.initialMs ?? 200;
    this.maxMs = o.maxMs ?? 10_000;
    this.factor = o.factor ?? 2;
    this.jitter = Math.min(1, Math.max(0, o.jitter ?? 0.5));
    this.random = random;
    this.attempt = 0;
  }

  /** The delay before the next attempt (and counts the attempt). */
  next() {
    const ceiling = Math.min(this.maxMs, this.initialMs * this.factor ** this.attempt);
    this.attempt++;
    return Math.round(ceiling * (1 - this.jitter) + ceiling * this.jitter * this.random());
  }

  /** After a success. */
  reset() {
    this.attempt = 0;
  }
}
