//! Who is listening where: channel name → the local members of that channel.
//!
//! Only members connected to THIS edge are held (the bus brings every channel's
//! events; the consumer drops those with no entry here). Sharded maps all the
//! way down: the outer `DashMap` shards channels, each [`Channel`]'s `DashMap`
//! shards its members, so no lock is global and the fan-out path only takes
//! shard read locks — never a lock per member. A member is a handle to push into
//! its connection's bounded queue: pushing is a refcount bump and `try_send`.
//! Channels are removed when their last member leaves.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use danmaku_proto::json::{JsonEvent, JsonServerFrame};
use danmaku_proto::pb::server_frame::Body;
use danmaku_proto::wsframe::{OpCode, Prepared};
use danmaku_proto::{ChannelName, frame, pb};
use dashmap::DashMap;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, mpsc};

use crate::metrics::Metrics;

/// Identifies one client connection on this edge.
pub type ConnId = u64;

/// How a connection receives frames; also the `transport` metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// WebSocket, subprotocol `danmaku.v1.json`: text frames.
    WsJson = 0,
    /// WebSocket, subprotocol `danmaku.v1.pb`: binary protobuf frames.
    WsPb = 1,
    /// QUIC, ALPN `danmaku/1`: protobuf frames on streams and datagrams.
    Quic = 2,
}

impl Transport {
    pub const ALL: [Transport; 3] = [Transport::WsJson, Transport::WsPb, Transport::Quic];

    pub fn label(self) -> &'static str {
        match self {
            Transport::WsJson => "ws_json",
            Transport::WsPb => "ws_pb",
            Transport::Quic => "quic",
        }
    }

    /// Whether this transport reads JSON text rather than protobuf bytes.
    pub fn is_json(self) -> bool {
        self == Transport::WsJson
    }
}

/// A prebuilt frame queued to one connection: the COMPLETE WebSocket frame
/// (header + payload in one buffer, identical for every receiver, since server
/// frames are unmasked). A WebSocket writes [`Prepared::wire`] as is; QUIC sends
/// [`Prepared::payload`], a slice of the same buffer. Cloning is a refcount
/// bump: every member of a channel shares the same bytes.
pub type Outbound = Prepared;

/// The frames of one flush, built once and shared by all members of a channel.
#[derive(Debug, Clone)]
pub struct BatchFrames {
    /// `ServerFrame{Batch}` as a binary frame, for protobuf and QUIC members.
    pub pb: Prepared,
    /// The JSON text frame, built only when the channel has JSON members.
    pub json: Option<Prepared>,
}

/// One reliable event, framed ONCE for every member of a channel: the protobuf
/// `ServerFrame{Reliable}` (binary frame) and its JSON text frame. Shared by
/// `Arc` through fan-out, unacked windows and retransmits.
#[derive(Debug)]
pub struct ReliableFrame {
    pub seq: u64,
    pub pb: Prepared,
    pub json: Prepared,
}

impl ReliableFrame {
    /// Encodes `event` (whose `seq` is set) as a `Reliable` frame of `channel`.
    pub fn build(channel: &str, event: pb::Event) -> Arc<ReliableFrame> {
        let seq = event.seq;
        let json = JsonServerFrame::Reliable {
            channel: channel.to_owned(),
            seq,
            event: JsonEvent::from_pb(&event),
        }
        .to_text();
        let frame = frame::server(Body::Reliable(pb::Reliable {
            channel: channel.to_owned(),
            seq,
            event: Some(event),
        }));
        Arc::new(ReliableFrame {
            seq,
            pb: Prepared::encode(OpCode::Binary, &frame),
            json: Prepared::new(OpCode::Text, json.as_bytes()),
        })
    }

    /// The frame as `transport` writes it (a refcount bump).
    pub fn outbound(&self, transport: Transport) -> Outbound {
        if transport.is_json() {
            self.json.clone()
        } else {
            self.pb.clone()
        }
    }
}

