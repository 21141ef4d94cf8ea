//! Every metric of the edge, registered once into the registry the process
//! passes in (never prometheus' global default: tests run several edges in one
//! process). All names start with `danmaku_edge_`.
//!
//! Hot-path counters with a label are resolved to plain handles here, once, so a
//! flush never hashes label values.

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::transport::Transport;

/// The `op` label values of `danmaku_edge_store_errors_total`.
pub const STORE_OPS: [&str; 6] = [
    "last_seq",
    "is_member",
    "read_after",
    "ack",
    "acked",
    "blob",
];

/// The stable `error` codes of the limits' refusals (`limits.rs`) (and their metric labels).
pub const REFUSAL_CODES: [&str; 7] = [
    "rate_limited",
    "too_many_connections",
    "too_many_connections_from_ip",
    "handshake_timeout",
    "token_expired",
    "token_revoked",
    "user_blocked",
];

/// What became of a bus message: the `result` label of `danmaku_edge_bus_events_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusResult {
    /// Handed to a batcher.
    Batched,
    /// No local member in that channel: dropped without decoding.
    NoLocalMembers,
    /// Undecodable payload, non-UTF-8 key, or key and payload disagree.
    BadEvent,
    /// Older than this consumer's start.
    Stale,
    /// A reliable event (`seq > 0`), handed to the reliable fan-out.
    Reliable,
    /// A group membership change, handed to the channel's local connections.
    Membership,
    /// An account change (token revocation, user block), applied to the policy.
    Account,
    /// A moderation notice (a mute), handed to the channel's local connections.
    Moderation,
    /// Not handed on: the edge is shutting down (its batchers are gone).
    ShuttingDown,
}

impl BusResult {
    pub const ALL: [BusResult; 9] = [
        BusResult::Batched,
        BusResult::NoLocalMembers,
        BusResult::BadEvent,
        BusResult::Stale,
        BusResult::Reliable,
        BusResult::Membership,
        BusResult::Account,
        BusResult::Moderation,
        BusResult::ShuttingDown,
    ];

    pub fn label(self) -> &'static str {
        match self {
            BusResult::Batched => "batched",
            BusResult::NoLocalMembers => "no_local_members",
            BusResult::BadEvent => "bad_event",
            BusResult::Stale => "stale",
            BusResult::Reliable => "reliable",
            BusResult::Membership => "membership",
            BusResult::Account => "account",
            BusResult::Moderation => "moderation",
            BusResult::ShuttingDown => "shutting_down",
        }
    }
}

/// What one tick's flush did, for [`Metrics::record_flush`].
#[derive(Debug, Clone, Copy)]
pub struct Flush<'a> {
    /// The events of the tick (danmaku and reliable).
    pub events: &'a [danmaku_proto::pb::Event],
    /// The window chosen when the batch opened.
    pub window: std::time::Duration,
    /// Encoded size of the events, before and after compression.
    pub raw_bytes: usize,
    pub compressed_bytes: usize,
    /// Frames queued, indexed by `Transport as usize`.
    pub pushed: [u64; 5],
    /// Members whose queue was full (the tick was dropped for them).
    pub dropped: u64,
    /// Frames a shard wrote into sockets itself, whole and in part
    /// (`direct.rs`), and the bytes it wrote, by `Transport as usize`.
    pub direct: u64,
    pub handed: u64,
    pub direct_bytes: [u64; 5],
    /// The tick's frames that were built: the protobuf layouts (by
    /// `Layout::index`) and JSON last.
    pub built: [bool; 4],
}

/// `layout` label values of `danmaku_edge_tick_frames_built_total`, in the
/// order of [`Flush::built`].
const BUILT_LAYOUTS: [&str; 4] = ["plain", "compact", "dense", "json"];

