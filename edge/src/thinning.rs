//! Hot-room thinning: when a room's danmaku come faster than its `max_rate`
//! (danmaku per second pushed to each viewer), the edge leaves some out of
//! the room's ticks, so a flooded room stays readable and costs less to push.
//!
//! What is never left out: gifts and chat (reliable, `seq > 0`), retractions,
//! and danmaku ingest marked `priority` (sent by an `app` token or a room
//! moderator — the app makes a room's host its moderator). Priority danmaku
//! still use up the room's budget. The rest are sampled evenly within the
//! tick (every k-th, Bresenham-style, so no sender's run is cut as a block),
//! and the tick's `Batch.sampled_out` says how many were left out, so a client
//! can show "+1,234".
//!
//! The budget is a token bucket per room, refilled at `max_rate` per second
//! (a room's first capped tick starts with its own window's worth) and
//! holding at most one second's worth (or one window, when longer), so the
//! pushed rate follows the cap whatever the tick length. The decision is made once per tick and room,
//! on the tick's event vector in place (no allocation), never per viewer:
//! every viewer gets the same thinned frame, built once.

use std::time::{Duration, Instant};

use danmaku_proto::pb;

/// The bucket holds at most this many seconds of `max_rate`.
const BURST_SECS: f64 = 1.0;

/// One room's budget.
#[derive(Debug, Default)]
pub struct Thinning {
    /// Danmaku that may still be pushed; may go below zero when priority
    /// danmaku alone exceed the rate (bounded by one burst).
    tokens: f64,
    last: Option<Instant>,
}

/// Whether thinning may leave `ev` out.
fn thinnable(ev: &pb::Event) -> bool {
    ev.seq == 0 && ev.kind == pb::Kind::Danmaku as i32 && !ev.priority
}

impl Thinning {
    /// Thins `events` (one tick of the room, gathered over `window`) to
    /// `max_rate` per second at `now`; returns how many were left out.
    /// `max_rate` 0: no cap (the bucket is forgotten).
    pub fn thin(
        &mut self,
        now: Instant,
        window: Duration,
        max_rate: u32,
        events: &mut Vec<pb::Event>,
    ) -> u64 {
        if max_rate == 0 {
            self.last = None;
            return 0;
        }
        let rate = f64::from(max_rate);
        let window = window.as_secs_f64();
        let burst = (rate * BURST_SECS.max(window)).max(1.0);
        let elapsed = match self.last {
            Some(last) => now.duration_since(last).as_secs_f64(),
            None => window,
        };
        self.tokens = (self.tokens + rate * elapsed).min(burst);
        self.last = Some(now);
        let (mut n, mut kept_anyway) = (0u64, 0u64);
        for ev in events.iter() {
            if thinnable(ev) {
                n += 1;
            } else if ev.kind == pb::Kind::Danmaku as i32 && ev.seq == 0 {
                kept_anyway += 1;
            }
        }
        self.tokens = (self.tokens - kept_anyway as f64).max(-burst);
        let allowed = (self.tokens.floor().max(0.0) as u64).min(n);
        self.tokens -= allowed as f64;
        if allowed == n {
            return 0;
        }
        // Keep the i-th thinnable event when floor((i+1)·allowed/n) steps up:
        // `allowed` of `n`, evenly spread.
        let mut i = 0u64;
        events.retain(|ev| {
            if !thinnable(ev) {
                return true;
            }
            let keep = (i + 1) * allowed / n > i * allowed / n;
            i += 1;
            keep
        });
        n - allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(50);

    fn danmaku(i: usize, priority: bool) -> pb::Event {
        pb::Event {
            kind: pb::Kind::Danmaku as i32,
            text: format!("d{i}"),
            priority,
            ..Default::default()
        }
    }

    fn gift(seq: u64) -> pb::Event {
        pb::Event {
            kind: pb::Kind::Gift as i32,
            seq,
            ..Default::default()
        }
    }

    #[test]
    fn no_cap_keeps_everything() {
        let mut t = Thinning::default();
        let mut evs: Vec<_> = (0..1000).map(|i| danmaku(i, false)).collect();
        assert_eq!(t.thin(Instant::now(), TICK, 0, &mut evs), 0);
        assert_eq!(evs.len(), 1000);
    }

    #[test]
    fn a_2000_per_second_room_capped_at_200_pushes_200_with_every_gift_and_priority() {
        let mut t = Thinning::default();
        let start = Instant::now() + TICK;
        let (mut kept, mut out, mut priority, mut gifts) = (0u64, 0u64, 0u64, 0u64);
        let mut seq = 0;
        // 10 s of 50 ms ticks, 100 danmaku each (2,000/s): one in 20 priority,
        // and a gift every tick.
        for tick in 0..200u32 {
            let now = start + Duration::from_millis(50) * tick;
            let mut evs: Vec<_> = (0..100).map(|i| danmaku(i, i % 20 == 0)).collect();
            seq += 1;
            evs.push(gift(seq));
            out += t.thin(now, TICK, 200, &mut evs);
            kept += evs.iter().filter(|e| e.seq == 0).count() as u64;
            priority += evs.iter().filter(|e| e.priority).count() as u64;
            gifts += evs.iter().filter(|e| e.seq > 0).count() as u64;
        }
        let rate = kept as f64 / 10.0;
        assert!((180.0..=220.0).contains(&rate), "pushed {rate}/s");
        assert_eq!(priority, 200 * 5, "every priority danmaku");
        assert_eq!(gifts, 200, "every gift");
        assert_eq!(kept + out, 200 * 100, "sampled_out counts the rest");
    }

    #[test]
    fn the_kept_ones_are_spread_evenly_over_the_tick() {
        let mut t = Thinning::default();
        let mut evs: Vec<_> = (0..1000).map(|i| danmaku(i, false)).collect();
        // A fresh bucket holds one window: 50 at 100/s over half a second.
        let half = Duration::from_millis(500);
        assert_eq!(t.thin(Instant::now(), half, 100, &mut evs), 950);
        let idx: Vec<usize> = evs.iter().map(|e| e.text[1..].parse().unwrap()).collect();
        assert_eq!(idx.len(), 50);
        assert!(idx.windows(2).all(|w| w[1] - w[0] == 20), "{idx:?}");
    }
}
