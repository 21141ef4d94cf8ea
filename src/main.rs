//! The `danmaku` command line. Maps flags (and `DANMAKU_<FLAG>` environment
//! variables) onto the config structs of the service crates and runs them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use danmaku::server::{
    Readiness, bind_pair, cancel_on_signal, drain_on_signal, ops_router, process_registry,
    readyz_router,
};
use danmaku::standalone::{self, StandaloneConfig};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "danmaku",
    version,
    about = "Live-stream danmaku, gift and group chat broadcast engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Everything in one process: ingest, edge, scheduler, demo page, /metrics.
    Standalone(StandaloneArgs),
    /// The upload API: validates, rate-limits and publishes to the bus.
    Ingest(IngestArgs),
    /// Holds client connections and pushes batches from the bus.
    Edge(Box<EdgeArgs>),
    /// Hands clients the least-loaded edges.
    Scheduler(SchedulerArgs),
    /// Prints a signed token, as an app backend would mint it.
    Token(TokenArgs),
    /// Load harness: many viewers over worker processes and source addresses,
    /// danmaku and gifts through ingest, exact per-lane loss, latency, server CPU
    /// and RSS; optional bare-writer floor and NATS peer. See loadtest/README.md.
    Loadtest(Box<LoadtestArgs>),
    /// (internal) A loadtest worker: spec on stdin, results on stdout.
    #[command(name = "loadtest-worker", hide = true)]
    LoadtestWorker,
    /// (internal) The bare-writer server of `loadtest --bare-writer`.
    #[command(name = "loadtest-bare-server", hide = true)]
    LoadtestBareServer,
}

/// What every distributed ingest and edge process serves on, connects to and
/// checks tokens with.
#[derive(clap::Args)]
struct Node {
    /// Address to serve on (an edge also serves QUIC on this port over UDP).
    #[arg(long, env = "DANMAKU_LISTEN")]
    listen: SocketAddr,
    /// `memory` or `kafka://host:port[,host:port…][?topic=NAME&partitions=N&fetch_wait_ms=MS&linger_ms=MS…]`
    /// (every parameter and its default: docs/PROTOCOL.md, `--bus`).
    #[arg(long, env = "DANMAKU_BUS")]
    bus: String,
    /// `embedded:PATH` or `postgres://…`: where gifts and group chat are
    /// persisted (edges read resume and gap fills from it).
    #[arg(long, env = "DANMAKU_STORE")]
    store: String,
    #[command(flatten)]
    secrets: AuthSecrets,
}

impl Node {
    /// Connects the bus (and registers its metrics) and opens the store: what
    /// a node needs before it can serve.
    async fn open_backends(
        &self,
        registry: &prometheus::Registry,
    ) -> Result<(
        std::sync::Arc<dyn danmaku_bus::Bus>,
        std::sync::Arc<dyn danmaku_store::Store>,
    )> {
        let bus = danmaku_bus::connect(&self.bus)
            .await
            .with_context(|| format!("connecting to the bus {}", self.bus))?;
        danmaku_bus::metrics::register(bus.clone(), registry)?;
        let store = danmaku_store::connect(&self.store)
            .await
            .with_context(|| format!("opening the store {}", self.store))?;
        Ok((bus, store))
    }
}

/// The token key ring of a process that must check tokens.
#[derive(clap::Args)]
struct AuthSecrets {
    /// HMAC key for tokens; repeat (or comma-separate) to rotate: all verify, the first signs.
    #[arg(
        long,
        env = "DANMAKU_AUTH_SECRET",
        value_delimiter = ',',
        required = true
    )]
    auth_secret: Vec<String>,
}

impl AuthSecrets {
    /// The key ring: the first secret signs, all verify.
    fn key(&self) -> Result<danmaku_proto::token::TokenKey> {
        if self.auth_secret.iter().any(|s| s.is_empty()) {
            bail!("--auth-secret must not be empty");
        }
        danmaku_proto::token::TokenKey::ring(&self.auth_secret).context("--auth-secret is required")
    }
}

