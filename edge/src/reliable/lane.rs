//! One connection's reliable lane on one channel, as plain state: what the
//! client acked, what the edge owes it, and when to give up on it.
//!
//! Live reliable events ride the channel's tick frames, shared by every member
//! (`channels.rs`), so a gift costs a viewer nothing beyond the tick's one
//! write. What the edge keeps per member and channel is O(1), in two halves:
//!
//! * [`LaneShared`] — atomics written on the fan-out path (the highest seq
//!   pushed to this member; the first seq of a tick it could not take) and by
//!   the connection's task (its acks), read by the stall sweep (`sweep.rs`).
//!   No lock, no queue entry per gift.
//! * [`LaneState`] — the connection task's own: the cumulative ack, one
//!   catch-up cursor (a resume, a tick the member missed and a stalled client
//!   all read the channel's ring or the store from one position, paced by the
//!   client's acks), resend attempts, and the ack offset a group writes to the
//!   store.
//!
//! Sans-IO: time comes in as an argument; the tokio side is `connection/reliable.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::ReliableConfig;

/// "No seq" in [`LaneShared`]'s missed marker.
const NONE: u64 = u64::MAX;

/// Low bits of [`LaneShared`]'s sweep mark that count whole sweep intervals.
const PASS_BITS: u32 = 4;
const PASS_MASK: u64 = (1 << PASS_BITS) - 1;
/// Whole sweep intervals without an ack before a lane counts as stalled, at
/// the connection's ack pace: two, i.e. `retransmit_initial`.
pub const DEFAULT_PATIENCE: u8 = 2;
/// The most [`LaneShared::with_patience`] takes (what the mark's bits count).
pub const MAX_PATIENCE: u8 = PASS_MASK as u8;

/// `live_upto` of a lane whose join has not read the channel's last seq yet.
const JOINING: u64 = u64::MAX;

/// The half of a lane the fan-out, the sweep and the connection's task share.
#[derive(Debug)]
pub struct LaneShared {
    /// The highest seq pushed to this member inside a tick frame.
    live_upto: AtomicU64,
    /// The lowest seq this member did not get live ([`NONE`] when none).
    missed_from: AtomicU64,
    /// The client's cumulative ack (mirrored from [`LaneState`]).
    acked: AtomicU64,
    /// The ack the previous sweeps saw while seqs were outstanding, plus one,
    /// shifted left by [`PASS_BITS`]; the low bits count the whole intervals
    /// since (0: nothing was outstanding).
    mark: AtomicU64,
    /// Whole sweep intervals without an ack before the lane counts as stalled
    /// ([`DEFAULT_PATIENCE`]; more on a channel acked at a slower pace).
    patience: u8,
}

impl LaneShared {
    /// A lane that starts at `start`: the client is owed nothing at or below it.
    pub fn new(start: u64) -> Self {
        LaneShared {
            live_upto: AtomicU64::new(start),
            missed_from: AtomicU64::new(NONE),
            acked: AtomicU64::new(start),
            mark: AtomicU64::new(0),
            patience: DEFAULT_PATIENCE,
        }
    }

    /// A lane registered before its join knows the channel's last seq (see
    /// [`LaneState::start_at`]): ticks until then count as no hole.
    pub fn joining() -> Self {
        LaneShared {
            live_upto: AtomicU64::new(JOINING),
            missed_from: AtomicU64::new(NONE),
            acked: AtomicU64::new(0),
            mark: AtomicU64::new(0),
            patience: DEFAULT_PATIENCE,
        }
    }

    /// Waits `passes` whole sweep intervals (clamped to
    /// `DEFAULT_PATIENCE..=MAX_PATIENCE`) before a silent lane counts as
    /// stalled: a channel whose clients ack every few seconds (`Joined`'s
    /// pace) must not be resent what they are about to ack.
    pub fn with_patience(mut self, passes: u8) -> Self {
        self.patience = passes.clamp(DEFAULT_PATIENCE, MAX_PATIENCE);
        self
    }

