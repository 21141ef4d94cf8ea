//! Settings of an edge. Every field says its default and why it matters; the
//! binary maps command-line flags onto these and nothing else.

use std::path::PathBuf;
use std::time::Duration;

use danmaku_proto::{ChannelKind, Limits};

/// Everything an `Edge` needs to know besides its bus, token key and metrics registry.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// Name of this edge in logs and, later, in scheduler registration. Default `"edge-1"`.
    pub id: String,
    /// Bounds on every frame a client sends and every bus event read. Default
    /// [`Limits::default`] (1 MiB frames, 8 KiB strings).
    pub limits: Limits,
    /// How danmaku events are grouped into batches. Default [`BatchConfig::default`].
    pub batch: BatchConfig,
    /// Per-connection bounded queue of danmaku batches waiting for the socket.
    /// When it is full the next batch is dropped for that connection (and counted)
    /// instead of slowing the channel for everyone. Default 128 frames.
    pub send_queue_frames: usize,
    /// How often clients are expected to ping. The edge closes a connection that
    /// stays silent for 2.5 intervals (NAT-friendly, tolerates one lost ping).
    /// Default 30 s.
    pub heartbeat_interval: Duration,
    /// `SO_SNDBUF` for accepted TCP sockets; `None` keeps the kernel default.
    /// A smaller buffer makes slow consumers visible sooner (their queue fills and
    /// batches are dropped) instead of hiding megabytes in the kernel. Default `None`.
    pub tcp_send_buffer: Option<usize>,
    /// PEM certificate chain for QUIC. With `tls_key`; when either is `None` a
    /// self-signed certificate for `localhost`/`127.0.0.1` is made at start and its
    /// fingerprint is served at `GET /v1/cert`. Default `None`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key matching `tls_cert`. Default `None`.
    pub tls_key: Option<PathBuf>,
    /// Channels one connection may join at once, so one client cannot make the
    /// edge hold unbounded registry entries. Default 32.
    pub max_channels_per_conn: usize,
    /// The reliable lane: retransmission, reorder hold, backlog limits.
    /// Default [`ReliableConfig::default`].
    pub reliable: ReliableConfig,
    /// Scheduler registration, drain and online pushes.
    /// Default [`ControlConfig::default`].
    pub control: ControlConfig,
    /// Hot-room thinning: danmaku per second pushed to each viewer of a room
    /// whose danmaku carry no cap of their own (a room's `max_rate` setting,
    /// stamped by ingest, wins). Above it the edge leaves danmaku out of the
    /// room's ticks, sampled evenly, never gifts, chat or priority senders
    /// (`thinning.rs`), and says how many in `sampled_out`. 0 = no cap.
    /// Default 0 (`--room-max-rate`).
    pub room_max_rate: u32,
    /// Rooms in the top-N gauges and `GET /v1/top-rooms` (by members and by
    /// inbound rate). Bounds the series an edge exports however many rooms it
    /// hosts; 0 turns the ranking off. Default 20.
    pub top_rooms: usize,
    /// How often the top rooms are ranked (and inbound rates measured). Default 5 s.
    pub top_rooms_interval: Duration,
    /// Bytes of unacknowledged data the edge keeps per QUIC connection (all
    /// its streams). Past it writes wait, the batch queue fills and batches are
    /// dropped and counted, like a TCP socket with a full `SO_SNDBUF`. Batches
    /// are shared buffers, so this bounds references more than copies.
    /// Default 512 KiB.
    pub quic_send_window: u64,
    /// Frame budgets, connection caps and the handshake deadline of clients.
    /// Default [`ClientLimits::default`].
    pub client_limits: ClientLimits,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            id: "edge-1".into(),
            limits: Limits::default(),
            batch: BatchConfig::default(),
            send_queue_frames: 128,
            heartbeat_interval: Duration::from_secs(30),
            tcp_send_buffer: None,
            tls_cert: None,
            tls_key: None,
            max_channels_per_conn: 32,
            reliable: ReliableConfig::default(),
            control: ControlConfig::default(),
            room_max_rate: 0,
            top_rooms: 20,
            top_rooms_interval: Duration::from_secs(5),
            quic_send_window: 512 << 10,
            client_limits: ClientLimits::default(),
        }
    }
}

impl EdgeConfig {
    /// Silence after which a connection is closed: 2.5 heartbeat intervals.
    pub fn idle_timeout(&self) -> Duration {
        self.heartbeat_interval.mul_f64(2.5)
    }
}