#[derive(clap::Args)]
struct StandaloneArgs {
    #[arg(long, env = "DANMAKU_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    #[arg(long, env = "DANMAKU_DATA", default_value = "./data")]
    data: PathBuf,
    /// HMAC key for tokens; repeat (or comma-separate) to rotate: all verify, the
    /// first signs. Without it, dev tokens are handed out at POST /v1/dev/token.
    #[arg(long, env = "DANMAKU_AUTH_SECRET", value_delimiter = ',')]
    auth_secret: Vec<String>,
    /// Let POST /v1/dev/token also mint `app` tokens (group management); dev only.
    #[arg(long, env = "DANMAKU_DEV_APP_TOKENS")]
    dev_app_tokens: bool,
    #[command(flatten)]
    limits: IngestLimits,
    #[command(flatten)]
    top: TopRooms,
    #[command(flatten)]
    batching: Batching,
    #[command(flatten)]
    caps: ClientCaps,
}

#[derive(clap::Args)]
struct IngestArgs {
    #[command(flatten)]
    node: Node,
    #[command(flatten)]
    limits: IngestLimits,
    #[command(flatten)]
    admin: Admin,
}

#[derive(clap::Args)]
struct EdgeArgs {
    #[command(flatten)]
    node: Node,
    /// Address clients should use to reach this edge (defaults to --listen).
    #[arg(long, env = "DANMAKU_ADVERTISE")]
    advertise: Option<String>,
    /// Scheduler to register with (base URL, e.g. http://10.0.0.2:7000).
    #[arg(long, env = "DANMAKU_SCHEDULER")]
    scheduler: Option<String>,
    #[arg(long, env = "DANMAKU_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    #[arg(long, env = "DANMAKU_TLS_KEY")]
    tls_key: Option<PathBuf>,
    #[command(flatten)]
    control: EdgeControl,
    #[command(flatten)]
    top: TopRooms,
    #[command(flatten)]
    batching: Batching,
    #[command(flatten)]
    caps: ClientCaps,
    #[command(flatten)]
    admin: Admin,
}

#[derive(clap::Args)]
struct SchedulerArgs {
    #[arg(long, env = "DANMAKU_LISTEN")]
    listen: SocketAddr,
    /// HMAC key of the `app`-role tokens edges register with (required
    /// unless only static --edge entries are served).
    #[arg(long, env = "DANMAKU_AUTH_SECRET")]
    auth_secret: Option<String>,
    /// Read edge load from this Prometheus server instead of scraping edges.
    #[arg(long, env = "DANMAKU_PROMETHEUS_URL")]
    prometheus_url: Option<String>,
    /// Static edges, always handed out, as `id=ws_url|quic_addr`.
    #[arg(long = "edge", env = "DANMAKU_EDGES", value_delimiter = ',')]
    edges: Vec<String>,
    #[command(flatten)]
    admin: Admin,
}

#[derive(clap::Args)]
struct TokenArgs {
    #[command(flatten)]
    secrets: AuthSecrets,
    #[arg(long, env = "DANMAKU_USER")]
    user: String,
    #[arg(long, env = "DANMAKU_TTL_SECS", default_value_t = 3600)]
    ttl_secs: u64,
    #[arg(long, env = "DANMAKU_ROLE", default_value = "user")]
    role: String,
}