/// A live reliable event handed to one connection's task.
#[derive(Debug, Clone)]
pub struct ReliableDelivery {
    pub channel: ChannelName,
    pub frame: Arc<ReliableFrame>,
}

/// What one flush of a channel hands a connection's task when reliable events
/// are due: the events in seq order and, if danmaku flushed at the same time,
/// the batch frame. The task queues them together, so the writer sends all of
/// them with one vectored write: a room's gifts ride its batch tick instead of
/// costing every member one write each (10 gifts/s in a 100k room would
/// otherwise be 1M writes/s).
///
/// One tick is built per flush and shared by `Arc` with every member (each
/// takes the batch frame of its transport): a queue slot is then one pointer,
/// which keeps every idle connection's reliable queue small.
#[derive(Debug)]
pub struct ReliableTick {
    pub channel: ChannelName,
    pub frames: Vec<Arc<ReliableFrame>>,
    pub batch: Option<BatchFrames>,
}

impl ReliableTick {
    /// The batch frame a member on `transport` writes, if any.
    pub fn batch_for(&self, transport: Transport) -> Option<Outbound> {
        let b = self.batch.as_ref()?;
        if transport.is_json() {
            b.json.clone()
        } else {
            Some(b.pb.clone())
        }
    }
}

/// `user` was removed from the group `channel` (over HTTP, on any ingest): a
/// connection of that user leaves the channel with `Left{reason:"removed"}`.
#[derive(Debug)]
pub struct Removal {
    pub channel: ChannelName,
    pub user: Arc<str>,
}

/// What the registry hands a connection's own task (not its writer): live
/// reliable events, and membership changes it must act on. Both variants are
/// one pointer (see [`ReliableTick`]).
#[derive(Debug, Clone)]
pub enum ConnEvent {
    Reliable(Arc<ReliableTick>),
    Removed(Arc<Removal>),
}

/// The sending half of one connection's live reliable queue: bounded
/// (`ReliableConfig::queue`), so a connection whose task cannot keep up holds
/// a bounded number of ticks. An event that does not fit is not dropped
/// silently: the overflow signal wakes the connection's task, which closes
/// with `reliable_backlog`, and the client resumes from its last ack (the store
/// has every event), so nothing is lost.
#[derive(Debug, Clone)]
pub struct ReliableSender {
    tx: mpsc::Sender<ConnEvent>,
    overflow: Arc<Notify>,
}

impl ReliableSender {
    /// A bounded queue of `capacity` events and the overflow signal its
    /// receiver waits on.
    pub fn channel(capacity: usize) -> (ReliableSender, mpsc::Receiver<ConnEvent>, Arc<Notify>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let overflow = Arc::new(Notify::new());
        let sender = ReliableSender {
            tx,
            overflow: Arc::clone(&overflow),
        };
        (sender, rx, overflow)
    }

    /// Queues `event` without waiting. `Err(true)` when the queue was full (the
    /// overflow signal is raised), `Err(false)` when the connection has ended.
    pub fn send(&self, event: ConnEvent) -> Result<(), bool> {
        match self.tx.try_send(event) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                // Stores a permit when the task is not waiting: never lost.
                self.overflow.notify_one();
                Err(true)
            }
            Err(TrySendError::Closed(_)) => Err(false),
        }
    }
}

/// One connection's membership in a channel.
#[derive(Debug, Clone)]
pub struct Member {
    transport: Transport,
    queue: mpsc::Sender<Outbound>,
    /// Live reliable events go to the connection's task (which keeps its window
    /// and `sent_upto`), never through the droppable batch queue.
    reliable: Option<ReliableLane>,
}

/// The way to a connection's own task, for reliable frames and the batches
/// that travel with them.
#[derive(Debug, Clone)]
pub struct ReliableLane {
    tx: ReliableSender,
    /// Batches handed to the task and not yet queued by it. While this is
    /// above zero, later batches take the same way, or they would overtake.
    batches_in_flight: Arc<AtomicUsize>,
}

