//! Batcher tasks: turn a channel's events into ONE frame per flush and push it
//! to every local member.
//!
//! Channels are spread over a few shard tasks by a hash of their name, so one
//! channel's events stay in order on one task and the cores share the encoding.
//! Each shard owns a [`PendingBatches`] (the pure window policy) and one
//! [`FrameBuilder`] (one reused zstd context). A flush encodes and compresses
//! once, builds the JSON text only if the channel has JSON members, and hands
//! refcounted clones to each member's bounded queue ([`Channel::flush`]), along
//! with the channel's reliable frames that are due (they ride the same tick).

use std::sync::Arc;

use danmaku_proto::pb::server_frame::Body;
use danmaku_proto::wsframe::{OpCode, Prepared};
use danmaku_proto::{BatchEncoder, ChannelName, ProtoError, frame, json, pb};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::batch_policy::{PendingBatches, Ready};
use crate::config::BatchConfig;
use crate::metrics::Metrics;
use crate::registry::{BatchFrames, Channel, Registry, Transport};

/// Queue depth between the bus consumer and each shard. When a shard falls
/// behind, the consumer waits, and the bus (not the edge's memory) absorbs it.
const SHARD_QUEUE: usize = 8192;

/// One event routed to a shard.
#[derive(Debug)]
pub(crate) struct ShardItem {
    pub channel: ChannelName,
    pub event: pb::Event,
    /// Local members when the event arrived, for the window of a new batch.
    pub members: usize,
}

/// Encodes batches; keeps the zstd context between batches.
pub struct FrameBuilder {
    encoder: BatchEncoder,
}

/// Sizes of the last built batch, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuiltSizes {
    pub raw: usize,
    pub compressed: usize,
}

impl FrameBuilder {
    pub fn new(cfg: &BatchConfig) -> Result<Self, ProtoError> {
        Ok(FrameBuilder {
            encoder: BatchEncoder::new(cfg.zstd_level, cfg.compress_threshold)?,
        })
    }

    /// Encodes `events` once as a protobuf `ServerFrame{Batch}` and, if
    /// `with_json`, once as JSON text, each already framed as the complete
    /// WebSocket frame every member writes (the protobuf is encoded straight
    /// after its frame header: no copy).
    pub fn build(
        &mut self,
        channel: &str,
        events: &[pb::Event],
        with_json: bool,
    ) -> Result<(BatchFrames, BuiltSizes), ProtoError> {
        let batch = self.encoder.encode(channel, events)?;
        let sizes = BuiltSizes {
            raw: self.encoder.last_raw_len(),
            compressed: batch.payload.len(),
        };
        let pb = Prepared::encode(OpCode::Binary, &frame::server(Body::Batch(batch)));
        let json = with_json
            .then(|| Prepared::new(OpCode::Text, json::batch_json(channel, events).as_bytes()));
        Ok((BatchFrames { pb, json }, sizes))
    }
}

/// Starts `shards` batcher tasks; returns the queues the consumer feeds.
pub(crate) fn spawn_shards(
    shards: usize,
    cfg: &BatchConfig,
    registry: Arc<Registry>,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<Vec<mpsc::Sender<ShardItem>>, ProtoError> {
    (0..shards.max(1))
        .map(|_| {
            let (tx, rx) = mpsc::channel(SHARD_QUEUE);
            let shard = Shard {
                pending: PendingBatches::new(cfg.clone()),
                builder: FrameBuilder::new(cfg)?,
                registry: Arc::clone(&registry),
                metrics: metrics.clone(),
            };
            tokio::spawn(shard.run(rx, shutdown.clone()));
            Ok(tx)
        })
        .collect()
}

struct Shard {
    pending: PendingBatches<ChannelName>,
    builder: FrameBuilder,
    registry: Arc<Registry>,
    metrics: Metrics,
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
                    let active = self.registry.len();
                    if let Some(ready) =
                        self.pending.on_event(now, item.channel, item.event, item.members, active)
                    {
                        self.flush(ready);
                    }
                }
            }
        }
    }

    fn flush(&mut self, ready: Ready<ChannelName>) {
        // Members may all have left during the window: nothing to build.
        let Some(channel) = self.registry.get(ready.channel.as_str()) else {
            return;
        };
        flush_to(&mut self.builder, &self.metrics, &channel, &ready);
    }
}

