//! When to flush a channel's batch: the adaptive window, as plain data and
//! functions (sans IO: time comes in as an argument, nothing sleeps here).
//!
//! # The rule
//!
//! The edge's scarce resource is frame writes per second (one `send()` per member
//! per flush; ~120k per core here, BENCHMARKS.md), not bytes. A channel with `m` local
//! members flushing every `w` seconds costs `m / w` writes per second. With `n`
//! active channels each gets an equal share `budget / n` of the write budget, so
//!
//! ```text
//! window(m, n) = clamp(m * n / budget, min_window, max_window)
//! ```
//!
//! With the defaults (budget 100k/s, 50 ms – 1 s) a 10-member room flushes every
//! 50 ms, a 100,000-member room about once a second, and a room's window also grows
//! when the edge hosts many busy channels. A batch also flushes early when it
//! reaches `max_events` events or `max_raw_bytes` encoded bytes, so a burst never
//! builds an oversized frame. The window is chosen when a batch opens (first event
//! after a flush) and kept until that batch flushes.
//!
//! A room with a hot-room cap (`max_rate`, `thinning.rs`) ticks no more often than
//! it takes the cap to fill [`CAPPED_EVENTS_PER_TICK`] events: thinning already
//! keeps only `max_rate` danmaku per second, so shorter ticks would cost one write
//! per viewer each for a handful of events (a 200/s room: 200 ms ticks of about 40
//! danmaku instead of 50 ms ticks of 10). [`capped_window`] applies it.
//!
//! [`PendingBatches`] applies the rule to many channels: `on_event` adds an event
//! and says whether a size cap forces a flush now; `next_deadline` tells the task
//! how long to sleep; `pop_due` hands out batches whose window elapsed.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;
use std::time::{Duration, Instant};

use danmaku_proto::pb;
use prost::Message;

use crate::config::BatchConfig;

/// The batching window of a channel with `members` local members when the edge
/// has `active_channels` channels (see the module doc).
pub fn window(cfg: &BatchConfig, members: usize, active_channels: usize) -> Duration {
    let budget = cfg.write_budget_per_sec.max(1) as f64;
    let writes = members.max(1) as f64 * active_channels.max(1) as f64;
    let secs = writes / budget;
    // Compare in f64 first: `from_secs_f64` panics on huge or non-finite values.
    if secs >= cfg.max_window.as_secs_f64() {
        return cfg.max_window.max(cfg.min_window);
    }
    Duration::from_secs_f64(secs).clamp(cfg.min_window, cfg.max_window.max(cfg.min_window))
}

/// Danmaku a capped room's tick aims to carry (see the module doc).
pub const CAPPED_EVENTS_PER_TICK: f64 = 40.0;

/// `window` stretched for a room capped at `max_rate` danmaku/s (0: no cap) to
/// at least [`CAPPED_EVENTS_PER_TICK`] events' worth, never past `max_window`.
pub fn capped_window(cfg: &BatchConfig, window: Duration, max_rate: u32) -> Duration {
    if max_rate == 0 {
        return window;
    }
    let fill = Duration::from_secs_f64(CAPPED_EVENTS_PER_TICK / f64::from(max_rate));
    window.max(fill.min(cfg.max_window))
}

/// Why a batch left [`PendingBatches`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushReason {
    /// Its window elapsed.
    Window,
    /// It reached `max_events` or `max_raw_bytes`.
    Full,
}

/// A batch ready to be encoded and pushed.
#[derive(Debug)]
pub struct Ready<K> {
    pub channel: K,
    pub events: Vec<pb::Event>,
    /// Encoded size of the events (length-delimited), before compression.
    pub raw_bytes: usize,
    /// The window chosen when this batch opened.
    pub window: Duration,
    pub reason: FlushReason,
}

#[derive(Debug)]
struct Pending {
    events: Vec<pb::Event>,
    raw_bytes: usize,
    window: Duration,
    /// Identifies this batch's entry in the deadline heap; entries of batches
    /// that flushed early stay in the heap and are skipped by generation.
    generation: u64,
}

/// Open batches of many channels, keyed by `K` (the channel name).
#[derive(Debug)]
pub struct PendingBatches<K> {
    cfg: BatchConfig,
    open: HashMap<K, Pending>,
    deadlines: BinaryHeap<Reverse<(Instant, u64, K)>>,
    next_generation: u64,
}

