//! The distributed bus: one Kafka topic (default `danmaku.events`) through rdkafka.
//!
//! * **Publish** goes through one idempotent [`FutureProducer`] (`acks=all`,
//!   `linger.ms=5`, lz4) with the channel as the message key, so a channel's events
//!   stay in one partition and in order. `publish` awaits the broker's delivery report:
//!   ingest answers its client only once the broker has the event. A lost broker turns
//!   into [`BusError::Unavailable`] after [`KafkaBusConfig::delivery_timeout`].
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
//!   dereferences a NULL topic name (`rd_kafka_metadata_update_op`). Subscriptions
//!   therefore drop their assignment as soon as a connection is lost (see
//!   `subscription.rs`); deleting the topic under live consumers still crashes them.
//!   Apache Kafka and Redpanda send real topic ids and are not affected.
//!
//! Health for `/metrics` and readiness: [`KafkaBus::stats`] ([`KafkaStats`]: last
//! successful probe, delivery and fetch, counters, per-partition consumer lag) and
//! [`Bus::healthy`].

mod config;
mod subscription;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::metadata::Metadata;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

pub use config::{DEFAULT_PARTITIONS, DEFAULT_TOPIC, KafkaBusConfig};
use subscription::SubState;
pub use subscription::{PartitionLag, SubscriptionStats};

use crate::{Bus, BusError, Subscription};

/// A snapshot of the Kafka bus's health, for `/metrics` and readiness checks.
#[derive(Debug, Clone, Default)]
pub struct KafkaStats {
    /// The last topic probe (every [`KafkaBusConfig::watch_interval`]) reached the
    /// broker and found the topic.
    pub reachable: bool,
    /// When a probe last succeeded.
    pub last_probe_ok: Option<SystemTime>,
    /// When the broker last acknowledged a published message.
    pub last_delivery: Option<SystemTime>,
    /// When any subscription last received a message.
    pub last_fetch: Option<SystemTime>,
    /// Messages acknowledged by the broker.
    pub published: u64,
    /// `publish` calls that failed.
    pub publish_errors: u64,
    /// Messages received, summed over subscriptions.
    pub consumed: u64,
    /// Times the bus created the topic (at start and after a broker lost it).
    pub topic_creations: u64,
    /// Times a subscription re-assigned its partitions (topic re-created or resized).
    pub reassignments: u64,
    /// Times the producer was rebuilt after a fatal error.
    pub producer_restarts: u64,
    /// One entry per live subscription.
    pub subscriptions: Vec<SubscriptionStats>,
}

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

/// Everything the bus, its watcher and its subscriptions share.
struct Shared {
    config: KafkaBusConfig,
    producer: RwLock<Arc<FutureProducer<BusContext>>>,
    admin: AdminClient<BusContext>,
    counters: Counters,
    subs: Mutex<Vec<Weak<SubState>>>,
}

#[derive(Default)]
struct Counters {
    reachable: AtomicBool,
    last_probe_ok_ms: AtomicU64,
    last_delivery_ms: AtomicU64,
    last_fetch_ms: AtomicU64,
    published: AtomicU64,
    publish_errors: AtomicU64,
    consumed: AtomicU64,
    topic_creations: AtomicU64,
    reassignments: AtomicU64,
    producer_restarts: AtomicU64,
    consecutive_failures: AtomicU64,
}

