//! The distributed bus: one Kafka topic (default `danmaku.events`) through rdkafka.
//!
//! * **Publish** goes through one idempotent [`FutureProducer`] (`acks=all`,
//!   `linger.ms=20`, lz4) with the channel as the message key, so a channel's events
//!   stay in one partition and in order. `publish` awaits the broker's delivery report:
//!   ingest answers its client only once the broker has the event. A lost broker turns
//!   into [`BusError::Unavailable`] after [`KafkaBusConfig::delivery_timeout`].
//! * **A producer whose broker went away is replaced.** The idempotent producer's
//!   identity (producer id + epoch) lives in the broker. tansu with memory storage
//!   forgets it on restart and hands out ids from 1 again, so after a restart an old
//!   producer either gets `UNKNOWN_PRODUCER_ID` (librdkafka then bumps its epoch and
//!   retries until the message times out) or, once another producer (this process's
//!   or another ingest's) has been given the same id, `PRODUCER_FENCED` on every send
//!   (librdkafka's local epoch bump is never accepted by tansu, and for a
//!   non-transactional producer that error is not fatal, so it never recovers).
//!   Therefore: (1) a producer that loses an established broker connection is replaced
//!   at once by the watcher, before the broker is back, and its queue is purged, so
//!   stale ids never reach a restarted broker and the new producer gets a fresh id
//!   from it; (2) a send that fails with an identity error (fenced, unknown producer
//!   id, out-of-order sequence, purged by a replacement) replaces the producer and is
//!   retried on the new one within the delivery timeout, so the caller sees no error.
//!   On Apache Kafka the replacement costs one new producer id per lost connection.
//! * **Subscribe** gives every subscription its own consumer that `assign`s itself ALL
//!   partitions of the topic, starting at their current end offsets: no consumer
//!   group, no rebalancing, no commits (docs/ARCHITECTURE.md, "The bus"). A task per subscription feeds a
//!   bounded channel; when it is full, fetching pauses and the backlog stays in Kafka.
//! * **The topic is kept alive**: `connect` creates it if missing, and a watcher task
//!   re-creates it whenever the broker has lost it (tansu keeps topics in memory; a
//!   restart loses them). Subscriptions check their assignment on the same interval:
//!   a topic that disappeared and came back, or whose partition count changed, is
//!   re-assigned — partitions of a brand-new topic from offset 0, since it starts
//!   empty (docs/ARCHITECTURE.md, broker quirk 4). librdkafka reconnects by itself; the tasks only have
//!   to survive its errors.
//!
//! What consumers must tolerate (documented, not hidden):
//! * **Some older events after subscribing.** tansu reports a wrong end offset after
//!   a multi-message batch (docs/ARCHITECTURE.md, broker quirk 2), so "start at the end" may re-read a few
//!   earlier events; after a broker outage a partition whose end offset went below our
//!   position is re-read from its beginning. The edge ignores events older than its
//!   subscription by ingest timestamp, and reliable events are deduplicated by `seq`.
//! * **Events lost with the broker.** Events acknowledged by a broker that then loses
//!   its storage are gone from the bus; the reliable lane recovers them from the store.
//! * **tansu × librdkafka 2.12.1 crash.** A restarted tansu answers a fetch for a
//!   topic id it does not know with leader hints and a zero topic id, and librdkafka
//!   dereferences a NULL topic name (`rd_kafka_metadata_update_op`, SIGSEGV). A
//!   subscription's consumer therefore may not reconnect while it holds an
//!   assignment made before a connection closed: librdkafka's own connect and
//!   close callbacks enforce it (`consumer.rs`). Deleting the topic under live
//!   consumers with the broker up still crashes them. Apache Kafka and Redpanda
//!   send real topic ids and are not affected.
//!
//! Health for `/metrics` and readiness: [`KafkaBus::stats`] ([`KafkaStats`]: last
//! successful probe, delivery and fetch, counters, per-partition consumer lag) and
//! [`Bus::healthy`].

mod config;
mod consumer;
mod librdkafka_log;
mod shared;
mod subscription;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::admin::AdminClient;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::Producer;

pub use config::{DEFAULT_PARTITIONS, DEFAULT_TOPIC, KafkaBusConfig};
use shared::{
    BusContext, Counters, Shared, age, base_config, identity_lost, new_producer, store_now,
    topic_partitions, unavailable,
};

use crate::backend::{Bus, BusError, Subscription};
use crate::stats::KafkaStats;

/// The Kafka backend of [`Bus`]. See the module documentation.
pub struct KafkaBus {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("brokers", &self.shared.config.brokers)
            .field("topic", &self.shared.config.topic)
            .finish()
    }
}

impl KafkaBus {
    /// Connects to the brokers, creates the topic if it is missing and starts the
    /// watcher. Fails with [`BusError::Unavailable`] naming the brokers if they do not
    /// answer within [`KafkaBusConfig::connect_timeout`].
    pub async fn connect(config: KafkaBusConfig) -> Result<Self, BusError> {
        let wake = Arc::new(tokio::sync::Notify::new());
        let producer = new_producer(&config, &wake)?;
        let admin: AdminClient<BusContext> = base_config(&config)
            .create_with_context(BusContext::new("admin"))
            .map_err(|e| unavailable(&config, "cannot create the admin client", e))?;
        let shared = Arc::new(Shared {
            config,
            producer: RwLock::new(Arc::new(producer)),
            admin,
            counters: Counters::default(),
            subs: Mutex::new(Vec::new()),
            wake,
            topic_generation: AtomicU64::new(0),
        });
        let timeout = shared.config.connect_timeout;
        let md = shared.metadata(timeout).await.map_err(|e| {
            BusError::Unavailable(format!(
                "Kafka broker(s) {} did not answer within {timeout:?}: {e}",
                shared.config.brokers
            ))
        })?;
        if topic_partitions(&md, &shared.config.topic).is_none() {
            shared.create_topic().await?;
        }
        shared.probe_ok();
        tokio::spawn(watch_topic(Arc::downgrade(&shared)));
        tracing::info!(
            brokers = %shared.config.brokers,
            topic = %shared.config.topic,
            "kafka bus connected"
        );
        Ok(KafkaBus { shared })
    }