impl<K: Clone + Eq + Hash + Ord> PendingBatches<K> {
    pub fn new(cfg: BatchConfig) -> Self {
        PendingBatches {
            cfg,
            open: HashMap::new(),
            deadlines: BinaryHeap::new(),
            next_generation: 0,
        }
    }

    /// Number of channels with an open batch.
    pub fn open_batches(&self) -> usize {
        self.open.len()
    }

    /// Adds `event` to `channel`'s batch, opening one (with a window for
    /// `members` and `active_channels`) if none is open. Returns the batch when a
    /// size cap makes it due at once.
    pub fn on_event(
        &mut self,
        now: Instant,
        channel: K,
        event: pb::Event,
        members: usize,
        active_channels: usize,
    ) -> Option<Ready<K>> {
        self.on_event_capped(now, channel, event, members, active_channels, 0)
    }

    /// [`PendingBatches::on_event`] for a room capped at `max_rate` danmaku/s
    /// (0: none): a batch it opens gets the [`capped_window`].
    pub fn on_event_capped(
        &mut self,
        now: Instant,
        channel: K,
        event: pb::Event,
        members: usize,
        active_channels: usize,
        max_rate: u32,
    ) -> Option<Ready<K>> {
        let len = event.encoded_len();
        let raw = len + prost::length_delimiter_len(len);
        let pending = match self.open.get_mut(&channel) {
            Some(p) => p,
            None => {
                let w = capped_window(
                    &self.cfg,
                    window(&self.cfg, members, active_channels),
                    max_rate,
                );
                let generation = self.next_generation;
                self.next_generation += 1;
                self.deadlines
                    .push(Reverse((now + w, generation, channel.clone())));
                self.open.entry(channel.clone()).or_insert(Pending {
                    events: Vec::new(),
                    raw_bytes: 0,
                    window: w,
                    generation,
                })
            }
        };
        pending.events.push(event);
        pending.raw_bytes += raw;
        if pending.events.len() >= self.cfg.max_events
            || pending.raw_bytes >= self.cfg.max_raw_bytes
        {
            return self.take(channel, FlushReason::Full);
        }
        None
    }