/// Builds the frames of `ready` once and pushes them to the members of `channel`.
pub(crate) fn flush_to(
    builder: &mut FrameBuilder,
    metrics: &Metrics,
    channel: &Channel,
    ready: &Ready<ChannelName>,
) {
    let now_ms = danmaku_proto::now_ms();
    for ev in &ready.events {
        let ms = now_ms.saturating_sub(ev.ts_ms).max(0);
        metrics.delivery_latency.observe(ms as f64 / 1000.0);
    }
    let with_json = channel.json_members() > 0;
    let (frames, sizes) = match builder.build(ready.channel.as_str(), &ready.events, with_json) {
        Ok(built) => built,
        Err(e) => {
            tracing::error!(channel = %ready.channel, error = %e, "cannot encode batch");
            return;
        }
    };
    // Reliable frames waiting for this channel leave with the batch.
    let (outcome, _) = channel.flush(Some(&frames));
    metrics.batches.inc();
    metrics.batch_events.observe(ready.events.len() as f64);
    metrics.batch_window.observe(ready.window.as_secs_f64());
    metrics.batch_raw_bytes.inc_by(sizes.raw as u64);
    metrics
        .batch_compressed_bytes
        .inc_by(sizes.compressed as u64);
    for t in Transport::ALL {
        let n = outcome.pushed[t as usize];
        if n > 0 {
            metrics.pushed(t).inc_by(n);
        }
    }
    metrics
        .events_delivered
        .inc_by(outcome.total_pushed() * ready.events.len() as u64);
    if outcome.dropped > 0 {
        metrics.slow_consumer_drops.inc_by(outcome.dropped);
        tracing::debug!(channel = %ready.channel, dropped = outcome.dropped, "slow consumers skipped a batch");
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use danmaku_proto::{Limits, decode_batch};

    use super::*;
    use crate::registry::Member;

    fn ev(i: usize) -> pb::Event {
        pb::Event {
            kind: pb::Kind::Danmaku as i32,
            sender: "s".into(),
            text: format!("e{i}"),
            ts_ms: danmaku_proto::now_ms(),
            ..Default::default()
        }
    }

    fn setup(
        cfg: BatchConfig,
    ) -> (
        Arc<Registry>,
        Metrics,
        mpsc::Sender<ShardItem>,
        CancellationToken,
    ) {
        let metrics = Metrics::unregistered();
        let registry = Arc::new(Registry::new(metrics.clone()));
        let shutdown = CancellationToken::new();
        let mut shards = spawn_shards(
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
        }
    }

    #[tokio::test(start_paused = true)]
    async fn shard_flushes_once_per_window_to_every_member() {
        let (registry, metrics, shard, _shutdown) = setup(BatchConfig::default());
        let room = ChannelName::parse("room:1").unwrap();
        let (pb_tx, mut pb_rx) = mpsc::channel(8);
        let (js_tx, mut js_rx) = mpsc::channel(8);
        registry.join(&room, 1, Member::new(Transport::WsPb, pb_tx));
        registry.join(&room, 2, Member::new(Transport::WsJson, js_tx));
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
        let (slow_tx, mut slow_rx) = mpsc::channel(1);
        let (fast_tx, mut fast_rx) = mpsc::channel(8);
        registry.join(&room, 1, Member::new(Transport::WsPb, slow_tx));
        registry.join(&room, 2, Member::new(Transport::Quic, fast_tx));
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
        let (tx, _rx) = mpsc::channel(8);
        registry.join(&room, 1, Member::new(Transport::WsPb, tx));
        shard.send(item(&room, 0)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        registry.leave(&room, 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(metrics.batches.get(), 0);
    }
}
