//! The edge's side of the control plane: self-registration with the scheduler,
//! heartbeats carrying local member counts, drain in waves, and the `online`
//! frames pushed to members of big channels.
//!
//! * **Registration.** With [`ControlConfig::scheduler`] set, a task registers
//!   the edge (`POST /v1/registry/edges`, an `app`-role token minted with the
//!   edge's own key), then heartbeats every ~1 s with readiness, connection and
//!   member counts and the biggest 1,000 channels. A `404 unknown_edge` (the
//!   scheduler restarted or ejected us) re-registers. The answer carries the
//!   cluster-wide count of each reported channel; the online pusher uses it.
//! * **Drain** (`POST /admin/drain` or SIGTERM, see [`Edge::request_drain`]): the
//!   edge deregisters, refuses new connections (`503 draining` on the WebSocket
//!   upgrade, an `error{code:"draining"}` frame on QUIC), and every second
//!   redirects a wave of [`ControlConfig::drain_rate`] of its connections to fresh
//!   scheduler picks. A client that stays more than [`REDIRECT_GRACE`] after its
//!   redirect is closed. [`Edge::drained`] resolves when no connection is left or
//!   at [`ControlConfig::drain_deadline`]; the process then exits.
//! * **Online counts.** Every [`ControlConfig::online_push_interval`] each channel
//!   with at least [`ControlConfig::online_push_min`] local members gets one
//!   `online` frame, built once and queued to every member like a batch (a full
//!   queue drops it: the next one comes in a few seconds).
//!
//! The decisions (wave sizes, which channels a heartbeat reports) are pure
//! functions, unit-tested below; the tasks only do I/O around them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use danmaku_bus::Bus;
use danmaku_proto::json::{JsonEdge, JsonServerFrame};
use danmaku_proto::pb::server_frame::Body;
use danmaku_proto::wsframe::{OpCode, Prepared};
use danmaku_proto::{ChannelName, frame, pb};
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Edge;
use crate::channels::{BatchFrames, ConnId, Outbound};
use crate::error::ApiError;
use crate::metrics::ControlMetrics;
use crate::session::{CloseReason, Reply};
use crate::transport::Transport;

/// How long a redirected client may stay before the drain closes it.
pub const REDIRECT_GRACE: Duration = Duration::from_secs(5);
/// Most channels one heartbeat reports (the scheduler refuses more than 10,000).
pub const HEARTBEAT_MAX_CHANNELS: usize = 1_000;
/// Edges asked from the scheduler for a redirect.
const REDIRECT_PICKS: usize = 3;
/// Bound on every scheduler request, so a hung scheduler never stalls a drain.
const SCHEDULER_TIMEOUT: Duration = Duration::from_secs(2);
/// Lifetime of the `app` token the edge mints for each scheduler call.
const TOKEN_TTL_SECS: u64 = 3600;

/// Settings of registration, drain and online pushes.
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

/// One connection as the drain sees it: its control queue and when it was redirected.
struct ConnHandle {
    control: mpsc::Sender<Reply>,
    transport: Transport,
    redirected_at: Option<Instant>,
}

/// The control plane's state inside an [`Edge`].
pub(crate) struct ControlState {
    pub metrics: ControlMetrics,
    bus: Arc<dyn Bus>,
    draining: AtomicBool,
    drain_requested: CancellationToken,
    drained: CancellationToken,
    conns: DashMap<ConnId, ConnHandle>,
    /// Cluster-wide counts from the last heartbeat answer.
    online: RwLock<Arc<HashMap<String, u64>>>,
    http: reqwest::Client,
}

impl ControlState {
    pub fn new(metrics: ControlMetrics, bus: Arc<dyn Bus>, config: &ControlConfig) -> Self {
        metrics.capacity.set(config.capacity as i64);
        ControlState {
            metrics,
            bus,
            draining: AtomicBool::new(false),
            drain_requested: CancellationToken::new(),
            drained: CancellationToken::new(),
            conns: DashMap::new(),
            online: RwLock::new(Arc::new(HashMap::new())),
            // No pooled connections: the heartbeats run on their own runtime
            // (see `spawn`) and a pooled connection is driven by a task of the
            // runtime that opened it. One connect per second per edge is cheap.
            http: reqwest::Client::builder()
                .timeout(SCHEDULER_TIMEOUT)
                .pool_max_idle_per_host(0)
                .build()
                .unwrap_or_default(),
        }
    }

