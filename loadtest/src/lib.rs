//! The danmaku load harness: proves what a deployment carries, up to a
//! 100,000-viewer room on one machine.
//!
//! A run has one **coordinator** (this module's [`run`]) and N **workers**
//! ([`worker`]), each a re-execution of the same binary holding ≤19k viewer
//! connections (the open-file limit is 20,000 per process), bound to source
//! addresses 127.0.0.2, 127.0.0.3… (each has ~28k ephemeral ports):
//!
//! 1. The coordinator expands the [`scenario::Scenario`] into rooms and viewer
//!    slots (transport mix, probe share, churners), mints tokens, finds the
//!    server pids, and hands each worker its slots.
//! 2. Workers connect their viewers at the ramp (asking the scheduler first
//!    when there is one) and report progress every second; once all have
//!    tried, the coordinator posts danmaku and gifts through ingest at the
//!    scenario's rates ([`senders`]; peer mode: [`nats`]).
//! 3. After the drain grace the coordinator tells workers what was accepted per
//!    room; each tallies its viewers exactly ([`counting`]: counting viewers sum
//!    batch counts and gift seqs, probes decode everything) and sends a result.
//! 4. The [`Report`] adds up workers, server CPU and RSS from `/proc`
//!    ([`procstat`]) and, with `--bare-writer`, the floor of a bare tokio
//!    writer ([`bare`]) on the same sockets.

pub mod bare;
pub mod config;
pub mod counting;
pub mod error;
pub mod histogram;
pub mod nats;
pub mod procstat;
pub mod report;
pub mod scenario;
pub mod senders;
pub mod tally;
pub mod wire;
pub mod worker;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use danmaku_client::IngestClient;
use danmaku_proto::token::{TokenKey, now_secs};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use config::{FOREIGN_ROOMS, foreign_room, senders_for_rate, wire_of};
pub use config::{LoadtestConfig, Peer};
use counting::Wire;
pub use error::LoadtestError;
use histogram::{HistPairs, add_pairs, new_histogram};
use procstat::ProcSample;
use report::{BareReport, LaneReport, PostReport, ServerReport, WireReport};
pub use report::{Latency, Report};
use scenario::is_every;
use senders::{IngestPool, SenderOutcome, sender_user};
pub use tally::{RoomExpected, Tally, ViewerLog};
use worker::{
    Control, Progress, RoomExpectation, Slot, StaticEdge, Targets, WorkerMsg, WorkerResult,
    WorkerSpec,
};

/// Viewers per user at most (viewer `i` uses token `i % users`): edges cap a
/// user's connections (16 by default) and frames per second, as they would a
/// real user's devices, so a run must not pack thousands of viewers into a few users.
const VIEWERS_PER_USER: usize = 4;
/// Fewest distinct viewer users.
const MIN_VIEWER_USERS: usize = 64;
/// Lifetime of locally minted tokens (a run is minutes at most).
const TOKEN_TTL_SECS: u64 = 6 * 3600;
/// The hidden subcommand a worker process runs.
pub const WORKER_SUBCOMMAND: &str = "loadtest-worker";
/// The hidden subcommand of the bare writer process.
pub const BARE_SUBCOMMAND: &str = "loadtest-bare-server";

/// Where tokens come from: the server's dev endpoint, or minted here with the
/// cluster's secret.
enum Tokens {
    Dev(IngestClient),
    Local(TokenKey),
    None,
}

impl Tokens {
    async fn get(&self, user: &str) -> Result<String, LoadtestError> {
        match self {
            Tokens::Dev(ingest) => Ok(ingest.dev_token(user).await?),
            Tokens::Local(key) => Ok(key.mint(user, "user", now_secs(), TOKEN_TTL_SECS)),
            Tokens::None => Ok(String::new()),
        }
    }
}

/// A worker as the coordinator sees it. One per worker, so the size of the
/// process variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Link {
    Local(mpsc::UnboundedSender<Control>),
    Proc {
        stdin: tokio::process::ChildStdin,
        child: tokio::process::Child,
    },
}

impl Link {
    /// The worker process, if it is one.
    fn pid(&self) -> Option<u32> {
        match self {
            Link::Local(_) => None,
            Link::Proc { child, .. } => child.id(),
        }
    }
}

