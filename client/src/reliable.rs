//! Sans-IO bookkeeping of the reliable lane on the client side.
//!
//! The edge pushes `Reliable{channel, seq}` in seq order, retransmits what is
//! not acked (so duplicates arrive) and replays after a `Resume`. A
//! [`ReliableTracker`] turns that stream into "each seq exactly once, in
//! order": per channel it remembers `delivered_upto` (every seq ≤ it was
//! delivered), holds seqs that arrive ahead of a gap and releases them once
//! the gap is filled, and says which cumulative ack is due.
//!
//! A channel with no history yet is *anchored* by its first seq: a fresh join
//! starts wherever the edge starts (the newest missed messages of a group, the
//! next live message of a room). [`ReliableTracker::set_delivered_upto`]
//! anchors it explicitly (e.g. from a stored offset before a `Resume`).
//!
//! The tracker is generic over an item carried with each seq (`()` when only
//! the seqs matter): [`ReliableTracker::offer`] takes the item, and
//! [`ReliableTracker::pop_ready`] hands out items in seq order.

use std::collections::{BTreeMap, HashMap, VecDeque};

/// Seqs held ahead of a gap, per channel, at most; further ones are dropped
/// (the edge retransmits or replays them).
pub const MAX_HELD: usize = 10_000;

/// What to do with a received seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The next seq: deliver it (and any held seqs it released), in order.
    Deliver,
    /// Already delivered or already held: drop it (re-acking is harmless).
    Duplicate,
    /// Ahead of a gap: held until every seq after `after_seq` up to it
    /// arrives. Ask for the gap with `Resume{after_seq}` if it persists.
    Gap { after_seq: u64 },
}

#[derive(Debug)]
struct ChannelState<T> {
    /// False until the first seq (or an explicit anchor).
    anchored: bool,
    /// Every seq ≤ this was released (to `ready`, or handed out).
    released_upto: u64,
    /// Every seq ≤ this was handed out by `pop_ready`.
    delivered_upto: u64,
    /// The last cumulative ack reported by `ack_due`.
    acked: u64,
    held: BTreeMap<u64, T>,
    ready: VecDeque<(u64, T)>,
}

impl<T> Default for ChannelState<T> {
    fn default() -> Self {
        ChannelState {
            anchored: false,
            released_upto: 0,
            delivered_upto: 0,
            acked: 0,
            held: BTreeMap::new(),
            ready: VecDeque::new(),
        }
    }
}

/// Per-channel dedupe, reordering and ack bookkeeping of reliable seqs.
#[derive(Debug)]
pub struct ReliableTracker<T = ()> {
    channels: HashMap<String, ChannelState<T>>,
}

impl<T> Default for ReliableTracker<T> {
    fn default() -> Self {
        ReliableTracker {
            channels: HashMap::new(),
        }
    }
}

impl ReliableTracker<()> {
    /// Seq-only form of [`ReliableTracker::offer`]: on `Deliver` the seq and
    /// every held seq it released count as delivered at once, so
    /// [`ReliableTracker::delivered_upto`] moves past them.
    pub fn on_reliable(&mut self, channel: &str, seq: u64) -> Verdict {
        let v = self.offer(channel, seq, ());
        if v == Verdict::Deliver {
            while self.pop_ready(channel).is_some() {}
        }
        v
    }
}

