// The client's half of the reliable lane (gifts, group chat), as pure logic: frames
// in, decisions out; no sockets or timers, so it is unit-tested directly.
//
// Per channel it keeps `deliveredUpto`, the highest seq handed to the app (every
// lower one was handed out too), and the seqs held behind a hole
// (docs/PROTOCOL.md, "Reconnecting and resuming"):
//   * seq <= deliveredUpto: a retransmission or replay: drop it, ack again;
//   * seq == deliveredUpto + 1: deliver it and every held seq that now follows;
//   * seq >  deliveredUpto + 1: hold it and ask `resume{after_seq: deliveredUpto}`,
//     once per after_seq.
// Acks are cumulative (`ack{seq: deliveredUpto}`).

/** Held frames per channel before the tracker stops holding (and relies on resume). */
const MAX_HELD = 10_000;

export class ReliableTracker {
  constructor() {
    /** @type {Map<string, {upto: number|null, held: Map<number, any>, resumeAsked: number|null}>} */
    this.channels = new Map();
  }

  #state(channel) {
    let s = this.channels.get(channel);
    if (!s) {
      s = { upto: null, held: new Map(), resumeAsked: null };
      this.channels.set(channel, s);
    }
    return s;
  }

  /** The highest seq delivered on `channel`, or null if nothing yet (not anchored). */
  deliveredUpto(channel) {
    return this.channels.get(channel)?.upto ?? null;
  }

  /**
   * Anchors a channel at `seq` (an offset the app stored, or a room's `last_seq` at
   * join): everything up to it counts as delivered. Never moves backwards.
   */
  anchor(channel, seq) {
    const s = this.#state(channel);
    if (s.upto === null || seq > s.upto) {
      s.upto = seq;
      for (const k of s.held.keys()) if (k <= seq) s.held.delete(k);
    }
  }

  /** Whether the channel has an anchor (something delivered or an offset given). */
  anchored(channel) {
    return this.deliveredUpto(channel) !== null;
  }

  /** Forgets a channel (after leave). */
  forget(channel) {
    this.channels.delete(channel);
  }

  /** A new connection: gap requests may be asked again. */
  onReconnect() {
    for (const s of this.channels.values()) s.resumeAsked = null;
  }

  /**
   * One `reliable` frame.
   * @returns {{deliver: any[], ack: number|null, resume: number|null, duplicate: boolean}}
   */
  onReliable(channel, seq, event) {
    const s = this.#state(channel);
    const out = { deliver: [], ack: null, resume: null, duplicate: false };
    if (s.upto === null) s.upto = seq - 1; // a fresh join: anchored by the first seq
    if (seq <= s.upto) {
      out.duplicate = true;
      out.ack = s.upto;
      return out;
    }
    if (seq > s.upto + 1) {
      if (!s.held.has(seq) && s.held.size < MAX_HELD) s.held.set(seq, event);
      if (s.resumeAsked !== s.upto) {
        s.resumeAsked = s.upto;
        out.resume = s.upto;
      }
      return out;
    }
    out.deliver.push(event);
    s.upto = seq;
    while (s.held.has(s.upto + 1)) {
      const next = s.upto + 1;
      out.deliver.push(s.held.get(next));
      s.held.delete(next);
      s.upto = next;
    }
    out.ack = s.upto;
    return out;
  }
}
