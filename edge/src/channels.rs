//! Who is listening where: channel name → the local members of that channel.
//!
//! Only members connected to THIS edge are held (the bus brings every channel's
//! events; the consumer drops those with no entry here). Sharded maps all the
//! way down: the outer `DashMap` shards channels, each [`Channel`]'s `DashMap`
//! shards its members, so no lock is global and the fan-out path only takes
//! shard read locks — never a lock per member. A member is a handle to push into
//! its connection's bounded queue: pushing a tick is a refcount bump, a
//! `try_send` and, when the tick carries reliable events, one atomic max on the
//! member's lane ([`LaneShared`]). Channels are removed when their last member
//! leaves.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use danmaku_proto::wsframe::Prepared;
use danmaku_proto::{ChannelName, Layout};
use dashmap::DashMap;
use prometheus::IntGauge;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, mpsc};

use crate::direct::{DirectSink, Offer};
use crate::reliable::lane::LaneShared;
use crate::reliable::ring::{ReliableFrame, Ring};
use crate::thinning::Thinning;
use crate::transport::Transport;

/// Identifies one client connection on this edge.
pub type ConnId = u64;

/// A prebuilt frame queued to one connection: the COMPLETE WebSocket frame
/// (header + payload in one buffer, identical for every receiver, since server
/// frames are unmasked). A WebSocket writes [`Prepared::wire`] as is; QUIC sends
/// [`Prepared::payload`], a slice of the same buffer. Cloning is a refcount
/// bump: every member of a channel shares the same bytes.
pub type Outbound = Prepared;

/// The frames of one tick, built once and shared by all members of a channel.
#[derive(Debug, Clone, Default)]
pub struct BatchFrames {
    /// `ServerFrame{Batch}` as a binary frame in each protobuf layout
    /// (indexed by [`Layout::index`]), built only for the layouts the
    /// channel's members read. A member takes its own layout or, when that
    /// one was not built, a simpler one (every reader of a layout reads the
    /// simpler ones too). A member with no layout it reads (it joined after
    /// the tick was built) misses that tick, as a JSON member does: its
    /// reliable seqs are sent again on their own.
    pub pb: [Option<Prepared>; 3],
    /// The JSON text frame, built only when the channel has JSON members.
    pub json: Option<Prepared>,
}

impl BatchFrames {
    /// A tick in the plain protobuf layout only (which every protobuf member
    /// reads) and, if any, JSON.
    pub fn plain(pb: Prepared, json: Option<Prepared>) -> Self {
        BatchFrames {
            pb: [Some(pb), None, None],
            json,
        }
    }

    /// The protobuf frame a member reading `layout` takes.
    pub fn pb_for(&self, layout: Layout) -> Option<&Prepared> {
        self.pb[..=layout.index()].iter().rev().flatten().next()
    }
}

/// `user` was removed from the group `channel`, or banned from `channel`
/// (over HTTP, on any ingest): a connection of that user leaves the channel
/// with `Left{reason}`.
#[derive(Debug)]
pub struct Removal {
    pub channel: ChannelName,
    pub user: Arc<str>,
    pub reason: LeaveReason,
}

/// Why a connection was made to leave a channel (`Left.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// Removed from the group.
    Removed,
    /// Banned from the channel by a moderator.
    Banned,
}

impl LeaveReason {
    /// `Left.reason` on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Removed => "removed",
            LeaveReason::Banned => "banned",
        }
    }
}

/// `user` was muted in `channel` until `until_ms` (by a moderator, on any
/// ingest): that user's connections in the channel get a `notice` frame.
#[derive(Debug)]
pub struct MuteNotice {
    pub channel: ChannelName,
    pub user: Arc<str>,
    pub until_ms: i64,
}

/// What the registry tells a connection's own task (not its writer). Rare by
/// design — a membership change, a tick the member could not take, a stall
/// the sweep saw — so live traffic never wakes a connection's task, only its
/// writer.
#[derive(Debug, Clone)]
pub enum ConnEvent {
    Removed(Arc<Removal>),
    Muted(Arc<MuteNotice>),
    /// Reliable seqs of this channel did not reach the connection live
    /// ([`LaneShared::take_missed`] says from which).
    Missed(ChannelName),
    /// No ack on this channel for a whole sweep interval with seqs outstanding.
    Stalled(ChannelName),
}

/// The way to wake a connection's task: a bounded queue of [`ConnEvent`]s and
/// an overflow signal. An event that does not fit is not dropped silently: the
/// signal makes the task close with `reliable_backlog`, and the client resumes
/// from its last ack (the store has every event).
#[derive(Debug, Clone)]
pub struct Waker {
    tx: mpsc::Sender<ConnEvent>,
    overflow: Arc<Notify>,
}

impl Waker {
    /// A bounded queue of `capacity` events and the overflow signal its
    /// receiver waits on.
    pub fn channel(capacity: usize) -> (Waker, mpsc::Receiver<ConnEvent>, Arc<Notify>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let overflow = Arc::new(Notify::new());
        let waker = Waker {
            tx,
            overflow: Arc::clone(&overflow),
        };
        (waker, rx, overflow)
    }