    /// The settings this bus runs with.
    pub fn config(&self) -> &KafkaBusConfig {
        &self.shared.config
    }

    /// A snapshot of counters, timestamps and per-partition consumer lag.
    pub fn stats(&self) -> KafkaStats {
        self.shared.stats()
    }
}

#[async_trait]
impl Bus for KafkaBus {
    async fn publish(&self, key: Bytes, payload: Bytes) -> Result<(), BusError> {
        let shared = &self.shared;
        let c = &shared.counters;
        let deadline = Instant::now() + shared.config.delivery_timeout;
        let mut created_topic = false;
        let mut backoff = Duration::from_millis(20);
        loop {
            let slot = shared.producer();
            let err = match shared.send(slot.producer(), &key, &payload).await {
                Ok(()) => {
                    c.published.fetch_add(1, Ordering::Relaxed);
                    slot.health.failures.store(0, Ordering::Relaxed);
                    store_now(&c.last_delivery_ms);
                    return Ok(());
                }
                Err(e) => e,
            };
            let code = err.rdkafka_error_code();
            // After a broker lost the topic, re-create it at once rather than wait for
            // the watcher, and try once more.
            if !created_topic
                && matches!(
                    code,
                    Some(
                        RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition
                    )
                )
            {
                created_topic = true;
                shared.create_topic().await?;
                continue;
            }
            let fatal = slot.producer().client().fatal_error();
            if fatal.is_some() || code.is_some_and(identity_lost) {
                // The message was not written and only a new producer id helps: replace
                // the producer and send again while the delivery budget lasts.
                let reason = match &fatal {
                    Some((code, reason)) => format!("fatal error {code}: {reason}"),
                    None => format!("send failed: {err}"),
                };
                shared.replace_producer(&slot, &reason);
                if Instant::now() + backoff < deadline {
                    tracing::debug!(error = %err, "kafka publish retried on a new producer");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                    continue;
                }
            } else {
                let failures = slot.health.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if failures >= 2 && c.reachable.load(Ordering::Relaxed) {
                    // The broker answers metadata requests but does not take our
                    // messages: most likely it no longer knows our producer id.
                    let reason = format!("{failures} publishes failed in a row");
                    shared.replace_producer(&slot, &reason);
                }
            }
            c.publish_errors.fetch_add(1, Ordering::Relaxed);
            return Err(unavailable(&shared.config, "publish failed", err));
        }
    }

    async fn subscribe_all(&self) -> Result<Box<dyn Subscription>, BusError> {
        subscription::subscribe(self.shared.clone()).await
    }

    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn healthy(&self) -> bool {
        let c = &self.shared.counters;
        let fresh = self.shared.config.watch_interval * 3 + Duration::from_secs(2);
        c.reachable.load(Ordering::Relaxed)
            && age(c.last_probe_ok_ms.load(Ordering::Relaxed)).is_some_and(|a| a <= fresh)
    }

    fn kafka_stats(&self) -> Option<KafkaStats> {
        Some(self.stats())
    }
}

/// Every `watch_interval`: is the broker there, does the topic exist (create it if
/// not), is the producer still usable. Ends when the bus and all its subscriptions
/// are dropped.
async fn watch_topic(shared: Weak<Shared>) {
    loop {
        let Some((interval, wake)) = shared
            .upgrade()
            .map(|s| (s.config.watch_interval, s.wake.clone()))
        else {
            return;
        };
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = wake.notified() => {}
        }
        drop(wake);
        let Some(shared) = shared.upgrade() else {
            return;
        };
        // First, before the broker may be back: a producer that lost its connection
        // is replaced (see the module documentation).
        let slot = shared.producer();
        if slot.health.connection_lost.load(Ordering::Relaxed) {
            shared.replace_producer(&slot, "lost its broker connection");
        } else if let Some((code, reason)) = slot.producer().client().fatal_error() {
            shared.replace_producer(&slot, &format!("fatal error {code}: {reason}"));
        }
        drop(slot);
        match shared.metadata(Duration::from_secs(2)).await {
            Ok(md) if topic_partitions(&md, &shared.config.topic).is_some() => shared.probe_ok(),
            Ok(_) => {
                tracing::warn!(topic = %shared.config.topic, "kafka topic is missing; creating it");
                match shared.create_topic().await {
                    Ok(()) => shared.probe_ok(),
                    Err(e) => {
                        shared.counters.reachable.store(false, Ordering::Relaxed);
                        tracing::warn!(error = %e, "cannot re-create the kafka topic");
                    }
                }
            }
            Err(e) => {
                if shared.counters.reachable.swap(false, Ordering::Relaxed) {
                    tracing::warn!(brokers = %shared.config.brokers, error = %e, "kafka broker unreachable");
                }
            }
        }
    }
}