impl<T> ReliableTracker<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one received `(seq, item)`. On `Deliver` the item — and every held
    /// one it made contiguous — waits in [`ReliableTracker::pop_ready`]; on
    /// `Gap` it is held; on `Duplicate` it is dropped.
    pub fn offer(&mut self, channel: &str, seq: u64, item: T) -> Verdict {
        let st = self.channels.entry(channel.to_owned()).or_default();
        if !st.anchored {
            st.anchored = true;
            let base = seq.saturating_sub(1);
            st.released_upto = base;
            st.delivered_upto = base;
            st.acked = st.acked.max(base);
        }
        if seq <= st.released_upto || st.held.contains_key(&seq) {
            return Verdict::Duplicate;
        }
        if seq != st.released_upto + 1 {
            if st.held.len() < MAX_HELD {
                st.held.insert(seq, item);
            }
            return Verdict::Gap {
                after_seq: st.released_upto,
            };
        }
        st.ready.push_back((seq, item));
        st.released_upto = seq;
        while let Some(entry) = st.held.first_entry() {
            if *entry.key() != st.released_upto + 1 {
                break;
            }
            let (s, it) = entry.remove_entry();
            st.ready.push_back((s, it));
            st.released_upto = s;
        }
        Verdict::Deliver
    }

    /// The next item to hand out on `channel`, in seq order; counts it as delivered.
    pub fn pop_ready(&mut self, channel: &str) -> Option<(u64, T)> {
        let st = self.channels.get_mut(channel)?;
        let (seq, item) = st.ready.pop_front()?;
        st.delivered_upto = seq;
        Some((seq, item))
    }

    /// Whether `channel` has items waiting in `pop_ready`.
    pub fn has_ready(&self, channel: &str) -> bool {
        self.channels
            .get(channel)
            .is_some_and(|st| !st.ready.is_empty())
    }

    /// Every seq ≤ this was delivered on `channel` (0 when nothing was).
    pub fn delivered_upto(&self, channel: &str) -> u64 {
        self.channels.get(channel).map_or(0, |st| st.delivered_upto)
    }

    /// Whether `channel` has a starting point (a first seq, or an explicit anchor).
    pub fn is_anchored(&self, channel: &str) -> bool {
        self.channels.get(channel).is_some_and(|st| st.anchored)
    }

    /// Anchors `channel`: every seq ≤ `seq` counts as delivered (and acked).
    /// Held seqs at or below it are dropped, those made contiguous are released.
    pub fn set_delivered_upto(&mut self, channel: &str, seq: u64) {
        let st = self.channels.entry(channel.to_owned()).or_default();
        st.anchored = true;
        if seq <= st.released_upto {
            return;
        }
        st.ready.clear();
        st.released_upto = seq;
        st.delivered_upto = seq;
        st.acked = st.acked.max(seq);
        st.held = st.held.split_off(&(seq + 1));
        while let Some(entry) = st.held.first_entry() {
            if *entry.key() != st.released_upto + 1 {
                break;
            }
            let (s, it) = entry.remove_entry();
            st.ready.push_back((s, it));
            st.released_upto = s;
        }
    }

    /// The cumulative ack to send for `channel`, if delivery moved past the last
    /// one reported; reporting it marks it as sent.
    pub fn ack_due(&mut self, channel: &str) -> Option<u64> {
        let st = self.channels.get_mut(channel)?;
        (st.delivered_upto > st.acked).then(|| {
            st.acked = st.delivered_upto;
            st.acked
        })
    }

    /// The first missing seq's predecessor when `channel` holds seqs ahead of a gap.
    pub fn gap(&self, channel: &str) -> Option<u64> {
        let st = self.channels.get(channel)?;
        (!st.held.is_empty()).then_some(st.released_upto)
    }

    /// Seqs held ahead of a gap on `channel`.
    pub fn held(&self, channel: &str) -> usize {
        self.channels.get(channel).map_or(0, |st| st.held.len())
    }

    /// Forgets `channel` entirely (after leaving it).
    pub fn forget(&mut self, channel: &str) {
        self.channels.remove(channel);
    }

    /// Channels the tracker knows, in no particular order.
    pub fn channels(&self) -> impl Iterator<Item = &str> {
        self.channels.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_delivers_and_acks_cumulatively() {
        let mut t = ReliableTracker::new();
        assert_eq!(t.delivered_upto("g"), 0);
        assert_eq!(t.ack_due("g"), None);
        for s in 1..=3 {
            assert_eq!(t.on_reliable("g", s), Verdict::Deliver);
        }
        assert_eq!(t.delivered_upto("g"), 3);
        assert_eq!(t.ack_due("g"), Some(3));
        assert_eq!(t.ack_due("g"), None, "ack reported once");
        assert_eq!(t.on_reliable("g", 4), Verdict::Deliver);
        assert_eq!(t.ack_due("g"), Some(4));
    }

    #[test]
    fn duplicates_are_dropped() {
        let mut t = ReliableTracker::new();
        t.on_reliable("g", 1);
        t.on_reliable("g", 2);
        assert_eq!(t.on_reliable("g", 2), Verdict::Duplicate);
        assert_eq!(t.on_reliable("g", 1), Verdict::Duplicate);
        assert_eq!(t.on_reliable("g", 5), Verdict::Gap { after_seq: 2 });
        assert_eq!(t.on_reliable("g", 5), Verdict::Duplicate, "held counts");
        assert_eq!(t.delivered_upto("g"), 2);
    }

    #[test]
    fn gap_holds_then_releases_in_order() {
        let mut t: ReliableTracker<&str> = ReliableTracker::new();
        assert_eq!(t.offer("g", 10, "a"), Verdict::Deliver, "first seq anchors");
        assert_eq!(t.pop_ready("g"), Some((10, "a")));
        assert_eq!(t.offer("g", 13, "d"), Verdict::Gap { after_seq: 10 });
        assert_eq!(t.offer("g", 12, "c"), Verdict::Gap { after_seq: 10 });
        assert_eq!(t.gap("g"), Some(10));
        assert_eq!(t.held("g"), 2);
        assert_eq!(t.pop_ready("g"), None);
        assert_eq!(t.delivered_upto("g"), 10);
        assert_eq!(t.offer("g", 11, "b"), Verdict::Deliver);
        assert_eq!(t.gap("g"), None);
        let got: Vec<_> = std::iter::from_fn(|| t.pop_ready("g")).collect();
        assert_eq!(got, vec![(11, "b"), (12, "c"), (13, "d")]);
        assert_eq!(t.delivered_upto("g"), 13);
        assert_eq!(t.ack_due("g"), Some(13));
        assert_eq!(t.offer("g", 12, "c"), Verdict::Duplicate);
    }

    #[test]
    fn ack_follows_handed_out_items_only() {
        let mut t: ReliableTracker<u8> = ReliableTracker::new();
        t.offer("g", 1, 0);
        t.offer("g", 2, 0);
        assert_eq!(t.ack_due("g"), None, "nothing handed out yet");
        assert!(t.has_ready("g"));
        t.pop_ready("g");
        assert_eq!(t.ack_due("g"), Some(1));
        t.pop_ready("g");
        assert!(!t.has_ready("g"));
        assert_eq!(t.ack_due("g"), Some(2));
    }

    #[test]
    fn seq_only_release_counts_held() {
        let mut t = ReliableTracker::new();
        t.on_reliable("g", 1);
        assert_eq!(t.on_reliable("g", 3), Verdict::Gap { after_seq: 1 });
        assert_eq!(t.on_reliable("g", 4), Verdict::Gap { after_seq: 1 });
        assert_eq!(t.on_reliable("g", 2), Verdict::Deliver);
        assert_eq!(t.delivered_upto("g"), 4);
        assert_eq!(t.ack_due("g"), Some(4));
    }

    #[test]
    fn channels_are_independent() {
        let mut t = ReliableTracker::new();
        t.on_reliable("group:1", 1);
        assert_eq!(t.on_reliable("group:2", 7), Verdict::Deliver);
        assert_eq!(t.on_reliable("group:1", 3), Verdict::Gap { after_seq: 1 });
        assert_eq!(t.delivered_upto("group:1"), 1);
        assert_eq!(t.delivered_upto("group:2"), 7);
        t.forget("group:2");
        assert_eq!(t.delivered_upto("group:2"), 0);
        assert!(!t.is_anchored("group:2"));
    }

    #[test]
    fn explicit_anchor_and_resume() {
        let mut t = ReliableTracker::new();
        t.set_delivered_upto("g", 20);
        assert!(t.is_anchored("g"));
        assert_eq!(t.ack_due("g"), None, "an anchor is already acked");
        assert_eq!(t.on_reliable("g", 20), Verdict::Duplicate);
        assert_eq!(t.on_reliable("g", 23), Verdict::Gap { after_seq: 20 });
        assert_eq!(t.on_reliable("g", 22), Verdict::Gap { after_seq: 20 });
        // Moving the anchor past a gap releases what became contiguous.
        t.set_delivered_upto("g", 21);
        let got: Vec<_> = std::iter::from_fn(|| t.pop_ready("g"))
            .map(|(s, _)| s)
            .collect();
        assert_eq!(got, vec![22, 23]);
        assert_eq!(t.delivered_upto("g"), 23);
        // An anchor behind what was delivered changes nothing.
        t.set_delivered_upto("g", 5);
        assert_eq!(t.delivered_upto("g"), 23);
    }

    #[test]
    fn replay_after_reconnect_is_deduplicated() {
        // Delivered 1..=5, then the edge replays 3..=8 after a Resume{after_seq: 2}
        // that raced with the acks: 3..5 are duplicates, 6..8 are new.
        let mut t = ReliableTracker::new();
        for s in 1..=5 {
            t.on_reliable("g", s);
        }
        let verdicts: Vec<_> = (3..=8).map(|s| t.on_reliable("g", s)).collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Duplicate,
                Verdict::Duplicate,
                Verdict::Duplicate,
                Verdict::Deliver,
                Verdict::Deliver,
                Verdict::Deliver
            ]
        );
        assert_eq!(t.delivered_upto("g"), 8);
    }

    #[test]
    fn held_is_bounded() {
        let mut t = ReliableTracker::new();
        t.on_reliable("g", 1);
        for s in 3..(3 + MAX_HELD as u64 + 10) {
            t.on_reliable("g", s);
        }
        assert_eq!(t.held("g"), MAX_HELD);
        assert_eq!(t.on_reliable("g", 2), Verdict::Deliver);
        assert_eq!(t.delivered_upto("g"), 2 + MAX_HELD as u64);
        // The dropped ones come again (retransmit) and continue the run.
        assert_eq!(t.on_reliable("g", 3 + MAX_HELD as u64), Verdict::Deliver);
    }
}
