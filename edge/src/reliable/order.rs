//! Channel order, sans-IO in the quinn-proto manner: time and events in,
//! decisions out. [`ReorderBuffer`] (one per channel on this edge, owned by a
//! fan-out task, `sequencer.rs`) delivers seqs in order, drops duplicates, holds a
//! seq that arrives ahead of a missing one for a short while, and then names
//! the gap to read from the store.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A gap the reorder buffer could not wait out: read `after+1 ..= upto` from the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GapToFill {
    /// The last seq delivered in order (exclusive start of the read).
    pub after: u64,
    /// The last missing seq (the first held one minus one).
    pub upto: u64,
}

impl GapToFill {
    /// How many messages the gap holds.
    pub fn len(&self) -> u64 {
        self.upto.saturating_sub(self.after)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Per-channel ordering of reliable events that may arrive out of order or twice.
///
/// The first seq ever seen starts the sequence (the edge does not know what came
/// before it joined the channel; connections fill their own gaps from the store).
#[derive(Debug)]
pub struct ReorderBuffer<E> {
    last: Option<u64>,
    held: BTreeMap<u64, E>,
    hold: Duration,
    holding_since: Option<Instant>,
}

impl<E> ReorderBuffer<E> {
    pub fn new(hold: Duration) -> Self {
        ReorderBuffer {
            last: None,
            held: BTreeMap::new(),
            hold,
            holding_since: None,
        }
    }

    /// The last seq delivered in order, if any.
    pub fn last_delivered(&self) -> Option<u64> {
        self.last
    }

    /// Events held back waiting for a missing seq.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// An event arrived. Returns what is now deliverable, in seq order; empty for
    /// a duplicate or an event that must wait (see [`ReorderBuffer::deadline`]).
    pub fn on_event(&mut self, now: Instant, seq: u64, ev: E) -> Vec<(u64, E)> {
        let last = *self.last.get_or_insert(seq.saturating_sub(1));
        if seq <= last || self.held.contains_key(&seq) {
            return Vec::new();
        }
        self.held.insert(seq, ev);
        let ready = self.drain_contiguous();
        self.holding_since = match (self.held.is_empty(), ready.is_empty()) {
            (true, _) => None,
            // Progress but still a gap: the wait starts again for the next hole.
            (false, false) => Some(now),
            (false, true) => self.holding_since.or(Some(now)),
        };
        ready
    }

    /// When the current hold expires, if anything is held.
    pub fn deadline(&self) -> Option<Instant> {
        self.holding_since.map(|t| t + self.hold)
    }

    /// Called at or after [`ReorderBuffer::deadline`]: the gap that did not fill
    /// itself in time. `None` if nothing is due.
    pub fn on_timeout(&mut self, now: Instant) -> Option<GapToFill> {
        let deadline = self.deadline()?;
        if now < deadline {
            return None;
        }
        let after = self.last?;
        let first_held = *self.held.keys().next()?;
        Some(GapToFill {
            after,
            upto: first_held - 1,
        })
    }

    /// The store answered a [`GapToFill`]: merges what it returned and delivers
    /// everything held, in order. Seqs the store did not have are skipped
    /// (waiting longer would not bring them; connections fill their own gaps).
    pub fn on_filled(&mut self, filled: impl IntoIterator<Item = (u64, E)>) -> Vec<(u64, E)> {
        let last = self.last.unwrap_or(0);
        for (seq, ev) in filled {
            if seq > last {
                self.held.entry(seq).or_insert(ev);
            }
        }
        let held = std::mem::take(&mut self.held);
        if let Some((&max, _)) = held.iter().next_back() {
            self.last = Some(max);
        }
        self.holding_since = None;
        held.into_iter().collect()
    }

    fn drain_contiguous(&mut self) -> Vec<(u64, E)> {
        let mut out = Vec::new();
        let mut last = self.last.unwrap_or(0);
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() != last + 1 {
                break;
            }
            last += 1;
            out.push((last, entry.remove()));
        }
        self.last = Some(last);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn seqs<E>(v: &[(u64, E)]) -> Vec<u64> {
        v.iter().map(|(s, _)| *s).collect()
    }

    #[test]
    fn reorder_delivers_in_order_and_drops_duplicates() {
        let t0 = Instant::now();
        let mut r = ReorderBuffer::new(ms(200));
        assert_eq!(seqs(&r.on_event(t0, 5, "e5")), vec![5]);
        assert_eq!(seqs(&r.on_event(t0, 5, "dup")), Vec::<u64>::new());
        assert!(r.on_event(t0, 7, "e7").is_empty(), "7 waits for 6");
        assert!(r.on_event(t0, 7, "dup7").is_empty());
        assert_eq!(r.deadline(), Some(t0 + ms(200)));
        let out = r.on_event(t0 + ms(10), 6, "e6");
        assert_eq!(out, vec![(6, "e6"), (7, "e7")]);
        assert_eq!(r.deadline(), None);
        assert!(r.on_event(t0, 3, "old").is_empty());
        assert_eq!(r.last_delivered(), Some(7));
    }

    #[test]
    fn reorder_names_the_gap_after_the_hold_and_merges_the_fill() {
        let t0 = Instant::now();
        let mut r = ReorderBuffer::new(ms(200));
        r.on_event(t0, 1, 1);
        assert!(r.on_event(t0 + ms(5), 4, 4).is_empty());
        assert!(r.on_event(t0 + ms(6), 5, 5).is_empty());
        assert_eq!(r.on_timeout(t0 + ms(100)), None, "not yet");
        let gap = r.on_timeout(t0 + ms(205)).expect("gap due");
        assert_eq!(gap, GapToFill { after: 1, upto: 3 });
        assert_eq!(gap.len(), 2);
        // The store returns 2 and 3 (and a stale 1, ignored); 4 and 5 follow.
        let out = r.on_filled(vec![(1, 1), (2, 2), (3, 3)]);
        assert_eq!(seqs(&out), vec![2, 3, 4, 5]);
        assert_eq!(r.held(), 0);
        assert_eq!(r.deadline(), None);
        assert_eq!(seqs(&r.on_event(t0, 6, 6)), vec![6]);
    }

    #[test]
    fn reorder_partial_progress_restarts_the_hold() {
        let t0 = Instant::now();
        let mut r = ReorderBuffer::new(ms(200));
        r.on_event(t0, 1, ());
        r.on_event(t0, 3, ());
        r.on_event(t0, 5, ());
        assert_eq!(seqs(&r.on_event(t0 + ms(150), 2, ())), vec![2, 3]);
        assert_eq!(r.deadline(), Some(t0 + ms(350)));
        let gap = r.on_timeout(t0 + ms(350)).unwrap();
        assert_eq!(gap, GapToFill { after: 3, upto: 4 });
        // The store did not have 4: 5 goes out anyway.
        assert_eq!(seqs(&r.on_filled(Vec::new())), vec![5]);
    }
}
