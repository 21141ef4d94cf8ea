//! The exact bookkeeping behind the report: which posted comments each viewer
//! received, how many were lost, repeated or out of order, and the sums per
//! lane and transport that workers send back and the report prints.
//!
//! Every posted text starts with `lt <sender> <n> `, where `n` counts that
//! sender's posts, so a received event names exactly one post. A viewer keeps
//! one bitset per sender (a few bytes per comment), which stays small even for
//! 100k viewers. Pure code: tested with synthetic data.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// The text of post `n` of sender `sender`, followed by free-form comment text.
pub fn post_text(sender: u32, n: u64, comment: &str) -> String {
    format!("lt {sender} {n} {comment}")
}

/// Parses `lt <sender> <n> …` back into `(sender, n)`.
pub fn parse_post_text(text: &str) -> Option<(u32, u64)> {
    let mut parts = text.splitn(4, ' ');
    if parts.next()? != "lt" {
        return None;
    }
    let sender = parts.next()?.parse().ok()?;
    let n = parts.next()?.parse().ok()?;
    Some((sender, n))
}

/// A growable set of small integers (post numbers, gift seqs).
#[derive(Debug, Default, Clone)]
pub struct SeqSet(Vec<u64>);

impl SeqSet {
    /// Inserts `n`; false if it was already there.
    pub fn insert(&mut self, n: u64) -> bool {
        let (word, bit) = ((n / 64) as usize, n % 64);
        if word >= self.0.len() {
            self.0.resize(word + 1, 0);
        }
        let was = self.0[word] & (1 << bit) != 0;
        self.0[word] |= 1 << bit;
        !was
    }

    pub fn contains(&self, n: u64) -> bool {
        self.0
            .get((n / 64) as usize)
            .is_some_and(|w| w & (1 << (n % 64)) != 0)
    }

    pub fn len(&self) -> u64 {
        self.0.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Per-sender state of one viewer.
#[derive(Debug, Default, Clone)]
struct SenderSeen {
    seen: SeqSet,
    max_n: Option<u64>,
}

/// What one viewer received.
#[derive(Debug, Default, Clone)]
pub struct ViewerLog {
    senders: HashMap<u32, SenderSeen>,
    /// Batch frames received for the viewer's room.
    pub frames: u64,
    /// Events received in those frames, repeats included.
    pub events: u64,
    /// Events received a second time (same sender and post number).
    pub duplicates: u64,
    /// Events older (lower post number) than one already received from the same sender.
    pub order_violations: u64,
    /// Events whose text is not a loadtest post (someone else's comment).
    pub foreign: u64,
}

impl ViewerLog {
    /// Counts one batch frame.
    pub fn on_frame(&mut self) {
        self.frames += 1;
    }

    /// Records one received event by its text.
    pub fn on_event(&mut self, text: &str) {
        self.events += 1;
        match parse_post_text(text) {
            Some((sender, n)) => self.record(sender, n),
            None => self.foreign += 1,
        }
    }

    /// Records post `n` of `sender`.
    pub fn record(&mut self, sender: u32, n: u64) {
        let s = self.senders.entry(sender).or_default();
        if !s.seen.insert(n) {
            self.duplicates += 1;
            return;
        }
        match s.max_n {
            Some(max) if n < max => self.order_violations += 1,
            _ => s.max_n = Some(n),
        }
    }

    /// Compares what arrived with what was accepted for the viewer's room.
    pub fn tally(&self, expected: &RoomExpected) -> Tally {
        let mut received_expected = 0;
        for (sender, ns) in &expected.0 {
            if let Some(s) = self.senders.get(sender) {
                received_expected += ns.iter().filter(|n| s.seen.contains(**n)).count() as u64;
            }
        }
        let distinct: u64 = self.senders.values().map(|s| s.seen.len()).sum();
        let expected_n = expected.len();
        Tally {
            expected: expected_n,
            received: distinct,
            lost: expected_n - received_expected,
            unexpected: distinct - received_expected,
            duplicates: self.duplicates,
            order_violations: self.order_violations,
            frames: self.frames,
            events: self.events,
        }
    }
}

/// The posts ingest accepted for one room: sender → post numbers.
#[derive(Debug, Default, Clone)]
pub struct RoomExpected(pub HashMap<u32, Vec<u64>>);

impl RoomExpected {
    pub fn add(&mut self, sender: u32, n: u64) {
        self.0.entry(sender).or_default().push(n);
    }

    pub fn len(&self) -> u64 {
        self.0.values().map(|v| v.len() as u64).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One viewer's numbers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Posts accepted for the viewer's room while it was joined.
    pub expected: u64,
    /// Distinct loadtest posts received.
    pub received: u64,
    /// Expected posts never received.
    pub lost: u64,
    /// Distinct posts received that were not known to be accepted (e.g. the
    /// POST timed out after ingest had accepted it).
    pub unexpected: u64,
    pub duplicates: u64,
    pub order_violations: u64,
    pub frames: u64,
    pub events: u64,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, o: Tally) {
        self.expected += o.expected;
        self.received += o.received;
        self.lost += o.lost;
        self.unexpected += o.unexpected;
        self.duplicates += o.duplicates;
        self.order_violations += o.order_violations;
        self.frames += o.frames;
        self.events += o.events;
    }
}

/// One lane's accounting summed over viewers.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LaneTally {
    /// Σ over viewers of what was accepted for their room.
    pub expected: u64,
    /// Events received, repeats included.
    pub received: u64,
    /// Expected events never received (exact for gifts and probes; counting
    /// viewers: `max(0, expected − received)`).
    pub lost: u64,
    /// Counting viewers: `max(0, received − expected)` (repeats or unknown posts).
    pub excess: u64,
    pub duplicates: u64,
    pub order_violations: u64,
    /// Distinct events received that were not known to be accepted.
    pub unexpected: u64,
}

impl std::ops::AddAssign for LaneTally {
    fn add_assign(&mut self, o: Self) {
        self.expected += o.expected;
        self.received += o.received;
        self.lost += o.lost;
        self.excess += o.excess;
        self.duplicates += o.duplicates;
        self.order_violations += o.order_violations;
        self.unexpected += o.unexpected;
    }
}

/// Bytes and deliveries per transport.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct WireTally {
    pub viewers: u64,
    /// Bytes read from sockets, WebSocket headers included (QUIC: not measured).
    pub bytes_in: u64,
    pub frames: u64,
    pub deliveries: u64,
}

