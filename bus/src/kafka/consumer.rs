//! The subscription's consumer: librdkafka's C consumer, driven by one thread of
//! its own, that never fetches from a broker with an assignment made before a lost
//! connection.
//!
//! Why (issue 22, reproduced with a core dump): a restarted tansu answers a fetch
//! for a topic id it does not know with leader hints and a zero topic id, and
//! librdkafka 2.12.1 (still so upstream) then looks the topic up by a NULL name
//! (`rd_kafka_metadata_update_op` → `rd_kafka_metadata_cache_find` → `strcmp`):
//! SIGSEGV on its main thread. Such a fetch goes out as soon as a consumer that
//! still holds its old assignment reconnects. The earlier defence (drop the
//! assignment on a "FAIL" log, with a 300 ms reconnect backoff to leave time for
//! it) was a race it often lost: rdkafka's `StreamConsumer` delivers logs through
//! the consumer queue, so the log arrived only when the task next polled; identical
//! errors within 30 s are not logged at all; and librdkafka's backoff counts from
//! the previous connect *attempt*, so after a connection that was up for a while
//! it reconnects at once.
//!
//! Here the order is enforced where it happens, on librdkafka's broker threads:
//! * `closesocket_cb` (every closed broker socket) marks a live assignment
//!   *stale*;
//! * `connect_cb` (every connect attempt) refuses, with `ECONNREFUSED`, while the
//!   assignment is stale: librdkafka backs off and tries again;
//! * the poll thread replaces a consumer whose assignment went stale within one
//!   poll (≤ 50 ms): the old one is *retired* first (it may never connect again,
//!   however long librdkafka takes to stop its fetchers or to destroy it), the
//!   new one starts with no partitions, and the subscription assigns again from
//!   fresh metadata;
//! * an assignment is only made if no socket closed since the metadata it was
//!   computed from was fetched (`closes` counter), and it is marked assigned
//!   before that check, so a close that races with it marks it stale.
//!
//! Callbacks only touch atomics and the socket they are handed; they never call
//! back into librdkafka (its rule for callbacks on internal threads).

use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc as std_mpsc};
use std::time::Duration;