    /// The highest seq pushed live (0 while joining).
    pub fn live_upto(&self) -> u64 {
        match self.live_upto.load(Ordering::Acquire) {
            JOINING => 0,
            v => v,
        }
    }

    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    /// A tick carrying seqs `first..=last` was queued to this member. Errs with
    /// the first seq it never got when the tick leaves a hole behind it (the
    /// member joined between an event's store write and its tick, or a
    /// previous tick was dropped): the caller marks it missed.
    ///
    /// A lane still joining (registered before the join read the channel's
    /// last seq) sees no hole: it does not know its start yet.
    pub fn on_tick(&self, first: u64, last: u64) -> Result<(), u64> {
        let before = self
            .live_upto
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (v != JOINING && v < last).then_some(last)
            })
            .unwrap_or_else(|v| v);
        if before != JOINING && first > before + 1 {
            return Err(before + 1);
        }
        Ok(())
    }

    /// This member did not get seqs from `from` on (its queue was full).
    /// True when it is the first miss since the task last looked: the caller
    /// wakes the task, once.
    pub fn mark_missed(&self, from: u64) -> bool {
        self.missed_from.fetch_min(from, Ordering::AcqRel) == NONE
    }

    /// The first seq missed since the last call, if any (resets the marker).
    pub fn take_missed(&self) -> Option<u64> {
        let from = self.missed_from.swap(NONE, Ordering::AcqRel);
        (from != NONE).then_some(from)
    }

    fn set_acked(&self, seq: u64) {
        self.acked.fetch_max(seq, Ordering::AcqRel);
    }

    /// One pass of the stall sweep: true when seqs were outstanding at the
    /// `patience` previous passes too and no ack came in between. The sweep
    /// runs every `retransmit_initial / 2`, so with the default patience of two
    /// a seq counts as stalled only once it went unacked for at least
    /// `retransmit_initial`, as configured: after
    /// one interval it may have been pushed just before the previous pass,
    /// and a client that acks once a second on a loaded box would be resent
    /// what it already has (measured: 3.5 % duplicate gifts at 5,000 viewers).
    /// Then the connection's task decides whether to resend
    /// ([`LaneState::on_stalled`]).
    pub fn sweep(&self) -> bool {
        let acked = self.acked();
        if self.live_upto() <= acked {
            self.mark.store(0, Ordering::Relaxed);
            return false;
        }
        let mark = (acked + 1) << PASS_BITS;
        let prev = self.mark.load(Ordering::Relaxed);
        if prev & !PASS_MASK != mark {
            self.mark.store(mark, Ordering::Relaxed); // outstanding since this pass
            return false;
        }
        let passes = (prev & PASS_MASK) + 1; // whole intervals without an ack
        if passes >= u64::from(self.patience) {
            return true;
        }
        self.mark.store(mark | passes, Ordering::Relaxed);
        false
    }
}

/// Resend and backlog settings of a lane (from `ReliableConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResendLimits {
    /// The wait after the first resend; each later one doubles it.
    pub retransmit_initial: Duration,
    pub retransmit_max: Duration,
    /// Seqs one connection may owe acks for on one channel.
    pub max_unacked: usize,
    /// Sends of one seq (the first included) before the connection is closed.
    pub max_attempts: u32,
}

impl From<&ReliableConfig> for ResendLimits {
    fn from(c: &ReliableConfig) -> Self {
        ResendLimits {
            retransmit_initial: c.retransmit_initial,
            retransmit_max: c.retransmit_max,
            max_unacked: c.max_unacked,
            max_attempts: c.max_attempts,
        }
    }
}

/// Why a connection's reliable lane cannot go on: it is closed with a resume hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backlog {
    /// More seqs unacked than allowed.
    TooManyUnacked(u64),
    /// Seqs were resent this many times without an ack.
    TooManyAttempts { seq: u64, attempts: u32 },
}

/// Why a lane reads its ring or the store (the metric its frames count towards).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUpReason {
    /// The client asked (`Resume`).
    Resume,
    /// A tick did not reach this connection.
    Missed,
    /// The client stopped acking: resend what it may not have.
    Resend,
}

/// Where a lane's catch-up reads next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatchUp {
    /// The last seq sent by this catch-up (the next read starts after it).
    pub after: u64,
    pub reason: CatchUpReason,
}

/// What the connection does about a stall the sweep reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stalled {
    /// Nothing outstanding any more (an ack crossed the sweep).
    Nothing,
    /// Resent recently: wait for the backoff.
    Wait,
    /// A catch-up from the last ack has started: read and send.
    Resend,
    /// Give up: close with `reliable_backlog`.
    Backlog(Backlog),
}

