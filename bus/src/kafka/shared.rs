//! What the Kafka bus, its watcher and its subscriptions share: the
//! producer slot and admin client (`Shared`), each subscription's health
//! (`SubState`), the counters behind `KafkaBus::stats`, and the librdkafka
//! configuration every client starts from. Below both the bus (`kafka.rs`)
//! and its subscriptions, which call into it.

use crate::backend::BusError;
use crate::stats::KafkaStats;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::metadata::Metadata;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer, PurgeConfig};
use rdkafka::statistics::Statistics;
use rdkafka::util::Timeout;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::config::KafkaBusConfig;
use super::consumer::Gate;
use super::librdkafka_log::log_librdkafka;
use crate::stats::{PartitionLag, SubscriptionStats};

/// Everything the bus, its watcher and its subscriptions share.
pub(super) struct Shared {
    pub(super) config: KafkaBusConfig,
    pub(super) producer: RwLock<Arc<ProducerSlot>>,
    pub(super) admin: AdminClient<BusContext>,
    pub(super) counters: Counters,
    pub(super) subs: Mutex<Vec<Weak<SubState>>>,
    /// Wakes the watcher when the producer lost its broker connection.
    pub(super) wake: Arc<tokio::sync::Notify>,
    /// Incremented whenever this process creates the topic: subscriptions compare it
    /// to tell a re-created topic from one that survived.
    pub(super) topic_generation: AtomicU64,
}

/// One producer and what the bus learned about it.
pub(super) struct ProducerSlot {
    /// `Some` until dropped (the drop blocks, so it runs off the async threads).
    pub(super) producer: Option<FutureProducer<BusContext>>,
    pub(super) health: Arc<ProducerHealth>,
}

/// Shared with the producer's librdkafka callbacks.
#[derive(Default)]
pub(super) struct ProducerHealth {
    /// Publishes that failed in a row on this producer.
    pub(super) failures: AtomicU64,
    /// An established broker connection was lost: the broker may have forgotten
    /// this producer's id (see the module documentation).
    pub(super) connection_lost: AtomicBool,
}

impl ProducerSlot {
    pub(super) fn producer(&self) -> &FutureProducer<BusContext> {
        self.producer
            .as_ref()
            .expect("the producer is only taken in drop")
    }
}

impl Drop for ProducerSlot {
    fn drop(&mut self) {
        // librdkafka's destroy purges, flushes for up to 500 ms and joins its threads.
        if let Some(p) = self.producer.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn_blocking(move || drop(p));
                }
                Err(_) => drop(p),
            }
        }
    }
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) reachable: AtomicBool,
    pub(super) last_probe_ok_ms: AtomicU64,
    pub(super) last_delivery_ms: AtomicU64,
    pub(super) last_fetch_ms: AtomicU64,
    pub(super) published: AtomicU64,
    pub(super) publish_errors: AtomicU64,
    pub(super) consumed: AtomicU64,
    pub(super) topic_creations: AtomicU64,
    pub(super) reassignments: AtomicU64,
    pub(super) producer_restarts: AtomicU64,
}