#[derive(clap::Args)]
struct LoadtestArgs {
    /// Run a built-in preset instead: `room-100k` starts a whole cluster on this
    /// host (scripts/bench.sh) and drives 100,000 viewers through the scheduler.
    #[arg(long, env = "DANMAKU_PRESET")]
    preset: Option<String>,
    /// Base HTTP URL of a standalone server, e.g. http://127.0.0.1:7070 (the
    /// default for --ingest and --edges).
    #[arg(long, env = "DANMAKU_TARGET", default_value = "")]
    target: String,
    /// Distributed mode: ingest base URLs, posted to round-robin (default: --target).
    #[arg(long, env = "DANMAKU_INGEST", value_delimiter = ',')]
    ingest: Vec<String>,
    /// Distributed mode: edge base URLs, viewers spread round-robin (default: --target).
    #[arg(long, env = "DANMAKU_EDGES", value_delimiter = ',')]
    edges: Vec<String>,
    /// Viewers ask GET {scheduler}/v1/edges?k=3 and connect to the first edge.
    #[arg(long, env = "DANMAKU_SCHEDULER")]
    scheduler: Option<String>,
    /// Mint tokens locally with the cluster's secret instead of POST /v1/dev/token.
    #[arg(long, env = "DANMAKU_AUTH_SECRET")]
    auth_secret: Option<String>,
    /// System under test: `danmaku`, or `nats` (with --nats-ws).
    #[arg(long, env = "DANMAKU_PEER", default_value = "danmaku")]
    peer: String,
    /// Peer mode: the NATS WebSocket listener, ws://HOST:PORT.
    #[arg(long, env = "DANMAKU_NATS_WS")]
    nats_ws: Option<String>,
    /// Workload from a TOML file (rooms, sizes, rates, duration, churn); replaces
    /// --connections/--rooms/--rate/--gift-rate/--churn (--duration still overrides).
    #[arg(long, env = "DANMAKU_SCENARIO")]
    scenario: Option<PathBuf>,
    #[arg(long, env = "DANMAKU_CONNECTIONS", default_value_t = 100)]
    connections: usize,
    #[arg(long, env = "DANMAKU_ROOMS", default_value_t = 1)]
    rooms: usize,
    /// Danmaku posted per second, all rooms together.
    #[arg(long, env = "DANMAKU_RATE", default_value_t = 50.0)]
    rate: f64,
    /// Gifts posted per second, all rooms together (reliable lane).
    #[arg(long, env = "DANMAKU_GIFT_RATE", default_value_t = 0.0)]
    gift_rate: f64,
    /// Seconds of posting.
    #[arg(long, env = "DANMAKU_DURATION")]
    duration: Option<f64>,
    /// Share of viewers (0–1) that leave and rejoin during the run.
    #[arg(long, env = "DANMAKU_CHURN", default_value_t = 0.0)]
    churn: f64,
    /// Transport, or a mix: ws-pb | ws-json | quic | ws-pb=0.8,ws-json=0.1,quic=0.1.
    #[arg(long, env = "DANMAKU_TRANSPORT", default_value = "ws-pb")]
    transport: String,
    /// Share of viewers that decode everything and measure latency/order/duplicates.
    #[arg(long, env = "DANMAKU_PROBE_FRACTION", default_value_t = 0.01)]
    probe_fraction: f64,
    /// Viewers ack gifts cumulatively at most this often, e.g. 1s (0 = every
    /// gift), or at the edge's announced pace (`auth_ok`) if that is slower, as
    /// the SDKs do; keep it below the edges' --retransmit-initial.
    #[arg(long, env = "DANMAKU_ACK_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    ack_interval: Duration,
    /// Worker processes (≤19k viewers each); 0 = in this process.
    #[arg(long, env = "DANMAKU_WORKERS", default_value_t = 0)]
    workers: usize,
    /// Local addresses to spread client sockets over (e.g. 127.0.0.2,127.0.0.3).
    #[arg(long, env = "DANMAKU_SOURCE_ADDRS", value_delimiter = ',')]
    source_addrs: Vec<std::net::IpAddr>,
    /// Connections opened per second, all workers together (0 = unlimited).
    #[arg(long, env = "DANMAKU_RAMP", default_value_t = 2000.0)]
    ramp: f64,
    /// Viewers connecting at the same time, per worker.
    #[arg(long, env = "DANMAKU_CONNECT_CONCURRENCY", default_value_t = 200)]
    connect_concurrency: usize,
    /// Seconds to wait after posting for the last frames.
    #[arg(long, env = "DANMAKU_DRAIN_GRACE", default_value_t = 3.0)]
    drain_grace: f64,
    /// Extra danmaku per second to rooms no viewer joined (room:foreign-N).
    #[arg(long, env = "DANMAKU_FOREIGN_RATE", default_value_t = 0.0)]
    foreign_rate: f64,
    /// Server pids to measure (default: found from the listening ports).
    #[arg(long, env = "DANMAKU_SERVER_PIDS", value_delimiter = ',')]
    server_pids: Vec<u32>,
    /// Afterwards, run the bare writer on the same sockets at the same frame
    /// size and rate, and report the frames-per-CPU-second ratio.
    #[arg(long, env = "DANMAKU_BARE_WRITER")]
    bare_writer: bool,
    /// Only the bare writer: --connections viewers, this frame size in bytes…
    #[arg(long, env = "DANMAKU_BARE_FRAME_BYTES")]
    bare_frame_bytes: Option<usize>,
    /// …and this many frames per second per connection.
    #[arg(long, env = "DANMAKU_BARE_FRAME_RATE", default_value_t = 1.0)]
    bare_frame_rate: f64,
    /// No progress line.
    #[arg(long, env = "DANMAKU_QUIET")]
    quiet: bool,
    /// Write the report as JSON here.
    #[arg(long, env = "DANMAKU_REPORT")]
    report: Option<PathBuf>,
}