/// How the per-channel batcher decides when to flush. See `batch_policy.rs`
/// for the window rule.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchConfig {
    /// Shortest batching window: what a small room's viewers wait at most. Default 50 ms.
    pub min_window: Duration,
    /// Longest batching window, however big the room. Default 1 s.
    pub max_window: Duration,
    /// Frame writes per second this edge may spend on danmaku batches. A push is
    /// one `send()`, and a core does ~120k of them per second (BENCHMARKS.md), so this
    /// is the budget the adaptive window shares among channels. Default 100,000.
    pub write_budget_per_sec: u64,
    /// Flush as soon as a pending batch holds this many events. Default 500.
    pub max_events: usize,
    /// Flush as soon as a pending batch holds this many encoded event bytes
    /// (before compression). Default 64 KiB.
    pub max_raw_bytes: usize,
    /// zstd level of batch payloads. Default 3 (fast, good ratio on short text).
    pub zstd_level: i32,
    /// zstd level for rooms of at least `big_room_members` local members. A
    /// tick is compressed once and written to every member, so in a big room a
    /// slower level costs once what it saves per viewer: 9 writes ~7 % fewer
    /// bytes than 3 for ~0.4 ms more per 400-event tick (BENCHMARKS.md, "Bytes
    /// per event by zstd level"); in a hot room the socket copies of those
    /// bytes are the edge's biggest cost. Default 9.
    pub big_room_zstd_level: i32,
    /// Local members from which a room's ticks use `big_room_zstd_level`. Default 1,000.
    pub big_room_members: usize,
    /// zstd level for rooms of at least `huge_room_members` local members:
    /// 15 writes 4–6 % fewer bytes than 9 for ~2–3 ms per 400-event tick
    /// (dense layout with the dictionary; BENCHMARKS.md, "zstd dictionary"),
    /// the cost of ~200 socket writes — under 4 % of a 5,000-member tick's
    /// writes, and paid once for all of them. Default 15.
    pub huge_room_zstd_level: i32,
    /// Local members from which a room's ticks use `huge_room_zstd_level`.
    /// Default 5,000.
    pub huge_room_members: usize,
    /// Payloads up to this many bytes stay uncompressed: zstd's header would cost
    /// more than it saves. Default 256.
    pub compress_threshold: usize,
    /// Threads that write one big room's tick into its members' sockets side by
    /// side (`direct.rs`; `channels.rs` `WritePool`). The batcher runs on one
    /// thread, and a 10,000-member tick is ~10,000 `write`s: alone it caps a room
    /// at one core's writes. Worth raising to the host's cores only where the
    /// edge has them to itself: on a host whose cores are already busy (several
    /// edges, or the viewers, on two cores) the extra threads took CPU from the
    /// readers and acks, and the 100k preset's p99 went from ~11 s to 16–26 s
    /// (BENCHMARKS.md). Default 1: every write on the batcher's thread.
    pub write_threads: usize,
    /// Members per write thread below which a tick is written on the batcher's
    /// thread alone (handing a tick to the threads costs a few wake-ups).
    /// Default 2,048.
    pub members_per_write_thread: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            min_window: Duration::from_millis(50),
            max_window: Duration::from_secs(1),
            write_budget_per_sec: 100_000,
            max_events: 500,
            max_raw_bytes: 64 << 10,
            zstd_level: 3,
            big_room_zstd_level: 9,
            big_room_members: 1_000,
            huge_room_zstd_level: 15,
            huge_room_members: 5_000,
            write_threads: 1,
            members_per_write_thread: 2_048,
            compress_threshold: danmaku_proto::batch::DEFAULT_COMPRESS_THRESHOLD,
        }
    }
}