impl Link {
    async fn send(&mut self, c: &Control) {
        match self {
            Link::Local(tx) => {
                let _ = tx.send(c.clone());
            }
            Link::Proc { stdin, .. } => {
                let line = serde_json::to_string(c).unwrap_or_default();
                let _ = stdin.write_all(format!("{line}\n").as_bytes()).await;
                let _ = stdin.flush().await;
            }
        }
    }

    async fn finish(self) {
        if let Link::Proc { stdin, mut child } = self {
            drop(stdin);
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}

fn worker_exe(config: &LoadtestConfig) -> Result<PathBuf, LoadtestError> {
    match &config.worker_exe {
        Some(p) => Ok(p.clone()),
        None => Ok(std::env::current_exe()?),
    }
}

/// Starts worker `spec.worker`, in this process when `in_process`.
async fn spawn_worker(
    exe: Option<&PathBuf>,
    spec: WorkerSpec,
    msgs: mpsc::UnboundedSender<(usize, WorkerMsg)>,
) -> Result<Link, LoadtestError> {
    let w = spec.worker;
    let Some(exe) = exe else {
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let (out_tx, mut out_rx) = mpsc::unbounded_channel();
        tokio::spawn(worker::run(spec, out_tx, ctl_rx));
        tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                let _ = msgs.send((w, m));
            }
        });
        return Ok(Link::Local(ctl_tx));
    };
    let mut child = tokio::process::Command::new(exe)
        .arg(WORKER_SUBCOMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| LoadtestError::Config("worker stdin".into()))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| LoadtestError::Config("worker stdout".into()))?;
    let line = serde_json::to_string(&spec)?;
    stdin.write_all(format!("{line}\n").as_bytes()).await?;
    stdin.flush().await?;
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        let mut done = false;
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<WorkerMsg>(&line) {
                Ok(m) => {
                    done |= matches!(m, WorkerMsg::Result(_) | WorkerMsg::Failed { .. });
                    let _ = msgs.send((w, m));
                }
                Err(e) => warn!(worker = w, error = %e, "unreadable worker line"),
            }
        }
        if !done {
            let _ = msgs.send((
                w,
                WorkerMsg::Failed {
                    error: format!("worker {w} exited without a result"),
                },
            ));
        }
    });
    Ok(Link::Proc { stdin, child })
}

/// Live view of all workers.
struct Live {
    progress: Vec<Progress>,
    last: Progress,
    last_posted: u64,
    last_at: Instant,
    started: Instant,
}

impl Live {
    fn new(workers: usize) -> Self {
        Live {
            progress: vec![Progress::default(); workers],
            last: Progress::default(),
            last_posted: 0,
            last_at: Instant::now(),
            started: Instant::now(),
        }
    }

    fn total(&self) -> Progress {
        let mut t = Progress::default();
        for p in &self.progress {
            t.connected += p.connected;
            t.failed += p.failed;
            t.dropped += p.dropped;
            t.frames += p.frames;
            t.events += p.events;
            t.bytes += p.bytes;
            t.errors += p.errors;
            t.p99_ms = t.p99_ms.max(p.p99_ms);
        }
        t
    }

    /// One progress line (stderr).
    fn line(&mut self, phase: &str, viewers: usize, posted: u64) -> String {
        let t = self.total();
        let dt = self.last_at.elapsed().as_secs_f64().max(1e-3);
        let line = format!(
            "[{:>5.0}s {phase}] conns {}/{} (failed {}, dropped {})  in {:.0} msg/s {:.0} frames/s {:.1} MB/s  out {:.0} msg/s  p99 {} ms  errors {}",
            self.started.elapsed().as_secs_f64(),
            t.connected - t.dropped.min(t.connected),
            viewers,
            t.failed,
            t.dropped,
            (t.events - self.last.events.min(t.events)) as f64 / dt,
            (t.frames - self.last.frames.min(t.frames)) as f64 / dt,
            (t.bytes - self.last.bytes.min(t.bytes)) as f64 / dt / 1e6,
            (posted - self.last_posted.min(posted)) as f64 / dt,
            t.p99_ms,
            t.errors
        );
        self.last = t;
        self.last_posted = posted;
        self.last_at = Instant::now();
        line
    }
}

fn sample_all(pids: &[u32]) -> Vec<ProcSample> {
    pids.iter()
        .map(|&p| {
            procstat::sample(p).unwrap_or(ProcSample {
                pid: p,
                ..ProcSample::default()
            })
        })
        .collect()
}