    /// Queues `event` without waiting; false when the connection has ended.
    pub fn send(&self, event: ConnEvent) -> bool {
        match self.tx.try_send(event) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                // Stores a permit when the task is not waiting: never lost.
                self.overflow.notify_one();
                true
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }
}

/// One connection's membership in a channel.
#[derive(Debug, Clone)]
pub struct Member {
    transport: Transport,
    /// The protobuf batch layout it reads (`danmaku.v2.pb`, `danmaku.v3.pb`).
    layout: Layout,
    queue: mpsc::Sender<Outbound>,
    /// The socket itself, for a plain-TCP WebSocket: ticks are written into it
    /// directly when nothing waits in the queue (`direct.rs`).
    direct: Option<Arc<DirectSink>>,
    wake: Waker,
    lane: Arc<LaneShared>,
}

impl Member {
    pub fn new(
        transport: Transport,
        queue: mpsc::Sender<Outbound>,
        wake: Waker,
        lane: Arc<LaneShared>,
    ) -> Self {
        Member {
            transport,
            layout: Layout::Plain,
            queue,
            direct: None,
            wake,
            lane,
        }
    }

    /// This member reads protobuf batches in `layout` (and the simpler ones).
    pub fn layout(mut self, layout: Layout) -> Self {
        self.layout = layout;
        self
    }

    /// Ticks go straight into this socket when they can (`direct.rs`).
    pub(crate) fn direct(mut self, sink: Option<Arc<DirectSink>>) -> Self {
        self.direct = sink;
        self
    }

    /// Queues one tick, droppable. `seqs` is the range of reliable seqs it
    /// carries: a member that cannot take it (queue full, or a JSON member
    /// that joined after the tick was built without JSON) or that it would
    /// leave with a hole is marked missed, and its task reads the seqs from the
    /// ring or the store and sends them on its never-dropping control queue.
    fn push(
        &self,
        channel: &ChannelName,
        item: Option<Outbound>,
        seqs: Option<(u64, u64)>,
        out: &mut PushOutcome,
    ) {
        let t = self.transport as usize;
        let sent = match item {
            None => false,
            Some(item) => {
                let offer = match &self.direct {
                    Some(d) => d.try_write(item.wire()),
                    None => Offer::Busy,
                };
                match offer {
                    Offer::Written => {
                        out.pushed[t] += 1;
                        out.direct_bytes[t] += item.wire().len() as u64;
                        out.direct += 1;
                        true
                    }
                    Offer::Handed(n) => {
                        out.pushed[t] += 1;
                        out.direct_bytes[t] += n as u64;
                        out.handed += 1;
                        true
                    }
                    // Connection ending: its task leaves the channel.
                    Offer::Closed => return,
                    Offer::Busy => {
                        if let Some(d) = &self.direct {
                            d.queued();
                        }
                        let sent = self.queue.try_send(item);
                        if sent.is_err()
                            && let Some(d) = &self.direct
                        {
                            d.unqueued();
                        }
                        match sent {
                            Ok(()) => {
                                out.pushed[t] += 1;
                                true
                            }
                            Err(TrySendError::Full(_)) => {
                                out.dropped += 1;
                                false
                            }
                            Err(TrySendError::Closed(_)) => return,
                        }
                    }
                }
            }
        };
        let Some((first, last)) = seqs else {
            return;
        };
        let missed = if sent {
            self.lane.on_tick(first, last).err()
        } else {
            Some(first.min(self.lane.live_upto() + 1))
        };
        if let Some(from) = missed
            && self.lane.mark_missed(from)
        {
            self.wake.send(ConnEvent::Missed(channel.clone()));
        }
    }
}

/// What a push to all members of a channel did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PushOutcome {
    /// Frames queued, indexed by `Transport as usize`.
    pub pushed: [u64; 5],
    /// Members whose queue was full: the tick is dropped for them.
    pub dropped: u64,
    /// Frames the shard wrote into the socket itself, whole (`direct.rs`).
    pub direct: u64,
    /// Direct writes the socket took in part; the writer task writes the rest.
    pub handed: u64,
    /// Bytes the shard wrote into sockets itself, by `Transport as usize`.
    pub direct_bytes: [u64; 5],
}

impl PushOutcome {
    pub fn total_pushed(&self) -> u64 {
        self.pushed.iter().sum()
    }

    fn add(&mut self, other: &PushOutcome) {
        for (a, b) in self.pushed.iter_mut().zip(other.pushed) {
            *a += b;
        }
        for (a, b) in self.direct_bytes.iter_mut().zip(other.direct_bytes) {
            *a += b;
        }
        self.dropped += other.dropped;
        self.direct += other.direct;
        self.handed += other.handed;
    }
}

