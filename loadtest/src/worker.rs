//! A worker: holds a share of the viewers (≤19k connections: the open-file
//! limit is 20,000 per process), reports progress once a second, and at the end
//! tallies each of its viewers against what the coordinator says was accepted.
//!
//! The coordinator re-executes its own binary with a hidden subcommand
//! (`danmaku loadtest-worker`): the [`WorkerSpec`] arrives as the first JSON
//! line on stdin, [`Control`] lines follow; [`WorkerMsg`] lines go to stdout.
//! [`run`] is the same code in-process (tests, `--workers 0`).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use danmaku_client::{Client, ClientConfig, ServerEvent};
use danmaku_proto::control::EdgeList;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::counting::{self, Lane, ViewerCounts, Wire};
use crate::histogram::{HistPairs, hist_pairs, new_histogram};
use crate::tally::{LaneTally, RoomExpected, WireTally, Worst};
use crate::wire::{OP_BINARY, OP_TEXT, WsConn, WsTarget};

/// One viewer to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Slot {
    pub id: u64,
    pub room: u32,
    pub wire: Wire,
    pub probe: bool,
    /// Leaves and rejoins during the run (not part of exact loss accounting).
    pub churn: bool,
}

/// A statically known edge.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StaticEdge {
    /// Base URL (`http://h:p`); WebSocket at `/v1/ws`.
    pub url: String,
    pub quic: Option<SocketAddr>,
    pub cert_der: Option<Vec<u8>>,
}

/// Where viewers connect.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Targets {
    /// Viewer `id` goes to edge `id % len`.
    Static(Vec<StaticEdge>),
    /// Each viewer asks `GET {url}/v1/edges?k=3` and takes the first answer.
    Scheduler(String),
    /// Peer mode: a NATS WebSocket listener (`ws://h:p`).
    Nats(String),
    /// The bare writer (`ws://h:p`): no token, no join.
    Bare(String),
}

/// Everything a worker needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub worker: usize,
    pub rooms: Vec<String>,
    pub slots: Vec<Slot>,
    pub targets: Targets,
    pub tokens: Vec<String>,
    pub source_addrs: Vec<IpAddr>,
    /// This worker's share of the connect ramp, connections per second.
    pub ramp_per_sec: f64,
    pub connect_concurrency: usize,
    pub heartbeat_ms: u64,
    /// Viewers ack gifts cumulatively at most this often (0 = every gift).
    #[serde(default)]
    pub ack_interval_ms: u64,
    /// How long a churning viewer stays before leaving (it rejoins 1 s later).
    pub churn_stay_ms: u64,
}

/// What the coordinator accepted for a room.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RoomExpectation {
    /// Danmaku accepted, and per sender their post numbers (for probes). A
    /// list, not a map: integer map keys do not survive serde's internally
    /// tagged enums.
    pub danmaku: u64,
    pub danmaku_posts: Vec<(u32, Vec<u64>)>,
    /// Gift seqs persisted (NATS: post number + 1).
    pub gift_seqs: Vec<u64>,
}

/// Coordinator → worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// Stop every viewer and tally against `expected` (indexed like `rooms`).
    Stop { expected: Vec<RoomExpectation> },
}

/// Cumulative counters of a worker.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Progress {
    pub connected: u64,
    pub failed: u64,
    pub dropped: u64,
    pub frames: u64,
    pub events: u64,
    pub bytes: u64,
    pub errors: u64,
    /// p99 of probe latency since the previous progress line, ms.
    pub p99_ms: u64,
}

/// Worker → coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)]
pub enum WorkerMsg {
    Progress(Progress),
    /// Every viewer has tried to connect once.
    Ready {
        ok: u64,
        failed: u64,
    },
    Result(WorkerResult),
    /// The worker could not run.
    Failed {
        error: String,
    },
}