impl ReliableLane {
    /// `in_flight` is shared with the connection's task, which decrements it
    /// each time it queues a batch it was handed ([`ReliableTick::batch`]).
    pub fn new(tx: ReliableSender, in_flight: Arc<AtomicUsize>) -> Self {
        ReliableLane {
            tx,
            batches_in_flight: in_flight,
        }
    }

    /// Hands `tick` to the task (`with_batch`: it carries a batch for this
    /// member); false if the connection is gone.
    fn send(&self, tick: Arc<ReliableTick>, with_batch: bool) -> bool {
        if with_batch {
            self.batches_in_flight.fetch_add(1, Ordering::AcqRel);
        }
        // A full queue raises the overflow signal: the task closes with
        // `reliable_backlog` and the client resumes, so nothing is lost.
        let sent = self.tx.send(ConnEvent::Reliable(tick)).is_ok();
        if !sent && with_batch {
            self.batches_in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        sent
    }
}

impl Member {
    pub fn new(transport: Transport, queue: mpsc::Sender<Outbound>) -> Self {
        Member {
            transport,
            queue,
            reliable: None,
        }
    }

    /// This member also receives the channel's reliable events through `lane`.
    pub fn with_reliable(mut self, lane: ReliableLane) -> Self {
        self.reliable = Some(lane);
        self
    }

    /// Queues a batch, droppable: straight to the writer's bounded queue, or
    /// behind batches still with the connection's task, so none overtakes.
    fn push_batch(&self, channel: &ChannelName, item: Outbound, out: &mut PushOutcome) {
        if let Some(lane) = &self.reliable
            && lane.batches_in_flight.load(Ordering::Acquire) > 0
        {
            let tick = Arc::new(ReliableTick {
                channel: channel.clone(),
                frames: Vec::new(),
                batch: Some(BatchFrames {
                    pb: item.clone(),
                    json: Some(item),
                }),
            });
            if lane.send(tick, true) {
                out.pushed[self.transport as usize] += 1;
            }
            return;
        }
        match self.queue.try_send(item) {
            Ok(()) => out.pushed[self.transport as usize] += 1,
            Err(TrySendError::Full(_)) => out.dropped += 1,
            Err(TrySendError::Closed(_)) => {}
        }
    }
}

/// What a push to all members of a channel did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PushOutcome {
    /// Frames queued, indexed by `Transport as usize`.
    pub pushed: [u64; 3],
    /// Members whose queue was full: the batch is dropped for them.
    pub dropped: u64,
}

impl PushOutcome {
    pub fn total_pushed(&self) -> u64 {
        self.pushed.iter().sum()
    }
}

/// A channel's local members.
#[derive(Debug)]
pub struct Channel {
    name: ChannelName,
    members: DashMap<ConnId, Member>,
    count: AtomicUsize,
    json_count: AtomicUsize,
    /// Bus events routed here since the top-rooms task last looked (`top_rooms.rs`).
    inbound: AtomicU64,
    /// Ordered reliable frames waiting for the channel's next flush. Whoever
    /// flushes first (the batcher with danmaku, or the reliable task's own
    /// timer) takes them, and holds the lock while handing them out so two
    /// flushes never reach a member out of order. One lock per channel, per
    /// flush: never one per member.
    pending_reliable: Mutex<Vec<Arc<ReliableFrame>>>,
}