/// Handles to the edge's metrics.
#[derive(Clone)]
pub struct Metrics {
    pub connections: IntGaugeVec,
    /// Connections ever opened, by transport: the scheduler counts a hand-out
    /// as arrived from this, exactly, even when arrivals and departures cancel
    /// out in `connections`.
    pub connections_accepted: IntCounterVec,
    pub channels: IntGauge,
    pub channel_members: IntGauge,
    pub batches: IntCounter,
    pub batch_events: Histogram,
    pub batch_raw_bytes: IntCounter,
    pub batch_compressed_bytes: IntCounter,
    pub frames_pushed: IntCounterVec,
    pub events_delivered: IntCounter,
    pub slow_consumer_drops: IntCounter,
    /// Tick frames a batcher shard wrote into the socket itself, by
    /// `result` = `whole` | `partial` (the rest left to the connection's writer).
    pub direct_writes: IntCounterVec,
    /// `direct_writes` by result, looked up once: `[whole, partial]`.
    direct_writes_by: [IntCounter; 2],
    /// Tick frames built, by layout ([`BUILT_LAYOUTS`]).
    tick_frames_built: [IntCounter; 4],
    pub bus_events: IntCounterVec,
    pub bus_lagged: IntCounter,
    pub bad_frames: IntCounterVec,
    pub delivery_latency: Histogram,
    /// Ingest accept → consumed here: the bus hop alone, so a slow broker
    /// shows apart from batching (`delivery_latency` holds both).
    pub bus_hop: Histogram,
    pub batch_window: Histogram,
    pub reliable_sent: IntCounter,
    pub reliable_acked: IntCounter,
    /// `Ack` frames read: each is a frame the edge reads, what the ack paces
    /// (`--client-ack-interval`, `--room-ack-interval`) keep down.
    pub ack_frames: IntCounter,
    pub reliable_retransmits: IntCounter,
    pub resumes: IntCounter,
    pub resume_replayed: IntCounter,
    pub gap_fills: IntCounter,
    pub reorder_held: IntCounter,
    pub reliable_backlog_closes: IntCounter,
    /// `danmaku_edge_reliable_queue_overflows_total`: connections whose bounded
    /// live reliable queue overflowed (each is closed with `reliable_backlog`;
    /// its client resumes from the store).
    pub reliable_queue_overflows: IntCounter,
    pub reliable_missed_sent: IntCounter,
    pub reliable_stalls: IntCounter,
    pub store_errors: IntCounterVec,
    /// `danmaku_edge_refused_total{code}`: client frames and connections refused
    /// by a limit (`limits.rs`) or an expired token.
    pub refused_total: IntCounterVec,
    /// `danmaku_edge_members_removed_total`: connections that left a group because
    /// their user was removed from it.
    pub members_removed: IntCounter,
    /// `danmaku_edge_notices_sent_total`: `notice` frames sent (a user's own
    /// connections told of their mute).
    pub notices_sent: IntCounter,
    /// `danmaku_edge_banned_leaves_total`: connections that left a channel
    /// because a moderator banned their user from it.
    pub banned_leaves: IntCounter,
    /// `danmaku_edge_bans_active`: bans this edge enforces on `join` now.
    pub bans_active: IntGauge,
    /// `danmaku_edge_sampled_out_total`: danmaku left out of ticks by hot-room
    /// thinning (counted once per tick and room, not per viewer).
    pub sampled_out: IntCounter,
    /// `danmaku_edge_errors_total{code}`: error answers sent to clients (`error`
    /// frames, refused WebSocket upgrades), by code.
    pub errors_total: IntCounterVec,
    pub egress_bytes: IntCounterVec,
    pushed_by_transport: [IntCounter; 5],
    egress_by_transport: [IntCounter; 5],
    /// `danmaku_edge_polls_total{result}`: long-polls answered, by what they got.
    pub polls_total: IntCounterVec,
    /// `danmaku_edge_poll_wait_seconds`: how long a poll that got events waited.
    pub poll_wait: Histogram,
}

/// The `result` label values of `danmaku_edge_polls_total`: `now` (no cursor:
/// answered at once with the current one), `events`, `gap` (events, but some
/// danmaku fell out of the ring), `empty` (nothing within `wait`).
pub const POLL_RESULTS: [&str; 4] = ["now", "events", "gap", "empty"];