/// Upload limits of ingest (defaults: see `danmaku_ingest::IngestConfig`).
#[derive(clap::Args)]
struct IngestLimits {
    /// Danmaku per second one user may post (token bucket refill).
    #[arg(long, env = "DANMAKU_USER_RATE", default_value_t = 5.0)]
    user_rate: f64,
    /// Posts a user may burst before the rate applies.
    #[arg(long, env = "DANMAKU_USER_BURST", default_value_t = 10)]
    user_burst: u32,
    /// Danmaku per second one channel accepts from all users together.
    #[arg(long, env = "DANMAKU_CHANNEL_RATE", default_value_t = 2000.0)]
    channel_rate: f64,
    /// Largest blob `POST /v1/blobs` accepts, in bytes (larger: 413).
    #[arg(long, env = "DANMAKU_MAX_BLOB_BYTES", default_value_t = 1 << 20)]
    max_blob_bytes: usize,
}

impl IngestLimits {
    fn apply(&self, config: danmaku_ingest::IngestConfig) -> danmaku_ingest::IngestConfig {
        danmaku_ingest::IngestConfig {
            user_rate_per_sec: self.user_rate,
            user_burst: self.user_burst,
            channel_rate_per_sec: self.channel_rate,
            max_blob_bytes: self.max_blob_bytes,
            ..config
        }
    }
}

/// Registration, drain and online pushes of an edge (defaults: see
/// `danmaku_edge::ControlConfig`).
#[derive(clap::Args)]
struct EdgeControl {
    /// Client connections this edge is sized for (reported to the scheduler).
    #[arg(long, env = "DANMAKU_CAPACITY", default_value_t = 19_000)]
    capacity: u64,
    /// Egress bytes per second this edge may send (scheduler default: 125000000).
    #[arg(long, env = "DANMAKU_EGRESS_CAPACITY")]
    egress_capacity: Option<u64>,
    /// Fraction of the connections redirected per second while draining.
    #[arg(long, env = "DANMAKU_DRAIN_RATE", default_value_t = 0.1)]
    drain_rate: f64,
    /// Longest a drain lasts before the rest is closed, e.g. 60s or 2m.
    #[arg(long, env = "DANMAKU_DRAIN_DEADLINE", default_value = "60s", value_parser = parse_duration)]
    drain_deadline: Duration,
    /// Channels with at least this many members on an edge get `online` frames.
    #[arg(long, env = "DANMAKU_ONLINE_PUSH_MIN", default_value_t = 50)]
    online_push_min: usize,
    /// How often `online` frames are pushed, e.g. 5s.
    #[arg(long, env = "DANMAKU_ONLINE_PUSH_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    online_push_interval: Duration,
}

/// `250ms`, `60s`, `2m` or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration like 250ms, 60s or 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{s:?}: unit must be ms, s or m")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

/// Connection caps of an edge (defaults: see `danmaku_edge::ClientLimits`).
#[derive(clap::Args)]
struct ClientCaps {
    /// Open connections one user may hold on this edge.
    #[arg(long, env = "DANMAKU_MAX_CONNS_PER_USER", default_value_t = 16)]
    max_conns_per_user: usize,
    /// Open connections from one IP address on this edge.
    #[arg(long, env = "DANMAKU_MAX_CONNS_PER_IP", default_value_t = 10_000)]
    max_conns_per_ip: usize,
    /// Wake-ups one connection's task may have waiting (group removals, missed
    /// ticks, stalls; never one per gift); past it the connection is closed
    /// with `reliable_backlog` and its client resumes.
    #[arg(long, env = "DANMAKU_RELIABLE_QUEUE", default_value_t = 512)]
    reliable_queue: usize,
    /// Time a QUIC client has from its first packet to its `auth` frame.
    #[arg(long, env = "DANMAKU_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    handshake_timeout: Duration,
}

impl ClientCaps {
    fn apply(&self, config: danmaku_edge::EdgeConfig) -> danmaku_edge::EdgeConfig {
        danmaku_edge::EdgeConfig {
            client_limits: danmaku_edge::ClientLimits {
                max_conns_per_user: self.max_conns_per_user,
                max_conns_per_ip: self.max_conns_per_ip,
                handshake_timeout: self.handshake_timeout,
                ..config.client_limits
            },
            reliable: danmaku_edge::ReliableConfig {
                queue: self.reliable_queue,
                ..config.reliable
            },
            ..config
        }
    }
}

/// Where `/metrics` is served.
#[derive(clap::Args)]
struct Admin {
    /// Serve `/metrics` on this address only, not on --listen (keep it off the
    /// public network). An edge registers it as its metrics URL, so the
    /// scheduler scrapes it there.
    #[arg(long, env = "DANMAKU_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
}