/// Everything a worker measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerResult {
    pub attempted: u64,
    pub ok: u64,
    pub failed: u64,
    pub dropped: u64,
    pub connect_errors: BTreeMap<String, u64>,
    /// Connect + join time per viewer, ms (from when its turn in the ramp came).
    pub connect_ms: HistPairs,
    /// The same, per step (`CONNECT_STEPS`), ms: waiting for a connect slot,
    /// asking the scheduler, TCP + upgrade (+ auth on QUIC), join → `joined`.
    pub connect_steps: BTreeMap<String, HistPairs>,
    pub danmaku: LaneTally,
    pub gifts: LaneTally,
    pub latency_danmaku: HistPairs,
    pub latency_gift: HistPairs,
    pub wires: BTreeMap<String, WireTally>,
    pub probes: u64,
    pub counting: u64,
    pub churn_viewers: u64,
    pub churn_cycles: u64,
    pub churn_deliveries: u64,
    pub errors: u64,
    pub worst: Vec<Worst>,
}

impl WorkerResult {
    pub fn merge(&mut self, o: WorkerResult) {
        self.attempted += o.attempted;
        self.ok += o.ok;
        self.failed += o.failed;
        self.dropped += o.dropped;
        for (k, v) in o.connect_errors {
            *self.connect_errors.entry(k).or_default() += v;
        }
        self.connect_ms.extend(o.connect_ms);
        for (k, v) in o.connect_steps {
            self.connect_steps.entry(k).or_default().extend(v);
        }
        self.danmaku += o.danmaku;
        self.gifts += o.gifts;
        self.latency_danmaku.extend(o.latency_danmaku);
        self.latency_gift.extend(o.latency_gift);
        for (k, v) in o.wires {
            let w = self.wires.entry(k).or_default();
            w.viewers += v.viewers;
            w.bytes_in += v.bytes_in;
            w.frames += v.frames;
            w.deliveries += v.deliveries;
        }
        self.probes += o.probes;
        self.counting += o.counting;
        self.churn_viewers += o.churn_viewers;
        self.churn_cycles += o.churn_cycles;
        self.churn_deliveries += o.churn_deliveries;
        self.errors += o.errors;
        self.worst.extend(o.worst);
        self.worst
            .sort_by_key(|w| std::cmp::Reverse(w.expected.saturating_sub(w.received)));
        self.worst.truncate(10);
    }
}

/// Shared state of a worker's viewers.
struct Ctx {
    spec: WorkerSpec,
    gate: Semaphore,
    connected: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    frames: AtomicU64,
    events: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    lat_danmaku: Mutex<Histogram<u64>>,
    lat_gift: Mutex<Histogram<u64>>,
    lat_interval: Mutex<Histogram<u64>>,
    connect_ms: Mutex<Histogram<u64>>,
    /// One histogram per entry of [`CONNECT_STEPS`].
    connect_steps: [Mutex<Histogram<u64>>; 4],
    http: reqwest::Client,
    certs: tokio::sync::Mutex<HashMap<String, Vec<u8>>>,
}

/// The steps of a viewer's first connect, timed separately so a slow connect
/// phase says where the time went (`Report::connect_steps_ms`).
pub const CONNECT_STEPS: [&str; 4] = ["queue", "pick", "upgrade", "join"];

/// Index into [`CONNECT_STEPS`].
#[derive(Debug, Clone, Copy)]
enum Step {
    Queue = 0,
    Pick = 1,
    Upgrade = 2,
    Join = 3,
}

impl Ctx {
    fn step(&self, step: Step, since: Instant) {
        lock(&self.connect_steps[step as usize])
            .saturating_record(since.elapsed().as_millis().max(1) as u64);
    }