/// Threads that push one big room's tick side by side, each to its own part of
/// the members (`BatchConfig::write_threads`). A tick is pushed whole before
/// the next one starts, so a member still gets its ticks in order.
pub struct WritePool {
    pool: rayon::ThreadPool,
    min_members_per_part: usize,
}

impl WritePool {
    /// A pool of `threads` (None below 2: every write stays on the caller's thread).
    pub fn new(threads: usize, min_members_per_part: usize) -> Option<Self> {
        if threads < 2 {
            return None;
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("edge-writer-{i}"))
            .build();
        match pool {
            Ok(pool) => Some(WritePool {
                pool,
                min_members_per_part: min_members_per_part.max(1),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "no write threads; ticks are written by the batcher alone");
                None
            }
        }
    }

    /// Parts a tick to `members` members is split into.
    fn parts(&self, members: usize) -> usize {
        (members / self.min_members_per_part).clamp(1, self.pool.current_num_threads())
    }
}

/// A channel's local members.
#[derive(Debug)]
pub struct Channel {
    name: ChannelName,
    members: DashMap<ConnId, Member>,
    count: AtomicUsize,
    json_count: AtomicUsize,
    /// Protobuf members by the batch layout they read (`Layout::index`).
    layout_count: [AtomicUsize; 3],
    /// Bus events routed here since the top-rooms task last looked (`top_rooms.rs`).
    inbound: AtomicU64,
    /// The channel's recent reliable events (`reliable/ring.rs`). Locked once
    /// per event by the fan-out and by the rare connection that catches up.
    ring: Mutex<Ring>,
    /// The member count waiting to ride the next tick (0: none), set by the
    /// online push (`control_plane/online.rs`), taken by the batcher.
    online: AtomicU64,
    /// Danmaku per second pushed to each member (0: no cap), from the room's
    /// latest danmaku on the bus or the edge's default (`thinning.rs`).
    max_rate: AtomicU32,
    /// The room's thinning budget; locked once per tick by its batcher shard.
    thinning: Mutex<Thinning>,
}

impl Channel {
    fn new(name: ChannelName, ring: usize) -> Self {
        Channel {
            name,
            members: DashMap::new(),
            count: AtomicUsize::new(0),
            json_count: AtomicUsize::new(0),
            layout_count: Default::default(),
            inbound: AtomicU64::new(0),
            ring: Mutex::new(Ring::new(ring)),
            online: AtomicU64::new(0),
            max_rate: AtomicU32::new(0),
            thinning: Mutex::new(Thinning::default()),
        }
    }

    /// The room's cap, as the latest danmaku on the bus says (one relaxed
    /// store per event).
    pub fn set_max_rate(&self, max_rate: u32) {
        self.max_rate.store(max_rate, Ordering::Relaxed);
    }

    /// Thins one tick's events (gathered over `window`) to the room's cap;
    /// returns how many danmaku were left out (see `thinning.rs`).
    pub fn thin(
        &self,
        window: std::time::Duration,
        events: &mut Vec<danmaku_proto::pb::Event>,
    ) -> u64 {
        let max_rate = self.max_rate.load(Ordering::Relaxed);
        if max_rate == 0 {
            return 0; // the common case: no lock
        }
        let mut thinning = self.thinning.lock().unwrap_or_else(|e| e.into_inner());
        thinning.thin(std::time::Instant::now(), window, max_rate, events)
    }

    /// Leaves `online` for the next tick to carry. True when the previous
    /// count was still waiting (no tick in a whole push interval: a quiet
    /// room), so the caller sends this one in an `online` frame of its own.
    pub fn offer_online(&self, online: u64) -> bool {
        self.online.swap(online.max(1), Ordering::AcqRel) > 0
    }

    /// The count for the tick being built now, if one waits (one atomic swap
    /// per tick).
    pub fn take_online(&self) -> Option<u64> {
        let waiting = self.online.swap(0, Ordering::AcqRel);
        (waiting > 0).then_some(waiting)
    }

    /// Counts one bus event routed to this channel: one relaxed add, the only
    /// per-event cost of the top-rooms ranking.
    pub fn count_inbound(&self) {
        self.inbound.fetch_add(1, Ordering::Relaxed);
    }

    /// Events counted since the previous call (resets the count).
    pub fn take_inbound(&self) -> u64 {
        self.inbound.swap(0, Ordering::Relaxed)
    }

    pub fn name(&self) -> &ChannelName {
        &self.name
    }

    /// Local members now.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Local members that read JSON; the batcher builds JSON text only when > 0.
    pub fn json_members(&self) -> usize {
        self.json_count.load(Ordering::Relaxed)
    }

    /// Local protobuf members by the batch layout they read
    /// (`Layout::index`): the batcher builds only the layouts someone reads.
    pub fn pb_members(&self) -> [usize; 3] {
        std::array::from_fn(|i| self.layout_count[i].load(Ordering::Relaxed))
    }

