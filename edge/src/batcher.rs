//! Batcher tasks: turn a channel's events of one tick into ONE frame and push
//! it to every local member.
//!
//! Channels are spread over a few shard tasks by a hash of their name
//! ([`shard_of`]), so one channel's events stay in order on one task and the
//! cores share the encoding. The consumer feeds danmaku; the reliable fan-out
//! (`sequencer.rs`) feeds the channel's reliable events, already in seq
//! order, into the same open batch, so gifts ride the tick. Each shard owns a
//! [`PendingBatches`] (the pure window policy) and one [`FrameBuilder`] (one
//! reused zstd context). A flush encodes and compresses once, builds the JSON
//! text only if the channel has JSON members, and hands refcounted clones to
//! each member's bounded queue ([`Channel::push`]).

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use danmaku_proto::pb::server_frame::Body;
use danmaku_proto::wsframe::{OpCode, Prepared};
use danmaku_proto::{BatchEncoder, ChannelName, Layout, ProtoError, frame, json, pb};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::batch_policy::{PendingBatches, Ready};
use crate::channels::{BatchFrames, Channel, Channels, WritePool};
use crate::config::BatchConfig;
use crate::metrics::{Flush, Metrics};

/// Queue depth between the bus consumer and each shard. When a shard falls
/// behind, the consumer waits, and the bus (not the edge's memory) absorbs it.
const SHARD_QUEUE: usize = 8192;

/// The shard that owns `channel`: stable, so one channel's events keep their
/// order (the consumer and the reliable fan-out both route by it).
pub(crate) fn shard_of(channel: &str, shards: usize) -> usize {
    let mut h = std::hash::DefaultHasher::new();
    channel.hash(&mut h);
    (h.finish() % shards.max(1) as u64) as usize
}

/// One event routed to a shard (a danmaku, or a reliable event in seq order).
#[derive(Debug)]
pub(crate) struct ShardItem {
    pub channel: ChannelName,
    pub event: pb::Event,
    /// Local members when the event arrived, for the window of a new batch.
    pub members: usize,
    /// The room's hot-room cap (danmaku/s, 0: none), for the window of a new
    /// batch (`batch_policy::capped_window`).
    pub max_rate: u32,
}

/// Encodes batches; keeps the zstd contexts between batches.
pub struct FrameBuilder {
    encoder: BatchEncoder,
    /// For rooms of at least `big_members` members (`big_room_zstd_level`).
    big: BatchEncoder,
    big_members: usize,
    /// For rooms of at least `huge_members` members (`huge_room_zstd_level`).
    huge: BatchEncoder,
    huge_members: usize,
}

/// The protobuf layouts a tick is built in (indexed by [`Layout::index`]):
/// each costs an encode and a compression per tick, so one nobody reads is
/// not built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PbLayouts(pub [bool; 3]);

impl PbLayouts {
    pub const PLAIN: PbLayouts = PbLayouts([true, false, false]);

    /// What a room whose protobuf members read each layout in the numbers
    /// `members` needs ([`Channel::pb_members`]). A room of JSON readers only
    /// still gets the plain layout built (its size is what the batch metrics
    /// count).
    pub fn for_members(members: [usize; 3]) -> PbLayouts {
        if members.iter().all(|&n| n == 0) {
            return PbLayouts::PLAIN;
        }
        PbLayouts(members.map(|n| n > 0))
    }
}

/// Sizes of the last built batch, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BuiltSizes {
    pub raw: usize,
    pub compressed: usize,
}

impl FrameBuilder {
    pub fn new(cfg: &BatchConfig) -> Result<Self, ProtoError> {
        Ok(FrameBuilder {
            encoder: BatchEncoder::new(cfg.zstd_level, cfg.compress_threshold)?,
            big: BatchEncoder::new(cfg.big_room_zstd_level, cfg.compress_threshold)?,
            big_members: cfg.big_room_members,
            huge: BatchEncoder::new(cfg.huge_room_zstd_level, cfg.compress_threshold)?,
            huge_members: cfg.huge_room_members,
        })
    }