/// A viewer that lost something.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Worst {
    pub viewer: u64,
    pub room: String,
    pub lane: String,
    pub received: u64,
    pub expected: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_text_round_trips() {
        let t = post_text(12, 345, "哈哈 哈哈 666");
        assert_eq!(t, "lt 12 345 哈哈 哈哈 666");
        assert_eq!(parse_post_text(&t), Some((12, 345)));
        assert_eq!(parse_post_text("lt 1 2"), Some((1, 2)));
        assert_eq!(parse_post_text("hello 1 2 x"), None);
        assert_eq!(parse_post_text("lt x 2 y"), None);
        assert_eq!(parse_post_text("lt 1"), None);
    }

    #[test]
    fn counts_loss_duplicates_and_order() {
        let mut expected = RoomExpected::default();
        // sender 0 posted 0..10 to this room, sender 1 posted the even numbers 0..20
        (0..10).for_each(|n| expected.add(0, n));
        (0..20).step_by(2).for_each(|n| expected.add(1, n));
        assert_eq!(expected.len(), 20);

        let mut log = ViewerLog::default();
        log.on_frame();
        // sender 0: 0..10 except 4 and 7, with 6 arriving before 5 (one order
        // violation) and 2 delivered twice (one duplicate).
        for n in [0, 1, 2, 3, 6, 5, 8, 9, 2] {
            log.on_event(&post_text(0, n, "666"));
        }
        log.on_frame();
        // sender 1: every post, in order, plus a post number never accepted.
        for n in (0..20).step_by(2) {
            log.on_event(&post_text(1, n, "gg"));
        }
        log.on_event(&post_text(1, 21, "late"));
        log.on_event("someone else's comment");

        let t = log.tally(&expected);
        assert_eq!(
            t,
            Tally {
                expected: 20,
                received: 8 + 10 + 1,
                lost: 2,
                unexpected: 1,
                duplicates: 1,
                order_violations: 1,
                frames: 2,
                events: 9 + 11 + 1,
            }
        );
        assert_eq!(log.foreign, 1);
    }

    #[test]
    fn a_duplicate_is_not_also_an_order_violation() {
        let mut log = ViewerLog::default();
        for n in [0, 1, 2, 1, 0, 3] {
            log.record(7, n);
        }
        assert_eq!((log.duplicates, log.order_violations), (2, 0));
        let mut log = ViewerLog::default();
        for n in [5, 1, 2, 3] {
            log.record(7, n);
        }
        assert_eq!((log.duplicates, log.order_violations), (0, 3));
    }

    #[test]
    fn nothing_received_is_all_lost() {
        let mut expected = RoomExpected::default();
        (0..130).for_each(|n| expected.add(3, n));
        let t = ViewerLog::default().tally(&expected);
        assert_eq!((t.expected, t.received, t.lost), (130, 0, 130));
        let mut sum = t;
        sum += t;
        assert_eq!(sum.lost, 260);
    }
}