use bytes::Bytes;
use rdkafka::bindings as rd;
use rdkafka::client::{Client, ClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::metadata::Metadata;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaType;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::librdkafka_log::log_librdkafka;
use crate::backend::BusMessage;

/// How long one `rd_kafka_consumer_poll` waits: the most a stale assignment or a
/// command waits for the poll thread.
const POLL_MS: c_int = 50;

/// What the broker-thread callbacks and the poll thread share (see the module
/// documentation).
#[derive(Default)]
pub(super) struct Gate {
    /// Partitions are assigned, or an assignment is being made.
    assigned: AtomicBool,
    /// The assignment was made before a broker socket closed: no connection may
    /// be made until it is dropped.
    stale: AtomicBool,
    /// Broker sockets closed so far, for any reason.
    closes: AtomicU64,
    /// Connect attempts refused because the assignment was stale.
    refused: AtomicU64,
}

impl Gate {
    /// The current count of closed sockets: pass it to [`Command::Assign`] before
    /// fetching the metadata the assignment is computed from.
    pub(super) fn closes(&self) -> u64 {
        self.closes.load(Ordering::SeqCst)
    }

    pub(super) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Where librdkafka's callbacks report to: set as the client's opaque by
/// [`Client::new`] (a pointer to this value, alive as long as the client).
pub(super) struct ConsumerHooks {
    pub(super) gate: Arc<Gate>,
    /// This consumer was replaced: it may never connect again.
    pub(super) retired: AtomicBool,
    /// librdkafka errors and statistics.
    pub(super) on_error: Box<dyn Fn(&str) + Send + Sync>,
    pub(super) on_stats: Box<dyn Fn(Statistics) + Send + Sync>,
}

impl ClientContext for ConsumerHooks {}

/// One librdkafka consumer. `Send + Sync`: librdkafka's API is thread-safe, and
/// only the poll thread polls.
pub(super) struct GatedConsumer {
    client: Client<ConsumerHooks>,
}

impl GatedConsumer {
    pub(super) fn new(config: &ClientConfig, hooks: ConsumerHooks) -> KafkaResult<Self> {
        let native = config.create_native_config()?;
        // SAFETY: `native` is a valid, owned configuration; the callbacks are
        // `extern "C"` functions that read the opaque as `ConsumerHooks`, which is
        // what `Client::new` sets it to (a pointer into its `Arc<ConsumerHooks>`,
        // dropped after the client is destroyed).
        unsafe {
            rd::rd_kafka_conf_set_connect_cb(native.ptr(), Some(gated_connect));
            rd::rd_kafka_conf_set_closesocket_cb(native.ptr(), Some(counted_close));
            rd::rd_kafka_conf_set_log_cb(native.ptr(), Some(log_to_tracing));
            rd::rd_kafka_conf_set_error_cb(native.ptr(), Some(report_error));
            rd::rd_kafka_conf_set_stats_cb(native.ptr(), Some(report_stats));
        }
        let client = Client::new(config, native, RDKafkaType::RD_KAFKA_CONSUMER, hooks)?;
        // SAFETY: a live consumer handle. Sends logs, errors and statistics (the
        // main queue) to the consumer queue that the poll thread serves.
        let err = unsafe { rd::rd_kafka_poll_set_consumer(client.native_ptr()) };
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Err(KafkaError::ClientCreation(format!(
                "rd_kafka_poll_set_consumer: {}",
                RDKafkaErrorCode::from(err)
            )));
        }
        Ok(GatedConsumer { client })
    }

    pub(super) fn gate(&self) -> &Gate {
        &self.client.context().gate
    }

    /// From now on every connect attempt of this consumer is refused.
    fn retire(&self) {
        self.client.context().retired.store(true, Ordering::SeqCst);
    }

    pub(super) fn fetch_metadata(&self, topic: &str, timeout: Duration) -> KafkaResult<Metadata> {
        self.client.fetch_metadata(Some(topic), timeout)
    }

    pub(super) fn fetch_watermarks(
        &self,
        topic: &str,
        partition: i32,
        timeout: Duration,
    ) -> KafkaResult<(i64, i64)> {
        self.client
            .fetch_watermarks(topic, partition, Timeout::After(timeout))
    }

    /// `rd_kafka_assign`; `None` unassigns everything.
    fn assign(&self, tpl: Option<&TopicPartitionList>) -> KafkaResult<()> {
        let ptr = tpl.map_or(std::ptr::null(), |t| t.ptr() as *const _);
        // SAFETY: a live consumer handle and a valid list (or NULL); librdkafka
        // copies the list.
        let err = unsafe { rd::rd_kafka_assign(self.client.native_ptr(), ptr) };
        if err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            Ok(())
        } else {
            Err(KafkaError::Subscription(format!(
                "rd_kafka_assign: {}",
                RDKafkaErrorCode::from(err)
            )))
        }
    }

    /// Assigns `tpl` unless a broker socket closed since `closes_seen`; marks the
    /// assignment live first, so a close racing with this marks it stale.
    fn assign_gated(&self, tpl: &TopicPartitionList, closes_seen: Option<u64>) -> Applied {
        let gate = self.gate();
        gate.assigned.store(true, Ordering::SeqCst);
        if closes_seen.is_some_and(|seen| gate.closes.load(Ordering::SeqCst) != seen) {
            gate.assigned.store(false, Ordering::SeqCst);
            return Applied::Refused("a broker connection closed since the metadata was read");
        }
        match self.assign(Some(tpl)) {
            Ok(()) => Applied::Done,
            Err(e) => {
                gate.assigned.store(false, Ordering::SeqCst);
                tracing::warn!(error = %e, "cannot assign kafka partitions");
                Applied::Refused("rd_kafka_assign failed")
            }
        }
    }

    /// Drops the assignment (the broker connections are up: nothing is stale).
    fn unassign(&self) {
        if let Err(e) = self.assign(None) {
            tracing::warn!(error = %e, "cannot unassign kafka partitions");
        }
        self.gate().assigned.store(false, Ordering::SeqCst);
    }

    /// One message (or error) from the consumer queue, serving logs, errors and
    /// statistics on the way.
    fn poll(&self, timeout_ms: c_int) -> Option<Polled> {
        // SAFETY: a live consumer handle; only the poll thread calls this.
        let msg = unsafe { rd::rd_kafka_consumer_poll(self.client.native_ptr(), timeout_ms) };
        if msg.is_null() {
            return None;
        }
        // SAFETY: librdkafka returned a message we own until destroyed below;
        // key and payload are valid for their lengths (or NULL).
        let polled = unsafe {
            let m = &*msg;
            if m.err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                Polled::Error(KafkaError::MessageConsumption(RDKafkaErrorCode::from(
                    m.err,
                )))
            } else {
                let key = bytes_of(m.key, m.key_len);
                let payload = bytes_of(m.payload, m.len);
                let mut ts_type = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
                let ts = rd::rd_kafka_message_timestamp(msg, &mut ts_type);
                let timestamp = (ts_type
                    != rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE)
                    .then_some(ts);
                Polled::Message {
                    partition: m.partition,
                    offset: m.offset,
                    timestamp,
                    msg: BusMessage { key, payload },
                }
            }
        };
        // SAFETY: returned by rd_kafka_consumer_poll, destroyed once.
        unsafe { rd::rd_kafka_message_destroy(msg) };
        Some(polled)
    }
}