    /// Encodes `events` once as a protobuf `ServerFrame{Batch}` and, if
    /// `with_json`, once as JSON text, each already framed as the complete
    /// WebSocket frame every member writes (the protobuf is encoded straight
    /// after its frame header: no copy). `online` is the member count riding
    /// this tick, if one is due.
    pub fn build(
        &mut self,
        channel: &str,
        events: &[pb::Event],
        online: Option<u64>,
        with_json: bool,
    ) -> Result<(BatchFrames, BuiltSizes), ProtoError> {
        self.build_tick(channel, events, online, 0, with_json, 0, PbLayouts::PLAIN)
    }

    /// [`FrameBuilder::build`], also saying how many danmaku hot-room
    /// thinning left out of the tick (`sampled_out`, 0: none); `members`
    /// (the room's local members) picks the zstd level; `layouts` says which
    /// protobuf layouts the room's members read (each costs an encode and a
    /// compression per tick, so one nobody reads is not built).
    #[allow(clippy::too_many_arguments)] // one tick's facts, each from its own source
    pub fn build_tick(
        &mut self,
        channel: &str,
        events: &[pb::Event],
        online: Option<u64>,
        sampled_out: u64,
        with_json: bool,
        members: usize,
        layouts: PbLayouts,
    ) -> Result<(BatchFrames, BuiltSizes), ProtoError> {
        let encoder = if members >= self.huge_members {
            &mut self.huge
        } else if members >= self.big_members {
            &mut self.big
        } else {
            &mut self.encoder
        };
        // One layout: encoded, compressed and framed once for every member.
        let mut build = |layout| -> Result<(Prepared, BuiltSizes), ProtoError> {
            let mut batch = encoder.encode_layout(channel, events, layout)?;
            batch.online = online.unwrap_or(0);
            batch.sampled_out = sampled_out;
            let sizes = BuiltSizes {
                raw: encoder.last_raw_len(),
                compressed: batch.payload.len(),
            };
            let frame = Prepared::encode(OpCode::Binary, &frame::server(Body::Batch(batch)));
            Ok((frame, sizes))
        };
        // At least one protobuf layout is built; the metrics count the
        // simplest one's sizes.
        let layouts = if layouts.0.contains(&true) {
            layouts
        } else {
            PbLayouts::PLAIN
        };
        let mut frames = BatchFrames::default();
        let mut sizes = None;
        for layout in Layout::ALL {
            if layouts.0[layout.index()] {
                let (frame, built) = build(layout)?;
                frames.pb[layout.index()] = Some(frame);
                sizes.get_or_insert(built);
            }
        }
        frames.json = with_json.then(|| {
            Prepared::new(
                OpCode::Text,
                json::batch_json(channel, events, online, sampled_out).as_bytes(),
            )
        });
        Ok((frames, sizes.unwrap_or_default()))
    }
}

/// Starts `shards` batcher tasks on `runtime` (the delivery thread,
/// `pipeline.rs`); returns the queues the consumer feeds.
pub(crate) fn spawn_shards(
    runtime: &tokio::runtime::Handle,
    shards: usize,
    cfg: &BatchConfig,
    channels: Arc<Channels>,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<Vec<mpsc::Sender<ShardItem>>, ProtoError> {
    let writers = WritePool::new(cfg.write_threads, cfg.members_per_write_thread).map(Arc::new);
    (0..shards.max(1))
        .map(|_| {
            let (tx, rx) = mpsc::channel(SHARD_QUEUE);
            let shard = Shard {
                pending: PendingBatches::new(cfg.clone()),
                builder: FrameBuilder::new(cfg)?,
                channels: Arc::clone(&channels),
                metrics: metrics.clone(),
                writers: writers.clone(),
            };
            runtime.spawn(shard.run(rx, shutdown.clone()));
            Ok(tx)
        })
        .collect()
}

struct Shard {
    pending: PendingBatches<ChannelName>,
    builder: FrameBuilder,
    channels: Arc<Channels>,
    metrics: Metrics,
    /// Pushes a big room's tick on several threads (shared by the shards).
    writers: Option<Arc<WritePool>>,
}

impl Shard {
    async fn run(mut self, mut rx: mpsc::Receiver<ShardItem>, shutdown: CancellationToken) {
        loop {
            let deadline = self.pending.next_deadline().map(Instant::from_std);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = sleep_until_opt(deadline) => {
                    let now = Instant::now().into_std();
                    while let Some(ready) = self.pending.pop_due(now) {
                        self.flush(ready);
                    }
                }
                item = rx.recv() => {
                    let Some(item) = item else { return };
                    let now = Instant::now().into_std();
                    let active = self.channels.len();
                    if let Some(ready) = self.pending.on_event_capped(
                        now,
                        item.channel,
                        item.event,
                        item.members,
                        active,
                        item.max_rate,
                    ) {
                        self.flush(ready);
                    }
                }
            }
        }
    }

    fn flush(&mut self, mut ready: Ready<ChannelName>) {
        // Members may all have left during the window: nothing to build.
        let Some(channel) = self.channels.get(ready.channel.as_str()) else {
            return;
        };
        flush_to(
            &mut self.builder,
            &self.metrics,
            &channel,
            &mut ready,
            self.writers.as_deref(),
        );
    }
}

