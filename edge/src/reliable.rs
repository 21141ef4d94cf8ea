//! The reliable lane's pure logic, sans-IO in the quinn-proto manner: time and
//! events in, decisions out. Tokio code (`reliable_fanout.rs`, `session.rs`,
//! `handlers/reliable.rs`) only moves frames and sleeps until [`deadline`]s.
//!
//! * [`ReorderBuffer`] (one per channel on this edge): delivers seqs in order,
//!   drops duplicates, holds a seq that arrives ahead of a missing one for a
//!   short while, and then names the gap to read from the store.
//! * [`UnackedWindow`] (one per connection × channel): frames sent but not yet
//!   acked, when to resend them (backoff ×2 up to a cap), and when to give up.
//!
//! [`deadline`]: ReorderBuffer::deadline

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

/// Why a connection's reliable lane cannot go on: it is closed with a resume hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backlog {
    /// More unacked frames than allowed.
    TooManyUnacked(usize),
    /// A frame was resent this many times without an ack.
    TooManyAttempts { seq: u64, attempts: u32 },
}

/// Retransmission settings of an [`UnackedWindow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowLimits {
    pub retransmit_initial: Duration,
    pub retransmit_max: Duration,
    pub max_unacked: usize,
    pub max_attempts: u32,
}

#[derive(Debug)]
struct InFlight<F> {
    frame: F,
    sent_at: Instant,
    attempts: u32,
    due: Instant,
}

/// Frames sent on one connection × channel and not yet acked.
///
/// A frame is resent only when no ack at all came since it was sent. On a TCP
/// or QUIC stream a frame written to a live connection arrives; a client that
/// keeps acking is alive and merely behind (an overloaded box, a slow phone),
/// and resending to it would only add writes where writes are the bottleneck.
/// A silent client gets resends with backoff and is closed after the last one.
#[derive(Debug)]
pub struct UnackedWindow<F> {
    limits: WindowLimits,
    frames: BTreeMap<u64, InFlight<F>>,
    last_ack_at: Option<Instant>,
}

