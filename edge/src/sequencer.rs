//! Reliable fan-out tasks: put each channel's reliable events in seq order and
//! hand them to the channel's batcher, so they ride its next tick frame.
//!
//! The consumer routes events with `seq > 0` here instead of to the batchers.
//! Channels are sharded over a few tasks by the same hash as the batchers; each
//! task owns one [`ReorderBuffer`] per channel. An event that arrives ahead of a
//! missing seq is held for `reorder_hold`; a gap still open then is read from the
//! store. Each ordered event is framed once on its own into the channel's ring
//! ([`Channel::remember`], for resends and resumes) and goes to the channel's
//! batcher shard like a danmaku event: the batcher puts it in the tick frame
//! every member gets, so 10 gifts/s in a 100k room cost no write of their own.
//! Connections that miss a tick read the ring or the store (`connection/reliable.rs`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use danmaku_proto::{ChannelName, pb};
use danmaku_store::{Store, StoredMessage};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::batcher::{ShardItem, shard_of, sleep_until_opt};
use crate::channels::Channels;
use crate::metrics::Metrics;
use crate::reliable::order::ReorderBuffer;
use crate::reliable::ring::ReliableFrame;

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

/// Starts `shards` reliable tasks feeding the batcher queues `batchers`;
/// returns the queues the consumer feeds.
pub(crate) fn spawn_shards(
    shards: usize,
    hold: Duration,
    batchers: Vec<mpsc::Sender<ShardItem>>,
    store: Arc<dyn Store>,
    channels: Arc<Channels>,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Vec<mpsc::Sender<ReliableItem>> {
    (0..shards.max(1))
        .map(|_| {
            let (tx, rx) = mpsc::channel(QUEUE);
            let shard = Shard {
                hold,
                batchers: batchers.clone(),
                buffers: HashMap::new(),
                sweep_above: SWEEP_ABOVE,
                store: Arc::clone(&store),
                channels: Arc::clone(&channels),
                metrics: metrics.clone(),
            };
            tokio::spawn(shard.run(rx, shutdown.clone()));
            tx
        })
        .collect()
}

struct Shard {
    hold: Duration,
    /// The batcher shards' queues (a channel's events go to `shard_of` it).
    batchers: Vec<mpsc::Sender<ShardItem>>,
    buffers: HashMap<ChannelName, ReorderBuffer<pb::Event>>,
    sweep_above: usize,
    store: Arc<dyn Store>,
    channels: Arc<Channels>,
    metrics: Metrics,
}

impl Shard {
    async fn run(mut self, mut rx: mpsc::Receiver<ReliableItem>, shutdown: CancellationToken) {
        loop {
            let deadline = self.buffers.values().filter_map(|b| b.deadline()).min();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = sleep_until_opt(deadline.map(Instant::from_std)) => self.on_timeout().await,
                item = rx.recv() => {
                    let Some(item) = item else { return };
                    self.on_item(item).await;
                }
            }
        }
    }

    async fn on_item(&mut self, item: ReliableItem) {
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
        self.deliver(&item.channel, ready).await;
        if self.buffers.len() > self.sweep_above {
            let channels = &self.channels;
            self.buffers
                .retain(|ch, b| b.held() > 0 || channels.get(ch.as_str()).is_some());
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
                    .map(|m| (m.seq, m.into_event())),
            );
            self.deliver(&channel, ready).await;
        }
    }

    /// Hands ordered events to the channel's ring and its batcher.
    async fn deliver(&mut self, channel: &ChannelName, ready: Vec<(u64, pb::Event)>) {
        let Some(members) = self.channels.get(channel.as_str()) else {
            // Nobody here any more: forget the channel's order state.
            self.buffers.remove(channel);
            return;
        };
        let batcher = &self.batchers[shard_of(channel.as_str(), self.batchers.len())];
        for (_, event) in ready {
            members.remember(ReliableFrame::build(channel.as_str(), &event));
            let item = ShardItem {
                channel: channel.clone(),
                event,
                members: members.len(),
                // Gifts never stretch a window: the danmaku that open one do.
                max_rate: 0,
            };
            if batcher.send(item).await.is_err() {
                return; // shutting down
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use danmaku_store::{Appended, Member as GroupMember, NewMessage, StoreError, Unread};

    use super::*;
    use crate::channels::tests::{gauges, member_at};
    use crate::transport::Transport;

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
        async fn moderate(&self, _: &danmaku_store::ModerationAction) -> Result<bool, StoreError> {
            Err(StoreError::Invalid("read-only".into()))
        }
        async fn policy(&self, _: &str, _: i64) -> Result<danmaku_store::Policy, StoreError> {
            Ok(Default::default())
        }
        async fn policy_scopes(&self, _: i64) -> Result<Vec<String>, StoreError> {
            Ok(Vec::new())
        }
        async fn moderation_head(&self) -> Result<u64, StoreError> {
            Ok(0)
        }
        async fn moderation_log(
            &self,
            _: &str,
            _: usize,
        ) -> Result<Vec<danmaku_store::AuditEntry>, StoreError> {
            Ok(Vec::new())
        }

        async fn bans(&self, _: i64) -> Result<Vec<danmaku_store::Ban>, StoreError> {
            Ok(Vec::new())
        }

        async fn retracted(&self, _: &str, _: u64, _: u64) -> Result<Vec<u64>, StoreError> {
            Ok(Vec::new())
        }
        async fn record_account_change(
            &self,
            _: &danmaku_proto::pb::AccountChange,
        ) -> Result<(), StoreError> {
            Err(StoreError::Invalid("read-only".into()))
        }
        async fn account_changes(
            &self,
            _: u64,
        ) -> Result<Vec<danmaku_proto::pb::AccountChange>, StoreError> {
            Ok(Vec::new())
        }
        async fn purge_account_changes(&self, _: u64) -> Result<u64, StoreError> {
            Ok(0)
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
            blob: None,
            ts_ms: 1,
        }
    }

    fn item(seq: u64) -> ReliableItem {
        ReliableItem {
            channel: ChannelName::parse("room:f").unwrap(),
            event: stored(seq).into_event(),
        }
    }

    fn drain(rx: &mut mpsc::Receiver<ShardItem>) -> Vec<u64> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|i| i.event.seq)
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn holds_out_of_order_seqs_then_fills_the_gap_from_the_store() {
        let metrics = Metrics::unregistered();
        let channels = Arc::new(Channels::new(gauges(), 16));
        let (member, _q, _wake, _lane) = member_at(Transport::WsPb, 1, 0);
        channels.join(&ChannelName::parse("room:f").unwrap(), 1, member);
        let store = Arc::new(FakeStore {
            messages: (1..=5).map(stored).collect(),
            reads: Mutex::new(Vec::new()),
        });
        let shutdown = CancellationToken::new();
        let (batcher_tx, mut batcher) = mpsc::channel(64);
        let queues = spawn_shards(
            1,
            Duration::from_millis(200),
            vec![batcher_tx],
            store.clone(),
            Arc::clone(&channels),
            metrics.clone(),
            shutdown.clone(),
        );
        let q = &queues[0];
        for seq in [1, 4, 3, 1] {
            q.send(item(seq)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(drain(&mut batcher), vec![1], "3 and 4 wait for 2");
        assert_eq!(metrics.reorder_held.get(), 2);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(drain(&mut batcher).is_empty(), "still within the hold");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(drain(&mut batcher), vec![2, 3, 4]);
        assert_eq!(
            *store.reads.lock().unwrap(),
            vec![(1, 1)],
            "read just the gap"
        );
        assert_eq!(metrics.gap_fills.get(), 1);
        q.send(item(5)).await.unwrap();
        q.send(item(2)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(drain(&mut batcher), vec![5], "duplicates dropped");
        // Every ordered event was framed once into the channel's ring.
        let ring: Vec<u64> = channels
            .get("room:f")
            .unwrap()
            .recent_after(0, 100)
            .unwrap()
            .iter()
            .map(|f| f.seq)
            .collect();
        assert_eq!(ring, vec![1, 2, 3, 4, 5]);
        shutdown.cancel();
    }
}