impl Admin {
    /// The ops routes of the public listener: `/metrics` and `/healthz`, or
    /// only `/healthz` when an admin listener (bound and served here) takes
    /// `/metrics`.
    async fn ops(
        &self,
        registry: prometheus::Registry,
        shutdown: &CancellationToken,
    ) -> Result<axum::Router> {
        let Some(addr) = self.admin_listen else {
            return Ok(ops_router(registry));
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the admin listener {addr}"))?;
        tracing::info!(%addr, "metrics on the admin listener");
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, ops_router(registry))
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "admin listener failed");
            }
        });
        Ok(danmaku::server::healthz_router())
    }
}

/// How the edge batches danmaku (defaults: see `danmaku_edge::BatchConfig`).
/// A room's window is `members × active rooms ÷ write budget`, clamped to
/// [min, max]: the budget is what bounds an edge's frame writes per second.
#[derive(clap::Args)]
struct Batching {
    /// Frame writes per second this edge may spend on danmaku batches.
    #[arg(long, env = "DANMAKU_WRITE_BUDGET", default_value_t = 100_000)]
    write_budget: u64,
    /// Shortest batching window (what a small room waits at most), e.g. 50ms.
    #[arg(long, env = "DANMAKU_MIN_WINDOW", default_value = "50ms", value_parser = parse_duration)]
    min_window: Duration,
    /// Longest batching window however big the room, e.g. 1s.
    #[arg(long, env = "DANMAKU_MAX_WINDOW", default_value = "1s", value_parser = parse_duration)]
    max_window: Duration,
    /// A batch is flushed early once it holds this many events.
    #[arg(long, env = "DANMAKU_BATCH_MAX_EVENTS", default_value_t = 500)]
    batch_max_events: usize,
    /// Threads that write one big room's tick into its viewers' sockets side by
    /// side (1: the batcher's own thread only). Raise to the host's cores only
    /// where this edge has them to itself.
    #[arg(long, env = "DANMAKU_WRITE_THREADS", default_value_t = 1)]
    write_threads: usize,
    /// How long a connection's acks may stand still, with seqs outstanding,
    /// before the edge resends from its last ack, e.g. 3s (then doubling). Must
    /// exceed the clients' ack interval plus one batch window.
    #[arg(long, env = "DANMAKU_RETRANSMIT_INITIAL", default_value = "3s", value_parser = parse_duration)]
    retransmit_initial: Duration,
    /// How often clients should ack gifts and chat at most, e.g. 1s: announced
    /// to every client at connect. In a hot room each ack is a frame the edge
    /// reads; must stay below --retransmit-initial minus --max-window.
    #[arg(long, env = "DANMAKU_CLIENT_ACK_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    client_ack_interval: Duration,
    /// How often clients should ack a room's gifts at most, e.g. 5s: announced
    /// in each room's `Joined` when slower than --client-ack-interval (groups
    /// keep that one: their acks move unread counts). Each ack is a frame the
    /// edge reads; the resend timer waits this much longer on rooms.
    #[arg(long, env = "DANMAKU_ROOM_ACK_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    room_ack_interval: Duration,
    /// Hot-room thinning: danmaku per second pushed to each viewer of a room
    /// without a `max_rate` setting of its own; above it ticks are sampled
    /// (gifts, chat and priority senders always pass). 0 = no cap.
    #[arg(long, env = "DANMAKU_ROOM_MAX_RATE", default_value_t = 0)]
    room_max_rate: u32,
}

impl Batching {
    /// Refuses an ack pace the resend timer would always overtake, and warns
    /// about one it overtakes in the biggest rooms: a client acking every
    /// `client_ack_interval` leaves a tick unacked for up to that plus the
    /// room's window, and a resend before then is only a duplicate.
    fn check(&self) -> Result<()> {
        anyhow::ensure!(
            self.retransmit_initial > self.client_ack_interval,
            "--retransmit-initial ({:?}) must exceed --client-ack-interval ({:?}): \
             every connection would be resent what it is about to ack",
            self.retransmit_initial,
            self.client_ack_interval,
        );
        if self.retransmit_initial <= self.client_ack_interval + self.max_window {
            tracing::warn!(
                retransmit_initial = ?self.retransmit_initial,
                client_ack_interval = ?self.client_ack_interval,
                max_window = ?self.max_window,
                "rooms big enough for the longest window will get duplicate resends: \
                 --retransmit-initial should exceed --client-ack-interval plus --max-window"
            );
        }
        Ok(())
    }

