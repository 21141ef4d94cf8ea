//! Long-poll's state: per polled room, a bounded ring of its recent ticks (the
//! JSON tick text the batcher built once for every JSON member) with a tick
//! counter pollers wait on. No per-viewer state lives between polls: a poll's
//! cursor names the last tick (and reliable seq) it has, and the answer is
//! whatever the ring holds after it.
//!
//! A room is polled through ONE registry member (`Transport::Poll`), however
//! many viewers poll it: its queue is drained into the ring by the room's feed
//! task (`fallback/poll.rs`), which leaves the channel once nobody polled for
//! [`IDLE_AFTER`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use danmaku_proto::ChannelName;
use dashmap::DashMap;
use tokio::sync::watch;

use crate::reliable::lane::LaneShared;

/// Ticks kept per room: at 20 ticks/s (a small room's 50 ms window) about
/// 13 s of history, far more than a poller needs between two requests.
pub const RING_TICKS: usize = 256;

/// Bytes of tick text kept per room at most (the oldest go first).
pub const RING_BYTES: usize = 4 << 20;

/// A room nobody polled for this long is dropped (longer than the longest
/// wait, 30 s, so a poller between two requests never loses its room).
pub const IDLE_AFTER: Duration = Duration::from_secs(90);

/// One polled room.
#[derive(Debug)]
pub struct PollRoom {
    /// Names this room's life: a cursor from an earlier one (another edge, or
    /// a room dropped while idle) cannot point into this ring.
    pub epoch: u64,
    ring: Mutex<Ticks>,
    latest: watch::Sender<u64>,
    /// The reliable lane of the room's one member: its highest seq pushed live.
    pub lane: Arc<LaneShared>,
    last_poll_ms: AtomicU64,
    /// Random per room: keys the tags of the cursors it gives out.
    key: [u64; 2],
}

#[derive(Debug, Default)]
struct Ticks {
    /// (tick number, JSON tick text), oldest first; numbers count from 1.
    ticks: VecDeque<(u64, Bytes)>,
    bytes: usize,
}

/// What a poll gets after tick `after`.
#[derive(Debug, Default)]
pub struct After {
    pub ticks: Vec<Bytes>,
    /// The last tick number in `ticks` (or `after` when there is none).
    pub upto: u64,
    /// Ticks after `after` that the ring no longer holds were skipped.
    pub gap: bool,
}

impl PollRoom {
    pub fn new(epoch: u64, lane: Arc<LaneShared>, now_ms: u64) -> Self {
        PollRoom {
            epoch,
            ring: Mutex::default(),
            latest: watch::channel(0).0,
            lane,
            last_poll_ms: AtomicU64::new(now_ms),
            key: [random_u64(), random_u64()],
        }
    }

    /// The tag of a cursor `(tick, seq)` of this room given to `user`: the
    /// first 8 bytes of SHA-256 over the room's random key and the cursor.
    /// Unforgeable without the key (which never leaves the process).
    pub fn tag(&self, user: &str, tick: u64, seq: u64) -> u64 {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(self.key[0].to_le_bytes());
        h.update(self.key[1].to_le_bytes());
        h.update(self.epoch.to_le_bytes());
        h.update(tick.to_le_bytes());
        h.update(seq.to_le_bytes());
        h.update(user.as_bytes());
        let d = h.finalize();
        u64::from_le_bytes(d[..8].try_into().expect("a SHA-256 digest has 32 bytes"))
    }

    /// Appends one tick's JSON text; wakes the waiting polls.
    pub fn push(&self, text: Bytes) {
        let mut ring = self.lock();
        let n = ring.ticks.back().map_or(0, |(n, _)| *n) + 1;
        ring.bytes += text.len();
        ring.ticks.push_back((n, text));
        while ring.ticks.len() > RING_TICKS || (ring.bytes > RING_BYTES && ring.ticks.len() > 1) {
            if let Some((_, t)) = ring.ticks.pop_front() {
                ring.bytes -= t.len();
            }
        }
        drop(ring);
        self.latest.send_replace(n);
    }

    /// The latest tick number (0 before the first).
    pub fn latest(&self) -> u64 {
        *self.latest.borrow()
    }