    fn record(&self, lane: Lane, ms: u64) {
        let h = match lane {
            Lane::Danmaku => &self.lat_danmaku,
            Lane::Gift => &self.lat_gift,
        };
        lock(h).saturating_record(ms.max(1));
        lock(&self.lat_interval).saturating_record(ms.max(1));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What one viewer task hands back.
struct ViewerResult {
    slot: Slot,
    joined: Result<(), String>,
    dropped: bool,
    churn_cycles: u64,
    counts: ViewerCounts,
    bytes_in: u64,
}

/// Where viewer `slot` connects, resolved.
enum Dest {
    Ws(WsTarget, String),
    Quic(SocketAddr, Vec<u8>),
}

/// `ws://h:p/v1/ws` → `http://h:p` (where `/v1/cert` lives).
fn http_base(ws: &str) -> String {
    let s = ws
        .replacen("wss://", "https://", 1)
        .replacen("ws://", "http://", 1);
    s.trim_end_matches('/')
        .trim_end_matches("/v1/ws")
        .trim_end_matches('/')
        .to_owned()
}

async fn resolve(ctx: &Ctx, slot: &Slot) -> Result<Dest, String> {
    let token = ctx
        .spec
        .tokens
        .get(slot.id as usize % ctx.spec.tokens.len().max(1))
        .cloned()
        .unwrap_or_default();
    let query = format!("token={token}");
    let ws = |url: String, append: bool, query: String| async move {
        WsTarget::resolve(&url, append)
            .await
            .map(|t| Dest::Ws(t, query))
            .map_err(|e| format!("resolve {url}: {e}"))
    };
    match &ctx.spec.targets {
        Targets::Nats(url) | Targets::Bare(url) => ws(url.clone(), false, String::new()).await,
        Targets::Static(edges) => {
            let e = &edges[slot.id as usize % edges.len().max(1)];
            match (slot.wire, e.quic, &e.cert_der) {
                (Wire::Quic, Some(addr), Some(cert)) => Ok(Dest::Quic(addr, cert.clone())),
                (Wire::Quic, _, _) => Err("no QUIC address for this edge".into()),
                _ => ws(e.url.clone(), true, query).await,
            }
        }
        Targets::Scheduler(url) => {
            let resp = ctx
                .http
                .get(format!("{}/v1/edges?k=3", url.trim_end_matches('/')))
                .send()
                .await
                .map_err(|e| format!("scheduler: {e}"))?;
            if !resp.status().is_success() {
                return Err(format!("scheduler: HTTP {}", resp.status().as_u16()));
            }
            let body: EdgeList = resp
                .json()
                .await
                .map_err(|e| format!("scheduler answer: {e}"))?;
            let first = body
                .edges
                .into_iter()
                .next()
                .ok_or("scheduler offered no edge")?;
            if slot.wire == Wire::Quic {
                let addr: SocketAddr = tokio::net::lookup_host(first.quic.as_str())
                    .await
                    .ok()
                    .and_then(|mut a| a.next())
                    .ok_or_else(|| format!("bad QUIC address {:?}", first.quic))?;
                let base = http_base(&first.ws);
                let mut certs = ctx.certs.lock().await;
                let cert = match certs.get(&base) {
                    Some(c) => c.clone(),
                    None => {
                        let c = danmaku_client::IngestClient::new(&base)
                            .fetch_cert_der()
                            .await
                            .map_err(|e| format!("cert of {base}: {e}"))?;
                        certs.insert(base, c.clone());
                        c
                    }
                };
                Ok(Dest::Quic(addr, cert))
            } else {
                ws(first.ws, true, query).await
            }
        }
    }
}

fn opcode(wire: Wire) -> u8 {
    match wire {
        Wire::WsJson | Wire::Nats => OP_TEXT,
        _ => OP_BINARY,
    }
}

fn subprotocol(ctx: &Ctx, wire: Wire) -> Option<&'static str> {
    match (&ctx.spec.targets, wire) {
        (Targets::Nats(_) | Targets::Bare(_), _) | (_, Wire::Nats) => None,
        (_, Wire::WsJson) => Some("danmaku.v1.json"),
        // Dense batches first, then compact, as the SDKs offer them.
        _ => Some("danmaku.v3.pb, danmaku.v2.pb, danmaku.v1.pb"),
    }
}

/// A live connection of either kind.
enum Conn {
    Ws(WsConn),
    Quic(Box<Client>),
}

enum End {
    Stopped,
    Dropped,
    Churned,
}

async fn connect_and_join(
    ctx: &Ctx,
    slot: &Slot,
    counts: &mut ViewerCounts,
    bytes: &mut u64,
    timed: bool,
) -> Result<Conn, String> {
    let room = &ctx.spec.rooms[slot.room as usize];
    let local = (!ctx.spec.source_addrs.is_empty())
        .then(|| ctx.spec.source_addrs[slot.id as usize % ctx.spec.source_addrs.len()]);
    let step = |s: Step, since: Instant| {
        if timed {
            ctx.step(s, since);
        }
    };
    let t = Instant::now();
    let dest = resolve(ctx, slot).await?;
    step(Step::Pick, t);
    let join = async {
        let t = Instant::now();
        match dest {
            Dest::Ws(target, query) => {
                let mut conn = WsConn::connect(&target, &query, subprotocol(ctx, slot.wire), local)
                    .await
                    .map_err(|e| short(&e.to_string()))?;
                step(Step::Upgrade, t);
                let t = Instant::now();
                loop {
                    let msg = conn.next().await.map_err(|e| short(&e.to_string()))?;
                    let Some((_, data)) = msg else {
                        return Err("closed before joined".to_owned());
                    };
                    let now = danmaku_proto::now_ms();
                    let reply =
                        counting::on_message(counts, slot.wire, room, &data, now, &mut |l, ms| {
                            ctx.record(l, ms)
                        });
                    for s in &reply.send {
                        conn.send(opcode(slot.wire), s)
                            .await
                            .map_err(|e| short(&e.to_string()))?;
                    }
                    if let Some(e) = reply.error {
                        return Err(short(&format!("refused: {e}")));
                    }
                    if reply.joined {
                        step(Step::Join, t);
                        return Ok(Conn::Ws(conn));
                    }
                }
            }
            Dest::Quic(addr, cert) => {
                let config = ClientConfig {
                    local_addr: local,
                    heartbeat_interval: Duration::from_millis(ctx.spec.heartbeat_ms),
                    connect_timeout: Duration::from_secs(30),
                    ..ClientConfig::default()
                };
                let token = &ctx.spec.tokens[slot.id as usize % ctx.spec.tokens.len().max(1)];
                let mut client = Client::connect_quic(addr, Some(cert), token, config)
                    .await
                    .map_err(|e| short(&e.to_string()))?;
                step(Step::Upgrade, t);
                let t = Instant::now();
                client.join(room).await.map_err(|e| short(&e.to_string()))?;
                while let Some(ev) = client.next_event().await {
                    match ev {
                        ServerEvent::Joined { channel, .. } if &channel == room => {
                            step(Step::Join, t);
                            return Ok(Conn::Quic(Box::new(client)));
                        }
                        ServerEvent::Error { code, message } => {
                            return Err(short(&format!("refused: {code}: {message}")));
                        }
                        _ => {}
                    }
                }
                Err("closed before joined".to_owned())
            }
        }
    };
    let r = tokio::time::timeout(Duration::from_secs(30), join)
        .await
        .unwrap_or_else(|_| Err("timed out waiting for joined".to_owned()));
    if let Ok(Conn::Ws(c)) = &r {
        *bytes += c.bytes_in;
    }
    r
}

fn short(s: &str) -> String {
    // Group failures by reason: drop ports and addresses that differ per viewer.
    let s: String = s.chars().take(120).collect();
    s
}

async fn serve(
    ctx: &Ctx,
    slot: &Slot,
    conn: Conn,
    counts: &mut ViewerCounts,
    bytes: &mut u64,
    stop: &CancellationToken,
    leave_at: Option<Instant>,
) -> End {
    let room = &ctx.spec.rooms[slot.room as usize];
    let hb = Duration::from_millis(ctx.spec.heartbeat_ms.max(1000));
    // Spread the heartbeats of many viewers over the interval.
    let first = Instant::now() + hb.mul_f64(((slot.id % 997) as f64 + 1.0) / 998.0);
    let mut ping = tokio::time::interval_at(first, hb);
    let leave = async {
        match leave_at {
            Some(t) => tokio::time::sleep_until(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(leave);
    match conn {
        Conn::Ws(mut conn) => {
            let base = conn.bytes_in;
            let mut seen = base;
            // The owed ack's deadline (`ViewerCounts::ack_owed_at`); reset
            // only when it moves, not per frame.
            let never = Instant::now() + Duration::from_secs(86_400);
            let mut ack_at: Option<i64> = None;
            let ack_timer = tokio::time::sleep_until(never);
            tokio::pin!(ack_timer);
            let end = loop {
                let owed = if slot.wire == Wire::Nats {
                    None
                } else {
                    counts.ack_owed_at()
                };
                if owed != ack_at {
                    ack_at = owed;
                    let deadline = owed.map_or(never, |at| {
                        let wait = at.saturating_sub(danmaku_proto::now_ms()).max(0);
                        Instant::now() + Duration::from_millis(wait as u64)
                    });
                    ack_timer.as_mut().reset(deadline);
                }
                tokio::select! {
                    _ = stop.cancelled() => break End::Stopped,
                    _ = &mut leave => break End::Churned,
                    _ = ping.tick() => {
                        if conn.send(opcode(slot.wire), &counting::ping_frame(slot.wire)).await.is_err() {
                            break End::Dropped;
                        }
                    }
                    _ = &mut ack_timer => {
                        ack_at = None;
                        ack_timer.as_mut().reset(never);
                        let ack = counts.flush_ack(slot.wire, room, danmaku_proto::now_ms());
                        if let Some(ack) = ack && conn.send(opcode(slot.wire), &ack).await.is_err() {
                            break End::Dropped;
                        }
                    }
                    msg = conn.next() => {
                        let Ok(Some((_, data))) = msg else { break End::Dropped };
                        ctx.bytes.fetch_add(conn.bytes_in - seen, Relaxed);
                        seen = conn.bytes_in;
                        let before = counts.danmaku + counts.gifts;
                        let frames = counts.frames;
                        let now = danmaku_proto::now_ms();
                        let reply = counting::on_message(counts, slot.wire, room, &data, now, &mut |l, ms| ctx.record(l, ms));
                        ctx.events.fetch_add(counts.danmaku + counts.gifts - before, Relaxed);
                        ctx.frames.fetch_add(counts.frames - frames, Relaxed);
                        if reply.error.is_some() {
                            ctx.errors.fetch_add(1, Relaxed);
                        }
                        let mut failed = false;
                        for s in &reply.send {
                            failed |= conn.send(opcode(slot.wire), s).await.is_err();
                        }
                        if failed {
                            break End::Dropped;
                        }
                    }
                }
            };
            ctx.bytes.fetch_add(conn.bytes_in - seen, Relaxed);
            *bytes += conn.bytes_in - base;
            if !matches!(end, End::Dropped) {
                conn.close().await;
            }
            end
        }
        Conn::Quic(mut client) => loop {
            let ev = tokio::select! {
                _ = stop.cancelled() => break End::Stopped,
                _ = &mut leave => break End::Churned,
                ev = client.next_event() => ev,
            };
            let now = danmaku_proto::now_ms();
            match ev {
                None => break End::Dropped,
                Some(ServerEvent::Batch { channel, events }) if &channel == room => {
                    counts.frames += 1;
                    counts.danmaku += events.len() as u64;
                    ctx.frames.fetch_add(1, Relaxed);
                    ctx.events.fetch_add(events.len() as u64, Relaxed);
                    if let Some(log) = &mut counts.probe {
                        log.on_frame();
                        for e in &events {
                            log.on_event(&e.text);
                            ctx.record(Lane::Danmaku, now.saturating_sub(e.ts_ms).max(0) as u64);
                        }
                    }
                }
                Some(ServerEvent::Reliable {
                    channel,
                    seq,
                    event,
                }) if &channel == room => {
                    // Not a frame of its own: the SDK splits a tick's gifts out
                    // of its batch (`split_tick`), and the batch is counted.
                    counts.on_gift(seq);
                    ctx.events.fetch_add(1, Relaxed);
                    if counts.probe.is_some() {
                        ctx.record(Lane::Gift, now.saturating_sub(event.ts_ms).max(0) as u64);
                    }
                    if client.ack(room, seq).await.is_err() {
                        break End::Dropped;
                    }
                }
                Some(ServerEvent::Error { .. }) => {
                    counts.errors += 1;
                    ctx.errors.fetch_add(1, Relaxed);
                }
                Some(_) => {}
            }
        },
    }
}

async fn run_viewer(
    ctx: Arc<Ctx>,
    slot: Slot,
    ready: mpsc::UnboundedSender<bool>,
    stop: CancellationToken,
) -> ViewerResult {
    let mut res = ViewerResult {
        counts: ViewerCounts::new(slot.probe).with_ack_interval(ctx.spec.ack_interval_ms),
        slot,
        joined: Ok(()),
        dropped: false,
        churn_cycles: 0,
        bytes_in: 0,
    };
    let slot = res.slot.clone();
    let mut first = true;
    loop {
        let started = Instant::now();
        let conn = {
            let _permit = ctx.gate.acquire().await;
            if stop.is_cancelled() {
                return res;
            }
            if first {
                ctx.step(Step::Queue, started);
            }
            connect_and_join(&ctx, &slot, &mut res.counts, &mut res.bytes_in, first).await
        };
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                if first {
                    res.joined = Err(e);
                    ctx.failed.fetch_add(1, Relaxed);
                    let _ = ready.send(false);
                } else {
                    res.dropped = true;
                }
                return res;
            }
        };
        if first {
            first = false;
            lock(&ctx.connect_ms).saturating_record(started.elapsed().as_millis().max(1) as u64);
            ctx.connected.fetch_add(1, Relaxed);
            let _ = ready.send(true);
        }
        let leave_at = slot
            .churn
            .then(|| Instant::now() + Duration::from_millis(ctx.spec.churn_stay_ms));
        match serve(
            &ctx,
            &slot,
            conn,
            &mut res.counts,
            &mut res.bytes_in,
            &stop,
            leave_at,
        )
        .await
        {
            End::Stopped => return res,
            End::Dropped => {
                res.dropped = true;
                ctx.dropped.fetch_add(1, Relaxed);
                return res;
            }
            End::Churned => {
                res.churn_cycles += 1;
                tokio::select! {
                    _ = stop.cancelled() => return res,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// Tallies one viewer against its room's expectation.
fn tally_viewer(
    v: &ViewerResult,
    exp: &RoomExpectation,
    probe_exp: Option<&RoomExpected>,
) -> (LaneTally, LaneTally) {
    let c = &v.counts;
    let mut d = LaneTally {
        expected: exp.danmaku,
        received: c.danmaku,
        ..LaneTally::default()
    };
    match (&c.probe, probe_exp) {
        (Some(log), Some(pe)) => {
            let t = log.tally(pe);
            d.lost = t.lost;
            d.duplicates = t.duplicates;
            d.order_violations = t.order_violations;
            d.unexpected = t.unexpected;
        }
        _ => {
            d.lost = exp.danmaku.saturating_sub(c.danmaku);
            d.excess = c.danmaku.saturating_sub(exp.danmaku);
        }
    }
    let mut g = LaneTally {
        expected: exp.gift_seqs.len() as u64,
        received: c.gifts,
        duplicates: c.gift_duplicates,
        order_violations: c.gift_order_violations,
        ..LaneTally::default()
    };
    if c.gift_seqs.is_empty() && c.gifts > 0 {
        // Counting NATS viewers see no seqs: count only.
        g.lost = g.expected.saturating_sub(c.gifts);
        g.excess = c.gifts.saturating_sub(g.expected);
    } else {
        let hit = exp
            .gift_seqs
            .iter()
            .filter(|s| c.gift_seqs.contains(**s))
            .count() as u64;
        g.lost = g.expected - hit;
        g.unexpected = c.gift_seqs.len() - hit;
    }
    (d, g)
}

/// Runs a worker: connects its viewers at its ramp, reports progress on `out`,
/// waits for [`Control::Stop`] on `control`, tallies, sends [`WorkerMsg::Result`].
pub async fn run(
    spec: WorkerSpec,
    out: mpsc::UnboundedSender<WorkerMsg>,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let ctx = Arc::new(Ctx {
        gate: Semaphore::new(spec.connect_concurrency.max(1)),
        connected: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        frames: AtomicU64::new(0),
        events: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        lat_danmaku: Mutex::new(new_histogram()),
        lat_gift: Mutex::new(new_histogram()),
        lat_interval: Mutex::new(new_histogram()),
        connect_ms: Mutex::new(new_histogram()),
        connect_steps: std::array::from_fn(|_| Mutex::new(new_histogram())),
        http: reqwest::Client::new(),
        certs: tokio::sync::Mutex::new(HashMap::new()),
        spec,
    });
    let stop = CancellationToken::new();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();

    // Progress once a second until the result is sent.
    let progress_stop = CancellationToken::new();
    {
        let (ctx, out, ps) = (ctx.clone(), out.clone(), progress_stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = ps.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let p99 = {
                    let mut h = lock(&ctx.lat_interval);
                    let v = if h.is_empty() {
                        0
                    } else {
                        h.value_at_quantile(0.99)
                    };
                    h.reset();
                    v
                };
                let _ = out.send(WorkerMsg::Progress(Progress {
                    connected: ctx.connected.load(Relaxed),
                    failed: ctx.failed.load(Relaxed),
                    dropped: ctx.dropped.load(Relaxed),
                    frames: ctx.frames.load(Relaxed),
                    events: ctx.events.load(Relaxed),
                    bytes: ctx.bytes.load(Relaxed),
                    errors: ctx.errors.load(Relaxed),
                    p99_ms: p99,
                }));
            }
        });
    }

    // Ramp: spawn viewers in 10 ms steps at `ramp_per_sec`.
    let slots = ctx.spec.slots.clone();
    let total = slots.len() as u64;
    let ramp = if ctx.spec.ramp_per_sec > 0.0 {
        ctx.spec.ramp_per_sec
    } else {
        f64::INFINITY
    };
    let spawner = {
        let (ctx, stop) = (ctx.clone(), stop.clone());
        tokio::spawn(async move {
            let start = Instant::now();
            let mut handles = Vec::with_capacity(slots.len());
            let mut step = tokio::time::interval(Duration::from_millis(10));
            let mut it = slots.into_iter();
            let mut spawned = 0u64;
            loop {
                step.tick().await;
                let due = (start.elapsed().as_secs_f64() * ramp).min(total as f64) as u64;
                while spawned < due.max(1) {
                    let Some(slot) = it.next() else { break };
                    handles.push(tokio::spawn(run_viewer(
                        ctx.clone(),
                        slot,
                        ready_tx.clone(),
                        stop.clone(),
                    )));
                    spawned += 1;
                }
                if spawned >= total {
                    break;
                }
            }
            handles
        })
    };
    let (mut ok, mut failed) = (0u64, 0u64);
    while ok + failed < total {
        match ready_rx.recv().await {
            Some(true) => ok += 1,
            Some(false) => failed += 1,
            None => break,
        }
    }
    let _ = out.send(WorkerMsg::Ready { ok, failed });

    let expected = match control.recv().await {
        Some(Control::Stop { expected }) => expected,
        None => Vec::new(),
    };
    stop.cancel();
    let handles = spawner.await.unwrap_or_default();
    let probe_expected: Vec<RoomExpected> = expected
        .iter()
        .map(|e| {
            let mut r = RoomExpected::default();
            for (s, ns) in &e.danmaku_posts {
                for n in ns {
                    r.add(*s, *n);
                }
            }
            r
        })
        .collect();
    let mut res = WorkerResult::default();
    let none = RoomExpectation::default();
    for h in handles {
        let Ok(v) = h.await else { continue };
        res.attempted += 1;
        let wt = res.wires.entry(v.slot.wire.name().to_owned()).or_default();
        wt.viewers += 1;
        wt.bytes_in += v.bytes_in;
        wt.frames += v.counts.frames;
        wt.deliveries += v.counts.danmaku + v.counts.gifts;
        res.errors += v.counts.errors;
        if v.slot.probe {
            res.probes += 1;
        } else {
            res.counting += 1;
        }
        match &v.joined {
            Err(reason) => {
                res.failed += 1;
                *res.connect_errors.entry(reason.clone()).or_default() += 1;
                continue;
            }
            Ok(()) => res.ok += 1,
        }
        res.dropped += u64::from(v.dropped);
        if v.slot.churn {
            res.churn_viewers += 1;
            res.churn_cycles += v.churn_cycles;
            res.churn_deliveries += v.counts.danmaku + v.counts.gifts;
            continue;
        }
        let room = v.slot.room as usize;
        let (d, g) = tally_viewer(
            &v,
            expected.get(room).unwrap_or(&none),
            probe_expected.get(room),
        );
        for (lane, t) in [("danmaku", d), ("gift", g)] {
            if t.lost > 0 {
                res.worst.push(Worst {
                    viewer: v.slot.id,
                    room: ctx.spec.rooms[room].clone(),
                    lane: lane.to_owned(),
                    received: t.received,
                    expected: t.expected,
                });
            }
        }
        res.danmaku += d;
        res.gifts += g;
    }
    res.worst
        .sort_by_key(|w| std::cmp::Reverse(w.expected.saturating_sub(w.received)));
    res.worst.truncate(10);
    res.latency_danmaku = hist_pairs(&lock(&ctx.lat_danmaku));
    res.latency_gift = hist_pairs(&lock(&ctx.lat_gift));
    res.connect_ms = hist_pairs(&lock(&ctx.connect_ms));
    res.connect_steps = CONNECT_STEPS
        .iter()
        .zip(&ctx.connect_steps)
        .map(|(name, h)| ((*name).to_owned(), hist_pairs(&lock(h))))
        .collect();
    progress_stop.cancel();
    let _ = out.send(WorkerMsg::Result(res));
}

/// The worker process: spec from stdin, messages to stdout as JSON lines.
pub async fn process_main() -> std::io::Result<()> {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let first = lines.next_line().await?.unwrap_or_default();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel();
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    let mut stdout = tokio::io::stdout();
    let spec: WorkerSpec = match serde_json::from_str(&first) {
        Ok(s) => s,
        Err(e) => {
            let msg = WorkerMsg::Failed {
                error: format!("bad worker spec: {e}"),
            };
            let line = serde_json::to_string(&msg).unwrap_or_default();
            stdout.write_all(format!("{line}\n").as_bytes()).await?;
            return stdout.flush().await;
        }
    };
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<Control>(&line) {
                Ok(c) => {
                    let _ = ctl_tx.send(c);
                }
                Err(e) => tracing::error!(error = %e, "unreadable control line"),
            }
        }
        // stdin closed: the coordinator is gone; ctl_tx drops and the worker ends.
    });
    tokio::spawn(run(spec, out_tx, ctl_rx));
    while let Some(msg) = out_rx.recv().await {
        let done = matches!(msg, WorkerMsg::Result(_) | WorkerMsg::Failed { .. });
        let line = serde_json::to_string(&msg).unwrap_or_default();
        stdout.write_all(format!("{line}\n").as_bytes()).await?;
        stdout.flush().await?;
        if done {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_results_survive_json_lines() {
        let stop = Control::Stop {
            expected: vec![RoomExpectation {
                danmaku: 3,
                danmaku_posts: vec![(7, vec![0, 1, 2])],
                gift_seqs: vec![1, 2],
            }],
        };
        let back: Control = serde_json::from_str(&serde_json::to_string(&stop).unwrap()).unwrap();
        let Control::Stop { expected } = back;
        assert_eq!(expected[0].danmaku_posts, vec![(7, vec![0, 1, 2])]);
        let mut r = WorkerResult::default();
        r.wires.insert(
            "ws-pb".into(),
            WireTally {
                viewers: 2,
                ..Default::default()
            },
        );
        r.latency_danmaku = vec![(5, 2)];
        let line = serde_json::to_string(&WorkerMsg::Result(r)).unwrap();
        match serde_json::from_str::<WorkerMsg>(&line).unwrap() {
            WorkerMsg::Result(r) => assert_eq!(
                (r.wires["ws-pb"].viewers, r.latency_danmaku),
                (2, vec![(5, 2)])
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn http_base_of_ws_urls() {
        assert_eq!(
            http_base("ws://127.0.0.1:7071/v1/ws"),
            "http://127.0.0.1:7071"
        );
        assert_eq!(http_base("ws://h:1/"), "http://h:1");
        assert_eq!(http_base("http://h:1"), "http://h:1");
    }

    #[test]
    fn counting_viewer_loss_is_expected_minus_received() {
        let mut counts = ViewerCounts::new(false);
        counts.danmaku = 90;
        for s in [1, 2, 4] {
            counts.on_gift(s);
        }
        let v = ViewerResult {
            slot: Slot {
                id: 0,
                room: 0,
                wire: Wire::WsPb,
                probe: false,
                churn: false,
            },
            joined: Ok(()),
            dropped: false,
            churn_cycles: 0,
            counts,
            bytes_in: 0,
        };
        let exp = RoomExpectation {
            danmaku: 100,
            gift_seqs: vec![1, 2, 3, 4],
            ..Default::default()
        };
        let (d, g) = tally_viewer(&v, &exp, None);
        assert_eq!((d.expected, d.received, d.lost, d.excess), (100, 90, 10, 0));
        assert_eq!((g.expected, g.received, g.lost, g.unexpected), (4, 3, 1, 0));
    }
}