/// The connection task's half of a lane.
#[derive(Debug)]
pub struct LaneState {
    shared: Arc<LaneShared>,
    group: bool,
    /// Seqs at or below this are never sent (a group member's join point).
    floor: u64,
    acked: u64,
    catch_up: Option<CatchUp>,
    /// Resends since the last ack progress.
    attempts: u32,
    next_resend_at: Option<Instant>,
    /// The highest ack not yet written to the store (groups).
    ack_pending: Option<u64>,
    ack_written_at: Option<Instant>,
}

impl LaneState {
    /// A lane of a channel just joined whose last stored seq is `start`;
    /// `floor` is the group member's join point (0 for rooms).
    pub fn new(group: bool, start: u64, floor: u64) -> Self {
        Self::with_shared(LaneShared::new(start), group, start, floor)
    }

    /// A lane registered before the join reads the channel's last seq;
    /// [`LaneState::start_at`] sets it. `patience`: see
    /// [`LaneShared::with_patience`].
    pub fn joining(group: bool, floor: u64, patience: u8) -> Self {
        Self::with_shared(
            LaneShared::joining().with_patience(patience),
            group,
            0,
            floor,
        )
    }

    fn with_shared(shared: LaneShared, group: bool, start: u64, floor: u64) -> Self {
        LaneState {
            shared: Arc::new(shared),
            group,
            floor,
            acked: start,
            catch_up: None,
            attempts: 0,
            next_resend_at: None,
            ack_pending: None,
            ack_written_at: None,
        }
    }