impl Drop for GatedConsumer {
    fn drop(&mut self) {
        // SAFETY: the last reference: nobody polls or assigns any more. Leaves
        // the (never joined) group state cleanly before the client is destroyed.
        unsafe { rd::rd_kafka_consumer_close(self.client.native_ptr()) };
    }
}

/// # Safety
/// `ptr` is NULL or valid for `len` bytes.
unsafe fn bytes_of(ptr: *const c_void, len: usize) -> Bytes {
    if ptr.is_null() || len == 0 {
        Bytes::new()
    } else {
        // SAFETY: per the function's contract.
        Bytes::copy_from_slice(unsafe { std::slice::from_raw_parts(ptr as *const u8, len) })
    }
}

/// What the poll thread hands the subscription, in order.
pub(super) enum Polled {
    Message {
        partition: i32,
        offset: i64,
        timestamp: Option<i64>,
        msg: BusMessage,
    },
    Error(KafkaError),
    /// A command was carried out (`id` as given).
    Applied {
        id: u64,
        result: Applied,
    },
    /// The assignment went stale (a broker connection closed) and was dropped.
    Paused,
}

pub(super) enum Applied {
    Done,
    Refused(&'static str),
}

/// What the subscription asks of the poll thread.
pub(super) enum Command {
    /// Assign exactly these partitions; with `closes_seen`, only if no broker
    /// socket closed since that count was read.
    Assign {
        id: u64,
        tpl: TopicPartitionList,
        closes_seen: Option<u64>,
    },
    Unassign {
        id: u64,
    },
}

/// Makes a new consumer (with the subscription's settings and shared [`Gate`]).
pub(super) type MakeConsumer = Box<dyn Fn() -> KafkaResult<GatedConsumer> + Send>;

/// The subscription's current consumer; the poll thread replaces it after an
/// outage.
pub(super) struct ConsumerSlot {
    current: std::sync::Mutex<Arc<GatedConsumer>>,
}

impl ConsumerSlot {
    pub(super) fn new(consumer: GatedConsumer) -> Self {
        ConsumerSlot {
            current: std::sync::Mutex::new(Arc::new(consumer)),
        }
    }

