//! The bus consumer: reads the ONE global topic and routes events of channels
//! with local members to the batcher shards.
//!
//! The message key (the channel) is checked against the registry before the
//! payload is decoded, so the cost of the many events for channels this edge
//! does not host is one map lookup. Events older than the consumer's start are
//! skipped: a backend that replays from an older offset (Kafka) must not flood
//! new viewers with the past. Reliable events (`seq > 0`) are never skipped as
//! stale: they go to the reliable fan-out (`sequencer.rs`), which orders
//! and deduplicates them by seq before they join the batchers' ticks.
//! Account announcements (key `!account`, never a channel name) are checked
//! for first and go to the account policy (`account.rs`); moderation
//! announcements (key `!moderation`) next: their bans go to the ban table
//! (`bans.rs`) and make the banned user's connections leave.

use std::sync::Arc;
use std::time::Duration;

use danmaku_bus::{BusError, BusMessage, Subscription};
use danmaku_proto::moderation::{BAN, is_moderation_key};
use danmaku_proto::{ChannelName, Limits, frame, now_ms};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::account::{Account, is_account_key};
use crate::bans::Bans;
use crate::batcher::{ShardItem, shard_of};
use crate::channels::{Channels, LeaveReason};
use crate::metrics::{BusResult, Metrics};
use crate::sequencer::ReliableItem;

pub(crate) struct Consumer {
    /// Applies account announcements (key `!account`) and closes what they cover.
    pub account: Arc<Account>,
    /// Active channel bans, kept in step by announcements (key `!moderation`).
    pub bans: Arc<Bans>,
    pub channels: Arc<Channels>,
    pub metrics: Metrics,
    pub shards: Vec<mpsc::Sender<ShardItem>>,
    /// Queues of the reliable fan-out tasks (same sharding as `shards`).
    pub reliable: Vec<mpsc::Sender<ReliableItem>>,
    pub limits: Limits,
    /// A room's cap when its danmaku carry none (`EdgeConfig::room_max_rate`).
    pub room_max_rate: u32,
    /// Events stamped before this (ms since the epoch) are skipped.
    pub start_ms: i64,
}