    fn apply(&self, config: danmaku_edge::EdgeConfig) -> danmaku_edge::EdgeConfig {
        danmaku_edge::EdgeConfig {
            batch: danmaku_edge::BatchConfig {
                write_budget_per_sec: self.write_budget,
                min_window: self.min_window,
                max_window: self.max_window,
                max_events: self.batch_max_events,
                write_threads: self.write_threads,
                ..config.batch
            },
            reliable: danmaku_edge::ReliableConfig {
                retransmit_initial: self.retransmit_initial,
                retransmit_max: config.reliable.retransmit_max.max(self.retransmit_initial),
                client_ack_interval: self.client_ack_interval,
                room_ack_interval: self.room_ack_interval,
                ..config.reliable
            },
            room_max_rate: self.room_max_rate,
            ..config
        }
    }
}

/// The edge's top-rooms ranking (gauges by rank, `GET /v1/top-rooms`).
#[derive(clap::Args)]
struct TopRooms {
    /// Rooms ranked by members and by inbound rate (0 turns the ranking off).
    #[arg(long, env = "DANMAKU_TOP_ROOMS", default_value_t = 20)]
    top_rooms: usize,
}

impl TopRooms {
    fn apply(&self, config: danmaku_edge::EdgeConfig) -> danmaku_edge::EdgeConfig {
        danmaku_edge::EdgeConfig {
            top_rooms: self.top_rooms,
            ..config
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // quinn brings ring, reqwest could bring aws-lc-rs: pick one provider for the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    raise_open_file_limit();
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(run(cli.command))
}

/// Raises the soft open-file limit to the hard one: every viewer is a socket, and
/// distributions often start processes with a soft limit of 1,024 under a hard
/// one many times larger.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(open_files = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

/// Warns when an edge declares more connections than its open-file limit lets
/// it hold (each is a socket; a few hundred descriptors go to the process
/// itself): the scheduler would keep sending clients it must refuse.
fn check_capacity_fits(capacity: u64) {
    const OWN_FILES: u64 = 512;
    let Ok((soft, _hard)) = rlimit::getrlimit(rlimit::Resource::NOFILE) else {
        return;
    };
    let room = soft.saturating_sub(OWN_FILES);
    if capacity > room {
        tracing::warn!(
            capacity,
            open_file_limit = soft,
            "--capacity exceeds what the open-file limit allows ({room} connections): \
             raise the hard limit (ulimit -Hn, systemd LimitNOFILE) or lower --capacity"
        );
    }
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Standalone(args) => run_standalone(args).await,
        Command::Ingest(args) => run_ingest(args).await,
        Command::Edge(args) => run_edge(*args).await,
        Command::Scheduler(args) => run_scheduler(args).await,
        Command::Token(args) => run_token(args),
        Command::Loadtest(args) => run_loadtest(*args).await,
        Command::LoadtestWorker => Ok(danmaku_loadtest::worker_main().await?),
        Command::LoadtestBareServer => Ok(danmaku_loadtest::bare_main().await?),
    }
}

/// `danmaku standalone`: every service in this process.
async fn run_standalone(a: StandaloneArgs) -> Result<()> {
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let mut secrets = a.auth_secret.into_iter();
    a.batching.check()?;
    let config = StandaloneConfig {
        listen: a.listen,
        data: a.data,
        auth_secret: secrets.next(),
        edge: a.caps.apply(
            a.top
                .apply(a.batching.apply(danmaku_edge::EdgeConfig::default())),
        ),
        extra_auth_secrets: secrets.collect(),
        ingest: a.limits.apply(danmaku_ingest::IngestConfig {
            dev_app_tokens: a.dev_app_tokens,
            ..danmaku_ingest::IngestConfig::default()
        }),
        ..StandaloneConfig::default()
    };
    let running = standalone::start(config, shutdown)
        .await
        .with_context(|| format!("starting standalone on {}", a.listen))?;
    println!(
        "danmaku standalone: open {} in a browser (QUIC on udp {})",
        running.base_url(),
        running.quic_addr
    );
    running.wait().await;
    Ok(())
}

/// `danmaku ingest`: the upload API of a distributed cluster.
async fn run_ingest(a: IngestArgs) -> Result<()> {
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let registry = process_registry();
    let (bus, store) = a.node.open_backends(&registry).await?;
    let readiness = Readiness {
        bus: Some(bus.clone()),
        store: Some(store.clone()),
        edge: None,
    };
    let listen = a.node.listen;
    let ingest = danmaku_ingest::Ingest::new(
        a.limits.apply(danmaku_ingest::IngestConfig {
            node_id: format!("ingest-{listen}"),
            ..danmaku_ingest::IngestConfig::default()
        }),
        bus,
        store,
        a.node.secrets.key()?,
        &registry,
    )?;
    // Revocations and blocks made through the other ingests.
    ingest.start_announcements(shutdown.clone()).await?;
    ingest.start_moderation().await?;
    let app = axum::Router::new()
        .merge(a.admin.ops(registry, &shutdown).await?)
        .merge(readyz_router(readiness))
        .merge(ingest.router());
    serve_http(listen, app, shutdown).await
}

/// `danmaku edge`: holds viewers, drains on SIGTERM, registers with a scheduler.
async fn run_edge(a: EdgeArgs) -> Result<()> {
    let shutdown = CancellationToken::new();
    let registry = process_registry();
    let (bus, store) = a.node.open_backends(&registry).await?;
    let listen = a.node.listen;
    let (tcp, udp) = bind_pair(listen)?;
    let advertise = a.advertise.unwrap_or_else(|| listen.to_string());
    let control = &a.control;
    check_capacity_fits(control.capacity);
    a.batching.check()?;
    let config = a
        .caps
        .apply(a.top.apply(a.batching.apply(danmaku_edge::EdgeConfig {
            id: format!("edge-{advertise}"),
            tls_cert: a.tls_cert,
            tls_key: a.tls_key,
            control: danmaku_edge::ControlConfig {
                scheduler: a.scheduler,
                advertise: Some(advertise),
                capacity: control.capacity,
                egress_capacity: control.egress_capacity,
                drain_rate: control.drain_rate,
                drain_deadline: control.drain_deadline,
                online_push_min: control.online_push_min,
                online_push_interval: control.online_push_interval,
                metrics_advertise: a.admin.admin_listen.map(|a| a.to_string()),
            },
            ..danmaku_edge::EdgeConfig::default()
        })));
    let edge = danmaku_edge::Edge::start(
        config,
        bus,
        store,
        a.node.secrets.key()?,
        &registry,
        shutdown.clone(),
    )
    .await?;
    // SIGTERM or Ctrl-C drains (a second one stops at once); a finished
    // drain stops the process.
    drain_on_signal(edge.clone(), shutdown.clone());
    let quic = edge.serve_quic(udp)?;
    let app = axum::Router::new()
        .merge(a.admin.ops(registry, &shutdown).await?)
        .merge(readyz_router(Readiness {
            edge: Some(edge.clone()),
            ..Readiness::default()
        }))
        .merge(edge.admin_router())
        .merge(edge.blob_router())
        .merge(edge.router());
    let listener = tokio::net::TcpListener::from_std(tcp)?;
    tracing::info!(%listen, "edge serving");
    // HTTP/1.1 with upgrades (`danmaku_edge::serve_http1`: a WebSocket takes
    // its socket back); requests carry the peer address (per-IP caps).
    let tune = {
        let edge = edge.clone();
        move |s: &tokio::net::TcpStream| edge.tune_tcp(s)
    };
    danmaku_edge::serve_http1(listener, app, tune, shutdown.clone()).await;
    quic.abort();
    Ok(())
}

/// `danmaku scheduler`: hands out edges, keeps the registry of self-registered ones.
async fn run_scheduler(a: SchedulerArgs) -> Result<()> {
    if a.auth_secret.is_none() && a.edges.is_empty() {
        bail!("give --auth-secret (edges register with it) or at least one --edge");
    }
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let registry = process_registry();
    let static_edges = a
        .edges
        .iter()
        .map(|e| parse_edge(e))
        .collect::<Result<Vec<_>>>()?;
    let scheduler = danmaku_scheduler::Scheduler::new(
        danmaku_scheduler::SchedulerConfig {
            static_edges,
            auth_secret: a.auth_secret,
            load_source: match a.prometheus_url {
                Some(url) => danmaku_scheduler::LoadSource::Prometheus { url },
                None => danmaku_scheduler::LoadSource::Scrape,
            },
            ..danmaku_scheduler::SchedulerConfig::default()
        },
        &registry,
    )?;
    tokio::spawn(scheduler.clone().run(shutdown.clone()));
    let app = axum::Router::new()
        .merge(a.admin.ops(registry, &shutdown).await?)
        .merge(scheduler.router())
        .merge(scheduler.control_router());
    serve_http(a.listen, app, shutdown).await
}

/// `danmaku token`: prints a signed token.
fn run_token(a: TokenArgs) -> Result<()> {
    if a.role != "user" && a.role != "app" {
        bail!("--role must be user or app, not {:?}", a.role);
    }
    let key = a.secrets.key()?;
    println!(
        "{}",
        key.mint(
            &a.user,
            &a.role,
            danmaku_proto::token::now_secs(),
            a.ttl_secs
        )
    );
    Ok(())
}

/// Maps `danmaku loadtest` flags onto a `LoadtestConfig` (or runs a preset).
async fn run_loadtest(a: LoadtestArgs) -> Result<()> {
    use danmaku_loadtest::scenario::Scenario;
    if let Some(preset) = &a.preset {
        // Presets start a whole cluster: that lives in scripts/bench.sh.
        let script = std::path::Path::new("scripts/bench.sh");
        if !script.exists() {
            bail!("--preset {preset} runs scripts/bench.sh: start it from the repository root");
        }
        let mut cmd = tokio::process::Command::new("bash");
        cmd.arg(script).arg(preset);
        if let Some(d) = a.duration {
            cmd.env("DURATION", format!("{d}"));
        }
        if let Some(r) = &a.report {
            cmd.env("REPORT", r);
        }
        cmd.env("BIN", std::env::current_exe()?);
        let status = cmd.status().await?;
        if !status.success() {
            bail!("scripts/bench.sh {preset} failed: {status}");
        }
        return Ok(());
    }
    let mut scenario = match &a.scenario {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Scenario::from_toml(&text).map_err(anyhow::Error::msg)?
        }
        None => {
            let mut s = Scenario::uniform(
                a.connections,
                a.rooms,
                a.rate,
                a.gift_rate,
                Duration::from_secs(10),
            );
            s.churn = a.churn;
            s
        }
    };
    if let Some(d) = a.duration {
        scenario.duration = Duration::from_secs_f64(d.max(0.0));
    }
    let peer = match a.peer.as_str() {
        "danmaku" => danmaku_loadtest::Peer::Danmaku,
        "nats" => danmaku_loadtest::Peer::Nats {
            ws_url: a
                .nats_ws
                .clone()
                .context("--peer nats needs --nats-ws ws://HOST:PORT")?,
        },
        other => bail!("--peer must be danmaku or nats, not {other:?}"),
    };
    if a.bare_frame_bytes.is_none()
        && matches!(peer, danmaku_loadtest::Peer::Danmaku)
        && a.target.is_empty()
        && a.ingest.is_empty()
    {
        bail!("give --target (standalone) or --ingest with --edges or --scheduler");
    }
    let config = danmaku_loadtest::LoadtestConfig {
        target: a.target,
        ingest: a.ingest,
        edges: a.edges,
        scheduler: a.scheduler,
        auth_secret: a.auth_secret,
        peer,
        scenario,
        mix: danmaku_loadtest::config::parse_mix(&a.transport).map_err(anyhow::Error::msg)?,
        probe_fraction: a.probe_fraction,
        workers: a.workers,
        worker_exe: None,
        source_addrs: a.source_addrs,
        ramp_per_sec: a.ramp,
        connect_concurrency: a.connect_concurrency,
        heartbeat: Duration::from_secs(20),
        ack_interval: a.ack_interval,
        drain_grace: Duration::from_secs_f64(a.drain_grace.max(0.0)),
        foreign_rate: a.foreign_rate,
        server_pids: a.server_pids,
        bare_writer: a.bare_writer,
        bare_only: a.bare_frame_bytes.map(|b| (b, a.bare_frame_rate)),
        progress: !a.quiet,
        report: a.report,
    };
    let report = danmaku_loadtest::run(config).await?;
    println!("{}", report.render_text());
    Ok(())
}

/// Parses `id=ws_url|quic_addr`.
fn parse_edge(s: &str) -> Result<danmaku_scheduler::EdgeInfo> {
    let (id, rest) = s
        .split_once('=')
        .with_context(|| format!("edge {s:?}: expected id=ws_url|quic_addr"))?;
    let (ws, quic) = rest.split_once('|').unwrap_or((rest, ""));
    Ok(danmaku_scheduler::EdgeInfo {
        id: id.to_owned(),
        ws: ws.to_owned(),
        quic: quic.to_owned(),
        load: 0.0,
    })
}

async fn serve_http(
    listen: SocketAddr,
    app: axum::Router,
    shutdown: CancellationToken,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(%listen, "serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}