/// How the edge keeps the reliable lane (gifts, chat) lossless and ordered.
/// See `reliable/` for the rules these feed.
#[derive(Debug, Clone, PartialEq)]
pub struct ReliableConfig {
    /// How long a connection's acks may stand still, with seqs outstanding,
    /// before the edge resends from its last ack (measured by the stall sweep,
    /// which looks every half of this, so the first resend comes after one to
    /// one and a half times it). Default 3 s: longer than a client's ack
    /// interval (acks are cumulative, at most a few a second) plus one batch
    /// window, because on a live TCP or QUIC stream the frame was not lost and
    /// an early resend is only a duplicate; a tick a connection could not take
    /// is resent at once, without waiting for this.
    pub retransmit_initial: Duration,
    /// Each resend doubles the wait, up to this. Default 15 s.
    pub retransmit_max: Duration,
    /// How often clients should ack, at most: sent in `AuthOk`, and the SDKs
    /// follow it. Each ack is a frame the edge reads, so in a hot room whose
    /// ticks carry gifts, clients acking every tick would double the edge's
    /// frames; a slower pace costs nothing on a live stream (nothing is lost
    /// there; a reconnect resumes from the client's own last seq) but must stay
    /// below `retransmit_initial` minus one batch window. Default 1 s.
    pub client_ack_interval: Duration,
    /// How often clients should ack a `room:` channel at most, when slower
    /// than `client_ack_interval`: sent in that channel's `Joined`. A room's
    /// acks only feed the resend timer (a reconnect resumes from the client's
    /// own last seq), yet each is a frame the edge reads: at 1 s, 10,000
    /// viewers are 10,000 reads a second, about a third of the edge's CPU in
    /// the 10k loadtest (BENCHMARKS.md). Groups keep `client_ack_interval`:
    /// their acks move unread counts. The stall sweep waits this long more
    /// before it resends on a room. Default 5 s.
    pub room_ack_interval: Duration,
    /// Seqs one connection may owe acks for on one channel (live, or sent by a
    /// resume: a resume from far back is paced by acks within this window);
    /// past it the connection is closed with `reliable_backlog` (the client
    /// resumes). Default 2,000.
    pub max_unacked: usize,
    /// Sends of one seq (first send included) before the connection is closed
    /// with `reliable_backlog`. Default 6.
    pub max_attempts: u32,
    /// How long a seq that arrived ahead of a missing one is held, waiting for
    /// the missing one on the bus, before the gap is read from the store. Default 200 ms.
    pub reorder_hold: Duration,
    /// Messages pushed on joining a group that the member missed: the newest
    /// this many (older pages come from HTTP history). Default 50.
    pub missed_page: usize,
    /// Least time between two writes of one connection's ack offset on one
    /// channel to the store (the last one is written on disconnect). Default 1 s.
    pub ack_persist_interval: Duration,
    /// Wake-ups waiting for one connection's task (group removals, missed
    /// ticks, stalls: rare, never one per tick). Past this the connection is
    /// closed with `reliable_backlog` and the client resumes from its last
    /// ack, so a stalled peer pins a bounded amount of memory. Default 512.
    pub queue: usize,
    /// Recent reliable events each channel keeps, framed, for resends,
    /// missed ticks and resumes before the store is read. Default 1,024.
    pub ring: usize,
}

impl Default for ReliableConfig {
    fn default() -> Self {
        ReliableConfig {
            retransmit_initial: Duration::from_secs(3),
            retransmit_max: Duration::from_secs(15),
            client_ack_interval: Duration::from_secs(1),
            room_ack_interval: Duration::from_secs(5),
            max_unacked: 2_000,
            max_attempts: 6,
            reorder_hold: Duration::from_millis(200),
            missed_page: 50,
            ack_persist_interval: Duration::from_secs(1),
            queue: 512,
            ring: 1_024,
        }
    }
}

/// Settings of registration, drain and online pushes (`control_plane/`).
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Base URL of the scheduler (`http://host:port`). `None`: no registration,
    /// online counts are this edge's own, redirects carry no picks. Default `None`.
    pub scheduler: Option<String>,
    /// `host:port` clients use to reach this edge: WebSocket `ws://{advertise}/v1/ws`,
    /// QUIC `{advertise}`, metrics `http://{advertise}/metrics`. Default `None`
    /// (required with `scheduler`).
    pub advertise: Option<String>,
    /// Client connections this edge is sized for, reported to the scheduler and
    /// exported as `danmaku_edge_capacity_connections`. Default 19,000 (what one
    /// 2-core edge held in the fan-out benchmark).
    pub capacity: u64,
    /// Egress bytes/s this edge may send; `None` lets the scheduler assume
    /// 125,000,000 (1 Gbit/s). Default `None`.
    pub egress_capacity: Option<u64>,
    /// Fraction of the connections at drain start redirected per second. Default
    /// 0.1 (10 waves): other edges absorb the resumes gradually, not as one burst.
    pub drain_rate: f64,
    /// Longest a drain lasts; connections still open then are closed. Default 60 s.
    pub drain_deadline: Duration,
    /// Channels with at least this many local members get `online` frames. Default 50.
    pub online_push_min: usize,
    /// How often `online` frames are pushed. Default 5 s.
    pub online_push_interval: Duration,
    /// `host:port` of the admin listener when `/metrics` is served there, not
    /// on `advertise` (registered as the metrics URL the scheduler scrapes).
    /// Default `None`.
    pub metrics_advertise: Option<String>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            scheduler: None,
            advertise: None,
            capacity: 19_000,
            egress_capacity: None,
            drain_rate: 0.1,
            drain_deadline: Duration::from_secs(60),
            online_push_min: 50,
            online_push_interval: Duration::from_secs(5),
            metrics_advertise: None,
        }
    }
}