    pub(super) fn get(&self) -> Arc<GatedConsumer> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn replace(&self, next: GatedConsumer) -> Arc<GatedConsumer> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *current, Arc::new(next))
    }
}

/// Starts the poll thread: it carries out commands, replaces a consumer whose
/// assignment went stale and forwards what it polls into `tx` (waiting, without
/// polling, while `tx` is full: the backlog stays in librdkafka's bounded queue
/// and Kafka). Ends when the command sender or `tx` is dropped.
pub(super) fn spawn_poll_thread(
    slot: Arc<ConsumerSlot>,
    make: MakeConsumer,
    commands: std_mpsc::Receiver<Command>,
    tx: mpsc::Sender<Polled>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("kafka-sub-poll".into())
        .spawn(move || poll_loop(&slot, &make, &commands, &tx))
        .map(drop)
}

fn poll_loop(
    slot: &ConsumerSlot,
    make: &MakeConsumer,
    commands: &std_mpsc::Receiver<Command>,
    tx: &mpsc::Sender<Polled>,
) {
    let mut pending: std::collections::VecDeque<Polled> = Default::default();
    let mut consumer = slot.get();
    loop {
        if tx.is_closed() {
            return;
        }
        let gate = consumer.gate();
        if gate.stale.load(Ordering::SeqCst) {
            // Retired first: whatever librdkafka still does with the old one's
            // partitions, it never talks to a broker again. Then nothing holds an
            // assignment, and the new consumer may connect at once.
            consumer.retire();
            gate.assigned.store(false, Ordering::SeqCst);
            gate.stale.store(false, Ordering::SeqCst);
            match make() {
                Ok(next) => {
                    let old = slot.replace(next);
                    consumer = slot.get();
                    // Destroyed here, or by the last metadata call still using it.
                    drop(old);
                    tracing::info!(
                        "kafka subscription replaced its consumer: a broker connection closed"
                    );
                    pending.push_back(Polled::Paused);
                }
                Err(e) => {
                    // Stale again, so the next round tries again (the retired
                    // consumer stays retired).
                    gate.stale.store(true, Ordering::SeqCst);
                    tracing::warn!(error = %e, "cannot create a kafka consumer; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            }
        }
        loop {
            match commands.try_recv() {
                Ok(Command::Assign {
                    id,
                    tpl,
                    closes_seen,
                }) => {
                    let result = consumer.assign_gated(&tpl, closes_seen);
                    pending.push_back(Polled::Applied { id, result });
                }
                Ok(Command::Unassign { id }) => {
                    consumer.unassign();
                    pending.push_back(Polled::Applied {
                        id,
                        result: Applied::Done,
                    });
                }
                Err(std_mpsc::TryRecvError::Empty) => break,
                Err(std_mpsc::TryRecvError::Disconnected) => return,
            }
        }
        if let Some(next) = pending.pop_front() {
            match tx.try_send(next) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(p)) => {
                    pending.push_front(p);
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
            continue;
        }
        if let Some(p) = consumer.poll(POLL_MS) {
            pending.push_back(p);
        }
    }
}

/// The partition list for `offsets` (index = partition id).
pub(super) fn partition_list(topic: &str, offsets: &[Offset]) -> KafkaResult<TopicPartitionList> {
    let mut tpl = TopicPartitionList::with_capacity(offsets.len());
    for (p, &offset) in offsets.iter().enumerate() {
        tpl.add_partition_offset(topic, p as i32, offset)?;
    }
    Ok(tpl)
}

// ------------------------------------------------------------------ callbacks
// Called on librdkafka's threads. `opaque` is the client's `ConsumerHooks`.

/// # Safety
/// `opaque` is the `ConsumerHooks` of a live client.
unsafe fn hooks<'a>(opaque: *mut c_void) -> &'a ConsumerHooks {
    // SAFETY: per the function's contract.
    unsafe { &*(opaque as *const ConsumerHooks) }
}

/// Connects `fd` like librdkafka would (non-blocking), unless the assignment is
/// stale.
unsafe extern "C" fn gated_connect(
    fd: c_int,
    addr: *const libc::sockaddr,
    addrlen: c_int,
    _id: *const c_char,
    opaque: *mut c_void,
) -> c_int {
    // SAFETY: librdkafka passes the client's opaque.
    let hooks = unsafe { hooks(opaque) };
    let gate = &hooks.gate;
    if gate.stale.load(Ordering::SeqCst) || hooks.retired.load(Ordering::SeqCst) {
        gate.refused.fetch_add(1, Ordering::Relaxed);
        return libc::ECONNREFUSED;
    }
    // SAFETY: librdkafka's socket and address, valid for the call.
    if unsafe { libc::connect(fd, addr, addrlen as libc::socklen_t) } == -1 {
        let errno = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::ECONNREFUSED);
        if errno != libc::EINPROGRESS {
            return errno;
        }
    }
    0
}

/// Closes `fd` and counts it; a live assignment becomes stale. A retired
/// consumer's sockets (closed while librdkafka tears it down) concern neither the
/// current consumer's metadata nor its assignment.
unsafe extern "C" fn counted_close(fd: c_int, opaque: *mut c_void) -> c_int {
    // SAFETY: librdkafka hands over a socket it no longer uses.
    unsafe { libc::close(fd) };
    // SAFETY: librdkafka passes the client's opaque.
    let hooks = unsafe { hooks(opaque) };
    if hooks.retired.load(Ordering::SeqCst) {
        return 0;
    }
    let gate = &hooks.gate;
    gate.closes.fetch_add(1, Ordering::SeqCst);
    if gate.assigned.load(Ordering::SeqCst) {
        gate.stale.store(true, Ordering::SeqCst);
    }
    0
}

/// Served by `rd_kafka_consumer_poll` (logs go through the consumer queue).
unsafe extern "C" fn log_to_tracing(
    _rk: *const rd::rd_kafka_t,
    level: c_int,
    fac: *const c_char,
    buf: *const c_char,
) {
    // SAFETY: NUL-terminated strings, valid for the call.
    let (fac, buf) = unsafe { (CStr::from_ptr(fac), CStr::from_ptr(buf)) };
    let level = match level {
        0 => RDKafkaLogLevel::Emerg,
        1 => RDKafkaLogLevel::Alert,
        2 => RDKafkaLogLevel::Critical,
        3 => RDKafkaLogLevel::Error,
        4 => RDKafkaLogLevel::Warning,
        5 => RDKafkaLogLevel::Notice,
        6 => RDKafkaLogLevel::Info,
        _ => RDKafkaLogLevel::Debug,
    };
    log_librdkafka(
        "consumer",
        level,
        &fac.to_string_lossy(),
        &buf.to_string_lossy(),
    );
}

unsafe extern "C" fn report_error(
    _rk: *mut rd::rd_kafka_t,
    _err: c_int,
    reason: *const c_char,
    opaque: *mut c_void,
) {
    // SAFETY: a NUL-terminated string valid for the call; the client's opaque.
    let (reason, hooks) = unsafe { (CStr::from_ptr(reason), hooks(opaque)) };
    (hooks.on_error)(&reason.to_string_lossy());
}

unsafe extern "C" fn report_stats(
    _rk: *mut rd::rd_kafka_t,
    json: *mut c_char,
    len: usize,
    opaque: *mut c_void,
) -> c_int {
    // SAFETY: `len` bytes of JSON owned by librdkafka (returning 0 lets it free
    // them); the client's opaque.
    let (json, hooks) = unsafe {
        (
            std::slice::from_raw_parts(json as *const u8, len),
            hooks(opaque),
        )
    };
    match serde_json::from_slice::<Statistics>(json) {
        Ok(stats) => (hooks.on_stats)(stats),
        Err(e) => tracing::debug!(error = %e, "cannot parse librdkafka statistics"),
    }
    0
}