async fn quic_addr(base: &str) -> Result<std::net::SocketAddr, LoadtestError> {
    let url = url::Url::parse(base).map_err(|e| LoadtestError::Config(format!("{base}: {e}")))?;
    let host = url
        .host_str()
        .ok_or_else(|| LoadtestError::Config(format!("{base} has no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    tokio::net::lookup_host((host.as_str(), port))
        .await?
        .next()
        .ok_or_else(|| LoadtestError::Config(format!("{host} resolves to no address")))
}

/// What posting produced.
#[derive(Default)]
struct Posted {
    danmaku: SenderOutcome,
    gifts: SenderOutcome,
    foreign: SenderOutcome,
    expected: Vec<RoomExpectation>,
}

/// Posts the scenario's danmaku and gifts through ingest (or NATS) until
/// `deadline`; returns what was accepted per room.
#[allow(clippy::too_many_arguments)]
async fn post_all(
    config: &LoadtestConfig,
    rooms: &[String],
    plan: &[scenario::RoomPlan],
    ingest: Option<Arc<IngestPool>>,
    tokens: &Tokens,
    start: Instant,
    deadline: Instant,
    posted: Arc<AtomicU64>,
) -> Result<Posted, LoadtestError> {
    let mut out = Posted {
        expected: vec![RoomExpectation::default(); rooms.len()],
        ..Posted::default()
    };
    if let Peer::Nats { ws_url } = &config.peer {
        let target = wire::WsTarget::resolve(ws_url, false).await?;
        let mut handles = Vec::new();
        for (r, p) in plan.iter().enumerate() {
            if p.danmaku_rate <= 0.0 && p.gift_rate <= 0.0 {
                continue;
            }
            handles.push((
                r,
                tokio::spawn(nats::run_publisher(
                    target.clone(),
                    r as u32,
                    rooms[r].clone(),
                    p.danmaku_rate,
                    p.gift_rate,
                    start,
                    deadline,
                    posted.clone(),
                )),
            ));
        }
        for (r, h) in handles {
            match h.await {
                Ok(Ok(p)) => {
                    if p.stalled {
                        warn!(room = %rooms[r], "NATS stalled the publisher (slow subscribers): posting stopped early");
                    }
                    out.danmaku.accepted += p.danmaku.len() as u64;
                    out.danmaku.attempted += p.danmaku.len() as u64;
                    out.gifts.accepted += p.gifts.len() as u64;
                    out.gifts.attempted += p.gifts.len() as u64;
                    out.danmaku.raw_json_bytes += p.raw_json_bytes;
                    let e = &mut out.expected[r];
                    e.danmaku = p.danmaku.len() as u64;
                    e.danmaku_posts.push((r as u32, p.danmaku));
                    e.gift_seqs = p.gifts;
                }
                Ok(Err(e)) => {
                    warn!(room = %rooms[r], error = %e, "NATS publisher failed");
                    out.danmaku.failed += 1;
                }
                Err(e) => warn!(error = %e, "NATS publisher panicked"),
            }
        }
        return Ok(out);
    }
    let ingest = ingest.ok_or_else(|| LoadtestError::Config("no ingest".into()))?;
    // One set of senders per room and lane, each under the per-user limit.
    let mut index = 0u32;
    let mut danmaku = Vec::new();
    let mut gifts = Vec::new();
    for (r, p) in plan.iter().enumerate() {
        for (rate, lane_gift) in [(p.danmaku_rate, false), (p.gift_rate, true)] {
            if rate <= 0.0 {
                continue;
            }
            let n = senders_for_rate(rate, 1);
            let period = Duration::from_secs_f64(n as f64 / rate);
            for k in 0..n {
                let token = tokens.get(&sender_user(index)).await?;
                let offset = period.mul_f64(k as f64 / n as f64);
                if lane_gift {
                    gifts.push((
                        r,
                        tokio::spawn(senders::run_gift_sender(
                            ingest.clone(),
                            token,
                            index,
                            rooms[r].clone(),
                            period,
                            offset,
                            start,
                            deadline,
                            posted.clone(),
                        )),
                    ));
                } else {
                    danmaku.push((
                        r,
                        index,
                        tokio::spawn(senders::run_sender(
                            ingest.clone(),
                            token,
                            index,
                            vec![rooms[r].clone()],
                            period,
                            offset,
                            start,
                            deadline,
                            posted.clone(),
                        )),
                    ));
                }
                index += 1;
            }
        }
    }
    let mut foreign = Vec::new();
    if config.foreign_rate > 0.0 {
        let n = senders_for_rate(config.foreign_rate, 1);
        let period = Duration::from_secs_f64(n as f64 / config.foreign_rate);
        let foreign_rooms: Vec<String> = (0..FOREIGN_ROOMS).map(foreign_room).collect();
        for k in 0..n {
            let token = tokens.get(&sender_user(index)).await?;
            foreign.push(tokio::spawn(senders::run_sender(
                ingest.clone(),
                token,
                index,
                foreign_rooms.clone(),
                period,
                period.mul_f64(k as f64 / n as f64),
                start,
                deadline,
                Arc::new(AtomicU64::new(0)),
            )));
            index += 1;
        }
    }
    for (r, sender, h) in danmaku {
        let Ok(o) = h.await else { continue };
        out.danmaku.add_counts(&o);
        let e = &mut out.expected[r];
        e.danmaku += o.accepted_posts.len() as u64;
        e.danmaku_posts
            .push((sender, o.accepted_posts.iter().map(|(_, n)| *n).collect()));
    }
    for (r, h) in gifts {
        let Ok(o) = h.await else { continue };
        out.gifts.add_counts(&o);
        out.expected[r].gift_seqs.extend(o.seqs);
    }
    for h in foreign {
        let Ok(o) = h.await else { continue };
        out.foreign.add_counts(&o);
    }
    Ok(out)
}

/// Runs one load test (see the crate docs) and returns its report, also
/// written as JSON to `config.report` when set.
pub async fn run(config: LoadtestConfig) -> Result<Report, LoadtestError> {
    if let Some((bytes, rate)) = config.bare_only {
        let mut report = Report {
            peer: "bare".into(),
            ..Report::default()
        };
        report.bare = Some(run_bare(&config, config.scenario.viewers(), bytes, rate, 0.0).await?);
        write_report(&config, &report)?;
        return Ok(report);
    }
    let plan = config.scenario.plan();
    if plan.is_empty()
        || !(config.probe_fraction >= 0.0 && config.probe_fraction <= 1.0)
        || !(config.foreign_rate >= 0.0 && config.foreign_rate.is_finite())
        || config.mix.is_empty()
    {
        return Err(LoadtestError::Config(
            "need ≥ 1 room, a probe fraction in 0..1, a finite foreign rate ≥ 0 and a transport mix".into(),
        ));
    }
    let nats = matches!(config.peer, Peer::Nats { .. });
    let wall = Instant::now();
    let run_id = danmaku_proto::now_ms() % 100_000_000;
    let rooms: Vec<String> = (0..plan.len())
        .map(|k| format!("room:lt{run_id}-{k}"))
        .collect();
    let endpoints = if nats {
        config::Endpoints {
            ingest: vec![],
            edges: vec![],
        }
    } else {
        config.endpoints().map_err(LoadtestError::Config)?
    };
    let ingest = (!nats).then(|| Arc::new(IngestPool::new(&endpoints.ingest)));
    let tokens = match (&config.auth_secret, &ingest) {
        _ if nats => Tokens::None,
        (Some(secret), _) => Tokens::Local(TokenKey::new(secret)),
        (None, Some(pool)) => Tokens::Dev(pool.first().clone()),
        (None, None) => Tokens::None,
    };
    let viewers_total = config.scenario.viewers();
    let mut viewer_tokens = Vec::new();
    let users = viewers_total
        .div_ceil(VIEWERS_PER_USER)
        .max(MIN_VIEWER_USERS)
        .min(viewers_total.max(1));
    for u in 0..users {
        viewer_tokens.push(tokens.get(&format!("lt-viewer-{u}")).await?);
    }

    // Where viewers go.
    let quic_wanted = config.mix.iter().any(|(w, s)| *w == Wire::Quic && *s > 0.0);
    let targets = if let Peer::Nats { ws_url } = &config.peer {
        Targets::Nats(ws_url.clone())
    } else if let Some(s) = &config.scheduler {
        Targets::Scheduler(s.clone())
    } else {
        let mut edges = Vec::new();
        for url in &endpoints.edges {
            let (quic, cert_der) = if quic_wanted {
                (
                    Some(quic_addr(url).await?),
                    Some(IngestClient::new(url).fetch_cert_der().await?),
                )
            } else {
                (None, None)
            };
            edges.push(StaticEdge {
                url: url.clone(),
                quic,
                cert_der,
            });
        }
        Targets::Static(edges)
    };

    // Viewer slots, round-robin over workers so every room spans them.
    let n_workers = config.workers.max(1);
    let mut slots: Vec<Vec<Slot>> = vec![Vec::new(); n_workers];
    let mut id = 0u64;
    for (r, p) in plan.iter().enumerate() {
        for _ in 0..p.viewers {
            let churn = is_every(id, config.scenario.churn);
            slots[id as usize % n_workers].push(Slot {
                id,
                room: r as u32,
                wire: if nats {
                    Wire::Nats
                } else {
                    wire_of(id, &config.mix)
                },
                probe: !churn && is_every(id, config.probe_fraction),
                churn,
            });
            id += 1;
        }
    }

    // Server processes to watch.
    let pids = if !config.server_pids.is_empty() {
        config.server_pids.clone()
    } else {
        let mut urls: Vec<String> = endpoints
            .ingest
            .iter()
            .chain(&endpoints.edges)
            .cloned()
            .collect();
        urls.extend(config.scheduler.clone());
        if let Peer::Nats { ws_url } = &config.peer {
            urls.push(ws_url.clone());
        }
        let ports: Vec<u16> = urls.iter().filter_map(|u| procstat::url_port(u)).collect();
        procstat::pids_listening_on(&ports)
    };
    info!(?pids, "server processes measured");
    let before = sample_all(&pids);

    // Workers.
    let exe = if config.workers > 0 {
        Some(worker_exe(&config)?)
    } else {
        None
    };
    let (msg_tx, mut msg_rx) = mpsc::unbounded_channel();
    let mut links = Vec::new();
    for (w, s) in slots.into_iter().enumerate() {
        let spec = WorkerSpec {
            worker: w,
            rooms: rooms.clone(),
            slots: s,
            targets: targets.clone(),
            tokens: viewer_tokens.clone(),
            source_addrs: config.source_addrs.clone(),
            ramp_per_sec: config.ramp_per_sec / n_workers as f64,
            connect_concurrency: config.connect_concurrency,
            heartbeat_ms: config.heartbeat.as_millis() as u64,
            ack_interval_ms: config.ack_interval.as_millis() as u64,
            churn_stay_ms: config.scenario.churn_stay.as_millis() as u64,
        };
        links.push(spawn_worker(exe.as_ref(), spec, msg_tx.clone()).await?);
    }
    drop(msg_tx);
    let mut live = Live::new(n_workers);
    let posted = Arc::new(AtomicU64::new(0));
    let connect_started = Instant::now();
    let mut ready = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while ready < n_workers {
        tokio::select! {
            m = msg_rx.recv() => match m {
                Some((w, WorkerMsg::Progress(p))) => live.progress[w] = p,
                Some((_, WorkerMsg::Ready { .. })) => ready += 1,
                Some((_, WorkerMsg::Failed { error })) => return Err(LoadtestError::Config(error)),
                Some((_, WorkerMsg::Result(_))) => {}
                None => return Err(LoadtestError::Config("workers ended before connecting".into())),
            },
            _ = tick.tick() => if config.progress { eprintln!("{}", live.line("connect", viewers_total, 0)) },
        }
    }
    let connect_phase = connect_started.elapsed();
    let connected = sample_all(&pids);

    // Post, watching progress.
    info!(
        danmaku_rate = config.scenario.danmaku_rate(),
        gift_rate = config.scenario.gift_rate(),
        "posting"
    );
    let start = Instant::now() + Duration::from_millis(200);
    let deadline = start + config.scenario.duration;
    let at_start = sample_all(&pids);
    // The load generator's own CPU, to see what the box had left for servers.
    let gen_pids: Vec<u32> = std::iter::once(std::process::id())
        .chain(links.iter().filter_map(Link::pid))
        .collect();
    let gen_start = sample_all(&gen_pids);
    let posting = post_all(
        &config,
        &rooms,
        &plan,
        ingest.clone(),
        &tokens,
        start,
        deadline,
        posted.clone(),
    );
    tokio::pin!(posting);
    let posted_out = loop {
        tokio::select! {
            r = &mut posting => break r?,
            m = msg_rx.recv() => if let Some((w, WorkerMsg::Progress(p))) = m { live.progress[w] = p },
            _ = tick.tick() => if config.progress { eprintln!("{}", live.line("post", viewers_total, posted.load(Relaxed))) },
        }
    };
    let posting_time = start.elapsed();
    let grace = tokio::time::sleep(config.drain_grace);
    tokio::pin!(grace);
    loop {
        tokio::select! {
            _ = &mut grace => break,
            m = msg_rx.recv() => if let Some((w, WorkerMsg::Progress(p))) = m { live.progress[w] = p },
            _ = tick.tick() => if config.progress { eprintln!("{}", live.line("drain", viewers_total, posted.load(Relaxed))) },
        }
    }
    let end = sample_all(&pids);
    let gen_end = sample_all(&gen_pids);

    // Tally.
    let stop = Control::Stop {
        expected: posted_out.expected.clone(),
    };
    for l in &mut links {
        l.send(&stop).await;
    }
    let mut total = WorkerResult::default();
    let mut results = 0;
    while results < n_workers {
        match msg_rx.recv().await {
            Some((_, WorkerMsg::Result(r))) => {
                total.merge(r);
                results += 1;
            }
            Some((w, WorkerMsg::Failed { error })) => {
                warn!(worker = w, error, "worker failed");
                results += 1;
            }
            Some(_) => {}
            None => break,
        }
    }
    for l in links {
        l.finish().await;
    }

    let mut report = build_report(&config, &endpoints, &plan, total, &posted_out, posting_time);
    report.connect_phase_s = connect_phase.as_secs_f64();
    if report.connect_phase_s > 0.0 {
        report.connects_per_s = report.connections_ok as f64 / report.connect_phase_s;
    }
    report.servers = before
        .iter()
        .zip(&connected)
        .zip(&at_start)
        .zip(&end)
        .map(|(((b, c), s), e)| ServerReport::new(b, c, s, e))
        .collect();
    report.server_cpu_s = report.servers.iter().map(|s| s.cpu_s).sum();
    report.load_generator = gen_start
        .iter()
        .zip(&gen_end)
        .map(|(s, e)| ServerReport::new(s, s, s, e))
        .collect();
    let deliveries = report.danmaku.tally.received + report.gifts.tally.received;
    let frames: u64 = report.wires.values().map(|w| w.tally.frames).sum();
    if report.server_cpu_s > 0.0 {
        report.deliveries_per_cpu_s = deliveries as f64 / report.server_cpu_s;
        report.frames_per_cpu_s = frames as f64 / report.server_cpu_s;
    }
    let rss_delta: i64 = report
        .servers
        .iter()
        .map(|s| s.rss_kb_connected as i64 - s.rss_kb_before as i64)
        .sum();
    if report.connections_ok > 0 {
        report.rss_kb_per_connection = rss_delta as f64 / report.connections_ok as f64;
    }
    if config.bare_writer && report.connections_ok > 0 {
        let window = (posting_time + config.drain_grace).as_secs_f64();
        let rate = frames as f64 / report.connections_ok as f64 / window;
        let pb = report.wires.get(Wire::WsPb.name()).map(|w| w.tally);
        let bytes = pb
            .filter(|w| w.frames > 0)
            .map(|w| (w.bytes_in / w.frames) as usize)
            .unwrap_or(200);
        let mut bare = run_bare(
            &config,
            report.connections_ok as usize,
            bytes.max(64),
            rate,
            report.frames_per_cpu_s,
        )
        .await?;
        bare.sut_frames_per_cpu_s = report.frames_per_cpu_s;
        report.bare = Some(bare);
    }
    report.wall_time_s = wall.elapsed().as_secs_f64();
    write_report(&config, &report)?;
    Ok(report)
}

fn write_report(config: &LoadtestConfig, report: &Report) -> Result<(), LoadtestError> {
    if let Some(path) = &config.report {
        std::fs::write(path, serde_json::to_vec_pretty(report)?)?;
    }
    Ok(())
}

fn build_report(
    config: &LoadtestConfig,
    endpoints: &config::Endpoints,
    plan: &[scenario::RoomPlan],
    total: WorkerResult,
    posted: &Posted,
    posting_time: Duration,
) -> Report {
    let secs = posting_time.as_secs_f64().max(1e-9);
    let post = |o: &SenderOutcome| PostReport {
        attempted: o.attempted,
        accepted: o.accepted,
        rate_limited: o.rate_limited,
        failed: o.failed,
        per_s: o.accepted as f64 / secs,
    };
    let lane = |t: tally::LaneTally, pairs: &HistPairs| {
        let mut h = new_histogram();
        add_pairs(&mut h, pairs);
        LaneReport {
            tally: t,
            loss_ratio: if t.expected == 0 {
                0.0
            } else {
                t.lost as f64 / t.expected as f64
            },
            latency_ms: Latency::from_histogram(&h),
        }
    };
    let mut connect = new_histogram();
    add_pairs(&mut connect, &total.connect_ms);
    let accepted = posted.danmaku.accepted + posted.gifts.accepted;
    Report {
        peer: match &config.peer {
            Peer::Danmaku => "danmaku".into(),
            Peer::Nats { ws_url } => format!("nats {ws_url}"),
        },
        target: config.target.clone(),
        ingest: endpoints.ingest.clone(),
        edges: endpoints.edges.clone(),
        scheduler: config.scheduler.clone(),
        workers: config.workers,
        source_addrs: config.source_addrs.iter().map(|a| a.to_string()).collect(),
        mix: config
            .mix
            .iter()
            .map(|(w, s)| (w.name().to_owned(), *s))
            .collect(),
        rooms: plan.len(),
        biggest_room: plan.iter().map(|p| p.viewers).max().unwrap_or(0),
        danmaku_rate: config.scenario.danmaku_rate(),
        gift_rate: config.scenario.gift_rate(),
        duration_s: config.scenario.duration.as_secs_f64(),
        viewers: total.attempted,
        connections_ok: total.ok,
        connections_failed: total.failed,
        connections_dropped: total.dropped,
        connect_errors: total.connect_errors.clone(),
        connect_phase_s: 0.0,
        connect_ms: Latency::from_histogram(&connect),
        connects_per_s: 0.0,
        connect_steps_ms: total
            .connect_steps
            .iter()
            .map(|(name, pairs)| {
                let mut h = new_histogram();
                add_pairs(&mut h, pairs);
                (name.clone(), Latency::from_histogram(&h))
            })
            .collect(),
        probes: total.probes,
        counting: total.counting,
        churn_viewers: total.churn_viewers,
        churn_cycles: total.churn_cycles,
        churn_deliveries: total.churn_deliveries,
        danmaku_posts: post(&posted.danmaku),
        gift_posts: post(&posted.gifts),
        danmaku: lane(total.danmaku, &total.latency_danmaku),
        gifts: lane(total.gifts, &total.latency_gift),
        worst: total.worst.clone(),
        errors: total.errors,
        wires: total
            .wires
            .iter()
            .map(|(k, w)| {
                (
                    k.clone(),
                    WireReport {
                        tally: *w,
                        bytes_per_delivery: if w.deliveries == 0 {
                            0.0
                        } else {
                            w.bytes_in as f64 / w.deliveries as f64
                        },
                    },
                )
            })
            .collect(),
        raw_json_bytes_per_message: if accepted == 0 {
            0.0
        } else {
            (posted.danmaku.raw_json_bytes + posted.gifts.raw_json_bytes) as f64 / accepted as f64
        },
        ..Report::default()
    }
}

/// The bare writer with `connections` viewers, `frame_bytes` frames at
/// `frame_rate` per connection, for min(duration, 30 s).
async fn run_bare(
    config: &LoadtestConfig,
    connections: usize,
    frame_bytes: usize,
    frame_rate: f64,
    sut_frames_per_cpu_s: f64,
) -> Result<BareReport, LoadtestError> {
    let exe = worker_exe(config)?;
    let room = "room:bare".to_owned();
    let mut child = tokio::process::Command::new(&exe)
        .arg(BARE_SUBCOMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().unwrap_or(0);
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| LoadtestError::Config("bare stdin".into()))?;
    let mut lines = BufReader::new(
        child
            .stdout
            .take()
            .ok_or_else(|| LoadtestError::Config("bare stdout".into()))?,
    )
    .lines();
    let spec = bare::BareSpec {
        listen: "127.0.0.1:0".into(),
        room: room.clone(),
        frame_bytes,
        frame_rate,
        events_per_frame: 1,
    };
    stdin
        .write_all(format!("{}\n", serde_json::to_string(&spec)?).as_bytes())
        .await?;
    stdin.flush().await?;
    let first = lines.next_line().await?.unwrap_or_default();
    let addr = serde_json::from_str::<serde_json::Value>(&first)?
        .get("listening")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .ok_or_else(|| LoadtestError::Config(format!("bare writer said {first:?}")))?;
    let before = procstat::sample(pid).unwrap_or_default();

    let n_workers = config.workers.max(1);
    let mut slots: Vec<Vec<Slot>> = vec![Vec::new(); n_workers];
    for id in 0..connections as u64 {
        slots[id as usize % n_workers].push(Slot {
            id,
            room: 0,
            wire: Wire::WsPb,
            probe: false,
            churn: false,
        });
    }
    let exe_opt = (config.workers > 0).then_some(exe);
    let (msg_tx, mut msg_rx) = mpsc::unbounded_channel();
    let mut links = Vec::new();
    for (w, s) in slots.into_iter().enumerate() {
        let spec = WorkerSpec {
            worker: w,
            rooms: vec![room.clone()],
            slots: s,
            targets: Targets::Bare(format!("ws://{addr}/")),
            tokens: vec![String::new()],
            source_addrs: config.source_addrs.clone(),
            ramp_per_sec: config.ramp_per_sec / n_workers as f64,
            connect_concurrency: config.connect_concurrency,
            heartbeat_ms: config.heartbeat.as_millis() as u64,
            ack_interval_ms: config.ack_interval.as_millis() as u64,
            churn_stay_ms: 10_000,
        };
        links.push(spawn_worker(exe_opt.as_ref(), spec, msg_tx.clone()).await?);
    }
    drop(msg_tx);
    let mut ready = 0;
    while ready < n_workers {
        match msg_rx.recv().await {
            Some((_, WorkerMsg::Ready { .. })) => ready += 1,
            Some((_, WorkerMsg::Failed { error })) => return Err(LoadtestError::Config(error)),
            Some(_) => {}
            None => return Err(LoadtestError::Config("bare workers ended".into())),
        }
    }
    let connected = procstat::sample(pid).unwrap_or_default();
    let duration = config.scenario.duration.min(Duration::from_secs(30));
    eprintln!(
        "[bare writer] {connections} connections, {frame_rate:.2} frames/s × {frame_bytes} B for {:.0} s",
        duration.as_secs_f64()
    );
    stdin.write_all(b"go\n").await?;
    stdin.flush().await?;
    let cpu0 = procstat::sample(pid).unwrap_or_default();
    tokio::time::sleep(duration).await;
    stdin.write_all(b"stop\n").await?;
    stdin.flush().await?;
    let stats: bare::BareStats =
        serde_json::from_str(&lines.next_line().await?.unwrap_or_default())?;
    let cpu1 = procstat::sample(pid).unwrap_or_default();
    let stop = Control::Stop {
        expected: vec![RoomExpectation::default()],
    };
    for l in &mut links {
        l.send(&stop).await;
    }
    let mut frames_received = 0;
    let mut results = 0;
    while results < n_workers {
        match msg_rx.recv().await {
            Some((_, WorkerMsg::Result(r))) => {
                frames_received += r.wires.values().map(|w| w.frames).sum::<u64>();
                results += 1;
            }
            Some((_, WorkerMsg::Failed { .. })) => results += 1,
            Some(_) => {}
            None => break,
        }
    }
    for l in links {
        l.finish().await;
    }
    let _ = child.kill().await;
    let cpu_s = cpu1.cpu_s - cpu0.cpu_s;
    let frames_per_cpu_s = if cpu_s > 0.0 {
        stats.frames_written as f64 / cpu_s
    } else {
        0.0
    };
    let _ = before;
    Ok(BareReport {
        connections: stats.connections,
        frame_bytes,
        frame_rate,
        duration_s: duration.as_secs_f64(),
        frames_written: stats.frames_written,
        frames_received,
        cpu_s,
        rss_kb_connected: connected.rss_kb,
        frames_per_cpu_s,
        sut_frames_per_cpu_s,
        ratio: if frames_per_cpu_s > 0.0 {
            sut_frames_per_cpu_s / frames_per_cpu_s
        } else {
            0.0
        },
    })
}

/// Exposed for the bare-writer subcommand.
pub use bare::process_main as bare_main;
/// Exposed for the worker subcommand.
pub use worker::process_main as worker_main;