/// Thins `ready` to the room's `max_rate` (`thinning.rs`), builds its frames
/// once and pushes them to the members of `channel`.
pub(crate) fn flush_to(
    builder: &mut FrameBuilder,
    metrics: &Metrics,
    channel: &Channel,
    ready: &mut Ready<ChannelName>,
    writers: Option<&WritePool>,
) {
    let now_ms = danmaku_proto::now_ms();
    let sampled_out = channel.thin(ready.window, &mut ready.events);
    if sampled_out > 0 {
        metrics.sampled_out.inc_by(sampled_out);
    }
    let with_json = channel.json_members() > 0;
    let online = channel.take_online();
    let layouts = PbLayouts::for_members(channel.pb_members());
    let built = builder.build_tick(
        ready.channel.as_str(),
        &ready.events,
        online,
        sampled_out,
        with_json,
        channel.len(),
        layouts,
    );
    let (frames, sizes) = match built {
        Ok(built) => built,
        Err(e) => {
            tracing::error!(channel = %ready.channel, error = %e, "cannot encode batch");
            return;
        }
    };
    let outcome = channel.push_spread(&frames, reliable_seqs(&ready.events), writers);
    metrics.record_flush(
        now_ms,
        &Flush {
            events: &ready.events,
            window: ready.window,
            raw_bytes: sizes.raw,
            compressed_bytes: sizes.compressed,
            pushed: outcome.pushed,
            dropped: outcome.dropped,
            direct: outcome.direct,
            handed: outcome.handed,
            direct_bytes: outcome.direct_bytes,
            built: [
                frames.pb[0].is_some(),
                frames.pb[1].is_some(),
                frames.pb[2].is_some(),
                frames.json.is_some(),
            ],
        },
    );
    if outcome.dropped > 0 {
        tracing::debug!(channel = %ready.channel, dropped = outcome.dropped, "slow consumers skipped a tick");
    }
}

/// The first and last reliable seq among a tick's events (they arrive in seq
/// order from the fan-out), if any.
fn reliable_seqs(events: &[pb::Event]) -> Option<(u64, u64)> {
    let mut seqs = events.iter().map(|e| e.seq).filter(|&s| s > 0);
    let first = seqs.next()?;
    Some((first, seqs.next_back().unwrap_or(first)))
}