impl Channel {
    fn new(name: ChannelName) -> Self {
        Channel {
            name,
            members: DashMap::new(),
            count: AtomicUsize::new(0),
            json_count: AtomicUsize::new(0),
            inbound: AtomicU64::new(0),
            pending_reliable: Mutex::new(Vec::new()),
        }
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

    /// Queues the frames of one flush to every member without waiting: a full
    /// queue drops the batch for that member only (slow consumer), a closed one
    /// (connection ending) is skipped.
    pub fn push(&self, frames: &BatchFrames) -> PushOutcome {
        let mut out = PushOutcome::default();
        for member in self.members.iter() {
            let item = if member.transport.is_json() {
                match &frames.json {
                    Some(text) => text.clone(),
                    // Joined after the batch was built: catches the next one.
                    None => continue,
                }
            } else {
                frames.pb.clone()
            };
            member.push_batch(&self.name, item, &mut out);
        }
        out
    }

    /// Queues an ordered reliable frame for the channel's next flush. Returns
    /// whether it is the first one waiting (the caller then arms a timer, so a
    /// room without danmaku still gets its gifts within one window).
    pub fn queue_reliable(&self, frame: Arc<ReliableFrame>) -> bool {
        let mut pending = self.lock_pending();
        pending.push(frame);
        pending.len() == 1
    }

    /// Reliable frames waiting for a flush.
    pub fn pending_reliable(&self) -> usize {
        self.lock_pending().len()
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Vec<Arc<ReliableFrame>>> {
        // A panic while holding it cannot leave the Vec half-updated.
        self.pending_reliable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// One flush of the channel: the danmaku `batch` (if any) and every
    /// reliable frame waiting. Members with reliable frames due get both in one
    /// [`ConnEvent::Reliable`] on their never-dropping queue (the connection
    /// task keeps the unacked window, then queues the batch, droppable, behind
    /// them); without reliable frames the batch goes straight to each member's
    /// bounded queue ([`Channel::push`]). Returns what the batch push did and
    /// how many connections were handed reliable frames.
    pub fn flush(&self, batch: Option<&BatchFrames>) -> (PushOutcome, u64) {
        let mut pending = self.lock_pending();
        if pending.is_empty() {
            drop(pending);
            return (batch.map(|b| self.push(b)).unwrap_or_default(), 0);
        }
        let tick = Arc::new(ReliableTick {
            channel: self.name.clone(),
            frames: std::mem::take(&mut *pending),
            batch: batch.cloned(),
        });
        let mut out = PushOutcome::default();
        let mut reached = 0;
        for member in self.members.iter() {
            let Some(lane) = &member.reliable else {
                if let Some(item) = tick.batch_for(member.transport) {
                    member.push_batch(&self.name, item, &mut out);
                }
                continue;
            };
            // A JSON member that joined after the batch was built has none.
            let has_batch = tick
                .batch
                .as_ref()
                .is_some_and(|b| !member.transport.is_json() || b.json.is_some());
            if lane.send(Arc::clone(&tick), has_batch) {
                reached += 1;
                if has_batch {
                    // Counted as pushed here; the connection task counts a
                    // drop if its queue turns out to be full.
                    out.pushed[member.transport as usize] += 1;
                }
            }
        }
        drop(pending);
        (out, reached)
    }

    /// Tells every member's connection task that `user` left the group; only
    /// that user's connections act on it. Returns the connections told.
    pub fn notify_removed(&self, user: &str) -> u64 {
        let removal = Arc::new(Removal {
            channel: self.name.clone(),
            user: Arc::from(user),
        });
        let mut told = 0;
        for member in self.members.iter() {
            let Some(lane) = &member.reliable else {
                continue;
            };
            if lane
                .tx
                .send(ConnEvent::Removed(Arc::clone(&removal)))
                .is_ok()
            {
                told += 1;
            }
        }
        told
    }

    fn insert(&self, conn: ConnId, member: Member) -> bool {
        let json = member.transport.is_json();
        if self.members.insert(conn, member).is_some() {
            return false;
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        if json {
            self.json_count.fetch_add(1, Ordering::Relaxed);
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
        }
        true
    }
}

/// All channels with local members.
pub struct Registry {
    channels: DashMap<ChannelName, Arc<Channel>>,
    metrics: Metrics,
}

impl Registry {
    pub fn new(metrics: Metrics) -> Self {
        Registry {
            channels: DashMap::new(),
            metrics,
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
            Arc::new(Channel::new(channel.clone()))
        });
        let added = entry.insert(conn, member);
        drop(entry);
        if created {
            self.metrics.channels.inc();
        }
        if added {
            self.metrics.channel_members.inc();
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
            self.metrics.channel_members.dec();
        }
        // Emptiness is checked under the shard write lock, which `join` holds
        // while inserting, so a channel that just gained a member is kept.
        if self
            .channels
            .remove_if(channel, |_, ch| ch.is_empty())
            .is_some()
        {
            self.metrics.channels.dec();
        }
        removed
    }

    /// The channel named `name`, if it has local members.
    pub fn get(&self, name: &str) -> Option<Arc<Channel>> {
        self.channels.get(name).map(|c| Arc::clone(&c))
    }

    /// Calls `f` with every channel, holding one map shard's read lock at a
    /// time. For periodic reports (`top_rooms.rs`), not the fan-out path.
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
mod tests {
    use super::*;

    fn room(s: &str) -> ChannelName {
        ChannelName::parse(s).unwrap()
    }

    fn member(t: Transport, cap: usize) -> (Member, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(cap);
        (Member::new(t, tx), rx)
    }

    fn frames() -> BatchFrames {
        BatchFrames {
            pb: Prepared::new(OpCode::Binary, b"pb"),
            json: Some(Prepared::new(OpCode::Text, b"{}")),
        }
    }

    #[test]
    fn join_and_leave_keep_counts_and_remove_empty_channels() {
        let metrics = Metrics::unregistered();
        let reg = Registry::new(metrics.clone());
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
        assert_eq!(metrics.channels.get(), 1);
        assert_eq!(metrics.channel_members.get(), 2);

        assert!(reg.leave(&r1, 2));
        assert!(!reg.leave(&r1, 2));
        assert_eq!(ch.json_members(), 0);
        assert!(reg.get("room:1").is_some());
        assert!(reg.leave(&r1, 1));
        assert!(reg.get("room:1").is_none(), "empty channel is removed");
        assert!(reg.is_empty());
        assert_eq!(metrics.channels.get(), 0);
        assert_eq!(metrics.channel_members.get(), 0);
        assert!(!reg.leave(&room("room:nope"), 1));
    }

    #[test]
    fn push_shares_frames_by_codec_and_drops_for_full_queues() {
        let reg = Registry::new(Metrics::unregistered());
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
        let first = ch.push(&f);
        assert_eq!(first.pushed, [1, 1, 0]);
        assert_eq!(first.dropped, 0);
        let second = ch.push(&f);
        assert_eq!(second.dropped, 1, "pb member's queue of 1 is full");
        assert_eq!(second.total_pushed(), 1);
        let b = pb_rx.try_recv().unwrap();
        assert_eq!(b, f.pb);
        assert_eq!(
            b.wire().as_ptr(),
            f.pb.wire().as_ptr(),
            "shared, not copied"
        );
        let t = js_rx.try_recv().unwrap();
        assert_eq!(t.opcode(), OpCode::Text);
        assert_eq!(&t.payload()[..], b"{}");
    }

    #[test]
    fn json_members_are_skipped_when_no_json_was_built() {
        let reg = Registry::new(Metrics::unregistered());
        let r = room("group:g");
        let (js, mut js_rx) = member(Transport::WsJson, 8);
        reg.join(&r, 1, js);
        let out = reg.get("group:g").unwrap().push(&BatchFrames {
            pb: Prepared::new(OpCode::Binary, b""),
            json: None,
        });
        assert_eq!(out, PushOutcome::default());
        assert!(js_rx.try_recv().is_err());
    }

    #[test]
    fn concurrent_join_and_leave_never_lose_a_member() {
        let reg = Arc::new(Registry::new(Metrics::unregistered()));
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

    fn gift(seq: u64) -> Arc<ReliableFrame> {
        ReliableFrame::build(
            "room:g",
            pb::Event {
                kind: pb::Kind::Gift as i32,
                sender: "bob".into(),
                seq,
                ..Default::default()
            },
        )
    }

    #[test]
    fn a_flush_hands_waiting_reliable_frames_and_the_batch_together() {
        let reg = Registry::new(Metrics::unregistered());
        let r = room("room:g");
        let (rel_tx, mut rel_rx, _overflow) = ReliableSender::channel(16);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let (m1, mut q1) = member(Transport::WsPb, 4);
        reg.join(
            &r,
            1,
            m1.with_reliable(ReliableLane::new(rel_tx, Arc::clone(&in_flight))),
        );
        // A member without a reliable lane gets the batch on its queue as before.
        let (m2, mut q2) = member(Transport::WsJson, 4);
        reg.join(&r, 2, m2);
        let ch = reg.get("room:g").unwrap();
        assert!(
            ch.queue_reliable(gift(1)),
            "first waiting frame arms the timer"
        );
        assert!(!ch.queue_reliable(gift(2)));
        assert_eq!(ch.pending_reliable(), 2);

        let (out, reached) = ch.flush(Some(&frames()));
        assert_eq!(reached, 1);
        assert_eq!(out.pushed[Transport::WsPb as usize], 1);
        assert_eq!(out.pushed[Transport::WsJson as usize], 1);
        assert_eq!(ch.pending_reliable(), 0, "taken by the flush");
        let ConnEvent::Reliable(tick) = rel_rx.try_recv().unwrap() else {
            panic!("expected a reliable tick");
        };
        let seqs: Vec<u64> = tick.frames.iter().map(|f| f.seq).collect();
        assert_eq!(seqs, vec![1, 2]);
        assert_eq!(
            tick.batch_for(Transport::WsPb).unwrap().wire(),
            frames().pb.wire()
        );
        assert!(
            q1.try_recv().is_err(),
            "the batch went with the tick, not around it"
        );
        assert_eq!(q2.try_recv().unwrap().wire(), frames().json.unwrap().wire());
        // The connection task queued the batch it was handed.
        in_flight.fetch_sub(1, Ordering::AcqRel);

        // Nothing waiting: the batch takes the plain path; a timer flush with
        // nothing waiting does nothing.
        let (out, reached) = ch.flush(Some(&frames()));
        assert_eq!((out.total_pushed(), reached), (2, 0));
        assert!(q1.try_recv().is_ok());
        assert!(rel_rx.try_recv().is_err());
        assert_eq!(ch.flush(None), (PushOutcome::default(), 0));
    }

    #[test]
    fn a_batch_never_overtakes_one_still_with_the_connection_task() {
        let reg = Registry::new(Metrics::unregistered());
        let r = room("room:o");
        let (rel_tx, mut rel_rx, _overflow) = ReliableSender::channel(16);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let (m, mut q) = member(Transport::WsPb, 4);
        reg.join(
            &r,
            1,
            m.with_reliable(ReliableLane::new(rel_tx, Arc::clone(&in_flight))),
        );
        let ch = reg.get("room:o").unwrap();
        ch.queue_reliable(gift(1));
        ch.flush(Some(&frames()));
        assert_eq!(in_flight.load(Ordering::Relaxed), 1);
        // The task has not queued that batch yet: the next one follows it
        // through the task instead of jumping into the writer's queue.
        let (out, _) = ch.flush(Some(&frames()));
        assert_eq!(out.total_pushed(), 1);
        assert!(q.try_recv().is_err());
        assert_eq!(in_flight.load(Ordering::Relaxed), 2);
        let kinds: Vec<(usize, bool)> = std::iter::from_fn(|| rel_rx.try_recv().ok())
            .map(|e| match e {
                ConnEvent::Reliable(t) => (t.frames.len(), t.batch.is_some()),
                ConnEvent::Removed(_) => panic!("unexpected"),
            })
            .collect();
        assert_eq!(kinds, vec![(1, true), (0, true)]);
        // Once the task caught up, batches go straight to the queue again.
        in_flight.store(0, Ordering::Relaxed);
        ch.flush(Some(&frames()));
        assert!(q.try_recv().is_ok());
    }
}