    /// Called by every session when it starts: the drain can reach it.
    pub fn conn_opened(&self, id: ConnId, transport: Transport, control: mpsc::Sender<Reply>) {
        self.conns.insert(
            id,
            ConnHandle {
                control,
                transport,
                redirected_at: None,
            },
        );
    }

    /// Called when a session ends.
    pub fn conn_closed(&self, id: ConnId) {
        self.conns.remove(&id);
    }
}

/// Why a process is not ready, as `/readyz` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotReady {
    /// `draining`, `bus_unavailable` or `store_unavailable`.
    pub reason: &'static str,
    pub message: String,
}

impl Edge {
    /// Whether the edge is draining (refusing new connections).
    pub fn is_draining(&self) -> bool {
        self.control.draining.load(Ordering::Relaxed)
    }

    /// Starts the drain (idempotent). Returns false if it had already started.
    pub fn request_drain(&self) -> bool {
        let first = !self.control.drain_requested.is_cancelled();
        self.control.drain_requested.cancel();
        first
    }

    /// Resolves when a drain has finished (no connection left, or the deadline).
    pub async fn drained(&self) {
        self.control.drained.cancelled().await
    }

    /// Open client connections (both transports).
    pub fn connection_count(&self) -> usize {
        self.control.conns.len()
    }

    /// Readiness of the edge: not draining, bus healthy, store answering.
    pub async fn readiness(&self) -> Result<(), NotReady> {
        if self.is_draining() {
            return Err(NotReady {
                reason: "draining",
                message: "the edge is draining; connect elsewhere".into(),
            });
        }
        if !self.control.bus.healthy() {
            return Err(NotReady {
                reason: "bus_unavailable",
                message: format!("the {} bus cannot deliver", self.control.bus.kind()),
            });
        }
        match tokio::time::timeout(SCHEDULER_TIMEOUT, self.store.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(NotReady {
                reason: "store_unavailable",
                message: e.to_string(),
            }),
            Err(_) => Err(NotReady {
                reason: "store_unavailable",
                message: format!("store ping took over {SCHEDULER_TIMEOUT:?}"),
            }),
        }
    }

    /// `POST /admin/drain` (app-role token). Distributed edges only: a
    /// standalone server has nowhere to send its clients.
    pub fn admin_router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/admin/drain", post(drain_handler))
            .with_state(Arc::clone(self))
    }

    /// `GET /v1/channels/{channel}/online` from this edge's own members: what a
    /// standalone server (the only edge) answers.
    pub fn local_online_router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1/channels/{channel}/online", get(local_online_handler))
            .with_state(Arc::clone(self))
    }

    /// The cluster-wide count of `channel` as last heard from the scheduler,
    /// else the local member count.
    pub fn online_count(&self, channel: &str) -> u64 {
        let local = self.channels.get(channel).map_or(0, |c| c.len() as u64);
        let cluster = self
            .control
            .online
            .read()
            .ok()
            .and_then(|m| m.get(channel).copied());
        cluster.unwrap_or(local)
    }

    fn app_token(&self) -> String {
        self.tokens.mint(
            &self.config.id,
            "app",
            danmaku_proto::token::now_secs(),
            TOKEN_TTL_SECS,
        )
    }
}

/// Spawns the control plane's tasks (called by [`Edge::start`]).
pub(crate) fn spawn(edge: &Arc<Edge>, shutdown: CancellationToken) {
    tokio::spawn(online_loop(Arc::clone(edge), shutdown.clone()));
    tokio::spawn(drain_task(Arc::clone(edge), shutdown.clone()));
    if edge.config.control.scheduler.is_some() {
        spawn_heartbeats(Arc::clone(edge), shutdown);
    }
}