/// Sleeps until `deadline`, or forever without one (a `select!` arm that never fires).
pub(crate) async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use danmaku_proto::batch::{ENCODING_COMPACT, ENCODING_DENSE};
    use danmaku_proto::dictionary::DICT_DANMAKU_1;
    use danmaku_proto::{Limits, decode_batch};

    use super::*;
    use crate::channels::tests::{gauges, member_at};
    use crate::transport::Transport;

    fn ev(i: usize) -> pb::Event {
        pb::Event {
            kind: pb::Kind::Danmaku as i32,
            sender: "s".into(),
            text: format!("e{i}"),
            ts_ms: danmaku_proto::now_ms(),
            ..Default::default()
        }
    }

    #[test]
    fn big_rooms_get_the_tighter_level_and_the_same_events() {
        let mut events =
            danmaku_proto::sample::CommentGenerator::new(3).events(400, 1_796_650_800_000);
        for (i, e) in events.iter_mut().enumerate() {
            e.id = format!("{:011x}{:08x}{i:08x}", e.ts_ms, 7);
        }
        let cfg = BatchConfig::default();
        let mut b = FrameBuilder::new(&cfg).unwrap();
        let batch_of = |p: &Prepared| {
            let f = frame::decode_server(&p.payload(), &Limits::default()).unwrap();
            let Some(Body::Batch(batch)) = f.body else {
                panic!("not a batch")
            };
            assert_eq!(decode_batch(&batch, &Limits::default()).unwrap(), events);
            batch
        };
        // Only compact readers: the plain layout is not built, and the sizes
        // are the compact one's.
        let (frames, sizes) = b
            .build_tick(
                "room:big",
                &events,
                None,
                0,
                false,
                10,
                PbLayouts::for_members([0, 10, 0]),
            )
            .unwrap();
        assert!(frames.pb[0].is_none() && frames.pb[2].is_none());
        let compact = batch_of(frames.pb[1].as_ref().expect("asked for"));
        assert_eq!(sizes.compressed, compact.payload.len());
        assert_eq!(PbLayouts::for_members([0, 0, 0]), PbLayouts::PLAIN);
        assert_eq!(
            PbLayouts::for_members([3, 0, 2]),
            PbLayouts([true, false, true])
        );
        let mut payload = |members| {
            let (frames, sizes) = b
                .build_tick(
                    "room:big",
                    &events,
                    None,
                    0,
                    false,
                    members,
                    PbLayouts([true, true, true]),
                )
                .unwrap();
            let plain = batch_of(frames.pb[0].as_ref().expect("asked for"));
            assert_eq!((plain.encoding, plain.dict_id), (0, 0));
            assert_eq!(sizes.compressed, plain.payload.len());
            // The compact layout: the same events, fewer bytes; the dense one
            // with the dictionary fewer still.
            let compact = batch_of(frames.pb[1].as_ref().expect("asked for"));
            assert_eq!((compact.encoding, compact.dict_id), (ENCODING_COMPACT, 0));
            assert!(compact.payload.len() < plain.payload.len());
            let dense = batch_of(frames.pb[2].as_ref().expect("asked for"));
            assert_eq!(
                (dense.encoding, dense.dict_id),
                (ENCODING_DENSE, DICT_DANMAKU_1)
            );
            assert!(dense.payload.len() < compact.payload.len());
            (sizes.compressed, dense.payload.len())
        };
        let small = payload(cfg.big_room_members - 1);
        let big = payload(cfg.big_room_members);
        assert!(
            big.0 < small.0,
            "level {} {big:?} B vs level {} {small:?} B",
            cfg.big_room_zstd_level,
            cfg.zstd_level
        );
        assert_eq!(payload(cfg.huge_room_members - 1), big);
        // The huge rooms' level pays off on the layout the SDKs read (on the
        // plain one it is within ±2 % either way: BENCHMARKS.md).
        let huge = payload(cfg.huge_room_members);
        assert!(
            huge.1 < big.1,
            "level {} {huge:?} B vs level {} {big:?} B",
            cfg.huge_room_zstd_level,
            cfg.big_room_zstd_level
        );
    }

    fn setup(
        cfg: BatchConfig,
    ) -> (
        Arc<Channels>,
        Metrics,
        mpsc::Sender<ShardItem>,
        CancellationToken,
    ) {
        let metrics = Metrics::unregistered();
        let registry = Arc::new(Channels::new(gauges(), 16));
        let shutdown = CancellationToken::new();
        let mut shards = spawn_shards(
            &tokio::runtime::Handle::current(),
            1,
            &cfg,
            Arc::clone(&registry),
            metrics.clone(),
            shutdown.clone(),
        )
        .unwrap();
        (registry, metrics, shards.remove(0), shutdown)
    }

    fn item(room: &ChannelName, i: usize) -> ShardItem {
        ShardItem {
            channel: room.clone(),
            event: ev(i),
            members: 2,
            max_rate: 0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn shard_flushes_once_per_window_to_every_member() {
        let (registry, metrics, shard, _shutdown) = setup(BatchConfig::default());
        let room = ChannelName::parse("room:1").unwrap();
        let (pb, mut pb_rx, _, _) = member_at(Transport::WsPb, 8, 0);
        let (js, mut js_rx, _, _) = member_at(Transport::WsJson, 8, 0);
        registry.join(&room, 1, pb);
        registry.join(&room, 2, js);
        for i in 0..3 {
            shard.send(item(&room, i)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(49)).await;
        assert!(pb_rx.try_recv().is_err(), "window (50 ms) not over yet");
        tokio::time::sleep(Duration::from_millis(2)).await;
        let Ok(prepared) = pb_rx.try_recv() else {
            panic!("pb member got no binary batch");
        };
        assert_eq!(prepared.opcode(), OpCode::Binary);
        let f = frame::decode_server(&prepared.payload(), &Limits::default()).unwrap();
        let Some(Body::Batch(b)) = f.body else {
            panic!("not a batch: {f:?}");
        };
        let texts: Vec<_> = decode_batch(&b, &Limits::default())
            .unwrap()
            .into_iter()
            .map(|e| e.text)
            .collect();
        assert_eq!(texts, ["e0", "e1", "e2"]);
        let Ok(text) = js_rx.try_recv() else {
            panic!("json member got no text batch");
        };
        assert_eq!(text.opcode(), OpCode::Text);
        assert!(
            std::str::from_utf8(&text.payload())
                .unwrap()
                .contains("\"e2\"")
        );
        assert!(pb_rx.try_recv().is_err(), "exactly one frame per flush");
        assert_eq!(metrics.batches.get(), 1);
        assert_eq!(metrics.events_delivered.get(), 6);
        assert_eq!(metrics.pushed(Transport::WsPb).get(), 1);
        assert_eq!(metrics.pushed(Transport::WsJson).get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_drops_the_batch_for_that_member_only() {
        let cfg = BatchConfig {
            max_events: 1, // every event flushes at once
            ..BatchConfig::default()
        };
        let (registry, metrics, shard, _shutdown) = setup(cfg);
        let room = ChannelName::parse("room:slow").unwrap();
        let (slow, mut slow_rx, _, _) = member_at(Transport::WsPb, 1, 0);
        let (fast, mut fast_rx, _, _) = member_at(Transport::Quic, 8, 0);
        registry.join(&room, 1, slow);
        registry.join(&room, 2, fast);
        for i in 0..3 {
            shard.send(item(&room, i)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        let mut fast = 0;
        while fast_rx.try_recv().is_ok() {
            fast += 1;
        }
        let mut slow = 0;
        while slow_rx.try_recv().is_ok() {
            slow += 1;
        }
        assert_eq!((fast, slow), (3, 1));
        assert_eq!(metrics.slow_consumer_drops.get(), 2);
        assert_eq!(metrics.batches.get(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_channel_emptied_during_its_window_builds_nothing() {
        let (registry, metrics, shard, _shutdown) = setup(BatchConfig::default());
        let room = ChannelName::parse("room:gone").unwrap();
        let (m, _rx, _, _) = member_at(Transport::WsPb, 8, 0);
        registry.join(&room, 1, m);
        shard.send(item(&room, 0)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        registry.leave(&room, 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(metrics.batches.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_offered_online_count_rides_the_next_tick_once() {
        let (registry, _metrics, shard, _shutdown) = setup(BatchConfig::default());
        let room = ChannelName::parse("room:online").unwrap();
        let (pb, mut pb_rx, _, _) = member_at(Transport::WsPb, 8, 0);
        let (js, mut js_rx, _, _) = member_at(Transport::WsJson, 8, 0);
        registry.join(&room, 1, pb);
        registry.join(&room, 2, js);
        let channel = registry.get("room:online").unwrap();
        assert!(!channel.offer_online(2), "nothing was waiting");
        let online_of = |prepared: crate::channels::Outbound| {
            let f = frame::decode_server(&prepared.payload(), &Limits::default()).unwrap();
            match f.body {
                Some(Body::Batch(b)) => b.online,
                other => panic!("not a batch: {other:?}"),
            }
        };
        for (i, want) in [(0, 2), (1, 0)] {
            shard.send(item(&room, i)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(60)).await;
            assert_eq!(online_of(pb_rx.try_recv().unwrap()), want, "tick {i}");
            let text = js_rx.try_recv().unwrap();
            let text = std::str::from_utf8(&text.payload()).unwrap().to_owned();
            assert_eq!(text.contains(r#""online":2"#), want == 2, "{text}");
        }
        // No tick took this one: the next offer says so (a quiet room).
        assert!(!channel.offer_online(2));
        assert!(channel.offer_online(2));
    }
}