    /// The earliest instant at which a batch becomes due, if any is open.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, generation, channel))) = self.deadlines.peek() {
            match self.open.get(channel) {
                Some(p) if p.generation == *generation => return Some(*at),
                // Flushed early (size cap) or reopened since: forget the old deadline.
                _ => {
                    self.deadlines.pop();
                }
            }
        }
        None
    }

    /// Removes and returns one batch whose window has elapsed at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Ready<K>> {
        let at = self.next_deadline()?;
        if at > now {
            return None;
        }
        let Reverse((_, _, channel)) = self.deadlines.pop()?;
        self.take(channel, FlushReason::Window)
    }

    fn take(&mut self, channel: K, reason: FlushReason) -> Option<Ready<K>> {
        let p = self.open.remove(&channel)?;
        Some(Ready {
            channel,
            events: p.events,
            raw_bytes: p.raw_bytes,
            window: p.window,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn ev(text: &str) -> pb::Event {
        pb::Event {
            kind: pb::Kind::Danmaku as i32,
            sender: "u".into(),
            text: text.into(),
            ts_ms: 1,
            ..Default::default()
        }
    }

    #[test]
    fn small_rooms_get_the_minimum_window() {
        let cfg = BatchConfig::default();
        assert_eq!(window(&cfg, 10, 1), ms(50));
        assert_eq!(window(&cfg, 10, 100), ms(50));
        assert_eq!(window(&cfg, 0, 0), ms(50));
    }

    #[test]
    fn huge_rooms_get_about_a_second() {
        let cfg = BatchConfig::default();
        assert_eq!(window(&cfg, 100_000, 1), Duration::from_secs(1));
        assert_eq!(window(&cfg, 50_000, 1), ms(500));
        assert_eq!(window(&cfg, usize::MAX, usize::MAX), Duration::from_secs(1));
    }

    #[test]
    fn window_grows_with_the_number_of_active_channels() {
        let cfg = BatchConfig::default();
        // 1,000 members: alone it gets 10 ms (clamped to 50); among 20 channels 200 ms.
        assert_eq!(window(&cfg, 1_000, 1), ms(50));
        assert_eq!(window(&cfg, 1_000, 20), ms(200));
        assert!(window(&cfg, 1_000, 40) > window(&cfg, 1_000, 20));
    }

    #[test]
    fn a_capped_room_ticks_once_its_cap_fills_a_tick() {
        let cfg = BatchConfig::default();
        assert_eq!(capped_window(&cfg, ms(50), 0), ms(50), "no cap");
        assert_eq!(capped_window(&cfg, ms(50), 200), ms(200));
        assert_eq!(capped_window(&cfg, ms(500), 200), ms(500), "never shorter");
        assert_eq!(
            capped_window(&cfg, ms(50), 10),
            Duration::from_secs(1),
            "at most max_window"
        );
        assert_eq!(capped_window(&cfg, ms(50), 100_000), ms(50));
        let mut b = PendingBatches::new(cfg);
        let t0 = Instant::now();
        b.on_event_capped(t0, "room:hot", ev("a"), 10, 1, 200);
        assert_eq!(b.next_deadline(), Some(t0 + ms(200)));
    }

    #[test]
    fn a_zero_budget_does_not_divide_by_zero() {
        let cfg = BatchConfig {
            write_budget_per_sec: 0,
            ..BatchConfig::default()
        };
        assert_eq!(window(&cfg, 1, 1), Duration::from_secs(1));
    }

    #[test]
    fn events_wait_for_their_window_then_flush_together() {
        let mut b = PendingBatches::new(BatchConfig::default());
        let t0 = Instant::now();
        assert!(b.on_event(t0, "room:1", ev("a"), 10, 1).is_none());
        assert!(b.on_event(t0 + ms(10), "room:1", ev("b"), 10, 1).is_none());
        assert_eq!(b.next_deadline(), Some(t0 + ms(50)));
        assert!(b.pop_due(t0 + ms(49)).is_none());
        let r = b.pop_due(t0 + ms(50)).expect("due");
        assert_eq!(r.channel, "room:1");
        assert_eq!(r.events.len(), 2);
        assert_eq!(r.reason, FlushReason::Window);
        assert_eq!(r.window, ms(50));
        assert!(r.raw_bytes > 0);
        assert_eq!(b.next_deadline(), None);
        assert_eq!(b.open_batches(), 0);
    }

    #[test]
    fn channels_have_independent_deadlines() {
        let mut b = PendingBatches::new(BatchConfig::default());
        let t0 = Instant::now();
        b.on_event(t0, "room:big", ev("x"), 100_000, 2);
        b.on_event(t0 + ms(5), "room:small", ev("y"), 3, 2);
        assert_eq!(b.next_deadline(), Some(t0 + ms(55)));
        assert_eq!(
            b.pop_due(t0 + ms(60)).map(|r| r.channel),
            Some("room:small")
        );
        assert!(b.pop_due(t0 + ms(60)).is_none());
        assert_eq!(b.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(
            b.pop_due(t0 + Duration::from_secs(1)).map(|r| r.channel),
            Some("room:big")
        );
    }

    #[test]
    fn event_cap_flushes_at_once_and_forgets_the_old_deadline() {
        let cfg = BatchConfig {
            max_events: 3,
            ..BatchConfig::default()
        };
        let mut b = PendingBatches::new(cfg);
        let t0 = Instant::now();
        assert!(b.on_event(t0, "room:1", ev("1"), 10, 1).is_none());
        assert!(b.on_event(t0, "room:1", ev("2"), 10, 1).is_none());
        let r = b.on_event(t0, "room:1", ev("3"), 10, 1).expect("full");
        assert_eq!(r.reason, FlushReason::Full);
        assert_eq!(r.events.len(), 3);
        assert_eq!(b.next_deadline(), None);
        // A new batch opens with its own deadline.
        b.on_event(t0 + ms(20), "room:1", ev("4"), 10, 1);
        assert_eq!(b.next_deadline(), Some(t0 + ms(70)));
        assert!(b.pop_due(t0 + ms(50)).is_none());
    }

    #[test]
    fn byte_cap_flushes_at_once() {
        let cfg = BatchConfig {
            max_raw_bytes: 100,
            ..BatchConfig::default()
        };
        let mut b = PendingBatches::new(cfg);
        let t0 = Instant::now();
        assert!(b.on_event(t0, "room:1", ev("short"), 10, 1).is_none());
        let r = b
            .on_event(t0, "room:1", ev(&"x".repeat(200)), 10, 1)
            .expect("full");
        assert_eq!(r.events.len(), 2);
        assert!(r.raw_bytes >= 200);
    }
}