/// Registration and heartbeats run on their own thread and runtime. On the
/// server's runtime a heartbeat waited behind every connection task a batch
/// tick had woken: an edge busy with 15k+ viewers missed its heartbeats and the
/// scheduler ejected it as dead, again and again, while it served fine. The
/// operating system gives this mostly idle thread the CPU as soon as it wakes.
fn spawn_heartbeats(edge: Arc<Edge>, shutdown: CancellationToken) {
    let server = tokio::runtime::Handle::current();
    let spawned = std::thread::Builder::new()
        .name("edge-heartbeat".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(registration_loop(edge, server, shutdown)),
                Err(e) => tracing::error!(error = %e, "no runtime for the scheduler heartbeats"),
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the scheduler heartbeats");
    }
}

/// Refuses the WebSocket upgrade while draining (`503 draining`).
pub(crate) async fn refuse_while_draining(
    State(edge): State<Arc<Edge>>,
    request: Request,
    next: Next,
) -> Response {
    if edge.is_draining() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this edge is draining: ask the scheduler for another",
        )
        .into_response();
    }
    next.run(request).await
}

// ---------------------------------------------------------------------------
// Registration and heartbeats

#[derive(Debug, Serialize)]
struct Registration<'a> {
    id: &'a str,
    ws: String,
    quic: &'a str,
    metrics_url: String,
    capacity: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    egress_capacity: Option<u64>,
    cores: usize,
}