    /// The join read the channel's last stored seq: the client is owed
    /// nothing at or below it (ticks pushed since registering stay counted).
    pub fn start_at(&mut self, last_seq: u64) {
        // A tick pushed meanwhile (seqs at or below `last_seq`, or the rare
        // one just after it) left no mark: if it carried a seq past
        // `last_seq`, the next tick looks like a hole and is read again,
        // which costs a duplicate, never a loss.
        let _ = self.shared.live_upto.compare_exchange(
            JOINING,
            last_seq,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.shared.live_upto.fetch_max(last_seq, Ordering::AcqRel);
        if last_seq > self.acked {
            self.acked = last_seq;
            self.shared.set_acked(last_seq);
        }
    }

    /// The half the channel's registry entry holds.
    pub fn shared(&self) -> &Arc<LaneShared> {
        &self.shared
    }

    /// A `group:` channel: reads go through membership, acks are persisted.
    pub fn is_group(&self) -> bool {
        self.group
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }

    pub fn catch_up(&self) -> Option<CatchUp> {
        self.catch_up
    }

    /// The client acked everything up to `seq`. Returns how many seqs that
    /// newly acked.
    pub fn on_ack(&mut self, seq: u64) -> u64 {
        // A group's offset is written whatever this lane assumed at the join:
        // the missed page pushed on joining is acked below the start.
        if self.group && seq > 0 {
            self.ack_pending = Some(self.ack_pending.unwrap_or(0).max(seq));
        }
        if seq <= self.acked {
            return 0;
        }
        let newly = seq - self.acked;
        self.acked = seq;
        self.shared.set_acked(seq);
        self.attempts = 0;
        self.next_resend_at = None;
        newly
    }

    /// `Resume{after_seq}`: the client holds everything up to `after_seq`
    /// (never below the floor) and nothing after it, whatever the lane
    /// assumed at the join; the catch-up sends what follows. Returns the seqs
    /// this newly acked.
    pub fn on_resume(&mut self, after_seq: u64) -> u64 {
        let after = after_seq.max(self.floor);
        let newly = after.saturating_sub(self.acked);
        if newly > 0 && self.group {
            self.ack_pending = Some(self.ack_pending.unwrap_or(0).max(after));
        }
        self.acked = after;
        self.shared.acked.store(after, Ordering::Release);
        self.attempts = 0;
        self.next_resend_at = None;
        self.catch_up = Some(CatchUp {
            after,
            reason: CatchUpReason::Resume,
        });
        newly
    }

    /// Seqs from `from` on did not reach this connection live.
    pub fn on_missed(&mut self, from: u64) {
        self.catch_up_from(from.saturating_sub(1), CatchUpReason::Missed);
    }

    /// The sweep saw no ack progress for two whole intervals with seqs
    /// outstanding. `writer_busy`: ticks are still queued for this connection's
    /// socket, so the client has not even been sent what it did not ack: a
    /// resend would only add to its queue. That still spends an attempt, so a
    /// client that stopped reading is closed (and resumes) after the same
    /// backoff as a silent one, while its queue holds only shared frames.
    pub fn on_stalled(
        &mut self,
        now: Instant,
        limits: &ResendLimits,
        writer_busy: bool,
    ) -> Stalled {
        let outstanding = self.shared.live_upto().saturating_sub(self.acked);
        if outstanding == 0 {
            return Stalled::Nothing;
        }
        if outstanding > limits.max_unacked as u64 {
            return Stalled::Backlog(Backlog::TooManyUnacked(outstanding));
        }
        if self.next_resend_at.is_some_and(|at| now < at) {
            return Stalled::Wait;
        }
        let sends = self.attempts + 1;
        if sends >= limits.max_attempts {
            return Stalled::Backlog(Backlog::TooManyAttempts {
                seq: self.acked + 1,
                attempts: sends,
            });
        }
        self.attempts += 1;
        let wait = limits
            .retransmit_initial
            .saturating_mul(1 << self.attempts.min(16))
            .min(limits.retransmit_max);
        self.next_resend_at = Some(now + wait);
        if writer_busy {
            return Stalled::Wait;
        }
        self.catch_up_from(self.acked, CatchUpReason::Resend);
        Stalled::Resend
    }

    /// The next catch-up read: after which seq, and at most how many, while
    /// the seqs sent and not yet acked leave room (`max_unacked`). `None` when
    /// not catching up or the window is full (an ack continues it).
    pub fn next_read(&self, max_unacked: usize) -> Option<(u64, usize)> {
        let c = self.catch_up?;
        let in_flight = usize::try_from(c.after.saturating_sub(self.acked)).unwrap_or(usize::MAX);
        let room = max_unacked.saturating_sub(in_flight);
        (room > 0).then_some((c.after, room))
    }

    /// A catch-up read of `asked` seqs returned `got`, the last being `last`,
    /// and they were sent. Ends the catch-up when the source had no more or
    /// it reached what the live ticks brought this member; returns whether it
    /// ended.
    pub fn on_read(&mut self, last: Option<u64>, got: usize, asked: usize) -> bool {
        let Some(c) = &mut self.catch_up else {
            return true;
        };
        if let Some(last) = last {
            c.after = c.after.max(last);
        }
        let done = got < asked || c.after >= self.shared.live_upto();
        if done {
            self.catch_up = None;
        }
        done
    }

    /// Stops a catch-up that cannot go on (the store failed); the next miss,
    /// stall or resume starts it again.
    pub fn abandon_catch_up(&mut self) {
        self.catch_up = None;
    }

    /// When the pending ack offset is due for the store, if any.
    pub fn ack_write_at(&self, interval: Duration, now: Instant) -> Option<Instant> {
        match (self.ack_pending, self.ack_written_at) {
            (Some(_), Some(at)) => Some(at + interval),
            (Some(_), None) => Some(now),
            _ => None,
        }
    }

    /// The ack offset to write now: all pending when `force` (leave,
    /// disconnect), else only one not written within `interval`.
    pub fn take_ack_write(&mut self, now: Instant, interval: Duration, force: bool) -> Option<u64> {
        let seq = self.ack_pending?;
        let due = force || self.ack_written_at.is_none_or(|at| now >= at + interval);
        if !due {
            return None;
        }
        self.ack_pending = None;
        self.ack_written_at = Some(now);
        Some(seq)
    }

    fn catch_up_from(&mut self, after: u64, reason: CatchUpReason) {
        let after = after.max(self.floor);
        match &mut self.catch_up {
            Some(c) => c.after = c.after.min(after),
            None => self.catch_up = Some(CatchUp { after, reason }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn limits() -> ResendLimits {
        ResendLimits {
            retransmit_initial: ms(1000),
            retransmit_max: ms(4000),
            max_unacked: 10,
            max_attempts: 3,
        }
    }

    #[test]
    fn a_tick_after_a_hole_names_the_first_missing_seq() {
        let s = LaneShared::new(5);
        assert_eq!(s.on_tick(6, 8), Ok(()));
        assert_eq!(s.live_upto(), 8);
        assert_eq!(s.on_tick(11, 12), Err(9), "9 and 10 never came");
        assert_eq!(s.live_upto(), 12);
        // Seqs already pushed (the bus redelivered) are no hole.
        assert_eq!(s.on_tick(7, 7), Ok(()));
        assert_eq!(s.live_upto(), 12);
    }

    #[test]
    fn misses_wake_the_task_once_and_keep_the_earliest() {
        let s = LaneShared::new(0);
        assert!(s.mark_missed(9));
        assert!(!s.mark_missed(4), "already woken");
        assert!(!s.mark_missed(12));
        assert_eq!(s.take_missed(), Some(4));
        assert_eq!(s.take_missed(), None);
        assert!(s.mark_missed(20), "a new miss wakes again");
    }

    #[test]
    fn the_sweep_reports_a_lane_silent_for_two_whole_intervals() {
        let mut lane = LaneState::new(false, 0, 0);
        let s = Arc::clone(lane.shared());
        assert!(!s.sweep(), "nothing outstanding");
        s.on_tick(1, 3).unwrap();
        assert!(!s.sweep(), "first pass only marks");
        lane.on_ack(2);
        assert!(!s.sweep(), "the ack moved: marks again");
        assert!(
            !s.sweep(),
            "one whole interval: maybe just pushed before the mark"
        );
        assert!(
            s.sweep(),
            "no ack for two whole intervals (retransmit_initial)"
        );
        assert!(s.sweep(), "and again while it stays silent");
        lane.on_ack(3);
        assert!(!s.sweep());
        assert!(!s.sweep(), "caught up: nothing to report");
    }

    #[test]
    fn a_patient_lane_waits_its_passes_before_it_counts_as_stalled() {
        let mut lane = LaneState::joining(false, 0, 6);
        lane.start_at(0);
        let s = Arc::clone(lane.shared());
        s.on_tick(1, 3).unwrap();
        assert!(!s.sweep(), "first pass only marks");
        for pass in 1..6 {
            assert!(!s.sweep(), "{pass} whole intervals of 6");
        }
        assert!(s.sweep(), "six whole intervals without an ack");
        // An ack starts the count again.
        lane.on_ack(1);
        assert!(!s.sweep());
        for _ in 1..6 {
            assert!(!s.sweep());
        }
        assert!(s.sweep());
        // Patience is clamped: never below the default, never past the mark's bits.
        assert_eq!(
            LaneShared::joining().with_patience(0).patience,
            DEFAULT_PATIENCE
        );
        assert_eq!(
            LaneShared::joining().with_patience(200).patience,
            MAX_PATIENCE
        );
    }

    #[test]
    fn acks_are_cumulative_and_mirrored() {
        let mut lane = LaneState::new(true, 3, 0);
        assert_eq!(lane.on_ack(2), 0, "below the start");
        assert_eq!(lane.on_ack(5), 2);
        assert_eq!(lane.on_ack(5), 0);
        assert_eq!(lane.shared().acked(), 5);
        let t0 = Instant::now();
        assert_eq!(lane.ack_write_at(ms(1000), t0), Some(t0));
        assert_eq!(lane.take_ack_write(t0, ms(1000), false), Some(5));
        assert_eq!(lane.take_ack_write(t0, ms(1000), true), None, "written");
        lane.on_ack(7);
        assert_eq!(lane.take_ack_write(t0 + ms(10), ms(1000), false), None);
        assert_eq!(lane.ack_write_at(ms(1000), t0), Some(t0 + ms(1000)));
        assert_eq!(lane.take_ack_write(t0 + ms(10), ms(1000), true), Some(7));
        // Rooms keep no ack offset.
        let mut room = LaneState::new(false, 0, 0);
        room.on_ack(4);
        assert_eq!(room.ack_write_at(ms(1000), t0), None);
    }

    #[test]
    fn a_resume_reads_in_windows_paced_by_acks_up_to_the_live_ticks() {
        let mut lane = LaneState::new(false, 7, 0);
        assert_eq!(lane.on_resume(1), 0, "below what it was owed");
        assert_eq!(lane.next_read(3), Some((1, 3)));
        // Read 2..=4: the window of 3 is full until an ack.
        assert!(!lane.on_read(Some(4), 3, 3));
        assert_eq!(lane.next_read(3), None);
        lane.on_ack(3);
        assert_eq!(lane.next_read(3), Some((4, 2)));
        assert!(!lane.on_read(Some(6), 2, 2));
        lane.on_ack(6);
        assert_eq!(lane.next_read(3), Some((6, 3)));
        // 7 is the last seq the live ticks had brought: done, live covers the rest.
        assert!(lane.on_read(Some(7), 1, 3));
        assert_eq!(lane.catch_up(), None);
    }

    #[test]
    fn a_resume_of_a_group_never_goes_below_the_join_point() {
        let mut lane = LaneState::new(true, 10, 6);
        lane.on_resume(0);
        assert_eq!(lane.next_read(100), Some((6, 100)));
    }

    #[test]
    fn a_miss_starts_a_catch_up_from_before_it_and_keeps_the_earliest() {
        let mut lane = LaneState::new(false, 0, 0);
        lane.shared().on_tick(1, 9).unwrap();
        lane.on_missed(5);
        // 1..=4 came live and are not acked yet: they count in the window.
        assert_eq!(lane.next_read(100), Some((4, 96)));
        lane.on_missed(3);
        assert_eq!(lane.next_read(100), Some((2, 98)));
        lane.on_missed(8);
        assert_eq!(lane.next_read(100), Some((2, 98)));
    }

    #[test]
    fn a_stalled_client_gets_resends_with_backoff_then_is_given_up() {
        let l = limits();
        let t0 = Instant::now();
        let mut lane = LaneState::new(false, 0, 0);
        assert_eq!(lane.on_stalled(t0, &l, false), Stalled::Nothing);
        lane.shared().on_tick(1, 2).unwrap();
        assert_eq!(lane.on_stalled(t0, &l, false), Stalled::Resend);
        assert_eq!(lane.next_read(100), Some((0, 100)), "resend from the ack");
        lane.on_read(Some(2), 2, 100);
        // Backoff: 2 s after the first resend.
        assert_eq!(lane.on_stalled(t0 + ms(1500), &l, false), Stalled::Wait);
        assert_eq!(lane.on_stalled(t0 + ms(2000), &l, false), Stalled::Resend);
        lane.on_read(Some(2), 2, 100);
        // Three sends (the first and two resends) without an ack: give up.
        assert_eq!(
            lane.on_stalled(t0 + ms(9000), &l, false),
            Stalled::Backlog(Backlog::TooManyAttempts {
                seq: 1,
                attempts: 3
            })
        );
        // An ack resets the count.
        lane.on_ack(1);
        assert_eq!(lane.on_stalled(t0 + ms(9000), &l, false), Stalled::Resend);
    }

    #[test]
    fn a_client_whose_ticks_still_wait_for_its_socket_gets_no_resend_but_is_given_up() {
        let l = limits();
        let t0 = Instant::now();
        let mut lane = LaneState::new(false, 0, 0);
        lane.shared().on_tick(1, 2).unwrap();
        assert_eq!(
            lane.on_stalled(t0, &l, true),
            Stalled::Wait,
            "nothing resent"
        );
        assert_eq!(lane.catch_up(), None);
        assert_eq!(lane.on_stalled(t0 + ms(2000), &l, true), Stalled::Wait);
        assert!(matches!(
            lane.on_stalled(t0 + ms(9000), &l, true),
            Stalled::Backlog(Backlog::TooManyAttempts { .. })
        ));
    }

    #[test]
    fn too_many_unacked_is_a_backlog() {
        let mut lane = LaneState::new(false, 0, 0);
        lane.shared().on_tick(1, 11).unwrap();
        assert_eq!(
            lane.on_stalled(Instant::now(), &limits(), false),
            Stalled::Backlog(Backlog::TooManyUnacked(11))
        );
    }

    #[test]
    fn a_joining_lane_sees_no_hole_until_it_knows_its_start() {
        let mut lane = LaneState::joining(false, 0, DEFAULT_PATIENCE);
        assert_eq!(lane.shared().on_tick(7, 8), Ok(()), "start unknown");
        assert_eq!(lane.shared().live_upto(), 0);
        lane.start_at(8);
        assert_eq!((lane.shared().live_upto(), lane.acked()), (8, 8));
        assert_eq!(lane.shared().on_tick(9, 9), Ok(()));
        assert_eq!(lane.shared().on_tick(11, 11), Err(10));
        // An empty channel starts at 0 and still sees a hole before seq 2.
        let mut empty = LaneState::joining(false, 0, DEFAULT_PATIENCE);
        empty.start_at(0);
        assert_eq!(empty.shared().on_tick(2, 3), Err(1));
    }
}
