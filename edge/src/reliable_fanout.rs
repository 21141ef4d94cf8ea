//! Reliable fan-out tasks: put each channel's reliable events in seq order and
//! hand them to every local member's connection task.
//!
//! The consumer routes events with `seq > 0` here instead of to the batchers.
//! Channels are sharded over a few tasks by the same hash as the batchers; each
//! task owns one [`ReorderBuffer`] per channel. An event that arrives ahead of a
//! missing seq is held for `reorder_hold`; a gap still open then is read from the
//! store. Each ordered event is encoded once ([`ReliableFrame::build`]) and
//! queued on its channel ([`Channel::queue_reliable`]) for the channel's next
//! flush: the batcher takes it with the next danmaku batch, so a member gets
//! gifts and danmaku in one write per window; a room without danmaku gets its
//! reliable frames from this task's own timer, a little after one window.
//! Connections deduplicate and fill their own gaps (`session.rs`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use danmaku_proto::{ChannelName, pb};
use danmaku_store::{Store, StoredMessage};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::batch_policy;
use crate::config::BatchConfig;
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
    batch: &BatchConfig,
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
                batch: batch.clone(),
                ticks: HashMap::new(),
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
    /// The batchers' window rule, for when this task flushes a channel itself.
    batch: BatchConfig,
    /// Channels with reliable frames queued, and when this task flushes them if
    /// no danmaku batch has taken them first.
    ticks: HashMap<ChannelName, Instant>,
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
            let tick = self.ticks.values().min().copied();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = sleep_until_opt(tick.map(Instant::into_std)) => self.on_tick(),
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
        let mut first = false;
        for (_, event) in ready {
            first |= queue(&members, event);
        }
        if first {
            // A batch usually flushes within one window; this is the fallback
            // for a room without danmaku, a little later so the batch wins.
            let window = batch_policy::window(&self.batch, members.len(), self.registry.len());
            let at = Instant::now() + window + window / 8 + Duration::from_millis(2);
            self.ticks.entry(channel.clone()).or_insert(at);
        }
    }

    /// Flushes the reliable frames of channels whose fallback timer is due.
    fn on_tick(&mut self) {
        let now = Instant::now();
        let due: Vec<ChannelName> = self
            .ticks
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(ch, _)| ch.clone())
            .collect();
        for name in due {
            self.ticks.remove(&name);
            if let Some(channel) = self.registry.get(name.as_str()) {
                channel.flush(None);
            }
        }
    }
}

/// Queues `event` on `channel`; true if it is the first frame waiting.
fn queue(channel: &Channel, event: pb::Event) -> bool {
    channel.queue_reliable(ReliableFrame::build(channel.name().as_str(), event))
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use danmaku_store::{Appended, Member as GroupMember, NewMessage, StoreError, Unread};

    use super::*;
    use crate::registry::{ConnEvent, Member, ReliableLane, Transport};

    /// Just enough of a store: a fixed list of messages for `read_after`.
    struct FakeStore {
        messages: Vec<StoredMessage>,
        reads: Mutex<Vec<(u64, usize)>>,
    }

    #[async_trait]
    impl Store for FakeStore {
        fn backend(&self) -> &'static str {
            "fake"
        }
        async fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
        async fn append(&self, _: NewMessage) -> Result<Appended, StoreError> {
            Err(StoreError::Invalid("read-only".into()))
        }
        async fn read_after(
            &self,
            _channel: &str,
            after_seq: u64,
            limit: usize,
        ) -> Result<Vec<StoredMessage>, StoreError> {
            self.reads.lock().unwrap().push((after_seq, limit));
            Ok(self
                .messages
                .iter()
                .filter(|m| m.seq > after_seq)
                .take(limit)
                .cloned()
                .collect())
        }
        async fn last_seq(&self, _: &str) -> Result<u64, StoreError> {
            Ok(self.messages.len() as u64)
        }
        async fn join_group(&self, _: &str, _: &str) -> Result<u64, StoreError> {
            Ok(0)
        }
        async fn leave_group(&self, _: &str, _: &str) -> Result<bool, StoreError> {
            Ok(false)
        }
        async fn is_member(&self, _: &str, _: &str) -> Result<Option<u64>, StoreError> {
            Ok(None)
        }
        async fn members(&self, _: &str) -> Result<Vec<GroupMember>, StoreError> {
            Ok(Vec::new())
        }
        async fn ack(&self, _: &str, _: &str, seq: u64) -> Result<u64, StoreError> {
            Ok(seq)
        }
        async fn acked(&self, _: &str, _: &str) -> Result<u64, StoreError> {
            Ok(0)
        }
        async fn unread(&self, _: &str) -> Result<Unread, StoreError> {
            Ok(Unread::default())
        }
    }

    fn stored(seq: u64) -> StoredMessage {
        StoredMessage {
            channel: "room:f".into(),
            seq,
            client_msg_id: None,
            sender: "bob".into(),
            kind: "gift".into(),
            text: format!("gift {seq}"),
            payload_json: None,
            ts_ms: 1,
        }
    }

    fn item(seq: u64) -> ReliableItem {
        ReliableItem {
            channel: ChannelName::parse("room:f").unwrap(),
            event: event_from_stored(stored(seq)),
        }
    }

    fn drain(rx: &mut mpsc::Receiver<ConnEvent>) -> Vec<u64> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .flat_map(|e| match e {
                ConnEvent::Reliable(t) => t.frames.iter().map(|f| f.seq).collect(),
                ConnEvent::Removed(_) => Vec::new(),
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn holds_out_of_order_seqs_then_fills_the_gap_from_the_store() {
        let metrics = Metrics::unregistered();
        let registry = Arc::new(Registry::new(metrics.clone()));
        let (batch_tx, _batch_rx) = mpsc::channel(1);
        let (rel_tx, mut rel_rx, _overflow) = crate::registry::ReliableSender::channel(16);
        registry.join(
            &ChannelName::parse("room:f").unwrap(),
            1,
            Member::new(Transport::WsPb, batch_tx)
                .with_reliable(ReliableLane::new(rel_tx, Arc::default())),
        );
        let store = Arc::new(FakeStore {
            messages: (1..=5).map(stored).collect(),
            reads: Mutex::new(Vec::new()),
        });
        let shutdown = CancellationToken::new();
        let queues = spawn_shards(
            1,
            Duration::from_millis(200),
            &BatchConfig::default(),
            store.clone(),
            Arc::clone(&registry),
            metrics.clone(),
            shutdown.clone(),
        );
        let q = &queues[0];
        for seq in [1, 4, 3, 1] {
            q.send(item(seq)).await.unwrap();
        }
        // No danmaku here: the reliable task flushes the room itself, a little
        // after one (50 ms) window.
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(drain(&mut rel_rx).is_empty(), "waits for the room's tick");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(drain(&mut rel_rx), vec![1], "3 and 4 wait for 2");
        assert_eq!(metrics.reorder_held.get(), 2);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(drain(&mut rel_rx).is_empty(), "still within the hold");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(drain(&mut rel_rx), vec![2, 3, 4]);
        assert_eq!(
            *store.reads.lock().unwrap(),
            vec![(1, 1)],
            "read just the gap"
        );
        assert_eq!(metrics.gap_fills.get(), 1);
        // The filled frame is the stored message, encoded once.
        q.send(item(5)).await.unwrap();
        q.send(item(2)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(drain(&mut rel_rx), vec![5], "duplicates dropped");
        shutdown.cancel();
    }
}
