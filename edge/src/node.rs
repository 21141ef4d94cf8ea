//! The edge node: what one running edge holds, shared by every task and
//! connection as an `Arc<Edge>`. State and the questions it answers only: the
//! tasks that act on it are started by `Edge::start`
//! (`lib.rs`) and live in the modules above this one (the connection task,
//! the control plane, the transports), so every arrow into this file points
//! down.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use danmaku_proto::token::{Claims, TokenError, TokenKey};
use danmaku_store::Store;
use tokio_util::sync::CancellationToken;

use crate::account::Account;
use crate::bans::Bans;
use crate::channels::{Channels, ConnId};
use crate::config::EdgeConfig;
use crate::control_state::ControlState;
use crate::limits::Limiter;
use crate::metrics::Metrics;
use crate::tls::{self, CertMaterial};
use crate::top_rooms::TopRoomsSnapshot;

/// A running edge. Cheap to share: handlers hold an `Arc<Edge>`.
pub struct Edge {
    pub(crate) config: EdgeConfig,
    pub(crate) tokens: TokenKey,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) metrics: Metrics,
    pub(crate) channels: Arc<Channels>,
    pub(crate) cert: CertMaterial,
    pub(crate) quic_config: quinn::ServerConfig,
    pub(crate) shutdown: CancellationToken,
    pub(crate) next_conn: AtomicU64,
    pub(crate) control: ControlState,
    pub(crate) top_rooms: tokio::sync::watch::Receiver<Arc<TopRoomsSnapshot>>,
    /// Per-user and per-IP connection counts and frame budgets (`limits.rs`).
    pub(crate) limiter: Arc<Limiter>,
    /// Revoked tokens, blocked users and the open connections by user (`account.rs`).
    pub(crate) account: Arc<Account>,
    /// Active channel bans: a banned user's `join` is refused (`bans.rs`).
    pub(crate) bans: Arc<Bans>,
    /// Long-poll's rings of recent ticks, per polled room (`poll_rooms.rs`).
    pub(crate) polls: crate::poll_rooms::PollRooms,
}

impl Edge {
    /// Sets `TCP_NODELAY` (batches are already coalesced; Nagle only adds
    /// latency) and `SO_SNDBUF` from the config on an accepted socket.
    pub fn tune_tcp(&self, stream: &tokio::net::TcpStream) {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        if let Some(size) = self.config.tcp_send_buffer {
            let sock = socket2::SockRef::from(stream);
            if let Err(e) = sock.set_send_buffer_size(size) {
                tracing::debug!(error = %e, size, "cannot set SO_SNDBUF");
            }
        }
    }

    /// DER of the QUIC server certificate (dev clients trust exactly this).
    pub fn cert_der(&self) -> &[u8] {
        self.cert.leaf()
    }

    /// Lowercase hex SHA-256 fingerprint of [`Edge::cert_der`].
    pub fn cert_sha256_hex(&self) -> String {
        tls::sha256_hex(self.cert.leaf())
    }

    /// The configuration this edge runs with.
    pub fn config(&self) -> &EdgeConfig {
        &self.config
    }

    /// The latest top-rooms ranking (empty before the first one).
    pub fn top_rooms(&self) -> Arc<TopRoomsSnapshot> {
        Arc::clone(&self.top_rooms.borrow())
    }

    /// Channels with at least one local member.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Users with a connection on this edge (the limiter's entries).
    pub fn connected_users(&self) -> usize {
        self.limiter.users()
    }

    pub(crate) fn verify_token(&self, token: &str) -> Result<Claims, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        self.tokens.verify(token, danmaku_proto::token::now_secs())
    }

    pub(crate) fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether the edge is draining (refusing new connections).
    pub fn is_draining(&self) -> bool {
        self.control.is_draining()
    }

    /// Starts the drain (idempotent). Returns false if it had already started.
    pub fn request_drain(&self) -> bool {
        self.control.request_drain()
    }

    /// Resolves when a drain has finished (no connection left, or the deadline).
    pub async fn drained(&self) {
        self.control.drained().await
    }

    /// Open client connections (both transports).
    pub fn connection_count(&self) -> usize {
        self.control.connection_count()
    }

    /// The cluster-wide count of `channel` as last heard from the scheduler,
    /// else the local member count.
    pub fn online_count(&self, channel: &str) -> u64 {
        self.control
            .cluster_online(channel)
            .unwrap_or_else(|| self.channels.get(channel).map_or(0, |c| c.len() as u64))
    }
}