impl Metrics {
    /// Creates and registers every metric into `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let connections = IntGaugeVec::new(
            Opts::new(
                "danmaku_edge_connections",
                "Open client connections by transport.",
            ),
            &["transport"],
        )?;
        let channels = IntGauge::new(
            "danmaku_edge_channels",
            "Channels with at least one local member.",
        )?;
        let channel_members = IntGauge::new(
            "danmaku_edge_channel_members",
            "Channel memberships held by local connections.",
        )?;
        let batches = IntCounter::new("danmaku_edge_batches_total", "Batches built (flushes).")?;
        let batch_events = Histogram::with_opts(
            HistogramOpts::new("danmaku_edge_batch_events", "Events per built batch.").buckets(
                vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0],
            ),
        )?;
        let batch_raw_bytes = IntCounter::new(
            "danmaku_edge_batch_raw_bytes_total",
            "Encoded event bytes put into batches, before compression.",
        )?;
        let batch_compressed_bytes = IntCounter::new(
            "danmaku_edge_batch_compressed_bytes_total",
            "Batch payload bytes after compression (raw bytes when left uncompressed).",
        )?;
        let frames_pushed = IntCounterVec::new(
            Opts::new(
                "danmaku_edge_frames_pushed_total",
                "Batch frames queued to connections, by transport.",
            ),
            &["transport"],
        )?;
        let events_delivered = IntCounter::new(
            "danmaku_edge_events_delivered_total",
            "Events queued to connections (events x members reached).",
        )?;
        let slow_consumer_drops = IntCounter::new(
            "danmaku_edge_slow_consumer_drops_total",
            "Batches dropped for a connection because its send queue was full.",
        )?;
        let direct_writes = IntCounterVec::new(
            Opts::new(
                "danmaku_edge_direct_writes_total",
                "Tick frames a batcher shard wrote into the socket itself (no queue, no wake), by result.",
            ),
            &["result"],
        )?;
        let tick_frames_built_vec = IntCounterVec::new(
            Opts::new(
                "danmaku_edge_tick_frames_built_total",
                "Tick frames encoded (and compressed) once for a room's members, by layout: a room whose members read several layouts pays one per layout per tick.",
            ),
            &["layout"],
        )?;
        let bus_events = IntCounterVec::new(
            Opts::new(
                "danmaku_edge_bus_events_total",
                "Bus messages consumed, by what became of them.",
            ),
            &["result"],
        )?;
        let bus_lagged = IntCounter::new(
            "danmaku_edge_bus_lagged_total",
            "Bus messages skipped because the consumer fell behind.",
        )?;
        let bad_frames = IntCounterVec::new(
            Opts::new(
                "danmaku_edge_bad_frames_total",
                "Malformed client frames (each closes its connection), by error code.",
            ),
            &["code"],
        )?;
        let delivery_latency = Histogram::with_opts(
            HistogramOpts::new(
                "danmaku_edge_delivery_latency_seconds",
                "From an event's ingest timestamp to the flush of its batch.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5,
                5.0, 10.0,
            ]),
        )?;
        let bus_hop = Histogram::with_opts(
            HistogramOpts::new(
                "danmaku_edge_bus_hop_seconds",
                "From an event's ingest timestamp to this edge consuming it from the bus.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5,
                5.0, 10.0,
            ]),
        )?;
        let batch_window = Histogram::with_opts(
            HistogramOpts::new(
                "danmaku_edge_batch_window_seconds",
                "Batching window chosen by the adaptive policy when a batch opens.",
            )
            .buckets(vec![0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0]),
        )?;
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let reliable_sent = counter(
            "danmaku_edge_reliable_sent_total",
            "Reliable events sent to connections: inside tick frames (one per member per event) and as single frames (join push, resume, missed tick, resend).",
        )?;
        let reliable_acked = counter(
            "danmaku_edge_reliable_acked_total",
            "Reliable seqs newly acknowledged by clients (cumulative acks and resumes).",
        )?;
        let ack_frames = counter(
            "danmaku_edge_ack_frames_total",
            "Ack frames read from clients (one cumulative ack acknowledges many seqs).",
        )?;
        let reliable_retransmits = counter(
            "danmaku_edge_reliable_retransmits_total",
            "Reliable events resent to connections whose acks stood still for a sweep interval.",
        )?;
        let resumes = counter("danmaku_edge_resumes_total", "Resume frames served.")?;
        let resume_replayed = counter(
            "danmaku_edge_resume_replayed_total",
            "Reliable events replayed (from the channel ring or the store) for resumes.",
        )?;
        let gap_fills = counter(
            "danmaku_edge_gap_fills_total",
            "Gaps filled: in a channel's seqs (read from the store) or a connection's (a tick it missed).",
        )?;
        let reorder_held = counter(
            "danmaku_edge_reorder_held_total",
            "Reliable events held back because they arrived ahead of a missing seq.",
        )?;
        let reliable_backlog_closes = counter(
            "danmaku_edge_reliable_backlog_closes_total",
            "Connections closed because they could not keep up with the reliable lane.",
        )?;
        let reliable_queue_overflows = counter(
            "danmaku_edge_reliable_queue_overflows_total",
            "Connections closed with reliable_backlog because their bounded wake queue overflowed (the client resumes).",
        )?;
        let reliable_missed_sent = counter(
            "danmaku_edge_reliable_missed_sent_total",
            "Reliable events sent as single frames to connections that missed the tick carrying them (full queue, or joined between a store write and its tick).",
        )?;
        let reliable_stalls = counter(
            "danmaku_edge_reliable_stalls_total",
            "Connections the stall sweep woke: acks stood still through a sweep interval with seqs outstanding.",
        )?;
        let store_errors = IntCounterVec::new(
            Opts::new(
                "danmaku_edge_store_errors_total",
                "Failed store calls, by operation.",
            ),
            &["op"],
        )?;
        registry.register(Box::new(store_errors.clone()))?;
        let egress_bytes = IntCounterVec::new(
            Opts::new(
                "danmaku_edge_egress_bytes_total",
                "Bytes written to client sockets (WebSocket frames incl. headers; QUIC payloads and stream length prefixes, before QUIC's own framing), by transport.",
            ),
            &["transport"],
        )?;
        registry.register(Box::new(egress_bytes.clone()))?;
        let egress_by_transport =
            Transport::ALL.map(|t| egress_bytes.with_label_values(&[t.label()]));
        for op in STORE_OPS {
            store_errors.with_label_values(&[op]);
        }
        let polls_total = IntCounterVec::new(
            Opts::new(
                "danmaku_edge_polls_total",
                "Long-polls (GET /v1/poll) answered, by result: now (no cursor), events, gap (events after a cursor that fell out of the ring), empty (nothing within wait).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(polls_total.clone()))?;
        for r in POLL_RESULTS {
            polls_total.with_label_values(&[r]);
        }
        let poll_wait = Histogram::with_opts(
            HistogramOpts::new(
                "danmaku_edge_poll_wait_seconds",
                "Time from a long-poll's arrival to its answer, for polls answered with events.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        )?;
        registry.register(Box::new(poll_wait.clone()))?;
        let refused_total = IntCounterVec::new(
            Opts::new(
                "danmaku_edge_refused_total",
                "Client frames and connections refused by a limit, or closed for an expired token, by error code.",
            ),
            &["code"],
        )?;
        registry.register(Box::new(refused_total.clone()))?;
        for code in REFUSAL_CODES {
            refused_total.with_label_values(&[code]);
        }
        let errors_total = IntCounterVec::new(
            Opts::new(
                "danmaku_edge_errors_total",
                "Error answers sent to clients (error frames, refused WebSocket upgrades), by code.",
            ),
            &["code"],
        )?;
        registry.register(Box::new(errors_total.clone()))?;
        for code in ["bad_token", "bad_channel", "not_member", "banned"] {
            errors_total.with_label_values(&[code]);
        }
        let members_removed = counter(
            "danmaku_edge_members_removed_total",
            "Connections that left a group because their user was removed from it.",
        )?;
        let notices_sent = counter(
            "danmaku_edge_notices_sent_total",
            "Notice frames sent to a user's own connections (a mute).",
        )?;
        let banned_leaves = counter(
            "danmaku_edge_banned_leaves_total",
            "Connections that left a channel because their user was banned from it.",
        )?;
        let bans_active = IntGauge::new(
            "danmaku_edge_bans_active",
            "Channel bans this edge enforces on join now.",
        )?;
        registry.register(Box::new(bans_active.clone()))?;
        let sampled_out = counter(
            "danmaku_edge_sampled_out_total",
            "Danmaku left out of ticks by hot-room thinning (once per tick and room).",
        )?;
        let connections_accepted = IntCounterVec::new(
            Opts::new(
                "danmaku_edge_connections_accepted_total",
                "Client connections opened (authenticated), by transport.",
            ),
            &["transport"],
        )?;
        registry.register(Box::new(connections_accepted.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(channels.clone()))?;
        registry.register(Box::new(channel_members.clone()))?;
        registry.register(Box::new(batches.clone()))?;
        registry.register(Box::new(batch_events.clone()))?;
        registry.register(Box::new(batch_raw_bytes.clone()))?;
        registry.register(Box::new(batch_compressed_bytes.clone()))?;
        registry.register(Box::new(frames_pushed.clone()))?;
        registry.register(Box::new(events_delivered.clone()))?;
        registry.register(Box::new(slow_consumer_drops.clone()))?;
        registry.register(Box::new(direct_writes.clone()))?;
        let direct_writes_by = ["whole", "partial"].map(|r| direct_writes.with_label_values(&[r]));
        registry.register(Box::new(tick_frames_built_vec.clone()))?;
        let tick_frames_built =
            BUILT_LAYOUTS.map(|l| tick_frames_built_vec.with_label_values(&[l]));
        registry.register(Box::new(bus_events.clone()))?;
        registry.register(Box::new(bus_lagged.clone()))?;
        registry.register(Box::new(bad_frames.clone()))?;
        registry.register(Box::new(delivery_latency.clone()))?;
        registry.register(Box::new(bus_hop.clone()))?;
        registry.register(Box::new(batch_window.clone()))?;
        let pushed_by_transport =
            Transport::ALL.map(|t| frames_pushed.with_label_values(&[t.label()]));
        // Make every labelled series visible at zero, so dashboards and the
        // scheduler see them before the first connection.
        for t in Transport::ALL {
            connections.with_label_values(&[t.label()]);
            connections_accepted.with_label_values(&[t.label()]);
        }
        for r in BusResult::ALL {
            bus_events.with_label_values(&[r.label()]);
        }
        for code in ["malformed_frame", "malformed_json", "frame_too_large"] {
            bad_frames.with_label_values(&[code]);
        }
        Ok(Metrics {
            connections,
            connections_accepted,
            channels,
            channel_members,
            batches,
            batch_events,
            batch_raw_bytes,
            batch_compressed_bytes,
            frames_pushed,
            events_delivered,
            slow_consumer_drops,
            direct_writes,
            direct_writes_by,
            tick_frames_built,
            bus_events,
            bus_lagged,
            bad_frames,
            delivery_latency,
            bus_hop,
            batch_window,
            reliable_sent,
            reliable_acked,
            ack_frames,
            reliable_retransmits,
            resumes,
            resume_replayed,
            gap_fills,
            reorder_held,
            reliable_backlog_closes,
            reliable_queue_overflows,
            reliable_missed_sent,
            reliable_stalls,
            store_errors,
            refused_total,
            members_removed,
            notices_sent,
            banned_leaves,
            bans_active,
            sampled_out,
            errors_total,
            egress_bytes,
            pushed_by_transport,
            egress_by_transport,
            polls_total,
            poll_wait,
        })
    }

    /// Metrics registered into a throwaway registry, for unit tests and benches.
    pub fn unregistered() -> Self {
        Self::register(&Registry::new()).expect("fresh registry accepts every metric")
    }

    /// Counts one long-poll answer by its result ([`POLL_RESULTS`]).
    pub fn poll(&self, result: &str) {
        self.polls_total.with_label_values(&[result]).inc();
    }

    /// The `frames_pushed_total` counter of one transport.
    pub fn pushed(&self, transport: Transport) -> &IntCounter {
        &self.pushed_by_transport[transport as usize]
    }

    /// The `egress_bytes_total` counter of one transport (cloned into each
    /// connection's writer: a plain atomic add per write, no label lookup).
    pub fn egress(&self, transport: Transport) -> &IntCounter {
        &self.egress_by_transport[transport as usize]
    }

    /// Everything one flush records: per event its delivery latency (ingest
    /// accept at `ts_ms` to `now_ms`), per batch its size, window, bytes and the
    /// frames pushed or dropped, and the reliable events it carried to every
    /// member. The whole metric cost of a flush is here, so
    /// `benches/metrics_cost.rs` can time the fan-out path with and without it.
    pub fn record_flush(&self, now_ms: i64, f: &Flush<'_>) {
        let mut reliable = 0u64;
        for ev in f.events {
            let ms = now_ms.saturating_sub(ev.ts_ms).max(0);
            self.delivery_latency.observe(ms as f64 / 1000.0);
            reliable += u64::from(ev.seq > 0);
        }
        self.batches.inc();
        self.batch_events.observe(f.events.len() as f64);
        self.batch_window.observe(f.window.as_secs_f64());
        self.batch_raw_bytes.inc_by(f.raw_bytes as u64);
        self.batch_compressed_bytes
            .inc_by(f.compressed_bytes as u64);
        let mut pushed = 0;
        for t in Transport::ALL {
            let n = f.pushed[t as usize];
            if n > 0 {
                self.pushed(t).inc_by(n);
                pushed += n;
            }
        }
        self.events_delivered.inc_by(pushed * f.events.len() as u64);
        if reliable > 0 {
            self.reliable_sent.inc_by(pushed * reliable);
        }
        if f.dropped > 0 {
            self.slow_consumer_drops.inc_by(f.dropped);
        }
        for (built, counter) in f.built.iter().zip(&self.tick_frames_built) {
            if *built {
                counter.inc();
            }
        }
        if f.direct + f.handed > 0 {
            self.direct_writes_by[0].inc_by(f.direct);
            self.direct_writes_by[1].inc_by(f.handed);
            for t in Transport::ALL {
                let n = f.direct_bytes[t as usize];
                if n > 0 {
                    self.egress(t).inc_by(n);
                }
            }
        }
    }

    /// Counts a failed store call; `op` is one of [`STORE_OPS`].
    pub fn store_error(&self, op: &str) {
        self.store_errors.with_label_values(&[op]).inc();
    }

    /// Counts a refusal by its `error` code (see `limits.rs`).
    pub fn refused(&self, code: &str) {
        self.refused_total.with_label_values(&[code]).inc();
    }

    /// Counts an error answer sent to a client by its code.
    pub fn error(&self, code: &str) {
        self.errors_total.with_label_values(&[code]).inc();
    }

    /// Counts a malformed client frame by its stable code.
    pub fn bad_frame(&self, code: &str) {
        self.bad_frames.with_label_values(&[code]).inc();
    }
}

/// The control plane's metrics: registration with the scheduler, drain, online
/// pushes (see `control_plane/`). Separate from [`Metrics`] because nothing on
/// the fan-out path touches them.
#[derive(Clone)]
pub struct ControlMetrics {
    pub capacity: IntGauge,
    pub draining: IntGauge,
    pub scheduler_requests: IntCounterVec,
    pub drain_requests: IntCounterVec,
    pub drain_redirects: IntCounter,
    pub drain_forced_closes: IntCounter,
    pub drain_remaining: IntGauge,
    pub online_frames: IntCounter,
    pub online_in_ticks: IntCounter,
}

/// The account policy's metrics (`account.rs`).
#[derive(Clone)]
pub struct AccountMetrics {
    /// `danmaku_edge_account_closes_total{code}`: open connections closed because
    /// a revocation (`token_revoked`) or a block (`user_blocked`) covered them.
    pub closes: IntCounterVec,
    /// `danmaku_edge_account_policy_entries{kind}`: revocations and blocks in
    /// force in this edge's memory (`revocations`, `blocks`).
    pub entries: IntGaugeVec,
}

impl AccountMetrics {
    /// Creates and registers the account policy's metrics into `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let closes = IntCounterVec::new(
            Opts::new(
                "danmaku_edge_account_closes_total",
                "Open connections closed because a token revocation or a user block covered them, by code.",
            ),
            &["code"],
        )?;
        let entries = IntGaugeVec::new(
            Opts::new(
                "danmaku_edge_account_policy_entries",
                "Token revocations and user blocks in force in this edge's memory, by kind.",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(closes.clone()))?;
        registry.register(Box::new(entries.clone()))?;
        for code in ["token_revoked", "user_blocked"] {
            closes.with_label_values(&[code]);
        }
        for kind in ["revocations", "blocks"] {
            entries.with_label_values(&[kind]);
        }
        Ok(AccountMetrics { closes, entries })
    }
}

/// The `op` label values of `danmaku_edge_scheduler_requests_total`.
pub const SCHEDULER_OPS: [&str; 4] = ["register", "heartbeat", "deregister", "picks"];
/// The `result` label values of `danmaku_edge_scheduler_requests_total`.
pub const SCHEDULER_RESULTS: [&str; 3] = ["ok", "unknown_edge", "error"];
/// The `result` label values of `danmaku_edge_drain_requests_total`.
pub const DRAIN_RESULTS: [&str; 3] = ["accepted", "bad_token", "forbidden"];

impl ControlMetrics {
    /// Creates and registers the control plane's metrics into `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let capacity = IntGauge::new(
            "danmaku_edge_capacity_connections",
            "Client connections this edge is sized for (--capacity); the scheduler divides by it.",
        )?;
        let draining = IntGauge::new(
            "danmaku_edge_draining",
            "1 while the edge drains (refuses new connections, redirects its clients), else 0.",
        )?;
        let scheduler_requests = IntCounterVec::new(
            Opts::new(
                "danmaku_edge_scheduler_requests_total",
                "Calls to the scheduler's registry and edge list by op and result.",
            ),
            &["op", "result"],
        )?;
        let drain_requests = IntCounterVec::new(
            Opts::new(
                "danmaku_edge_drain_requests_total",
                "POST /admin/drain requests by result (accepted, bad_token, forbidden).",
            ),
            &["result"],
        )?;
        let drain_redirects = IntCounter::new(
            "danmaku_edge_drain_redirects_total",
            "Redirect frames queued to clients while draining.",
        )?;
        let drain_forced_closes = IntCounter::new(
            "danmaku_edge_drain_forced_closes_total",
            "Connections closed by the drain because they stayed after their redirect.",
        )?;
        let drain_remaining = IntGauge::new(
            "danmaku_edge_drain_remaining_connections",
            "Connections still on the edge during a drain (0 when not draining).",
        )?;
        let online_frames = IntCounter::new(
            "danmaku_edge_online_frames_total",
            "Online-count frames of their own queued to members of big channels \
             (quiet rooms only: elsewhere the count rides the next tick).",
        )?;
        let online_in_ticks = IntCounter::new(
            "danmaku_edge_online_in_ticks_total",
            "Online counts handed to a channel's next tick instead of a frame per member.",
        )?;
        registry.register(Box::new(capacity.clone()))?;
        registry.register(Box::new(draining.clone()))?;
        registry.register(Box::new(scheduler_requests.clone()))?;
        registry.register(Box::new(drain_requests.clone()))?;
        registry.register(Box::new(drain_redirects.clone()))?;
        registry.register(Box::new(drain_forced_closes.clone()))?;
        registry.register(Box::new(drain_remaining.clone()))?;
        registry.register(Box::new(online_frames.clone()))?;
        registry.register(Box::new(online_in_ticks.clone()))?;
        for op in SCHEDULER_OPS {
            for r in SCHEDULER_RESULTS {
                scheduler_requests.with_label_values(&[op, r]);
            }
        }
        for r in DRAIN_RESULTS {
            drain_requests.with_label_values(&[r]);
        }
        Ok(ControlMetrics {
            capacity,
            draining,
            scheduler_requests,
            drain_requests,
            drain_redirects,
            drain_forced_closes,
            drain_remaining,
            online_frames,
            online_in_ticks,
        })
    }

    /// Counts one scheduler call; `op` in [`SCHEDULER_OPS`], `result` in [`SCHEDULER_RESULTS`].
    pub fn scheduler(&self, op: &str, result: &str) {
        self.scheduler_requests
            .with_label_values(&[op, result])
            .inc();
    }
}