    /// Resolves when a tick after `after` exists.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    /// The ticks after `after`, at most `limit`.
    pub fn after(&self, after: u64, limit: usize) -> After {
        let ring = self.lock();
        let Some(first) = ring.ticks.front().map(|(n, _)| *n) else {
            return After {
                upto: after,
                ..After::default()
            };
        };
        let start = ring.ticks.partition_point(|(n, _)| *n <= after);
        let ticks: Vec<(u64, Bytes)> = ring.ticks.range(start..).take(limit).cloned().collect();
        After {
            upto: ticks.last().map_or(after, |(n, _)| *n),
            gap: !ticks.is_empty() && first > after + 1,
            ticks: ticks.into_iter().map(|(_, t)| t).collect(),
        }
    }

    pub fn touch(&self, now_ms: u64) {
        self.last_poll_ms.store(now_ms, Ordering::Relaxed);
    }

    pub fn idle_for(&self, now_ms: u64) -> Duration {
        Duration::from_millis(now_ms.saturating_sub(self.last_poll_ms.load(Ordering::Relaxed)))
    }

    fn lock(&self) -> MutexGuard<'_, Ticks> {
        // Appends and pops only: a panic cannot leave the ring half-updated.
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// 64 random bits from the standard library's per-instance hash keys (seeded
/// from the OS), enough for a process-local key without a new dependency.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x5eed);
    h.finish()
}

/// The polled rooms of this edge.
#[derive(Debug, Default)]
pub struct PollRooms {
    rooms: DashMap<ChannelName, Arc<PollRoom>>,
}

impl PollRooms {
    pub fn get(&self, channel: &ChannelName) -> Option<Arc<PollRoom>> {
        self.rooms.get(channel).map(|r| Arc::clone(&r))
    }

    /// The room of `channel`, made by `make` when there is none (one winner
    /// when two first polls race); the bool says whether it was made now.
    pub fn get_or_insert_with(
        &self,
        channel: &ChannelName,
        make: impl FnOnce() -> PollRoom,
    ) -> (Arc<PollRoom>, bool) {
        let mut made = false;
        let room = self
            .rooms
            .entry(channel.clone())
            .or_insert_with(|| {
                made = true;
                Arc::new(make())
            })
            .clone();
        (room, made)
    }

    /// Forgets `channel`'s room if it is still the one of `epoch`.
    pub fn remove(&self, channel: &ChannelName, epoch: u64) {
        self.rooms.remove_if(channel, |_, r| r.epoch == epoch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room() -> PollRoom {
        PollRoom::new(7, Arc::new(LaneShared::new(0)), 0)
    }

    #[test]
    fn a_poll_gets_the_ticks_after_its_cursor() {
        let r = room();
        assert_eq!(r.after(0, 10).ticks.len(), 0);
        for i in 0..3 {
            r.push(Bytes::from(format!("t{i}")));
        }
        assert_eq!(r.latest(), 3);
        let a = r.after(1, 10);
        assert_eq!(a.ticks, vec![Bytes::from("t1"), Bytes::from("t2")]);
        assert_eq!((a.upto, a.gap), (3, false));
        let none = r.after(3, 10);
        assert!(none.ticks.is_empty());
        assert_eq!(none.upto, 3);
        let limited = r.after(0, 2);
        assert_eq!(limited.upto, 2);
    }

    #[test]
    fn a_cursor_that_fell_out_of_the_ring_gets_what_is_left_and_a_gap() {
        let r = room();
        for i in 0..(RING_TICKS + 10) {
            r.push(Bytes::from(format!("{i}")));
        }
        let a = r.after(3, usize::MAX);
        assert!(a.gap);
        assert_eq!(a.ticks.len(), RING_TICKS);
        assert_eq!(a.upto, (RING_TICKS + 10) as u64);
        assert!(!r.after(11, usize::MAX).gap, "tick 12 is the oldest kept");
    }

    #[test]
    fn the_ring_is_bounded_in_bytes() {
        let r = room();
        let big = Bytes::from(vec![b'x'; RING_BYTES / 3]);
        for _ in 0..5 {
            r.push(big.clone());
        }
        assert!(r.lock().bytes <= RING_BYTES);
        assert_eq!(r.after(0, usize::MAX).ticks.len(), 3);
    }
}