    /// Queues the frames of one tick to every member without waiting: a full
    /// queue drops the tick for that member only (slow consumer), a closed one
    /// (connection ending) is skipped. `seqs`: the first and last reliable seq
    /// inside, if any (see [`Member::push`] for what a member that misses them
    /// gets).
    pub fn push(&self, frames: &BatchFrames, seqs: Option<(u64, u64)>) -> PushOutcome {
        self.push_part(frames, seqs, 0, 1)
    }

    /// [`Self::push`], split over `writers` when the room is big enough; returns
    /// when every part is pushed.
    pub fn push_spread(
        &self,
        frames: &BatchFrames,
        seqs: Option<(u64, u64)>,
        writers: Option<&WritePool>,
    ) -> PushOutcome {
        let Some(writers) = writers else {
            return self.push(frames, seqs);
        };
        let parts = writers.parts(self.len());
        if parts < 2 {
            return self.push(frames, seqs);
        }
        use rayon::prelude::*;
        let outcomes: Vec<PushOutcome> = writers.pool.install(|| {
            (0..parts)
                .into_par_iter()
                .map(|part| self.push_part(frames, seqs, part, parts))
                .collect()
        });
        let mut out = PushOutcome::default();
        for o in &outcomes {
            out.add(o);
        }
        out
    }

    /// Pushes to the members whose connection id is `part` modulo `parts`.
    fn push_part(
        &self,
        frames: &BatchFrames,
        seqs: Option<(u64, u64)>,
        part: usize,
        parts: usize,
    ) -> PushOutcome {
        let mut out = PushOutcome::default();
        // The SSE event, framed from the JSON text once per tick when the
        // first SSE member is reached (`sse_wire.rs`).
        let mut sse: Option<Option<Outbound>> = None;
        // Each protobuf layout's frame (or its fallback), chosen once per tick.
        let pb = Layout::ALL.map(|l| frames.pb_for(l));
        for member in self.members.iter() {
            if parts > 1 && *member.key() % parts as u64 != part as u64 {
                continue;
            }
            let item = match member.transport {
                Transport::Sse => sse
                    .get_or_insert_with(|| {
                        let id = seqs.map(|(_, last)| (self.name.as_str(), last));
                        frames
                            .json
                            .as_ref()
                            .map(|j| crate::sse_wire::event(id, &j.payload()))
                    })
                    .clone(),
                t if t.is_json() => frames.json.clone(),
                _ => pb[member.layout.index()].cloned(),
            };
            member.push(&self.name, item, seqs, &mut out);
        }
        out
    }

    /// Keeps the next ordered reliable event for resends and resumes.
    pub fn remember(&self, frame: Arc<ReliableFrame>) {
        self.lock_ring().push(frame);
    }

    /// The ring's frames after `after` (see [`Ring::after`]).
    pub fn recent_after(&self, after: u64, limit: usize) -> Option<Vec<Arc<ReliableFrame>>> {
        self.lock_ring().after(after, limit)
    }

    /// One pass of the stall sweep over this channel's members (see
    /// [`LaneShared::sweep`]); returns the connections woken.
    pub fn sweep_stalled(&self) -> u64 {
        if self.lock_ring().is_empty() {
            return 0; // never had a reliable event here
        }
        let mut woken = 0;
        for member in self.members.iter() {
            if member.lane.sweep() && member.wake.send(ConnEvent::Stalled(self.name.clone())) {
                woken += 1;
            }
        }
        woken
    }

    /// Tells every member's connection task that `user` must leave (removed
    /// from the group, or banned); only that user's connections act on it.
    /// Returns the connections told.
    pub fn notify_left(&self, user: &str, reason: LeaveReason) -> u64 {
        let removal = Arc::new(Removal {
            channel: self.name.clone(),
            user: Arc::from(user),
            reason,
        });
        let mut told = 0;
        for member in self.members.iter() {
            if member.wake.send(ConnEvent::Removed(Arc::clone(&removal))) {
                told += 1;
            }
        }
        told
    }

    /// Tells every member's connection task that `user` was muted; only that
    /// user's connections act on it (members do not know their user, as for
    /// [`Channel::notify_left`]). Returns the connections told.
    pub fn notify_muted(&self, user: &str, until_ms: i64) -> u64 {
        let notice = Arc::new(MuteNotice {
            channel: self.name.clone(),
            user: Arc::from(user),
            until_ms,
        });
        let mut told = 0;
        for member in self.members.iter() {
            if member.wake.send(ConnEvent::Muted(Arc::clone(&notice))) {
                told += 1;
            }
        }
        told
    }