/// The top-N rooms gauges, labelled by `rank` only ("1"..="N"): a fixed set of
/// series per edge however many rooms come and go. The room behind each rank is
/// served by `GET /v1/top-rooms` (see `top_rooms.rs` for why no room label).
#[derive(Clone)]
pub struct TopRoomGauges {
    /// `danmaku_edge_top_room_members{rank}`.
    members: Vec<IntGauge>,
    /// `danmaku_edge_top_room_inbound_per_second{rank}`.
    inbound: Vec<prometheus::Gauge>,
}

impl TopRoomGauges {
    /// Registers `n` ranks of both gauges, all at 0 until the first ranking.
    pub fn register(registry: &Registry, n: usize) -> Result<Self, prometheus::Error> {
        let members = IntGaugeVec::new(
            Opts::new(
                "danmaku_edge_top_room_members",
                "Local members of this edge's rank-th biggest room (room names: GET /v1/top-rooms).",
            ),
            &["rank"],
        )?;
        let inbound = GaugeVec::new(
            Opts::new(
                "danmaku_edge_top_room_inbound_per_second",
                "Bus events per second into this edge's rank-th busiest room (room names: GET /v1/top-rooms).",
            ),
            &["rank"],
        )?;
        registry.register(Box::new(members.clone()))?;
        registry.register(Box::new(inbound.clone()))?;
        let ranks: Vec<String> = (1..=n).map(|r| r.to_string()).collect();
        Ok(TopRoomGauges {
            members: ranks
                .iter()
                .map(|r| members.with_label_values(&[r.as_str()]))
                .collect(),
            inbound: ranks
                .iter()
                .map(|r| inbound.with_label_values(&[r.as_str()]))
                .collect(),
        })
    }

