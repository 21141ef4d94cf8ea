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
mod subscription;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::metadata::Metadata;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer, PurgeConfig};
use rdkafka::util::Timeout;

pub use config::{DEFAULT_PARTITIONS, DEFAULT_TOPIC, KafkaBusConfig};
use subscription::SubState;

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

/// Everything the bus, its watcher and its subscriptions share.
struct Shared {
    config: KafkaBusConfig,
    producer: RwLock<Arc<ProducerSlot>>,
    admin: AdminClient<BusContext>,
    counters: Counters,
    subs: Mutex<Vec<Weak<SubState>>>,
    /// Wakes the watcher when the producer lost its broker connection.
    wake: Arc<tokio::sync::Notify>,
    /// Incremented whenever this process creates the topic: subscriptions compare it
    /// to tell a re-created topic from one that survived.
    topic_generation: AtomicU64,
}

/// One producer and what the bus learned about it.
struct ProducerSlot {
    /// `Some` until dropped (the drop blocks, so it runs off the async threads).
    producer: Option<FutureProducer<BusContext>>,
    health: Arc<ProducerHealth>,
}

/// Shared with the producer's librdkafka callbacks.
#[derive(Default)]
struct ProducerHealth {
    /// Publishes that failed in a row on this producer.
    failures: AtomicU64,
    /// An established broker connection was lost: the broker may have forgotten
    /// this producer's id (see the module documentation).
    connection_lost: AtomicBool,
}

impl ProducerSlot {
    fn producer(&self) -> &FutureProducer<BusContext> {
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

impl Shared {
    fn producer(&self) -> Arc<ProducerSlot> {
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

    /// Replaces `failed` with a new producer (unless another caller already did) and
    /// purges the old one's queue: its messages fail with a purge error and their
    /// `publish` calls send them again on the new producer. The old producer must not
    /// reach a restarted broker with an id that broker may since have given to
    /// someone else.
    fn replace_producer(&self, failed: &Arc<ProducerSlot>, reason: &str) {
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
    async fn metadata(&self, timeout: Duration) -> Result<Metadata, KafkaError> {
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

/// Delivery errors after which only a new producer id helps. None of them means the
/// message was written, so sending it again on a new producer is safe (at worst a
/// duplicate, which consumers tolerate).
fn identity_lost(code: RDKafkaErrorCode) -> bool {
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

fn new_producer(
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

fn unavailable(config: &KafkaBusConfig, what: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!(
        "kafka {} (topic {}): {what}: {e}",
        config.brokers, config.topic
    ))
}

/// Routes librdkafka's logs and global errors to `tracing`; for a producer, also
/// reports a lost broker connection.
struct BusContext {
    role: &'static str,
    producer: Option<(Arc<ProducerHealth>, Arc<tokio::sync::Notify>)>,
}

impl BusContext {
    fn new(role: &'static str) -> Self {
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
