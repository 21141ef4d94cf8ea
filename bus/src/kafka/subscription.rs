//! One subscription = one consumer that owns every partition of the topic.
//!
//! A thread polls librdkafka's consumer (`consumer.rs`) and a task forwards what it
//! polls into a bounded channel that [`Subscription::recv`] reads. On every watch interval it checks the topic's
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
//! While a broker connection is down the subscription holds NO assignment, and
//! the consumer may not reconnect until it has dropped it: librdkafka 2.12.1
//! crashes when a restarted tansu answers a fetch for the old topic id (see
//! `consumer.rs`, which enforces that order on librdkafka's own threads). The
//! subscription assigns again, from freshly read metadata, once the topic
//! answers. Deleting the topic under a live consumer, with the broker up, still
//! triggers the crash (only tansu restarts lose topics here).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::Offset;
use rdkafka::error::KafkaError;
use tokio::sync::mpsc;

use super::consumer::{
    Applied, Command, ConsumerHooks, ConsumerSlot, Gate, GatedConsumer, MakeConsumer, Polled,
    partition_list, spawn_poll_thread,
};
use super::shared::{Shared, SubState, base_config, store_now, topic_partitions, unavailable};
use crate::backend::{BusError, BusMessage, Subscription};

/// How long one metadata or watermark request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Creates the consumer, assigns every partition at its current end and starts the
/// fetch task. Everything published after this returns is received.
pub(super) async fn subscribe(shared: Arc<Shared>) -> Result<Box<dyn Subscription>, BusError> {
    let config = &shared.config;
    let gate = Arc::new(Gate::default());
    let state = Arc::new(SubState {
        topic: config.topic.clone(),
        disrupted: AtomicBool::new(false),
        buffered: AtomicUsize::new(0),
        lags: Mutex::new(Vec::new()),
        gate: gate.clone(),
    });
    let settings = base_config(config)
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
        .set("fetch.min.bytes", config.fetch_min_bytes.to_string())
        .set(
            "queued.min.messages",
            config.queued_min_messages.to_string(),
        )
        .set("fetch.error.backoff.ms", "50")
        .set("statistics.interval.ms", "1000")
        .clone();
    let make: MakeConsumer = Box::new({
        let (state, gate) = (state.clone(), gate.clone());
        move || {
            let hooks = ConsumerHooks {
                gate: gate.clone(),
                retired: AtomicBool::new(false),
                on_error: Box::new({
                    let state = state.clone();
                    move |reason| state.on_error(reason)
                }),
                on_stats: Box::new({
                    let state = state.clone();
                    move |stats| state.on_stats(stats)
                }),
            };
            GatedConsumer::new(&settings, hooks)
        }
    });
    let consumer = make().map_err(|e| unavailable(config, "cannot create a consumer", e))?;
    let consumer = Arc::new(ConsumerSlot::new(consumer));

    let (tx, rx) = mpsc::channel(config.subscription_buffer.max(1));
    let (commands, command_rx) = std_mpsc::channel();
    let (polled_tx, polled) = mpsc::channel(256);
    spawn_poll_thread(consumer.clone(), make, command_rx, polled_tx)
        .map_err(|e| unavailable(config, "cannot start the consumer thread", e))?;
    let mut fetcher = Fetcher {
        shared: shared.clone(),
        state: state.clone(),
        consumer,
        commands,
        polled,
        tx,
        last: Vec::new(),
        verify: Vec::new(),
        positions: Vec::new(),
        assigned: false,
        topic_missing: false,
        generation: 0,
        command_gen: 0,
        awaiting: None,
        check_soon: false,
    };
    // The first assignment is in place before `subscribe` returns, so everything
    // published afterwards is received. A broker socket that closes meanwhile
    // refuses it (see `consumer.rs`): librdkafka retires its bootstrap connection
    // once it knows the cluster, which can fall in here; read and try again.
    let mut attempts = 0;
    loop {
        attempts += 1;
        // Resolve the end offsets ourselves rather than assigning `Offset::End`:
        // librdkafka would resolve that lazily, after a publish that follows this call.
        let closes = fetcher.state.gate.closes();
        let mut ends = blocking_end_offsets(&fetcher.consumer.get(), &config.topic).await;
        if matches!(ends, Ok(None)) {
            shared.create_topic().await?;
            ends = blocking_end_offsets(&fetcher.consumer.get(), &config.topic).await;
        }
        let ends = match ends {
            Ok(Some(ends)) => ends,
            Ok(None) => return Err(unavailable(config, "subscribe", "the topic does not exist")),
            Err(e) => return Err(unavailable(config, "subscribe", e)),
        };
        let positions: Vec<i64> = ends.iter().map(|&(_, high)| high).collect();
        tracing::debug!(topic = %config.topic, ?ends, "subscription starts at the partitions' ends");
        let offsets: Vec<Offset> = positions.iter().map(|&p| Offset::Offset(p)).collect();
        let tpl = partition_list(&config.topic, &offsets)
            .map_err(|e| unavailable(config, "cannot assign partitions", e))?;
        fetcher.generation = shared.topic_generation.load(Ordering::Relaxed);
        fetcher.last = vec![None; positions.len()];
        fetcher.verify = vec![None; positions.len()];
        fetcher.positions = positions;
        fetcher.send_assign(tpl, Some(closes));
        if fetcher.wait_applied().await {
            break;
        }
        if attempts >= 5 {
            return Err(unavailable(
                config,
                "subscribe",
                "broker connections kept closing while assigning partitions",
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shared
        .subs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Arc::downgrade(&state));
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
    consumer: Arc<ConsumerSlot>,
    /// To the poll thread (see `consumer.rs`).
    commands: std_mpsc::Sender<Command>,
    /// From the poll thread, in order.
    polled: mpsc::Receiver<Polled>,
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
    /// Number of the last command sent to the poll thread.
    command_gen: u64,
    /// A command not yet carried out: what is polled meanwhile belongs to the
    /// assignment it replaces and is dropped.
    awaiting: Option<u64>,
    /// The assignment was dropped: check the topic at once, not at the next tick.
    check_soon: bool,
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
    Polled(Polled),
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
                p = self.polled.recv() => p.map_or(Step::Stop, Step::Polled),
            };
            match step {
                Step::Stop => return,
                Step::Tick => {
                    let buffered = self.tx.max_capacity() - self.tx.capacity();
                    self.state.buffered.store(buffered, Ordering::Relaxed);
                    if self.awaiting.is_none() {
                        self.check_assignment().await;
                    }
                }
                Step::Polled(p) => {
                    if !self.on_polled(p).await {
                        return;
                    }
                    if std::mem::take(&mut self.check_soon) {
                        tick.reset_immediately();
                    }
                }
            }
        }
    }

    /// Handles one item from the poll thread; false when the subscription is gone.
    async fn on_polled(&mut self, p: Polled) -> bool {
        match p {
            Polled::Applied { id, result } => {
                if self.awaiting == Some(id) {
                    self.awaiting = None;
                    if let Applied::Refused(why) = result {
                        self.assigned = false;
                        self.state.disrupted.store(true, Ordering::Relaxed);
                        tracing::info!(reason = why, "kafka subscription did not assign; retrying");
                    }
                }
            }
            Polled::Paused => {
                // A new consumer, no partitions: positions are kept and verified.
                self.assigned = false;
                self.check_soon = true;
                self.state.disrupted.store(true, Ordering::Relaxed);
            }
            Polled::Error(e) => {
                self.state.disrupted.store(true, Ordering::Relaxed);
                tracing::debug!(error = %e, "kafka fetch error");
            }
            Polled::Message { .. } if self.awaiting.is_some() => {}
            Polled::Message {
                partition,
                offset,
                timestamp,
                msg,
            } => {
                let fp = Fingerprint {
                    offset,
                    timestamp,
                    key_len: msg.key.len(),
                    payload_len: msg.payload.len(),
                };
                let Ok(p) = usize::try_from(partition) else {
                    return true;
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
                    return true;
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
                    return false;
                }
            }
        }
        true
    }

    fn next_gen(&mut self) -> u64 {
        self.command_gen += 1;
        self.awaiting = Some(self.command_gen);
        self.command_gen
    }

    /// Asks the poll thread to assign `tpl` (see [`Command::Assign`]).
    fn send_assign(&mut self, tpl: rdkafka::TopicPartitionList, closes_seen: Option<u64>) {
        let id = self.next_gen();
        self.assigned = true;
        let _ = self.commands.send(Command::Assign {
            id,
            tpl,
            closes_seen,
        });
    }

    /// Waits for the command in flight (used before the task runs); true if it
    /// was carried out and the assignment stands.
    async fn wait_applied(&mut self) -> bool {
        while self.awaiting.is_some() {
            match self.polled.recv().await {
                Some(p) => {
                    self.on_polled(p).await;
                }
                None => return false,
            }
        }
        self.assigned
    }

    async fn check_assignment(&mut self) {
        // Before the metadata: an assignment computed from it is only made if no
        // broker connection closed since (see `consumer.rs`).
        let closes = self.state.gate.closes();
        let topic = self.shared.config.topic.clone();
        let consumer = self.consumer.get();
        let count = tokio::task::spawn_blocking(move || {
            consumer
                .fetch_metadata(&topic, REQUEST_TIMEOUT)
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
        let ends = match blocking_watermarks(&self.consumer.get(), &topic, count).await {
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
        let offsets: Vec<Offset> = positions
            .iter()
            .zip(&verify)
            .map(|(&pos, v)| Offset::Offset(v.map_or(pos, |v: Fingerprint| v.offset)))
            .collect();
        let tpl = match partition_list(&topic, &offsets) {
            Ok(tpl) => tpl,
            Err(e) => {
                self.state.disrupted.store(true, Ordering::Relaxed);
                tracing::warn!(error = %e, "cannot re-assign kafka partitions");
                return;
            }
        };
        self.send_assign(tpl, Some(closes));
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
        let offsets: Vec<Offset> = self
            .positions
            .iter()
            .enumerate()
            .map(|(i, &pos)| {
                if i == p {
                    Offset::Beginning
                } else {
                    Offset::Offset(self.verify[i].map_or(pos, |v| v.offset))
                }
            })
            .collect();
        let tpl = match partition_list(&self.shared.config.topic, &offsets) {
            Ok(tpl) => tpl,
            Err(e) => {
                tracing::warn!(error = %e, "cannot rewind a kafka partition");
                return;
            }
        };
        // The position is only a placeholder until the first message arrives.
        self.positions[p] = 0;
        // No close check: nothing here comes from metadata. A connection that
        // closes meanwhile makes the poll thread drop this assignment anyway.
        self.send_assign(tpl, None);
    }

    /// Stops fetching but keeps the positions; `check_assignment` resumes.
    fn unassign(&mut self, why: &str) {
        if !self.assigned {
            return;
        }
        let id = self.next_gen();
        self.assigned = false;
        let _ = self.commands.send(Command::Unassign { id });
        tracing::info!(reason = why, "kafka subscription paused its assignment");
    }
}

/// `(low, high)` watermarks of every partition, or `None` if the topic does not exist.
async fn blocking_end_offsets(
    consumer: &Arc<GatedConsumer>,
    topic: &str,
) -> Result<Option<Vec<(i64, i64)>>, KafkaError> {
    let (c, t) = (consumer.clone(), topic.to_owned());
    let count = tokio::task::spawn_blocking(move || {
        c.fetch_metadata(&t, REQUEST_TIMEOUT)
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
    consumer: &Arc<GatedConsumer>,
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