    /// Sets every rank from a ranking (best first): the members of the
    /// biggest rooms and the inbound rates of the busiest; ranks without a
    /// room read 0.
    pub fn set(
        &self,
        members: impl IntoIterator<Item = u64>,
        inbound: impl IntoIterator<Item = f64>,
    ) {
        let mut members = members.into_iter();
        for g in &self.members {
            g.set(members.next().map_or(0, |m| m as i64));
        }
        let mut inbound = inbound.into_iter();
        for g in &self.inbound {
            g.set(inbound.next().unwrap_or(0.0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exposed_from_the_start() {
        let registry = Registry::new();
        Metrics::register(&registry).unwrap();
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        for want in [
            "danmaku_edge_connections",
            "danmaku_edge_connections_accepted_total",
            "danmaku_edge_channels",
            "danmaku_edge_channel_members",
            "danmaku_edge_batches_total",
            "danmaku_edge_batch_events",
            "danmaku_edge_batch_raw_bytes_total",
            "danmaku_edge_batch_compressed_bytes_total",
            "danmaku_edge_frames_pushed_total",
            "danmaku_edge_events_delivered_total",
            "danmaku_edge_slow_consumer_drops_total",
            "danmaku_edge_bus_events_total",
            "danmaku_edge_bus_lagged_total",
            "danmaku_edge_bad_frames_total",
            "danmaku_edge_delivery_latency_seconds",
            "danmaku_edge_bus_hop_seconds",
            "danmaku_edge_batch_window_seconds",
            "danmaku_edge_reliable_sent_total",
            "danmaku_edge_reliable_acked_total",
            "danmaku_edge_ack_frames_total",
            "danmaku_edge_tick_frames_built_total",
            "danmaku_edge_reliable_retransmits_total",
            "danmaku_edge_resumes_total",
            "danmaku_edge_resume_replayed_total",
            "danmaku_edge_gap_fills_total",
            "danmaku_edge_reorder_held_total",
            "danmaku_edge_reliable_backlog_closes_total",
            "danmaku_edge_reliable_queue_overflows_total",
            "danmaku_edge_reliable_missed_sent_total",
            "danmaku_edge_reliable_stalls_total",
            "danmaku_edge_store_errors_total",
            "danmaku_edge_refused_total",
            "danmaku_edge_members_removed_total",
            "danmaku_edge_notices_sent_total",
            "danmaku_edge_banned_leaves_total",
            "danmaku_edge_bans_active",
            "danmaku_edge_sampled_out_total",
            "danmaku_edge_errors_total",
            "danmaku_edge_egress_bytes_total",
            "danmaku_edge_polls_total",
            "danmaku_edge_poll_wait_seconds",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
    }

    #[test]
    fn two_edges_can_share_a_process_but_not_a_registry() {
        let registry = Registry::new();
        Metrics::register(&registry).unwrap();
        assert!(Metrics::register(&registry).is_err());
        Metrics::register(&Registry::new()).unwrap();
    }
}