impl<F: Clone> UnackedWindow<F> {
    pub fn new(limits: WindowLimits) -> Self {
        UnackedWindow {
            limits,
            frames: BTreeMap::new(),
            last_ack_at: None,
        }
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// `frame` (seq `seq`) was sent now. Sending a seq again (resume) restarts its timer.
    /// Errs when the window has grown past its limit.
    pub fn on_send(&mut self, now: Instant, seq: u64, frame: F) -> Result<(), Backlog> {
        self.frames.insert(
            seq,
            InFlight {
                frame,
                sent_at: now,
                attempts: 1,
                due: now + self.limits.retransmit_initial,
            },
        );
        if self.frames.len() > self.limits.max_unacked {
            return Err(Backlog::TooManyUnacked(self.frames.len()));
        }
        Ok(())
    }

    /// A cumulative ack at `now`: everything `<= seq` was received. Returns how
    /// many frames it removed.
    pub fn on_ack(&mut self, now: Instant, seq: u64) -> usize {
        self.last_ack_at = Some(now);
        let keep = self.frames.split_off(&seq.saturating_add(1));
        std::mem::replace(&mut self.frames, keep).len()
    }

    /// When the next retransmission is due.
    pub fn deadline(&self) -> Option<Instant> {
        self.frames.values().map(|f| f.due).min()
    }

    /// Frames to resend now, in seq order; each one's next wait doubles up to the
    /// cap. Errs when a frame has used all its attempts.
    pub fn due(&mut self, now: Instant) -> Result<Vec<(u64, F)>, Backlog> {
        let mut out = Vec::new();
        for (&seq, f) in self.frames.iter_mut() {
            if f.due > now {
                continue;
            }
            let wait = self
                .limits
                .retransmit_initial
                .saturating_mul(1 << f.attempts.min(16))
                .min(self.limits.retransmit_max);
            if self.last_ack_at.is_some_and(|at| at > f.sent_at) {
                // The client acked since: alive and behind, not lost. Look again later.
                f.sent_at = now;
                f.due = now + self.limits.retransmit_initial;
                continue;
            }
            if f.attempts >= self.limits.max_attempts {
                return Err(Backlog::TooManyAttempts {
                    seq,
                    attempts: f.attempts,
                });
            }
            f.attempts += 1;
            f.sent_at = now;
            f.due = now + wait;
            out.push((seq, f.frame.clone()));
        }
        Ok(out)
    }

    /// When the oldest unacked frame was last sent (for diagnostics).
    pub fn oldest_sent_at(&self) -> Option<Instant> {
        self.frames.values().map(|f| f.sent_at).min()
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

    fn limits() -> WindowLimits {
        WindowLimits {
            retransmit_initial: ms(1000),
            retransmit_max: ms(8000),
            max_unacked: 3,
            max_attempts: 4,
        }
    }

    #[test]
    fn window_acks_cumulatively() {
        let t0 = Instant::now();
        let mut w = UnackedWindow::new(limits());
        for s in 1..=3 {
            w.on_send(t0, s, s).unwrap();
        }
        assert_eq!(w.on_ack(t0, 2), 2);
        assert_eq!(w.len(), 1);
        assert_eq!(w.on_ack(t0, 2), 0);
        assert_eq!(w.on_ack(t0, 10), 1);
        assert!(w.is_empty());
        assert_eq!(w.deadline(), None);
    }

    #[test]
    fn window_retransmits_with_backoff_and_gives_up() {
        let t0 = Instant::now();
        let mut w = UnackedWindow::new(limits());
        w.on_send(t0, 1, "f1").unwrap();
        w.on_send(t0 + ms(500), 2, "f2").unwrap();
        assert_eq!(w.deadline(), Some(t0 + ms(1000)));
        assert!(w.due(t0 + ms(999)).unwrap().is_empty());
        assert_eq!(w.due(t0 + ms(1000)).unwrap(), vec![(1, "f1")]);
        // Next wait for 1 is 2 s; 2 is due at 1.5 s.
        assert_eq!(w.deadline(), Some(t0 + ms(1500)));
        assert_eq!(w.due(t0 + ms(1500)).unwrap(), vec![(2, "f2")]);
        assert_eq!(w.due(t0 + ms(3000)).unwrap(), vec![(1, "f1")]); // attempt 3, next wait 4 s
        assert_eq!(w.deadline(), Some(t0 + ms(3500)));
        w.on_ack(t0 + ms(3200), 2);
        assert_eq!(w.due(t0 + ms(7000)), Ok(Vec::new()));
        assert_eq!(w.deadline(), None);
        // Backoff caps at retransmit_max.
        let mut w = UnackedWindow::new(WindowLimits {
            max_attempts: 100,
            ..limits()
        });
        w.on_send(t0, 9, ()).unwrap();
        let mut now = t0;
        for _ in 0..10 {
            now = w.deadline().unwrap();
            w.due(now).unwrap();
        }
        assert_eq!(w.deadline(), Some(now + ms(8000)));
        // Gives up after max_attempts.
        let mut w = UnackedWindow::new(limits());
        w.on_send(t0, 1, ()).unwrap();
        for _ in 0..3 {
            let at = w.deadline().unwrap();
            assert_eq!(w.due(at).unwrap().len(), 1);
        }
        let at = w.deadline().unwrap();
        assert_eq!(
            w.due(at),
            Err(Backlog::TooManyAttempts {
                seq: 1,
                attempts: 4
            })
        );
    }

    #[test]
    fn window_overflow_is_a_backlog() {
        let t0 = Instant::now();
        let mut w = UnackedWindow::new(limits());
        for s in 1..=3 {
            w.on_send(t0, s, ()).unwrap();
        }
        assert_eq!(w.on_send(t0, 4, ()), Err(Backlog::TooManyUnacked(4)));
        // Resending a seq already in the window does not grow it.
        w.on_ack(t0, 1);
        assert!(w.on_send(t0, 3, ()).is_ok());
    }

    #[test]
    fn a_client_that_keeps_acking_gets_no_resends() {
        let t0 = Instant::now();
        let mut w = UnackedWindow::new(limits());
        w.on_send(t0, 1, "f1").unwrap();
        w.on_send(t0, 2, "f2").unwrap();
        // It acked 1 after 2 was sent: 2 is in flight behind, not lost.
        w.on_ack(t0 + ms(900), 1);
        assert!(w.due(t0 + ms(1000)).unwrap().is_empty());
        assert_eq!(w.deadline(), Some(t0 + ms(2000)), "looked at again later");
        // Then silence: the resend comes after a full wait without acks.
        assert_eq!(w.due(t0 + ms(2000)).unwrap(), vec![(2, "f2")]);
    }
}