impl Consumer {
    pub async fn run(self, mut sub: Box<dyn Subscription>, shutdown: CancellationToken) {
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                next = sub.recv() => next,
            };
            match next {
                Ok(msg) => {
                    let result = self.route(msg).await;
                    self.metrics
                        .bus_events
                        .with_label_values(&[result.label()])
                        .inc();
                }
                Err(BusError::Lagged(n)) => {
                    self.metrics.bus_lagged.inc_by(n);
                    // An account change may be among the skipped: reload the stored ones.
                    self.account.reload_later();
                    self.bans.reload_later();
                    tracing::warn!(skipped = n, "bus consumer lagged");
                }
                Err(BusError::Closed) => {
                    tracing::warn!("bus closed; edge stops consuming");
                    return;
                }
                Err(e) => {
                    // Keep connections; retry until the bus is back (docs/ARCHITECTURE.md, failures).
                    tracing::warn!(error = %e, "bus receive failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    async fn route(&self, msg: BusMessage) -> BusResult {
        if is_account_key(&msg.key) {
            return match self.account.on_announcement(&msg.payload) {
                true => BusResult::Account,
                false => BusResult::BadEvent,
            };
        }
        if is_moderation_key(&msg.key) {
            return self.on_moderation(&msg.payload);
        }
        let Ok(key) = std::str::from_utf8(&msg.key) else {
            return BusResult::BadEvent;
        };
        let Some(channel) = self.channels.get(key) else {
            return BusResult::NoLocalMembers;
        };
        channel.count_inbound();
        let bus_event = match frame::decode_bus_event(&msg.payload, &self.limits) {
            Ok(ev) => ev,
            Err(e) => {
                tracing::debug!(channel = key, error = %e, "undecodable bus event");
                return BusResult::BadEvent;
            }
        };
        if bus_event.channel != key {
            return BusResult::BadEvent;
        }
        if let Some(m) = &bus_event.membership {
            // A membership change: the connections of a removed member leave.
            if m.removed && !m.user.is_empty() {
                channel.notify_left(&m.user, LeaveReason::Removed);
            }
            return BusResult::Membership;
        }
        if let Some(m) = &bus_event.moderation {
            // A mute: the muted user's connections here get a notice.
            if m.what == "mute" && !m.user.is_empty() {
                channel.notify_muted(&m.user, m.until_ms);
            }
            return BusResult::Moderation;
        }
        let Some(event) = bus_event.event else {
            return BusResult::BadEvent;
        };
        if event.ts_ms >= self.start_ms {
            // Older events are a replay from before this edge started, not a hop.
            let age_ms = now_ms().saturating_sub(event.ts_ms).max(0);
            self.metrics.bus_hop.observe(age_ms as f64 / 1000.0);
        }
        if event.seq > 0 {
            // Never batched, never dropped as stale: deduplicated by seq instead.
            let shard = &self.reliable[shard_of(key, self.reliable.len())];
            let item = ReliableItem {
                channel: channel.name().clone(),
                event,
            };
            if shard.send(item).await.is_err() {
                return BusResult::ShuttingDown;
            }
            return BusResult::Reliable;
        }
        if event.ts_ms < self.start_ms {
            return BusResult::Stale;
        }
        let max_rate = match bus_event.room_max_rate {
            0 => self.room_max_rate,
            r => r,
        };
        channel.set_max_rate(max_rate);
        let item = ShardItem {
            channel: channel.name().clone(),
            event,
            members: channel.len(),
            max_rate,
        };
        let shard = &self.shards[shard_of(key, self.shards.len())];
        if shard.send(item).await.is_err() {
            // Shard gone: only during shutdown.
            return BusResult::ShuttingDown;
        }
        BusResult::Batched
    }

    /// A moderation announcement: a ban (or its end) is applied to the ban
    /// table, and the banned user's connections here leave the channel. Other
    /// changes (word lists, settings...) concern ingest only.
    fn on_moderation(&self, payload: &[u8]) -> BusResult {
        let Some(m) = frame::decode_bus_event(payload, &self.limits)
            .ok()
            .and_then(|e| e.moderation)
        else {
            return BusResult::BadEvent;
        };
        if m.what != BAN {
            return BusResult::Moderation;
        }
        let Ok(channel) = ChannelName::parse(&m.scope) else {
            return BusResult::BadEvent;
        };
        if m.user.is_empty() {
            return BusResult::BadEvent;
        }
        let now = danmaku_proto::now_ms();
        let in_force = self
            .bans
            .apply(channel.clone(), &m.user, m.until_ms, m.lifted, now);
        if in_force && let Some(local) = self.channels.get(channel.as_str()) {
            local.notify_left(&m.user, LeaveReason::Banned);
        }
        tracing::info!(channel = %channel, user = %m.user, until_ms = m.until_ms, lifted = m.lifted, "ban announced");
        BusResult::Moderation
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use danmaku_bus::{Bus, MemoryBus, MemoryBusConfig};
    use danmaku_proto::{ChannelName, pb};

    use super::*;
    use crate::channels::tests::{gauges, member_at};
    use crate::transport::Transport;

    fn bus_event(channel: &str, ts_ms: i64) -> Bytes {
        frame::encode(&pb::BusEvent {
            version: 1,
            channel: channel.into(),
            event: Some(pb::Event {
                kind: pb::Kind::Danmaku as i32,
                text: "hi".into(),
                ts_ms,
                ..Default::default()
            }),
            origin: "t".into(),
            membership: None,
            account: None,
            moderation: None,
            room_max_rate: 0,
        })
    }

    struct Setup {
        bus: MemoryBus,
        metrics: Metrics,
        shard_rx: mpsc::Receiver<ShardItem>,
        reliable_rx: mpsc::Receiver<ReliableItem>,
        consumer: Consumer,
        _member_rx: mpsc::Receiver<crate::channels::Outbound>,
    }

    fn setup(capacity: usize) -> Setup {
        let metrics = Metrics::unregistered();
        let channels = Arc::new(Channels::new(gauges(), 16));
        let (member, member_rx, _wake, _lane) = member_at(Transport::WsPb, 1, 0);
        channels.join(&ChannelName::parse("room:here").unwrap(), 1, member);
        let (shard_tx, shard_rx) = mpsc::channel(16);
        let (reliable_tx, reliable_rx) = mpsc::channel(16);
        Setup {
            bus: MemoryBus::new(MemoryBusConfig { capacity }),
            metrics: metrics.clone(),
            shard_rx,
            reliable_rx,
            consumer: Consumer {
                account: Arc::new(Account::new(
                    crate::metrics::AccountMetrics::register(&prometheus::Registry::new()).unwrap(),
                    Limits::default(),
                )),
                bans: Arc::new(Bans::new(prometheus::IntGauge::new("b", "b").unwrap())),
                channels,
                metrics,
                shards: vec![shard_tx],
                reliable: vec![reliable_tx],
                limits: Limits::default(),
                room_max_rate: 0,
                start_ms: 1_000,
            },
            _member_rx: member_rx,
        }
    }

    fn count(m: &Metrics, r: BusResult) -> u64 {
        m.bus_events.with_label_values(&[r.label()]).get()
    }

    #[tokio::test]
    async fn drops_foreign_bad_and_stale_events_and_routes_the_rest() {
        let mut s = setup(64);
        let sub = s.bus.subscribe_all().await.unwrap();
        let here = Bytes::from_static(b"room:here");
        s.bus
            .publish(
                Bytes::from_static(b"room:elsewhere"),
                Bytes::from_static(b"not even decoded"),
            )
            .await
            .unwrap();
        s.bus
            .publish(here.clone(), Bytes::from_static(&[0xff, 0xff]))
            .await
            .unwrap();
        s.bus
            .publish(here.clone(), bus_event("room:other", 2_000))
            .await
            .unwrap();
        s.bus
            .publish(here.clone(), bus_event("room:here", 999))
            .await
            .unwrap();
        s.bus
            .publish(here.clone(), bus_event("room:here", 2_000))
            .await
            .unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(s.consumer.run(sub, shutdown.clone()));
        let item = s.shard_rx.recv().await.unwrap();
        assert_eq!(item.channel.as_str(), "room:here");
        assert_eq!(item.members, 1);
        assert_eq!(item.event.ts_ms, 2_000);
        shutdown.cancel();
        assert_eq!(count(&s.metrics, BusResult::NoLocalMembers), 1);
        assert_eq!(
            count(&s.metrics, BusResult::BadEvent),
            2,
            "garbage, key/channel mismatch"
        );
        assert_eq!(count(&s.metrics, BusResult::Stale), 1);
        assert_eq!(
            s.metrics.bus_hop.get_sample_count(),
            1,
            "the bus hop is timed for the event after the edge started, not the stale one"
        );
    }

    #[tokio::test]
    async fn reliable_events_bypass_the_batcher_and_the_stale_filter() {
        let mut s = setup(64);
        let sub = s.bus.subscribe_all().await.unwrap();
        let ev = pb::BusEvent {
            version: 1,
            channel: "room:here".into(),
            event: Some(pb::Event {
                kind: pb::Kind::Gift as i32,
                text: "rocket".into(),
                ts_ms: 5, // long before the consumer started
                seq: 3,
                ..Default::default()
            }),
            origin: "t".into(),
            membership: None,
            account: None,
            moderation: None,
            room_max_rate: 0,
        };
        s.bus
            .publish(Bytes::from_static(b"room:here"), frame::encode(&ev))
            .await
            .unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(s.consumer.run(sub, shutdown.clone()));
        let item = s.reliable_rx.recv().await.unwrap();
        assert_eq!(item.event.seq, 3);
        assert_eq!(item.channel.as_str(), "room:here");
        shutdown.cancel();
        assert!(s.shard_rx.try_recv().is_err());
        assert_eq!(count(&s.metrics, BusResult::Reliable), 1);
        assert_eq!(count(&s.metrics, BusResult::Stale), 0);
    }

    #[tokio::test]
    async fn lag_is_counted_and_consumption_goes_on() {
        let mut s = setup(2);
        let sub = s.bus.subscribe_all().await.unwrap();
        for _ in 0..5 {
            s.bus
                .publish(
                    Bytes::from_static(b"room:here"),
                    bus_event("room:here", 2_000),
                )
                .await
                .unwrap();
        }
        let shutdown = CancellationToken::new();
        tokio::spawn(s.consumer.run(sub, shutdown.clone()));
        assert!(s.shard_rx.recv().await.is_some());
        assert!(s.shard_rx.recv().await.is_some());
        shutdown.cancel();
        assert_eq!(s.metrics.bus_lagged.get(), 3);
    }
}
