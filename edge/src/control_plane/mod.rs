//! The edge's side of the control plane, one file per concern:
//!
//! * [`registration`]: with [`ControlConfig::scheduler`] set, a task registers
//!   the edge (`POST /v1/registry/edges`, an `app`-role token minted with the
//!   edge's own key), then heartbeats every ~1 s with readiness, connection and
//!   member counts and the biggest 1,000 channels. A `404 unknown_edge` (the
//!   scheduler restarted or ejected us) re-registers. The answer carries the
//!   cluster-wide count of each reported channel; [`online`] uses it.
//! * [`drain`] (`POST /admin/drain` or SIGTERM, see [`crate::Edge::request_drain`]):
//!   the edge deregisters, refuses new connections (`503 draining` on the
//!   WebSocket upgrade, an `error{code:"draining"}` frame on QUIC), and every
//!   second redirects a wave of [`ControlConfig::drain_rate`] of its connections
//!   to fresh scheduler picks. A client that stays more than
//!   [`drain::REDIRECT_GRACE`] after its redirect is closed.
//!   [`crate::Edge::drained`] resolves when no connection is left or at
//!   [`ControlConfig::drain_deadline`]; the process then exits.
//! * [`online`]: every [`ControlConfig::online_push_interval`] each channel
//!   with at least [`ControlConfig::online_push_min`] local members gets one
//!   `online` frame, built once and queued to every member like a batch (a full
//!   queue drops it: the next one comes in a few seconds).
//! * [`readiness`]: what `/readyz` and the heartbeats report.
//!
//! The JSON bodies exchanged with the scheduler are
//! [`danmaku_proto::control`]'s, shared with the scheduler and the client.
//! The decisions (wave sizes, which channels a heartbeat reports) are pure
//! functions, unit-tested beside them; the tasks only do I/O around them.
//! [`crate::Edge`]'s public methods for all of this are in `lib.rs`; they call
//! into here.

pub mod drain;
pub mod online;
pub mod readiness;
pub mod registration;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use danmaku_bus::Bus;
use dashmap::DashMap;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use crate::config::ControlConfig;
pub use drain::{REDIRECT_GRACE, wave_size};
pub use readiness::NotReady;
pub use registration::{HEARTBEAT_MAX_CHANNELS, heartbeat_channels};

use crate::Edge;
use crate::channels::ConnId;
use crate::metrics::ControlMetrics;
use crate::session::Reply;
use crate::transport::Transport;

/// Bound on every scheduler request (and the store ping of a readiness check),
/// so a hung scheduler never stalls a drain.
const SCHEDULER_TIMEOUT: Duration = Duration::from_secs(2);
/// Lifetime of the `app` token the edge mints for each scheduler call.
const TOKEN_TTL_SECS: u64 = 3600;

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
            // (see `registration::spawn_heartbeats`) and a pooled connection is
            // driven by a task of the runtime that opened it. One connect per
            // second per edge is cheap.
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

    /// Open client connections (both transports).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }
}

/// Spawns the control plane's tasks (called by [`Edge::start`]).
pub(crate) fn spawn(edge: &Arc<Edge>, shutdown: CancellationToken) {
    tokio::spawn(online::online_loop(Arc::clone(edge), shutdown.clone()));
    tokio::spawn(drain::drain_task(Arc::clone(edge), shutdown.clone()));
    if edge.config.control.scheduler.is_some() {
        registration::spawn_heartbeats(Arc::clone(edge), shutdown);
    }
}

/// `{scheduler}{path}`, or `None` when the edge has no scheduler.
fn scheduler_url(edge: &Edge, path: &str) -> Option<String> {
    let base = edge.config.control.scheduler.as_deref()?;
    Some(format!("{}{path}", base.trim_end_matches('/')))
}

/// An `app`-role token for one scheduler call, minted with the edge's own key.
fn app_token(edge: &Edge) -> String {
    edge.tokens.mint(
        &edge.config.id,
        "app",
        danmaku_proto::token::now_secs(),
        TOKEN_TTL_SECS,
    )
}