#[derive(Debug, Deserialize)]
struct Registered {
    #[serde(default)]
    heartbeat_interval_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Heartbeat {
    ready: bool,
    draining: bool,
    connections: usize,
    members: usize,
    channels: Vec<ChannelCount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelCount {
    pub channel: String,
    pub members: usize,
}

#[derive(Debug, Deserialize)]
struct HeartbeatAnswer {
    #[serde(default)]
    online: HashMap<String, u64>,
}

/// The channels a heartbeat reports: the biggest first, at most `max`.
pub fn heartbeat_channels(mut counts: Vec<ChannelCount>, max: usize) -> Vec<ChannelCount> {
    counts.retain(|c| c.members > 0);
    counts.sort_unstable_by(|a, b| {
        b.members
            .cmp(&a.members)
            .then_with(|| a.channel.cmp(&b.channel))
    });
    counts.truncate(max);
    counts
}

fn scheduler_url(edge: &Edge, path: &str) -> Option<String> {
    let base = edge.config.control.scheduler.as_deref()?;
    Some(format!("{}{path}", base.trim_end_matches('/')))
}

fn result_of(status: reqwest::StatusCode) -> &'static str {
    if status.is_success() {
        "ok"
    } else if status == reqwest::StatusCode::NOT_FOUND {
        "unknown_edge"
    } else {
        "error"
    }
}

async fn register(edge: &Edge) -> Option<Duration> {
    let control = &edge.config.control;
    let url = scheduler_url(edge, "/v1/registry/edges")?;
    let advertise = control.advertise.as_deref().unwrap_or_default();
    let body = Registration {
        id: &edge.config.id,
        ws: format!("ws://{advertise}/v1/ws"),
        quic: advertise,
        metrics_url: format!(
            "http://{}/metrics",
            control.metrics_advertise.as_deref().unwrap_or(advertise)
        ),
        capacity: control.capacity,
        egress_capacity: control.egress_capacity,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let sent = edge
        .control
        .http
        .post(url)
        .bearer_auth(edge.app_token())
        .json(&body)
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => {
            edge.control.metrics.scheduler("register", "ok");
            let interval = r
                .json::<Registered>()
                .await
                .ok()
                .and_then(|a| a.heartbeat_interval_ms)
                .unwrap_or(1000)
                .clamp(100, 10_000);
            tracing::info!(edge = %edge.config.id, "registered with the scheduler");
            Some(Duration::from_millis(interval))
        }
        Ok(r) => {
            edge.control.metrics.scheduler("register", "error");
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            tracing::warn!(%status, %body, "scheduler refused the registration");
            None
        }
        Err(e) => {
            edge.control.metrics.scheduler("register", "error");
            tracing::warn!(error = %e, "cannot reach the scheduler to register");
            None
        }
    }
}

/// How long a heartbeat waits for the server's runtime to check readiness.
const READINESS_WAIT: Duration = Duration::from_secs(1);

/// What one heartbeat did.
enum Beat {
    Ok,
    Unknown,
    Failed,
}

async fn heartbeat(
    edge: &Arc<Edge>,
    server: &tokio::runtime::Handle,
    last_ready: &mut bool,
) -> Beat {
    let Some(url) = scheduler_url(
        edge,
        &format!("/v1/registry/edges/{}/heartbeat", edge.config.id),
    ) else {
        return Beat::Failed;
    };
    let channels = edge.channels.snapshot();
    let members = channels.iter().map(|c| c.len()).sum();
    let counts = channels
        .iter()
        .map(|c| ChannelCount {
            channel: c.name().to_string(),
            members: c.len(),
        })
        .collect();
    // The store ping runs on the server's runtime, where the store's pooled
    // connections live (one opened from here would die with this runtime). A
    // runtime too busy to answer within a second keeps the last answer: busy
    // is not dead, and the heartbeat must not wait for it.
    let probe = Arc::clone(edge);
    let ready = server.spawn(async move { probe.readiness().await.is_ok() });
    if let Ok(Ok(r)) = tokio::time::timeout(READINESS_WAIT, ready).await {
        *last_ready = r;
    }
    let body = Heartbeat {
        ready: *last_ready,
        draining: edge.is_draining(),
        connections: edge.connection_count(),
        members,
        channels: heartbeat_channels(counts, HEARTBEAT_MAX_CHANNELS),
    };
    let sent = edge
        .control
        .http
        .post(url)
        .bearer_auth(edge.app_token())
        .json(&body)
        .send()
        .await;
    let r = match sent {
        Ok(r) => r,
        Err(e) => {
            edge.control.metrics.scheduler("heartbeat", "error");
            tracing::debug!(error = %e, "heartbeat failed");
            return Beat::Failed;
        }
    };
    let result = result_of(r.status());
    edge.control.metrics.scheduler("heartbeat", result);
    match result {
        "ok" => {
            if let Ok(answer) = r.json::<HeartbeatAnswer>().await
                && let Ok(mut online) = edge.control.online.write()
            {
                *online = Arc::new(answer.online);
            }
            Beat::Ok
        }
        "unknown_edge" => Beat::Unknown,
        _ => Beat::Failed,
    }
}

async fn registration_loop(
    edge: Arc<Edge>,
    server: tokio::runtime::Handle,
    shutdown: CancellationToken,
) {
    let mut interval = None;
    let mut retry = Duration::from_millis(200);
    let mut last_ready = false;
    loop {
        let wait = match interval {
            None => match register(&edge).await {
                Some(i) => {
                    interval = Some(i);
                    retry = Duration::from_millis(200);
                    i
                }
                None => {
                    retry = (retry * 2).min(Duration::from_secs(5));
                    retry
                }
            },
            Some(i) => {
                if let Beat::Unknown = heartbeat(&edge, &server, &mut last_ready).await {
                    tracing::info!(edge = %edge.config.id, "scheduler forgot this edge; registering again");
                    interval = None;
                    continue;
                }
                i
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            // A drain deregisters (in the drain task) and heartbeats stop, or they
            // would register the edge again.
            _ = edge.control.drain_requested.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    // Clean shutdown without a drain: leave the registry at once.
    deregister(&edge).await;
}

async fn deregister(edge: &Edge) {
    let Some(url) = scheduler_url(edge, &format!("/v1/registry/edges/{}", edge.config.id)) else {
        return;
    };
    match edge
        .control
        .http
        .delete(url)
        .bearer_auth(edge.app_token())
        .send()
        .await
    {
        Ok(r) => {
            edge.control
                .metrics
                .scheduler("deregister", result_of(r.status()));
            tracing::info!(edge = %edge.config.id, status = %r.status(), "deregistered");
        }
        Err(e) => {
            edge.control.metrics.scheduler("deregister", "error");
            tracing::warn!(error = %e, "cannot reach the scheduler to deregister");
        }
    }
}

// ---------------------------------------------------------------------------
// Drain

/// How many connections each wave redirects: `rate` of the connections at the
/// start, at least one, so `1 / rate` waves move everyone.
pub fn wave_size(at_start: usize, rate: f64) -> usize {
    let rate = if rate.is_finite() && rate > 0.0 {
        rate.min(1.0)
    } else {
        0.1
    };
    ((at_start as f64 * rate).ceil() as usize).max(1)
}

#[derive(Debug, Deserialize)]
struct EdgeList {
    edges: Vec<JsonEdge>,
}

/// Fresh picks from the scheduler, minus this edge; empty without a scheduler
/// or when it cannot answer (the client then tries the edges it knows).
async fn fresh_picks(edge: &Edge) -> Vec<pb::EdgeAddr> {
    let Some(url) = scheduler_url(edge, &format!("/v1/edges?k={REDIRECT_PICKS}")) else {
        return Vec::new();
    };
    let answer = match edge.control.http.get(url).send().await {
        Ok(r) if r.status().is_success() => r.json::<EdgeList>().await.ok(),
        Ok(r) => {
            tracing::warn!(status = %r.status(), "scheduler gave no picks for the redirect");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot reach the scheduler for redirect picks");
            None
        }
    };
    edge.control
        .metrics
        .scheduler("picks", if answer.is_some() { "ok" } else { "error" });
    answer
        .map(|a| a.edges)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.id != edge.config.id)
        .map(|e| pb::EdgeAddr {
            id: e.id,
            ws: e.ws,
            quic: e.quic,
            load: e.load,
        })
        .collect()
}

/// A `redirect` frame built once per wave for both wire forms.
fn redirect_frames(edges: Vec<pb::EdgeAddr>) -> (Outbound, Outbound) {
    let json = JsonServerFrame::Redirect {
        edges: edges
            .iter()
            .map(|e| JsonEdge {
                id: e.id.clone(),
                ws: e.ws.clone(),
                quic: e.quic.clone(),
                load: e.load,
            })
            .collect(),
    }
    .to_text();
    let pb = frame::server(Body::Redirect(pb::Redirect { edges }));
    (
        Outbound::encode(OpCode::Binary, &pb),
        Outbound::new(OpCode::Text, json.as_bytes()),
    )
}

async fn drain_task(edge: Arc<Edge>, shutdown: CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => return,
        _ = edge.control.drain_requested.cancelled() => {}
    }
    let control = &edge.control;
    control.draining.store(true, Ordering::Relaxed);
    control.metrics.draining.set(1);
    let started = Instant::now();
    let deadline = started + edge.config.control.drain_deadline;
    let at_start = edge.connection_count();
    let per_wave = wave_size(at_start, edge.config.control.drain_rate);
    tracing::info!(edge = %edge.config.id, connections = at_start, per_wave, "draining");
    deregister(&edge).await;
    let mut next_wave = Instant::now();
    loop {
        let remaining = edge.connection_count();
        control.metrics.drain_remaining.set(remaining as i64);
        if remaining == 0 {
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            tracing::warn!(remaining, "drain deadline reached; closing the rest");
            break;
        }
        if now >= next_wave {
            next_wave = now + Duration::from_secs(1);
            let (pb, json) = redirect_frames(fresh_picks(&edge).await);
            let now = Instant::now();
            let mut sent = 0;
            for mut conn in control.conns.iter_mut() {
                match conn.redirected_at {
                    None if sent < per_wave => {
                        let frame = if conn.transport.is_json() {
                            json.clone()
                        } else {
                            pb.clone()
                        };
                        if conn.control.try_send(Reply::Shared(frame)).is_ok() {
                            conn.redirected_at = Some(now);
                            sent += 1;
                        }
                    }
                    Some(at)
                        if now.duration_since(at) > REDIRECT_GRACE
                            && conn
                                .control
                                .try_send(Reply::Close(CloseReason::Shutdown))
                                .is_ok() =>
                    {
                        control.metrics.drain_forced_closes.inc();
                        // Counted once: the next wave does not close it again.
                        conn.redirected_at = Some(now + Duration::from_secs(3600));
                    }
                    _ => {}
                }
            }
            control.metrics.drain_redirects.inc_by(sent as u64);
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    control
        .metrics
        .drain_remaining
        .set(edge.connection_count() as i64);
    tracing::info!(
        edge = %edge.config.id,
        took_ms = started.elapsed().as_millis() as u64,
        remaining = edge.connection_count(),
        "drain finished"
    );
    control.drained.cancel();
}

fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

async fn drain_handler(State(edge): State<Arc<Edge>>, headers: HeaderMap) -> Response {
    let metrics = &edge.control.metrics.drain_requests;
    let claims = match edge.verify_token(bearer(&headers)) {
        Ok(c) => c,
        Err(e) => {
            metrics.with_label_values(&["bad_token"]).inc();
            return ApiError::new(StatusCode::UNAUTHORIZED, "bad_token", e.to_string())
                .into_response();
        }
    };
    if claims.role != "app" {
        metrics.with_label_values(&["forbidden"]).inc();
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "draining an edge needs an app-role token",
        )
        .into_response();
    }
    metrics.with_label_values(&["accepted"]).inc();
    let started = edge.request_drain();
    tracing::info!(by = %claims.sub, started, "drain requested");
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({
            "draining": true,
            "connections": edge.connection_count(),
        })),
    )
        .into_response()
}

// ---------------------------------------------------------------------------
// Online counts

async fn local_online_handler(
    State(edge): State<Arc<Edge>>,
    Path(channel): Path<String>,
) -> Response {
    match ChannelName::parse(&channel) {
        Ok(name) => Json(serde_json::json!({
            "channel": name.as_str(),
            "online": edge.online_count(name.as_str()),
        }))
        .into_response(),
        Err(e) => {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_channel", e.to_string()).into_response()
        }
    }
}

/// The `online` frame of `channel`, built once for every member.
fn online_frames(channel: &str, online: u64, json: bool) -> BatchFrames {
    let pb = Prepared::encode(
        OpCode::Binary,
        &frame::server(Body::Online(pb::Online {
            channel: channel.to_owned(),
            online,
        })),
    );
    let json = json.then(|| {
        let text = JsonServerFrame::Online {
            channel: channel.to_owned(),
            online,
        }
        .to_text();
        Prepared::new(OpCode::Text, text.as_bytes())
    });
    BatchFrames { pb, json }
}

async fn online_loop(edge: Arc<Edge>, shutdown: CancellationToken) {
    let every = edge
        .config
        .control
        .online_push_interval
        .max(Duration::from_millis(100));
    let min = edge.config.control.online_push_min.max(1);
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for channel in edge.channels.snapshot() {
            if channel.len() < min {
                continue;
            }
            let online = edge.online_count(channel.name().as_str());
            let frames = online_frames(channel.name().as_str(), online, channel.json_members() > 0);
            let out = channel.push(&frames, None);
            edge.control
                .metrics
                .online_frames
                .inc_by(out.total_pushed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(channel: &str, members: usize) -> ChannelCount {
        ChannelCount {
            channel: channel.into(),
            members,
        }
    }

    #[test]
    fn heartbeat_reports_the_biggest_channels_first_and_bounded() {
        let counts = vec![
            count("room:a", 3),
            count("room:b", 1200),
            count("room:c", 0),
            count("room:d", 50),
        ];
        let out = heartbeat_channels(counts.clone(), 10);
        assert_eq!(
            out,
            vec![
                count("room:b", 1200),
                count("room:d", 50),
                count("room:a", 3)
            ]
        );
        assert_eq!(heartbeat_channels(counts, 2).len(), 2);
    }

    #[test]
    fn waves_move_everyone_in_one_over_rate_seconds() {
        assert_eq!(wave_size(500, 0.1), 50);
        assert_eq!(wave_size(5, 0.1), 1);
        assert_eq!(wave_size(0, 0.1), 1);
        assert_eq!(wave_size(501, 0.1), 51);
        assert_eq!(wave_size(100, 5.0), 100);
        assert_eq!(wave_size(100, f64::NAN), 10);
        assert_eq!(wave_size(100, -1.0), 10);
    }

    #[test]
    fn online_frame_is_built_in_both_forms() {
        let f = online_frames("room:1", 900, true);
        let text = f.json.expect("json built");
        assert_eq!(
            &text.payload()[..],
            br#"{"type":"online","channel":"room:1","online":900}"#
        );
        let decoded =
            danmaku_proto::frame::decode_server(&f.pb.payload(), &danmaku_proto::Limits::default())
                .unwrap();
        assert_eq!(
            decoded.body,
            Some(Body::Online(pb::Online {
                channel: "room:1".into(),
                online: 900
            }))
        );
        assert!(online_frames("room:1", 1, false).json.is_none());
    }
}