impl Shared {
    pub(super) fn producer(&self) -> Arc<ProducerSlot> {
        match self.producer.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub(super) async fn send(
        &self,
        producer: &FutureProducer<BusContext>,
        key: &[u8],
        payload: &[u8],
    ) -> Result<(), KafkaError> {
        let record = FutureRecord::to(&self.config.topic)
            .key(key)
            .payload(payload);
        let wait = self.config.delivery_timeout;
        // librdkafka reports every message within `message.timeout.ms`; the outer
        // timeout only guards against a report that never comes.
        match tokio::time::timeout(wait * 2, producer.send(record, Timeout::After(wait))).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(e),
            Err(_) => Err(KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageTimedOut,
            )),
        }
    }

    /// Replaces `failed` with a new producer (unless another caller already did) and
    /// purges the old one's queue: its messages fail with a purge error and their
    /// `publish` calls send them again on the new producer. The old producer must not
    /// reach a restarted broker with an id that broker may since have given to
    /// someone else.
    pub(super) fn replace_producer(&self, failed: &Arc<ProducerSlot>, reason: &str) {
        let Ok(mut slot) = self.producer.write() else {
            return;
        };
        if !Arc::ptr_eq(&slot, failed) {
            return;
        }
        match new_producer(&self.config, &self.wake) {
            Ok(p) => {
                tracing::warn!(reason, "rebuilt the kafka producer");
                *slot = Arc::new(p);
                drop(slot);
                failed
                    .producer()
                    .purge(PurgeConfig::default().queue().inflight());
                self.counters
                    .producer_restarts
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::error!(error = %e, "cannot rebuild the kafka producer"),
        }
    }

    /// Cluster metadata for our topic, fetched off the async threads.
    pub(super) async fn metadata(&self, timeout: Duration) -> Result<Metadata, KafkaError> {
        let slot = self.producer();
        let topic = self.config.topic.clone();
        tokio::task::spawn_blocking(move || {
            slot.producer()
                .client()
                .fetch_metadata(Some(&topic), timeout)
        })
        .await
        .unwrap_or(Err(KafkaError::Canceled))
    }

    /// Creates the topic; "already exists" is success.
    pub(super) async fn create_topic(&self) -> Result<(), BusError> {
        let c = &self.config;
        let topic = NewTopic::new(
            &c.topic,
            c.partitions,
            TopicReplication::Fixed(c.replication),
        );
        let opts = AdminOptions::new()
            .request_timeout(Some(c.connect_timeout))
            .operation_timeout(Some(c.connect_timeout));
        let results = self
            .admin
            .create_topics([&topic], &opts)
            .await
            .map_err(|e| unavailable(c, "cannot create the topic", e))?;
        for result in results {
            match result {
                Ok(_) => {
                    let before = self
                        .counters
                        .topic_creations
                        .fetch_add(1, Ordering::Relaxed);
                    self.topic_generation.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(topic = %c.topic, partitions = c.partitions, "created kafka topic");
                    if before > 0 {
                        // The broker lost the topic, so it lost our producer id too.
                        self.replace_producer(&self.producer(), "the broker lost the topic");
                    }
                }
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(unavailable(c, "cannot create the topic", code));
                }
            }
        }
        Ok(())
    }

    pub(super) fn probe_ok(&self) {
        self.counters.reachable.store(true, Ordering::Relaxed);
        store_now(&self.counters.last_probe_ok_ms);
    }

    pub(super) fn stats(&self) -> KafkaStats {
        let c = &self.counters;
        let subscriptions = {
            let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
            subs.retain(|w| w.strong_count() > 0);
            subs.iter()
                .filter_map(Weak::upgrade)
                .map(|s| s.stats())
                .collect()
        };
        KafkaStats {
            reachable: c.reachable.load(Ordering::Relaxed),
            last_probe_ok: to_time(c.last_probe_ok_ms.load(Ordering::Relaxed)),
            last_delivery: to_time(c.last_delivery_ms.load(Ordering::Relaxed)),
            last_fetch: to_time(c.last_fetch_ms.load(Ordering::Relaxed)),
            published: c.published.load(Ordering::Relaxed),
            publish_errors: c.publish_errors.load(Ordering::Relaxed),
            consumed: c.consumed.load(Ordering::Relaxed),
            topic_creations: c.topic_creations.load(Ordering::Relaxed),
            reassignments: c.reassignments.load(Ordering::Relaxed),
            producer_restarts: c.producer_restarts.load(Ordering::Relaxed),
            subscriptions,
        }
    }
}

/// Delivery errors after which only a new producer id helps. None of them means the
/// message was written, so sending it again on a new producer is safe (at worst a
/// duplicate, which consumers tolerate).
pub(super) fn identity_lost(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        ProducerFenced
            | InvalidProducerEpoch
            | UnknownProducerId
            | OutOfOrderSequenceNumber
            | Fenced
            | PurgeQueue
            | PurgeInflight
    )
}

/// The number of partitions of `topic` in `md`, if the topic exists.
pub(super) fn topic_partitions(md: &Metadata, topic: &str) -> Option<usize> {
    md.topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len())
}

/// Settings every client of the bus shares.
pub(super) fn base_config(config: &KafkaBusConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("client.id", "danmaku-bus")
        // Only the bus creates the topic, with the configured partition count: a
        // metadata request must not auto-create it with the broker's default.
        .set("allow.auto.create.topics", "false")
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "1000")
        .set("socket.keepalive.enable", "true")
        .set("log_level", "4");
    // e.g. `DANMAKU_KAFKA_DEBUG=broker,topic,msg,eos` to see librdkafka's own tracing.
    if let Ok(contexts) = std::env::var("DANMAKU_KAFKA_DEBUG") {
        c.set("debug", contexts).set("log_level", "7");
    }
    c
}

