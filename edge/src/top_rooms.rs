//! The hottest rooms of this edge, for operators: the top N channels by local
//! members and by inbound bus events per second.
//!
//! Why not a `channel` label on a gauge: room ids are unbounded, and a label per
//! room would make every Prometheus series set grow with the rooms ever seen.
//! Instead the gauges are labelled by `rank` only (`1`..=N, a fixed set of series
//! per edge), and the names behind the ranks of the latest ranking are served as
//! JSON at `GET /v1/top-rooms` (the same snapshot that set the gauges).
//!
//! Off the hot path: the consumer only bumps one relaxed atomic per event in the
//! channel it routes to; a task ranks every few seconds by walking the registry
//! (shard read locks, one at a time) and keeping two bounded heaps of size N.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::channels::Channels;
use crate::metrics::TopRoomGauges;

/// One room in a ranking.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoomStat {
    /// 1 = the biggest (or busiest).
    pub rank: usize,
    pub channel: String,
    /// Local members on this edge.
    pub members: u64,
    /// Bus events per second for this room, over the last ranking interval.
    pub inbound_per_sec: f64,
}

/// The latest ranking: what `GET /v1/top-rooms` answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TopRoomsSnapshot {
    pub edge: String,
    /// When this ranking was made, ms since the epoch (0 before the first one).
    pub at_ms: i64,
    /// Length of the interval the inbound rates are measured over.
    pub interval_ms: u64,
    pub by_members: Vec<RoomStat>,
    pub by_inbound: Vec<RoomStat>,
}

/// One channel's numbers at ranking time.
#[derive(Debug, Clone, Copy)]
pub struct RoomSample<'a> {
    pub channel: &'a str,
    pub members: u64,
    /// Events routed to the channel since the previous ranking.
    pub inbound: u64,
}

/// Ranks `samples` (pure): the `n` biggest by members and the `n` busiest by
/// inbound events, ties broken by channel name so a ranking is deterministic.
/// `elapsed` turns inbound counts into rates. Rooms with no inbound event are
/// left out of the inbound ranking. O(channels × log n), allocates only for
/// rooms that enter a heap.
pub fn rank<'a>(
    n: usize,
    elapsed: Duration,
    samples: impl IntoIterator<Item = RoomSample<'a>>,
) -> (Vec<RoomStat>, Vec<RoomStat>) {
    let mut by_members = Bounded::new(n);
    let mut by_inbound = Bounded::new(n);
    for s in samples {
        by_members.offer(s.members, s);
        if s.inbound > 0 {
            by_inbound.offer(s.inbound, s);
        }
    }
    let secs = elapsed.as_secs_f64().max(1e-3);
    let finish = |b: Bounded| -> Vec<RoomStat> {
        b.into_sorted()
            .into_iter()
            .enumerate()
            .map(|(i, e)| RoomStat {
                rank: i + 1,
                channel: e.channel,
                members: e.members,
                inbound_per_sec: e.inbound as f64 / secs,
            })
            .collect()
    };
    (finish(by_members), finish(by_inbound))
}

#[derive(Debug, PartialEq, Eq)]
struct Entry {
    score: u64,
    channel: String,
    members: u64,
    inbound: u64,
}

impl Ord for Entry {
    /// Higher score first, then the smaller name: "better" compares greater.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .cmp(&other.score)
            .then_with(|| other.channel.cmp(&self.channel))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The `n` best entries seen: a min-heap whose root is the worst kept.
struct Bounded {
    n: usize,
    heap: BinaryHeap<Reverse<Entry>>,
}

impl Bounded {
    fn new(n: usize) -> Self {
        Bounded {
            n,
            heap: BinaryHeap::with_capacity(n + 1),
        }
    }

    fn offer(&mut self, score: u64, s: RoomSample<'_>) {
        if self.n == 0 {
            return;
        }
        if self.heap.len() == self.n {
            let worst = &self.heap.peek().expect("n > 0 entries").0;
            let beats =
                score > worst.score || (score == worst.score && s.channel < worst.channel.as_str());
            if !beats {
                return;
            }
            self.heap.pop();
        }
        self.heap.push(Reverse(Entry {
            score,
            channel: s.channel.to_owned(),
            members: s.members,
            inbound: s.inbound,
        }));
    }

    fn into_sorted(self) -> Vec<Entry> {
        // Ascending by Reverse = best first.
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|r| r.0)
            .collect()
    }
}

