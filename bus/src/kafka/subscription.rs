//! One subscription = one consumer that owns every partition of the topic.
//!
//! A task fetches with a [`StreamConsumer`] and forwards into a bounded channel that
//! [`Subscription::recv`] reads. On every watch interval it checks the topic's
//! metadata and, after anything suspicious (an error from librdkafka, the topic
//! missing, a different partition count), compares its positions with the
//! partitions' watermarks and re-assigns: unchanged partitions go on where they
//! were; new partitions and partitions of a re-created topic start at their
//! beginning (docs/ARCHITECTURE.md, broker quirk 4).
//!
//! A broker restarted quickly may come back before any metadata check saw the topic
//! missing, with a NEW topic of the same name whose partitions already hold a few
//! messages: a position that is still within the watermarks proves nothing. So
//! after an outage the subscription re-reads the last message it delivered from
//! each partition (offset `position - 1`) and compares it (timestamp, key and payload
//! sizes) with what it delivered: the same message is skipped and reading goes on;
//! a different one means the partition was re-created, and it is read from its
//! beginning. A topic this process re-created itself (the bus's topic generation
//! changed) starts from the beginning without the check.
//!
//! While the broker is unreachable the subscription holds NO assignment: librdkafka
//! 2.12.1 crashes (NULL topic name in `rd_kafka_metadata_update_op`) when a restarted
//! tansu answers a fetch for the old topic id with leader hints and a zero topic id.
//! So on the first lost connection the task unassigns everything, keeping its
//! positions, and assigns again once the topic answers; the consumer waits 300 ms
//! before reconnecting to leave it the time. This makes a crash unlikely, not
//! impossible; deleting the topic under a live consumer still triggers it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Message, Timestamp};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{Notify, mpsc};

use super::{Shared, base_config, log_librdkafka, store_now, topic_partitions, unavailable};
use crate::{BusError, BusMessage, Subscription};

/// How long one metadata or watermark request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Consumer lag of one partition, as of librdkafka's last statistics (every second).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionLag {
    pub partition: i32,
    /// Offset of the next message this subscription will receive (-1: unknown yet).
    pub position: i64,
    /// The partition's high watermark (-1: unknown yet).
    pub high_watermark: i64,
    /// `high_watermark - position`, or -1 when either is unknown.
    pub lag: i64,
}

/// Health of one subscription.
#[derive(Debug, Clone, Default)]
pub struct SubscriptionStats {
    /// Messages fetched but not yet taken by `recv`.
    pub buffered: usize,
    /// Per-partition lag, sorted by partition.
    pub partitions: Vec<PartitionLag>,
}

/// What a subscription's consumer callbacks, its task and `KafkaBus::stats` share.
pub(super) struct SubState {
    topic: String,
    /// Set by librdkafka errors: check positions against watermarks at the next tick.
    disrupted: AtomicBool,
    /// Woken on a lost connection: the task drops its assignment at once.
    outage: Notify,
    buffered: AtomicUsize,
    lags: Mutex<Vec<PartitionLag>>,
}

impl SubState {
    pub(super) fn stats(&self) -> SubscriptionStats {
        SubscriptionStats {
            buffered: self.buffered.load(Ordering::Relaxed),
            partitions: self.lags.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }
}

struct SubContext {
    state: Arc<SubState>,
}

impl ClientContext for SubContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        // "FAIL" is a lost or refused connection. Logs arrive straight from
        // librdkafka's broker thread, sooner than the error callback.
        if fac == "FAIL" {
            self.state.outage.notify_one();
        }
        log_librdkafka("consumer", level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.state.disrupted.store(true, Ordering::Relaxed);
        if matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown)
        ) {
            self.state.outage.notify_one();
        }
        tracing::debug!(role = "consumer", %error, reason, "librdkafka error");
    }

    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.state.topic) else {
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
        *self.state.lags.lock().unwrap_or_else(|p| p.into_inner()) = lags;
    }
}

impl ConsumerContext for SubContext {}

type KafkaConsumer = StreamConsumer<SubContext>;