    fn lock_ring(&self) -> MutexGuard<'_, Ring> {
        // Pushes are single appends: a panic while holding the lock cannot
        // leave the ring half-updated.
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn insert(&self, conn: ConnId, member: Member) -> bool {
        let (json, layout) = (member.transport.is_json(), member.layout);
        if self.members.insert(conn, member).is_some() {
            return false;
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        if json {
            self.json_count.fetch_add(1, Ordering::Relaxed);
        } else {
            self.layout_count[layout.index()].fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    fn remove(&self, conn: ConnId) -> bool {
        let Some((_, member)) = self.members.remove(&conn) else {
            return false;
        };
        self.count.fetch_sub(1, Ordering::Relaxed);
        if member.transport.is_json() {
            self.json_count.fetch_sub(1, Ordering::Relaxed);
        } else {
            self.layout_count[member.layout.index()].fetch_sub(1, Ordering::Relaxed);
        }
        true
    }
}

/// The gauges the registry keeps true (from the edge's metrics).
#[derive(Debug, Clone)]
pub struct ChannelGauges {
    /// `danmaku_edge_channels`: channels with local members.
    pub channels: IntGauge,
    /// `danmaku_edge_channel_members`: memberships over all channels.
    pub members: IntGauge,
}

impl From<&crate::metrics::Metrics> for ChannelGauges {
    fn from(m: &crate::metrics::Metrics) -> Self {
        ChannelGauges {
            channels: m.channels.clone(),
            members: m.channel_members.clone(),
        }
    }
}

/// All channels with local members.
pub struct Channels {
    channels: DashMap<ChannelName, Arc<Channel>>,
    gauges: ChannelGauges,
    ring: usize,
}

impl Channels {
    /// `ring`: reliable events each channel keeps for resends and resumes.
    pub fn new(gauges: ChannelGauges, ring: usize) -> Self {
        Channels {
            channels: DashMap::new(),
            gauges,
            ring,
        }
    }

    /// Adds `conn` to `channel`, creating the channel on first join. Returns
    /// false if `conn` was already a member (joining twice is harmless).
    pub fn join(&self, channel: &ChannelName, conn: ConnId, member: Member) -> bool {
        // The member is inserted while the entry (a shard write lock) is held, so
        // `leave` cannot remove the channel between its creation and this insert.
        let mut created = false;
        let entry = self.channels.entry(channel.clone()).or_insert_with(|| {
            created = true;
            Arc::new(Channel::new(channel.clone(), self.ring))
        });
        let added = entry.insert(conn, member);
        drop(entry);
        if created {
            self.gauges.channels.inc();
        }
        if added {
            self.gauges.members.inc();
        }
        added
    }

    /// Removes `conn` from `channel`, and the channel if it became empty.
    /// Returns whether `conn` was a member.
    pub fn leave(&self, channel: &ChannelName, conn: ConnId) -> bool {
        let removed = match self.channels.get(channel) {
            Some(ch) => ch.remove(conn),
            None => return false,
        };
        if removed {
            self.gauges.members.dec();
        }
        // Emptiness is checked under the shard write lock, which `join` holds
        // while inserting, so a channel that just gained a member is kept.
        if self
            .channels
            .remove_if(channel, |_, ch| ch.is_empty())
            .is_some()
        {
            self.gauges.channels.dec();
        }
        removed
    }

    /// The channel named `name`, if it has local members.
    pub fn get(&self, name: &str) -> Option<Arc<Channel>> {
        self.channels.get(name).map(|c| Arc::clone(&c))
    }

    /// Calls `f` with every channel, holding one map shard's read lock at a
    /// time. For periodic passes (`top_rooms.rs`, the stall sweep), not the
    /// fan-out path.
    pub fn for_each_channel(&self, mut f: impl FnMut(&Channel)) {
        for entry in self.channels.iter() {
            f(entry.value());
        }
    }

    /// Channels with local members: the `n` of the adaptive window.
    pub fn len(&self) -> usize {
        self.channels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// Every channel with local members now (for heartbeats and online pushes,
    /// once a second or less: never on the fan-out path).
    pub fn snapshot(&self) -> Vec<Arc<Channel>> {
        self.channels
            .iter()
            .map(|c| Arc::clone(c.value()))
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use danmaku_proto::pb;
    use danmaku_proto::wsframe::OpCode;

    use super::*;

    fn room(s: &str) -> ChannelName {
        ChannelName::parse(s).unwrap()
    }

    pub(crate) fn gauges() -> ChannelGauges {
        ChannelGauges {
            channels: IntGauge::new("c", "c").unwrap(),
            members: IntGauge::new("m", "m").unwrap(),
        }
    }

    /// A member whose lane starts at `start`, its batch queue of `cap` and its
    /// wake queue.
    pub(crate) fn member_at(
        t: Transport,
        cap: usize,
        start: u64,
    ) -> (
        Member,
        mpsc::Receiver<Outbound>,
        mpsc::Receiver<ConnEvent>,
        Arc<LaneShared>,
    ) {
        let (tx, rx) = mpsc::channel(cap);
        let (wake, wake_rx, _overflow) = Waker::channel(8);
        let lane = Arc::new(LaneShared::new(start));
        (
            Member::new(t, tx, wake, Arc::clone(&lane)),
            rx,
            wake_rx,
            lane,
        )
    }

    fn member(t: Transport, cap: usize) -> (Member, mpsc::Receiver<Outbound>) {
        let (m, rx, _, _) = member_at(t, cap, 0);
        (m, rx)
    }

    fn frames() -> BatchFrames {
        BatchFrames {
            pb: [
                Some(Prepared::new(OpCode::Binary, b"pb")),
                Some(Prepared::new(OpCode::Binary, b"pb2")),
                Some(Prepared::new(OpCode::Binary, b"pb3")),
            ],
            json: Some(Prepared::new(OpCode::Text, b"{}")),
        }
    }

    /// A big room's tick pushed by several threads reaches every member once,
    /// queued or written into its socket, and each member gets the ticks in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tick_spread_over_write_threads_reaches_every_member_once_in_order() {
        use tokio::io::AsyncReadExt;
        let reg = Channels::new(gauges(), 16);
        let r = room("room:spread");
        let mut queued = Vec::new();
        for conn in 0..40u64 {
            let (m, rx) = member(Transport::WsPb, 64);
            assert!(reg.join(&r, conn, m));
            queued.push(rx);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peers = Vec::new();
        for conn in 40..48u64 {
            let peer = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let (server, _) = listener.accept().await.unwrap();
            let sink = Arc::new(DirectSink::new(server));
            let (m, rx) = member(Transport::WsPb, 64);
            assert!(reg.join(&r, conn, m.direct(Some(sink))));
            queued.push(rx);
            peers.push(peer);
        }
        let writers = WritePool::new(2, 1).unwrap();
        assert_eq!(writers.parts(48), 2);
        assert_eq!(WritePool::new(2, 100).unwrap().parts(48), 1);
        assert!(WritePool::new(1, 1).is_none());
        let ch = reg.get("room:spread").unwrap();
        let tick = |i: usize| Prepared::new(OpCode::Binary, format!("tick{i:03}").as_bytes());
        const TICKS: usize = 20;
        for i in 0..TICKS {
            let frames = BatchFrames::plain(tick(i), None);
            let out = ch.push_spread(&frames, None, Some(&writers));
            assert_eq!(out.total_pushed(), 48, "tick {i}");
            assert_eq!((out.direct, out.dropped), (8, 0), "tick {i}");
            let len = tick(i).wire().len() as u64;
            assert_eq!(out.direct_bytes[Transport::WsPb as usize], 8 * len);
        }
        let want: Vec<u8> = (0..TICKS).flat_map(|i| tick(i).wire().to_vec()).collect();
        for rx in &mut queued[..40] {
            let got: Vec<u8> = (0..TICKS)
                .flat_map(|_| rx.try_recv().unwrap().wire().to_vec())
                .collect();
            assert_eq!(got, want);
            assert!(rx.try_recv().is_err(), "nothing twice");
        }
        for rx in &mut queued[40..] {
            assert!(
                rx.try_recv().is_err(),
                "written into the socket, not queued"
            );
        }
        for peer in &mut peers {
            let mut got = vec![0u8; want.len()];
            peer.read_exact(&mut got).await.unwrap();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn join_and_leave_keep_counts_and_remove_empty_channels() {
        let g = gauges();
        let reg = Channels::new(g.clone(), 16);
        let r1 = room("room:1");
        let (m1, _rx1) = member(Transport::WsPb, 4);
        let (m2, _rx2) = member(Transport::WsJson, 4);
        assert!(reg.join(&r1, 1, m1.clone()));
        assert!(
            !reg.join(&r1, 1, m1),
            "second join of the same conn is a no-op"
        );
        assert!(reg.join(&r1, 2, m2));
        let ch = reg.get("room:1").expect("channel exists");
        assert_eq!(ch.len(), 2);
        assert_eq!(ch.json_members(), 1);
        assert_eq!(reg.len(), 1);
        assert_eq!(g.channels.get(), 1);
        assert_eq!(g.members.get(), 2);

        assert!(reg.leave(&r1, 2));
        assert!(!reg.leave(&r1, 2));
        assert_eq!(ch.json_members(), 0);
        assert!(reg.get("room:1").is_some());
        assert!(reg.leave(&r1, 1));
        assert!(reg.get("room:1").is_none(), "empty channel is removed");
        assert!(reg.is_empty());
        assert_eq!(g.channels.get(), 0);
        assert_eq!(g.members.get(), 0);
        assert!(!reg.leave(&room("room:nope"), 1));
    }

    #[test]
    fn push_shares_frames_by_codec_and_drops_for_full_queues() {
        let reg = Channels::new(gauges(), 16);
        let r = room("room:7");
        let (pb, mut pb_rx) = member(Transport::WsPb, 1);
        let (js, mut js_rx) = member(Transport::WsJson, 8);
        let (quic, quic_rx) = member(Transport::Quic, 8);
        reg.join(&r, 1, pb);
        reg.join(&r, 2, js);
        reg.join(&r, 3, quic);
        drop(quic_rx); // connection ending: skipped, not counted as slow
        let ch = reg.get("room:7").unwrap();
        let f = frames();
        let first = ch.push(&f, None);
        assert_eq!(first.pushed, [1, 1, 0, 0, 0]);
        assert_eq!(first.dropped, 0);
        let second = ch.push(&f, None);
        assert_eq!(second.dropped, 1, "pb member's queue of 1 is full");
        assert_eq!(second.total_pushed(), 1);
        let b = pb_rx.try_recv().unwrap();
        let pb = f.pb[0].as_ref().unwrap();
        assert_eq!(&b, pb);
        assert_eq!(b.wire().as_ptr(), pb.wire().as_ptr(), "shared, not copied");
        let t = js_rx.try_recv().unwrap();
        assert_eq!(t.opcode(), OpCode::Text);
        assert_eq!(&t.payload()[..], b"{}");
    }

    #[test]
    fn members_get_their_layout_or_the_simplest_one_built_before_it() {
        let reg = Channels::new(gauges(), 16);
        let r = room("room:9");
        let (plain, mut plain_rx) = member(Transport::WsPb, 8);
        let (compact, mut compact_rx) = member(Transport::WsPb, 8);
        let (dense, mut dense_rx) = member(Transport::WsPb, 8);
        let (js, _js_rx) = member(Transport::WsJson, 8);
        reg.join(&r, 1, plain);
        reg.join(&r, 2, compact.layout(Layout::Compact));
        reg.join(&r, 3, dense.layout(Layout::Dense));
        // A JSON member is not a protobuf reader, whatever its layout says.
        reg.join(&r, 4, js.layout(Layout::Dense));
        let ch = reg.get("room:9").unwrap();
        assert_eq!(ch.pb_members(), [1, 1, 1]);
        let mut rx = [&mut plain_rx, &mut compact_rx, &mut dense_rx];
        let mut got = |want: [Option<&[u8]>; 3]| {
            for (rx, want) in rx.iter_mut().zip(want) {
                assert_eq!(
                    rx.try_recv().ok().map(|f| f.payload().to_vec()),
                    want.map(<[u8]>::to_vec)
                );
            }
        };
        let f = frames();
        assert_eq!(ch.push(&f, None).pushed, [1, 3, 0, 0, 0]);
        got([Some(b"pb"), Some(b"pb2"), Some(b"pb3")]);
        // A tick built before the dense member joined: it reads the compact
        // frame, and the plain one when only that was built.
        let no_dense = BatchFrames {
            pb: [f.pb[0].clone(), f.pb[1].clone(), None],
            ..frames()
        };
        ch.push(&no_dense, None);
        got([Some(b"pb"), Some(b"pb2"), Some(b"pb2")]);
        ch.push(
            &BatchFrames::plain(Prepared::new(OpCode::Binary, b"pb"), None),
            None,
        );
        got([Some(b"pb"), Some(b"pb"), Some(b"pb")]);
        // A tick built for dense readers only: the others, who joined since,
        // miss it.
        let dense_only = BatchFrames {
            pb: [None, None, f.pb[2].clone()],
            ..frames()
        };
        assert_eq!(ch.push(&dense_only, None).pushed, [1, 1, 0, 0, 0]);
        got([None, None, Some(b"pb3")]);
        reg.leave(&r, 3);
        reg.leave(&r, 4);
        assert_eq!(ch.pb_members(), [1, 1, 0]);
    }

    #[test]
    fn sse_members_share_one_event_per_tick_with_the_id_of_its_last_seq() {
        let reg = Channels::new(gauges(), 16);
        let r = room("room:8");
        let (a, mut a_rx) = member(Transport::Sse, 8);
        let (b, mut b_rx) = member(Transport::Sse, 8);
        let (js, mut js_rx) = member(Transport::WsJson, 8);
        reg.join(&r, 1, a);
        reg.join(&r, 2, b);
        reg.join(&r, 3, js);
        let out = reg.get("room:8").unwrap().push(&frames(), Some((4, 6)));
        assert_eq!(out.pushed, [1, 0, 0, 2, 0]);
        let (ea, eb) = (a_rx.try_recv().unwrap(), b_rx.try_recv().unwrap());
        assert_eq!(&ea.wire()[..], b"id: room:8:6\ndata: {}\n\n");
        assert_eq!(
            ea.wire().as_ptr(),
            eb.wire().as_ptr(),
            "framed once, shared"
        );
        assert_eq!(js_rx.try_recv().unwrap().opcode(), OpCode::Text);
    }

    #[test]
    fn json_members_are_skipped_when_no_json_was_built() {
        let reg = Channels::new(gauges(), 16);
        let r = room("group:g");
        let (js, mut js_rx) = member(Transport::WsJson, 8);
        reg.join(&r, 1, js);
        let out = reg.get("group:g").unwrap().push(
            &BatchFrames::plain(Prepared::new(OpCode::Binary, b""), None),
            None,
        );
        assert_eq!(out, PushOutcome::default());
        assert!(js_rx.try_recv().is_err());
    }

    #[test]
    fn a_tick_with_reliable_seqs_is_one_frame_per_member_and_a_miss_wakes_the_task() {
        let reg = Channels::new(gauges(), 16);
        let r = room("room:g");
        let (ok, mut ok_q, mut ok_wake, ok_lane) = member_at(Transport::WsPb, 8, 0);
        let (full, mut full_q, mut full_wake, full_lane) = member_at(Transport::Quic, 1, 0);
        reg.join(&r, 1, ok);
        reg.join(&r, 2, full);
        let ch = reg.get("room:g").unwrap();
        let out = ch.push(&frames(), Some((1, 3)));
        assert_eq!((out.total_pushed(), out.dropped), (2, 0));
        assert_eq!(ok_lane.live_upto(), 3);
        let out = ch.push(&frames(), Some((4, 4)));
        assert_eq!(out.dropped, 1, "the QUIC member's queue of 1 is full");
        let out = ch.push(&frames(), Some((5, 6)));
        assert_eq!(out.dropped, 1);
        // Joined when seq 5 was the last stored: the next tick starts at 7,
        // so 6 (ticked before it joined) is missing.
        let (late, mut late_q, mut late_wake, late_lane) = member_at(Transport::WsPb, 8, 5);
        reg.join(&r, 3, late);
        ch.push(&frames(), Some((7, 8)));
        // One frame per tick for a member that kept up, and no wake at all.
        assert_eq!(std::iter::from_fn(|| ok_q.try_recv().ok()).count(), 4);
        assert!(
            ok_wake.try_recv().is_err(),
            "live traffic never wakes the task"
        );
        assert_eq!(ok_lane.take_missed(), None);
        assert_eq!(ok_lane.live_upto(), 8);
        // The full member: woken once, missed from its first dropped tick.
        assert_eq!(std::iter::from_fn(|| full_q.try_recv().ok()).count(), 1);
        assert!(matches!(full_wake.try_recv(), Ok(ConnEvent::Missed(c)) if c == r));
        assert!(full_wake.try_recv().is_err(), "one wake for several misses");
        assert_eq!(full_lane.take_missed(), Some(4));
        assert_eq!(full_lane.live_upto(), 3);
        // The late joiner got its tick, and 6 is missing.
        assert_eq!(std::iter::from_fn(|| late_q.try_recv().ok()).count(), 1);
        assert!(matches!(late_wake.try_recv(), Ok(ConnEvent::Missed(_))));
        assert_eq!(late_lane.take_missed(), Some(6));
        assert_eq!(late_lane.live_upto(), 8);
    }

    #[test]
    fn the_ring_keeps_recent_events_and_the_sweep_wakes_silent_members() {
        let reg = Channels::new(gauges(), 2);
        let r = room("room:s");
        let (m, _q, mut wake, lane) = member_at(Transport::WsPb, 8, 0);
        reg.join(&r, 1, m);
        let ch = reg.get("room:s").unwrap();
        assert_eq!(ch.sweep_stalled(), 0, "no reliable traffic: not swept");
        for seq in 1..=3 {
            ch.remember(ReliableFrame::build(
                "room:s",
                &pb::Event {
                    seq,
                    ..Default::default()
                },
            ));
        }
        let seqs = |v: Option<Vec<Arc<ReliableFrame>>>| -> Option<Vec<u64>> {
            v.map(|v| v.iter().map(|f| f.seq).collect())
        };
        assert_eq!(seqs(ch.recent_after(1, 10)), Some(vec![2, 3]));
        assert_eq!(seqs(ch.recent_after(0, 10)), None, "1 fell out");
        ch.push(&frames(), Some((1, 3)));
        assert_eq!(ch.sweep_stalled(), 0, "first pass marks");
        assert_eq!(
            ch.sweep_stalled(),
            0,
            "silent for one pass: may be just pushed"
        );
        assert!(wake.try_recv().is_err(), "not woken yet");
        assert_eq!(ch.sweep_stalled(), 1, "silent for two whole passes");
        assert!(matches!(wake.try_recv(), Ok(ConnEvent::Stalled(c)) if c == r));
        assert_eq!(lane.acked(), 0);
    }

    #[test]
    fn concurrent_join_and_leave_never_lose_a_member() {
        let reg = Arc::new(Channels::new(gauges(), 16));
        let r = room("room:race");
        let handles: Vec<_> = (0..4u64)
            .map(|t| {
                let reg = Arc::clone(&reg);
                let r = r.clone();
                std::thread::spawn(move || {
                    for i in 0..2_000u64 {
                        let conn = t * 1_000_000 + i;
                        let (m, _rx) = member(Transport::WsPb, 1);
                        reg.join(&r, conn, m);
                        reg.leave(&r, conn);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert!(reg.get("room:race").is_none());
        let (m, _rx) = member(Transport::WsPb, 1);
        reg.join(&r, 42, m);
        assert_eq!(reg.get("room:race").unwrap().len(), 1);
    }
}