pub(super) fn new_producer(
    config: &KafkaBusConfig,
    wake: &Arc<tokio::sync::Notify>,
) -> Result<ProducerSlot, BusError> {
    let health = Arc::new(ProducerHealth::default());
    let context = BusContext {
        role: "producer",
        producer: Some((health.clone(), wake.clone())),
    };
    let producer = base_config(config)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", config.linger.as_millis().to_string())
        .set("batch.num.messages", config.batch_num_messages.to_string())
        .set("compression.type", &config.compression)
        .set(
            "message.timeout.ms",
            config.delivery_timeout.as_millis().max(1).to_string(),
        )
        .create_with_context(context)
        .map_err(|e| unavailable(config, "cannot create the producer", e))?;
    Ok(ProducerSlot {
        producer: Some(producer),
        health,
    })
}

pub(super) fn unavailable(
    config: &KafkaBusConfig,
    what: &str,
    e: impl std::fmt::Display,
) -> BusError {
    BusError::Unavailable(format!(
        "kafka {} (topic {}): {what}: {e}",
        config.brokers, config.topic
    ))
}

/// Routes librdkafka's logs and global errors to `tracing`; for a producer, also
/// reports a lost broker connection.
pub(super) struct BusContext {
    pub(super) role: &'static str,
    pub(super) producer: Option<(Arc<ProducerHealth>, Arc<tokio::sync::Notify>)>,
}

impl BusContext {
    pub(super) fn new(role: &'static str) -> Self {
        BusContext {
            role,
            producer: None,
        }
    }
}

impl ClientContext for BusContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        // "FAIL … (after Nms in state UP)": an established connection was lost, as
        // opposed to a connect attempt that failed (which a producer still waiting
        // for its broker logs every backoff, and which proves nothing about its id).
        if let Some((health, wake)) = &self.producer
            && fac == "FAIL"
            && message.contains("in state UP")
            && !health.connection_lost.swap(true, Ordering::Relaxed)
        {
            wake.notify_one();
        }
        log_librdkafka(self.role, level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(role = self.role, %error, reason, "librdkafka error");
    }
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(super) fn store_now(slot: &AtomicU64) {
    slot.store(now_ms(), Ordering::Relaxed);
}

pub(super) fn to_time(ms: u64) -> Option<SystemTime> {
    (ms > 0).then(|| UNIX_EPOCH + Duration::from_millis(ms))
}

pub(super) fn age(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(now_ms().saturating_sub(ms)))
}

/// What a subscription's consumer callbacks, its task and `KafkaBus::stats` share.
pub(super) struct SubState {
    pub(super) topic: String,
    /// Set by librdkafka errors: check positions against watermarks at the next tick.
    pub(super) disrupted: AtomicBool,
    pub(super) buffered: AtomicUsize,
    pub(super) lags: Mutex<Vec<PartitionLag>>,
    pub(super) gate: Arc<Gate>,
}

impl SubState {
    pub(super) fn stats(&self) -> SubscriptionStats {
        SubscriptionStats {
            buffered: self.buffered.load(Ordering::Relaxed),
            partitions: self.lags.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            connection_closes: self.gate.closes(),
            reconnects_held: self.gate.refused(),
        }
    }

    pub(super) fn on_error(&self, reason: &str) {
        self.disrupted.store(true, Ordering::Relaxed);
        tracing::debug!(role = "consumer", reason, "librdkafka error");
    }

    pub(super) fn on_stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let mut lags: Vec<PartitionLag> = topic
            .partitions
            .values()
            .filter(|p| p.partition >= 0) // -1 is librdkafka's internal "unassigned" queue
            .map(|p| PartitionLag {
                partition: p.partition,
                position: p.app_offset,
                high_watermark: p.hi_offset,
                lag: if p.app_offset >= 0 && p.hi_offset >= 0 {
                    (p.hi_offset - p.app_offset).max(0)
                } else {
                    -1
                },
            })
            .collect();
        lags.sort_by_key(|l| l.partition);
        *self.lags.lock().unwrap_or_else(|p| p.into_inner()) = lags;
    }
}
