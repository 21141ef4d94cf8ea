//! Reliable fan-out tasks: put each channel's reliable events in seq order and
//! hand them to every local member's connection task.
//!
//! The consumer routes events with `seq > 0` here instead of to the batchers.
//! Channels are sharded over a few tasks by the same hash as the batchers; each
//! task owns one [`ReorderBuffer`] per channel. An event that arrives ahead of a
//! missing seq is held for `reorder_hold`; a gap still open then is read from the
//! store. Each ordered event is encoded once ([`ReliableFrame::build`]) and
//! shared by all members ([`Channel::push_reliable`]); connections deduplicate
//! and fill their own gaps (`session.rs`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use danmaku_proto::{ChannelName, pb};
use danmaku_store::{Store, StoredMessage};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::registry::{Channel, Registry, ReliableFrame};
use crate::reliable::ReorderBuffer;

/// Queue depth between the consumer and each reliable task.
const QUEUE: usize = 8192;

/// Channels with order state above which those without local members are forgotten.
const SWEEP_ABOVE: usize = 4096;

/// One reliable event routed to a shard.
#[derive(Debug)]
pub(crate) struct ReliableItem {
    pub channel: ChannelName,
    pub event: pb::Event,
}

/// The event a stored message stands for (what ingest published for it).
pub(crate) fn event_from_stored(m: StoredMessage) -> pb::Event {
    pb::Event {
        kind: pb::Kind::from_name(&m.kind).unwrap_or(pb::Kind::Unspecified) as i32,
        sender: m.sender,
        text: m.text,
        ts_ms: m.ts_ms,
        seq: m.seq,
        payload_json: m.payload_json.unwrap_or_default(),
        client_msg_id: m.client_msg_id.unwrap_or_default(),
    }
}

/// Starts `shards` reliable tasks; returns the queues the consumer feeds.
pub(crate) fn spawn_shards(
    shards: usize,
    hold: Duration,
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Vec<mpsc::Sender<ReliableItem>> {
    (0..shards.max(1))
        .map(|_| {
            let (tx, rx) = mpsc::channel(QUEUE);
            let shard = Shard {
                hold,
                buffers: HashMap::new(),
                sweep_above: SWEEP_ABOVE,
                store: Arc::clone(&store),
                registry: Arc::clone(&registry),
                metrics: metrics.clone(),
            };
            tokio::spawn(shard.run(rx, shutdown.clone()));
            tx
        })
        .collect()
}

struct Shard {
    hold: Duration,
    buffers: HashMap<ChannelName, ReorderBuffer<pb::Event>>,
    sweep_above: usize,
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    metrics: Metrics,
}

impl Shard {
    async fn run(mut self, mut rx: mpsc::Receiver<ReliableItem>, shutdown: CancellationToken) {
        loop {
            let deadline = self.buffers.values().filter_map(|b| b.deadline()).min();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = sleep_until_opt(deadline) => self.on_timeout().await,
                item = rx.recv() => {
                    let Some(item) = item else { return };
                    self.on_item(item);
                }
            }
        }
    }

    fn on_item(&mut self, item: ReliableItem) {
        let now = Instant::now().into_std();
        let hold = self.hold;
        let buffer = self
            .buffers
            .entry(item.channel.clone())
            .or_insert_with(|| ReorderBuffer::new(hold));
        let held_before = buffer.held();
        let ready = buffer.on_event(now, item.event.seq, item.event);
        if buffer.held() > held_before {
            self.metrics.reorder_held.inc();
        }
        self.deliver(&item.channel, ready);
        if self.buffers.len() > self.sweep_above {
            let registry = &self.registry;
            self.buffers
                .retain(|ch, b| b.held() > 0 || registry.get(ch.as_str()).is_some());
            // Sweeps stay rare even when every channel is live.
            self.sweep_above = (self.buffers.len() * 2).max(SWEEP_ABOVE);
        }
    }

    async fn on_timeout(&mut self) {
        let now = Instant::now().into_std();
        let due: Vec<_> = self
            .buffers
            .iter_mut()
            .filter_map(|(ch, b)| b.on_timeout(now).map(|gap| (ch.clone(), gap)))
            .collect();
        for (channel, gap) in due {
            self.metrics.gap_fills.inc();
            let limit = usize::try_from(gap.len()).unwrap_or(usize::MAX);
            let filled = match read_range(&*self.store, channel.as_str(), gap.after, limit).await {
                Ok(msgs) => msgs,
                Err(e) => {
                    self.metrics.store_error("read_after");
                    tracing::warn!(channel = %channel, error = %e, "cannot fill a reliable gap; connections will");
                    Vec::new()
                }
            };
            let Some(buffer) = self.buffers.get_mut(&channel) else {
                continue;
            };
            let ready = buffer.on_filled(
                filled
                    .into_iter()
                    .filter(|m| m.seq <= gap.upto)
                    .map(|m| (m.seq, event_from_stored(m))),
            );
            self.deliver(&channel, ready);
        }
    }

    fn deliver(&mut self, channel: &ChannelName, ready: Vec<(u64, pb::Event)>) {
        let Some(members) = self.registry.get(channel.as_str()) else {
            // Nobody here any more: forget the channel's order state.
            self.buffers.remove(channel);
            return;
        };
        for (_, event) in ready {
            push(&members, event);
        }
    }
}

fn push(channel: &Channel, event: pb::Event) {
    let frame = ReliableFrame::build(channel.name().as_str(), event);
    channel.push_reliable(&frame);
}

/// Up to `limit` messages after `after`, read in pages of the store's maximum.
pub(crate) async fn read_range(
    store: &dyn Store,
    channel: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<StoredMessage>, danmaku_store::StoreError> {
    let mut out = Vec::new();
    let mut cursor = after;
    while out.len() < limit {
        let want = (limit - out.len()).min(danmaku_store::MAX_READ_LIMIT);
        let page = store.read_after(channel, cursor, want).await?;
        let n = page.len();
        if let Some(last) = page.last() {
            cursor = last.seq;
        }
        out.extend(page);
        if n < want {
            break;
        }
    }
    Ok(out)
}

async fn sleep_until_opt(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}