impl KafkaBus {
    /// Connects to the brokers, creates the topic if it is missing and starts the
    /// watcher. Fails with [`BusError::Unavailable`] naming the brokers if they do not
    /// answer within [`KafkaBusConfig::connect_timeout`].
    pub async fn connect(config: KafkaBusConfig) -> Result<Self, BusError> {
        let producer = new_producer(&config)?;
        let admin: AdminClient<BusContext> = base_config(&config)
            .create_with_context(BusContext { role: "admin" })
            .map_err(|e| unavailable(&config, "cannot create the admin client", e))?;
        let shared = Arc::new(Shared {
            config,
            producer: RwLock::new(Arc::new(producer)),
            admin,
            counters: Counters::default(),
            subs: Mutex::new(Vec::new()),
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
        let producer = shared.producer();
        let result = match shared.send(&producer, &key, &payload).await {
            // After a broker lost the topic, re-create it at once rather than wait for
            // the watcher, and try once more.
            Err(KafkaError::MessageProduction(
                RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition,
            )) => {
                shared.create_topic().await?;
                shared.send(&shared.producer(), &key, &payload).await
            }
            other => other,
        };
        let c = &shared.counters;
        match result {
            Ok(()) => {
                c.published.fetch_add(1, Ordering::Relaxed);
                c.consecutive_failures.store(0, Ordering::Relaxed);
                store_now(&c.last_delivery_ms);
                Ok(())
            }
            Err(e) => {
                c.publish_errors.fetch_add(1, Ordering::Relaxed);
                let failures = c.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some((code, reason)) = producer.client().fatal_error() {
                    shared.replace_producer(&producer, &format!("fatal error {code}: {reason}"));
                } else if failures >= 2 && c.reachable.load(Ordering::Relaxed) {
                    // The broker answers metadata requests but does not take our
                    // messages: typically a restarted broker that no longer knows our
                    // idempotent producer id (librdkafka retries UNKNOWN_PRODUCER_ID
                    // forever). A new producer gets a new id.
                    let reason = format!("{failures} publishes failed in a row");
                    shared.replace_producer(&producer, &reason);
                }
                Err(unavailable(&shared.config, "publish failed", e))
            }
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

impl Shared {
    fn producer(&self) -> Arc<FutureProducer<BusContext>> {
        match self.producer.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    async fn send(
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

    /// Replaces `failed` with a new producer (unless another caller already did).
    /// Messages still queued in the old one fail and their callers see an error.
    fn replace_producer(&self, failed: &Arc<FutureProducer<BusContext>>, reason: &str) {
        let Ok(mut slot) = self.producer.write() else {
            return;
        };
        if !Arc::ptr_eq(&slot, failed) {
            return;
        }
        match new_producer(&self.config) {
            Ok(p) => {
                tracing::warn!(reason, "rebuilt the kafka producer");
                *slot = Arc::new(p);
                self.counters
                    .producer_restarts
                    .fetch_add(1, Ordering::Relaxed);
                self.counters
                    .consecutive_failures
                    .store(0, Ordering::Relaxed);
            }
            Err(e) => tracing::error!(error = %e, "cannot rebuild the kafka producer"),
        }
    }

    /// Cluster metadata for our topic, fetched off the async threads.
    async fn metadata(&self, timeout: Duration) -> Result<Metadata, KafkaError> {
        let producer = self.producer();
        let topic = self.config.topic.clone();
        tokio::task::spawn_blocking(move || producer.client().fetch_metadata(Some(&topic), timeout))
            .await
            .unwrap_or(Err(KafkaError::Canceled))
    }

    /// Creates the topic; "already exists" is success.
    async fn create_topic(&self) -> Result<(), BusError> {
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

    fn probe_ok(&self) {
        self.counters.reachable.store(true, Ordering::Relaxed);
        store_now(&self.counters.last_probe_ok_ms);
    }

    fn stats(&self) -> KafkaStats {
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

/// Every `watch_interval`: is the broker there, does the topic exist (create it if
/// not), is the producer still usable. Ends when the bus and all its subscriptions
/// are dropped.
async fn watch_topic(shared: Weak<Shared>) {
    loop {
        let Some(interval) = shared.upgrade().map(|s| s.config.watch_interval) else {
            return;
        };
        tokio::time::sleep(interval).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
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
        let producer = shared.producer();
        if let Some((code, reason)) = producer.client().fatal_error() {
            shared.replace_producer(&producer, &format!("fatal error {code}: {reason}"));
        }
    }
}

/// The number of partitions of `topic` in `md`, if the topic exists.
fn topic_partitions(md: &Metadata, topic: &str) -> Option<usize> {
    md.topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len())
}

/// Settings every client of the bus shares.
fn base_config(config: &KafkaBusConfig) -> ClientConfig {
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

fn new_producer(config: &KafkaBusConfig) -> Result<FutureProducer<BusContext>, BusError> {
    base_config(config)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", config.linger.as_millis().to_string())
        .set("compression.type", &config.compression)
        .set(
            "message.timeout.ms",
            config.delivery_timeout.as_millis().max(1).to_string(),
        )
        .create_with_context(BusContext { role: "producer" })
        .map_err(|e| unavailable(config, "cannot create the producer", e))
}

fn unavailable(config: &KafkaBusConfig, what: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!(
        "kafka {} (topic {}): {what}: {e}",
        config.brokers, config.topic
    ))
}

/// Routes librdkafka's logs and global errors to `tracing`.
struct BusContext {
    role: &'static str,
}

impl ClientContext for BusContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_librdkafka(self.role, level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(role = self.role, %error, reason, "librdkafka error");
    }
}

fn log_librdkafka(role: &str, level: RDKafkaLogLevel, fac: &str, message: &str) {
    use RDKafkaLogLevel::*;
    match level {
        Emerg | Alert | Critical | Error | Warning => {
            tracing::warn!(target: "librdkafka", role, fac, "{message}")
        }
        Notice | Info => tracing::info!(target: "librdkafka", role, fac, "{message}"),
        Debug => tracing::debug!(target: "librdkafka", role, fac, "{message}"),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn store_now(slot: &AtomicU64) {
    slot.store(now_ms(), Ordering::Relaxed);
}

fn to_time(ms: u64) -> Option<SystemTime> {
    (ms > 0).then(|| UNIX_EPOCH + Duration::from_millis(ms))
}

fn age(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(now_ms().saturating_sub(ms)))
}