/// Creates the consumer, assigns every partition at its current end and starts the
/// fetch task. Everything published after this returns is received.
pub(super) async fn subscribe(shared: Arc<Shared>) -> Result<Box<dyn Subscription>, BusError> {
    let config = &shared.config;
    let state = Arc::new(SubState {
        topic: config.topic.clone(),
        disrupted: AtomicBool::new(false),
        outage: Notify::new(),
        buffered: AtomicUsize::new(0),
        lags: Mutex::new(Vec::new()),
    });
    let consumer: KafkaConsumer = base_config(config)
        // librdkafka wants a group id even for `assign`; with no subscribe and no
        // commits it never joins the group.
        .set("group.id", "danmaku-bus")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Used only when a fetch position is out of range: the topic was re-created.
        .set("auto.offset.reset", "earliest")
        .set(
            "fetch.wait.max.ms",
            config.fetch_wait.as_millis().to_string(),
        )
        .set("fetch.error.backoff.ms", "50")
        .set("statistics.interval.ms", "1000")
        // Leaves the task time to drop its assignment before a restarted broker is
        // asked for the old topic (see the module documentation).
        .set("reconnect.backoff.ms", "300")
        .create_with_context(SubContext {
            state: state.clone(),
        })
        .map_err(|e| unavailable(config, "cannot create a consumer", e))?;
    let consumer = Arc::new(consumer);

    // Resolve the end offsets ourselves rather than assigning `Offset::End`: librdkafka
    // would resolve that lazily, after a publish that follows this call.
    let mut ends = blocking_end_offsets(&consumer, &config.topic).await;
    if matches!(ends, Ok(None)) {
        shared.create_topic().await?;
        ends = blocking_end_offsets(&consumer, &config.topic).await;
    }
    let ends = match ends {
        Ok(Some(ends)) => ends,
        Ok(None) => return Err(unavailable(config, "subscribe", "the topic does not exist")),
        Err(e) => return Err(unavailable(config, "subscribe", e)),
    };
    let positions: Vec<i64> = ends.iter().map(|&(_, high)| high).collect();
    tracing::debug!(topic = %config.topic, ?ends, "subscription starts at the partitions' ends");
    let generation = shared.topic_generation.load(Ordering::Relaxed);
    assign(&consumer, &config.topic, &positions)
        .map_err(|e| unavailable(config, "cannot assign partitions", e))?;

    let (tx, rx) = mpsc::channel(config.subscription_buffer.max(1));
    shared
        .subs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Arc::downgrade(&state));
    let fetcher = Fetcher {
        shared,
        state,
        consumer,
        tx,
        last: vec![None; positions.len()],
        verify: vec![None; positions.len()],
        positions,
        assigned: true,
        topic_missing: false,
        generation,
    };
    tokio::spawn(fetcher.run());
    Ok(Box::new(KafkaSubscription { rx }))
}

struct KafkaSubscription {
    rx: mpsc::Receiver<BusMessage>,
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn recv(&mut self) -> Result<BusMessage, BusError> {
        self.rx.recv().await.ok_or(BusError::Closed)
    }
}

struct Fetcher {
    shared: Arc<Shared>,
    state: Arc<SubState>,
    consumer: Arc<KafkaConsumer>,
    tx: mpsc::Sender<BusMessage>,
    /// Next offset to receive, per partition (index = partition id).
    positions: Vec<i64>,
    /// False while the broker is away (see the module documentation).
    assigned: bool,
    /// The last metadata check found no topic: when it returns, it is a new one.
    topic_missing: bool,
    /// The last message delivered from each partition.
    last: Vec<Option<Fingerprint>>,
    /// Per partition: after an outage, the message expected at `position - 1`.
    verify: Vec<Option<Fingerprint>>,
    /// The bus's topic generation when the partitions were last assigned.
    generation: u64,
}

/// Enough of a message to tell it from another one at the same offset of a
/// re-created partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    offset: i64,
    timestamp: Option<i64>,
    key_len: usize,
    payload_len: usize,
}

enum Step {
    Stop,
    Tick,
    Outage,
    Message(i32, Fingerprint, BusMessage),
    Error(KafkaError),
}

