//! Batcher tasks: turn a channel's events into ONE frame per flush and push it
//! to every local member.
//!
//! Channels are spread over a few shard tasks by a hash of their name, so one
//! channel's events stay in order on one task and the cores share the encoding.
//! Each shard owns a [`PendingBatches`] (the pure window policy) and one
//! [`FrameBuilder`] (one reused zstd context). A flush encodes and compresses
//! once, builds the JSON text only if the channel has JSON members, and hands
//! refcounted clones to each member's bounded queue ([`Channel::push`]).

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use danmaku_proto::pb::server_frame::Body;
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
    /// `with_json`, once as JSON text.
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
        let pb = frame::encode(&frame::server(Body::Batch(batch)));
        let json = with_json.then(|| Utf8Bytes::from(json::batch_json(channel, events)));
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
    let outcome = channel.push(&frames);
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
