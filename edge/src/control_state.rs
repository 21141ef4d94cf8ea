//! The control plane's state inside an `Edge`: the drain's
//! flags, every open connection's reply queue (so a drain can redirect it),
//! the cluster-wide online counts of the last heartbeat answer, and the HTTP
//! client the control plane talks to the scheduler with. State only: the
//! tasks that act on it are in `control_plane/`, which sits above the edge
//! node; sessions register here when they open and close.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use danmaku_bus::Bus;
use dashmap::DashMap;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::channels::ConnId;
use crate::config::ControlConfig;
use crate::metrics::ControlMetrics;
use crate::reply::Reply;
use crate::transport::Transport;

/// Bound on every scheduler request (and the store ping of a readiness check),
/// so a hung scheduler never stalls a drain.
pub(crate) const SCHEDULER_TIMEOUT: Duration = Duration::from_secs(2);
/// One connection as the drain sees it: its control queue and when it was redirected.
pub(crate) struct ConnHandle {
    pub(crate) control: mpsc::Sender<Reply>,
    pub(crate) transport: Transport,
    pub(crate) redirected_at: Option<Instant>,
}

/// The control plane's state inside an `Edge`.
pub(crate) struct ControlState {
    pub metrics: ControlMetrics,
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) draining: AtomicBool,
    pub(crate) drain_requested: CancellationToken,
    pub(crate) drained: CancellationToken,
    pub(crate) conns: DashMap<ConnId, ConnHandle>,
    /// Cluster-wide counts from the last heartbeat answer.
    pub(crate) online: RwLock<Arc<HashMap<String, u64>>>,
    pub(crate) http: reqwest::Client,
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

    /// Whether the edge is draining (refusing new connections).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Starts the drain (idempotent). Returns false if it had already started.
    pub fn request_drain(&self) -> bool {
        let first = !self.drain_requested.is_cancelled();
        self.drain_requested.cancel();
        first
    }

    /// Resolves when a drain has finished (no connection left, or the deadline).
    pub async fn drained(&self) {
        self.drained.cancelled().await
    }

    /// The cluster-wide count of `channel` from the last heartbeat answer.
    pub fn cluster_online(&self, channel: &str) -> Option<u64> {
        self.online
            .read()
            .ok()
            .and_then(|m| m.get(channel).copied())
    }
}