impl Fetcher {
    /// Runs until the subscription is dropped. Never gives up on errors: librdkafka
    /// reconnects by itself and [`Fetcher::check_assignment`] repairs the rest.
    async fn run(mut self) {
        let mut tick = tokio::time::interval(self.shared.config.watch_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let step = tokio::select! {
                _ = self.tx.closed() => Step::Stop,
                _ = tick.tick() => Step::Tick,
                _ = self.state.outage.notified() => Step::Outage,
                r = self.consumer.recv() => match r {
                    Ok(m) => {
                        let key = m.key().unwrap_or_default();
                        let payload = m.payload().unwrap_or_default();
                        let fp = Fingerprint {
                            offset: m.offset(),
                            timestamp: match m.timestamp() {
                                Timestamp::NotAvailable => None,
                                t => t.to_millis(),
                            },
                            key_len: key.len(),
                            payload_len: payload.len(),
                        };
                        Step::Message(m.partition(), fp, BusMessage {
                            key: Bytes::copy_from_slice(key),
                            payload: Bytes::copy_from_slice(payload),
                        })
                    }
                    Err(e) => Step::Error(e),
                },
            };
            match step {
                Step::Stop => return,
                Step::Tick => {
                    let buffered = self.tx.max_capacity() - self.tx.capacity();
                    self.state.buffered.store(buffered, Ordering::Relaxed);
                    self.check_assignment().await;
                }
                Step::Outage => self.unassign("lost the connection to the broker"),
                Step::Message(partition, fp, msg) => {
                    let Ok(p) = usize::try_from(partition) else {
                        continue;
                    };
                    if let Some(expected) = self.verify.get_mut(p).and_then(Option::take)
                        && fp.offset == expected.offset
                    {
                        if fp != expected {
                            self.rewind(p, partition);
                        }
                        // Either way this is not a message to deliver: the same one
                        // was delivered before the outage, or the partition is
                        // read again from its beginning.
                        continue;
                    }
                    if let Some(pos) = self.positions.get_mut(p) {
                        *pos = fp.offset + 1;
                    }
                    if let Some(last) = self.last.get_mut(p) {
                        *last = Some(fp);
                    }
                    let counters = &self.shared.counters;
                    counters.consumed.fetch_add(1, Ordering::Relaxed);
                    store_now(&counters.last_fetch_ms);
                    if self.tx.send(msg).await.is_err() {
                        return;
                    }
                }
                Step::Error(e) => {
                    self.state.disrupted.store(true, Ordering::Relaxed);
                    tracing::debug!(error = %e, "kafka fetch error");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn check_assignment(&mut self) {
        let topic = self.shared.config.topic.clone();
        let consumer = self.consumer.clone();
        let count = tokio::task::spawn_blocking(move || {
            consumer
                .fetch_metadata(Some(&topic), REQUEST_TIMEOUT)
                .map(|md| topic_partitions(&md, &topic))
        })
        .await
        .unwrap_or(Err(KafkaError::Canceled));
        let count = match count {
            Ok(Some(n)) => n,
            Ok(None) => {
                if !self.topic_missing {
                    tracing::warn!(topic = %self.shared.config.topic, "kafka topic disappeared; waiting for it");
                    self.topic_missing = true;
                }
                self.unassign("the topic disappeared");
                // The bus's watcher re-creates it too; this covers a process that only
                // subscribes and has dropped its bus handle.
                if let Err(e) = self.shared.create_topic().await {
                    tracing::debug!(error = %e, "cannot re-create the kafka topic");
                }
                return;
            }
            Err(e) => {
                self.state.disrupted.store(true, Ordering::Relaxed);
                tracing::debug!(error = %e, "kafka metadata request failed");
                return;
            }
        };
        let disrupted = self.state.disrupted.swap(false, Ordering::Relaxed);
        if self.assigned && !(disrupted || self.topic_missing || count != self.positions.len()) {
            return;
        }
        let topic = self.shared.config.topic.clone();
        let ends = match blocking_watermarks(&self.consumer, &topic, count).await {
            Ok(ends) => ends,
            Err(e) => {
                self.state.disrupted.store(true, Ordering::Relaxed);
                tracing::debug!(error = %e, "kafka watermark request failed");
                return;
            }
        };
        let generation = self.shared.topic_generation.load(Ordering::Relaxed);
        let fresh = self.topic_missing || generation != self.generation;
        let positions: Vec<i64> = ends
            .iter()
            .enumerate()
            .map(|(p, &(low, high))| match self.positions.get(p) {
                // Unchanged partition: go on where we were.
                Some(&pos) if !fresh && (low..=high).contains(&pos) => pos,
                // New partition, or the topic was re-created under us (our position is
                // past its end): everything in it is new to us.
                _ => low,
            })
            .collect();
        if self.assigned && positions == self.positions {
            return;
        }
        // Coming back from an outage into the same-looking topic: check the last
        // delivered message of every partition (see the module documentation).
        let mut verify = vec![None; positions.len()];
        if !self.assigned && !fresh {
            for (p, &pos) in positions.iter().enumerate() {
                if let Some(Some(last)) = self.last.get(p)
                    && last.offset == pos - 1
                    && pos > ends[p].0
                {
                    verify[p] = Some(*last);
                }
            }
        }
        let offsets: Vec<i64> = positions
            .iter()
            .zip(&verify)
            .map(|(&pos, v)| v.map_or(pos, |v: Fingerprint| v.offset))
            .collect();
        if let Err(e) = assign(&self.consumer, &topic, &offsets) {
            self.state.disrupted.store(true, Ordering::Relaxed);
            tracing::warn!(error = %e, "cannot re-assign kafka partitions");
            return;
        }
        tracing::info!(
            topic = %topic,
            partitions = count,
            recreated = fresh,
            "kafka subscription re-assigned its partitions"
        );
        if fresh {
            self.last = vec![None; positions.len()];
        }
        self.last.resize(positions.len(), None);
        self.positions = positions;
        self.verify = verify;
        self.assigned = true;
        self.topic_missing = false;
        self.generation = generation;
        self.shared
            .counters
            .reassignments
            .fetch_add(1, Ordering::Relaxed);
    }
}

impl Fetcher {
    /// Partition `p` turned out to be a different one than before the outage: read it
    /// from its beginning, keep the other partitions (and their pending checks) where
    /// they are.
    fn rewind(&mut self, p: usize, partition: i32) {
        tracing::info!(
            topic = %self.shared.config.topic,
            partition,
            "kafka partition was re-created under the subscription; reading it from its start"
        );
        self.last[p] = None;
        let mut tpl = TopicPartitionList::with_capacity(self.positions.len());
        let topic = &self.shared.config.topic;
        for (i, &pos) in self.positions.iter().enumerate() {
            let offset = if i == p {
                Offset::Beginning
            } else {
                Offset::Offset(self.verify[i].map_or(pos, |v| v.offset))
            };
            if let Err(e) = tpl.add_partition_offset(topic, i as i32, offset) {
                tracing::warn!(error = %e, "cannot rewind a kafka partition");
                return;
            }
        }
        // The position is only a placeholder until the first message arrives.
        self.positions[p] = 0;
        if let Err(e) = self.consumer.assign(&tpl) {
            self.state.disrupted.store(true, Ordering::Relaxed);
            tracing::warn!(error = %e, "cannot rewind a kafka partition");
        }
    }

    /// Stops fetching but keeps the positions; `check_assignment` resumes.
    fn unassign(&mut self, why: &str) {
        if !self.assigned {
            return;
        }
        match self.consumer.unassign() {
            Ok(()) => {
                self.assigned = false;
                tracing::info!(reason = why, "kafka subscription paused its assignment");
            }
            Err(e) => tracing::warn!(error = %e, "cannot unassign kafka partitions"),
        }
    }
}

fn assign(consumer: &KafkaConsumer, topic: &str, positions: &[i64]) -> Result<(), KafkaError> {
    let mut tpl = TopicPartitionList::with_capacity(positions.len());
    for (p, &offset) in positions.iter().enumerate() {
        tpl.add_partition_offset(topic, p as i32, Offset::Offset(offset))?;
    }
    consumer.assign(&tpl)
}

/// `(low, high)` watermarks of every partition, or `None` if the topic does not exist.
async fn blocking_end_offsets(
    consumer: &Arc<KafkaConsumer>,
    topic: &str,
) -> Result<Option<Vec<(i64, i64)>>, KafkaError> {
    let (c, t) = (consumer.clone(), topic.to_owned());
    let count = tokio::task::spawn_blocking(move || {
        c.fetch_metadata(Some(&t), REQUEST_TIMEOUT)
            .map(|md| topic_partitions(&md, &t))
    })
    .await
    .unwrap_or(Err(KafkaError::Canceled))?;
    match count {
        Some(n) => blocking_watermarks(consumer, topic, n).await.map(Some),
        None => Ok(None),
    }
}

async fn blocking_watermarks(
    consumer: &Arc<KafkaConsumer>,
    topic: &str,
    count: usize,
) -> Result<Vec<(i64, i64)>, KafkaError> {
    let (c, t) = (consumer.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        (0..count as i32)
            .map(|p| c.fetch_watermarks(&t, p, REQUEST_TIMEOUT))
            .collect()
    })
    .await
    .unwrap_or(Err(KafkaError::Canceled))
}