impl ReliableConfig {
    /// The ack pace announced in `AuthOk`, in ms (saturating).
    pub(crate) fn client_ack_interval_ms(&self) -> u32 {
        u32::try_from(self.client_ack_interval.as_millis()).unwrap_or(u32::MAX)
    }

    /// How often the stall sweep looks at every lane.
    pub(crate) fn sweep_interval(&self) -> std::time::Duration {
        self.retransmit_initial / 2
    }

    /// The ack pace `Joined` announces for a channel of `kind`, in ms: rooms
    /// get `room_ack_interval` when it is slower than `client_ack_interval`;
    /// 0 (`AuthOk`'s pace) otherwise.
    pub(crate) fn joined_ack_interval_ms(&self, kind: ChannelKind) -> u32 {
        if kind == ChannelKind::Room && self.room_ack_interval > self.client_ack_interval {
            u32::try_from(self.room_ack_interval.as_millis()).unwrap_or(u32::MAX)
        } else {
            0
        }
    }

    /// Whole sweep intervals a lane of `kind` stays silent before it counts
    /// as stalled: the default covers `client_ack_interval` (it is below
    /// `retransmit_initial`); a room acked at `room_ack_interval` waits that
    /// plus `retransmit_initial`.
    pub(crate) fn sweep_patience(&self, kind: ChannelKind) -> u8 {
        use crate::reliable::lane::{DEFAULT_PATIENCE, MAX_PATIENCE};
        if self.joined_ack_interval_ms(kind) == 0 {
            return DEFAULT_PATIENCE;
        }
        let wait = self.room_ack_interval + self.retransmit_initial;
        let sweep = self.sweep_interval().max(Duration::from_millis(1));
        let passes = wait.as_nanos().div_ceil(sweep.as_nanos());
        u8::try_from(passes)
            .unwrap_or(MAX_PATIENCE)
            .clamp(DEFAULT_PATIENCE, MAX_PATIENCE)
    }
}

/// Client limits of an edge; part of [`EdgeConfig`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClientLimits {
    /// Sustained client frames per second on one connection. Default 50.
    pub conn_frames_per_sec: f64,
    /// Frames one connection may send at once before the rate applies. Default 200
    /// (a client joining its channels and resuming each after a reconnect).
    pub conn_frame_burst: u32,
    /// Sustained client frames per second of one user over all their connections
    /// on this edge. Default 100.
    pub user_frames_per_sec: f64,
    /// Burst of one user's frames. Default 400.
    pub user_frame_burst: u32,
    /// Open connections of one user on this edge. Default 16.
    pub max_conns_per_user: usize,
    /// Open connections from one IP address on this edge. Carrier-grade NATs put
    /// thousands of mobile viewers behind one address, so the default only stops
    /// one host from taking most of an edge's ~19k sockets; tighten it with
    /// `--max-conns-per-ip` where clients have their own addresses. Default 10,000.
    pub max_conns_per_ip: usize,
    /// Time a QUIC client has from its first packet to its `auth` frame (the
    /// QUIC/TLS handshake, the control stream and the frame together), so an
    /// unauthenticated peer cannot hold a connection for the idle timeout.
    /// Default 10 s.
    pub handshake_timeout: Duration,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            conn_frames_per_sec: 50.0,
            conn_frame_burst: 200,
            user_frames_per_sec: 100.0,
            user_frame_burst: 400,
            max_conns_per_user: 16,
            max_conns_per_ip: 10_000,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_are_asked_for_a_slower_ack_pace_and_the_sweep_waits_for_it() {
        let c = ReliableConfig::default();
        assert_eq!(c.joined_ack_interval_ms(ChannelKind::Room), 5_000);
        assert_eq!(c.joined_ack_interval_ms(ChannelKind::Group), 0);
        // 5 s of pace + 3 s of retransmit_initial over 1.5 s sweeps.
        assert_eq!(c.sweep_patience(ChannelKind::Room), 6);
        assert_eq!(
            c.sweep_patience(ChannelKind::Group),
            crate::reliable::lane::DEFAULT_PATIENCE
        );
        // No slower than the connection's pace: nothing announced, no extra wait.
        let same = ReliableConfig {
            room_ack_interval: c.client_ack_interval,
            ..c.clone()
        };
        assert_eq!(same.joined_ack_interval_ms(ChannelKind::Room), 0);
        assert_eq!(same.sweep_patience(ChannelKind::Room), 2);
        // A pace the sweep's bits cannot count: clamped, never wrapped.
        let long = ReliableConfig {
            room_ack_interval: Duration::from_secs(3600),
            ..c
        };
        assert_eq!(
            long.sweep_patience(ChannelKind::Room),
            crate::reliable::lane::MAX_PATIENCE
        );
    }
}