/// Ranks the registry every `interval`, sets the gauges and publishes the
/// snapshot, until `shutdown`.
pub(crate) async fn run(
    edge_id: String,
    n: usize,
    interval: Duration,
    channels: Arc<Channels>,
    gauges: TopRoomGauges,
    snapshot: watch::Sender<Arc<TopRoomsSnapshot>>,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick fires at once: start the first interval clean.
    ticker.tick().await;
    channels.for_each_channel(|ch| {
        ch.take_inbound();
    });
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = tokio::time::Instant::now();
        let elapsed = now - last;
        last = now;
        let mut samples = Vec::with_capacity(channels.len());
        let mut names = Vec::with_capacity(channels.len());
        channels.for_each_channel(|ch| {
            names.push(ch.name().clone());
            samples.push((ch.len() as u64, ch.take_inbound()));
        });
        let (by_members, by_inbound) = rank(
            n,
            elapsed,
            names
                .iter()
                .zip(&samples)
                .map(|(name, &(members, inbound))| RoomSample {
                    channel: name.as_ref(),
                    members,
                    inbound,
                }),
        );
        gauges.set(
            by_members.iter().map(|r| r.members),
            by_inbound.iter().map(|r| r.inbound_per_sec),
        );
        snapshot.send_replace(Arc::new(TopRoomsSnapshot {
            edge: edge_id.clone(),
            at_ms: danmaku_proto::now_ms(),
            interval_ms: elapsed.as_millis() as u64,
            by_members,
            by_inbound,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(channel: &str, members: u64, inbound: u64) -> RoomSample<'_> {
        RoomSample {
            channel,
            members,
            inbound,
        }
    }

    #[test]
    fn keeps_the_n_biggest_and_busiest_in_order() {
        let rooms = [
            s("room:a", 5, 0),
            s("room:b", 50, 10),
            s("room:c", 500, 2),
            s("room:d", 1, 40),
            s("room:e", 20, 20),
        ];
        let (members, inbound) = rank(3, Duration::from_secs(2), rooms);
        let names = |v: &[RoomStat]| v.iter().map(|r| r.channel.clone()).collect::<Vec<_>>();
        assert_eq!(names(&members), ["room:c", "room:b", "room:e"]);
        assert_eq!(names(&inbound), ["room:d", "room:e", "room:b"]);
        assert_eq!(
            members.iter().map(|r| r.rank).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(inbound[0].inbound_per_sec, 20.0);
        assert_eq!(inbound[0].members, 1);
        assert_eq!(members[0].inbound_per_sec, 1.0);
    }

    #[test]
    fn ties_break_by_name_and_quiet_rooms_are_not_busy() {
        let rooms = [
            s("room:z", 7, 0),
            s("room:y", 7, 0),
            s("room:x", 7, 0),
            s("room:w", 7, 0),
        ];
        let (members, inbound) = rank(2, Duration::from_secs(1), rooms);
        assert_eq!(members[0].channel, "room:w");
        assert_eq!(members[1].channel, "room:x");
        assert!(inbound.is_empty());
    }

    #[test]
    fn fewer_rooms_than_n_and_n_zero() {
        let (m, i) = rank(20, Duration::from_secs(5), [s("room:1", 3, 5)]);
        assert_eq!(m.len(), 1);
        assert_eq!(i.len(), 1);
        assert_eq!(i[0].inbound_per_sec, 1.0);
        let (m, i) = rank(0, Duration::from_secs(5), [s("room:1", 3, 5)]);
        assert!(m.is_empty() && i.is_empty());
    }

    #[test]
    fn a_large_registry_ranks_exactly() {
        let names: Vec<String> = (0..10_000).map(|i| format!("room:{i}")).collect();
        let samples = names
            .iter()
            .enumerate()
            .map(|(i, n)| s(n, (i * 7919 % 10_007) as u64, i as u64));
        let (members, inbound) = rank(20, Duration::from_secs(1), samples);
        let mut want: Vec<(u64, &String)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| ((i * 7919 % 10_007) as u64, n))
            .collect();
        want.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
        let got: Vec<u64> = members.iter().map(|r| r.members).collect();
        let exp: Vec<u64> = want.iter().take(20).map(|w| w.0).collect();
        assert_eq!(got, exp);
        assert_eq!(inbound[0].channel, "room:9999");
        assert_eq!(inbound.len(), 20);
    }
}
