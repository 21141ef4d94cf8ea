//! What every danmaku process serves besides its own API: `/metrics`,
//! `/healthz` (alive) and `/readyz` (able to serve), the socket pair of one
//! `--listen` address (TCP for HTTP and WebSocket, UDP with the same port number
//! for QUIC), and signal handling.

use std::net::{SocketAddr, TcpListener as StdTcpListener, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use danmaku_bus::Bus;
use danmaku_edge::{Edge, NotReady};
use danmaku_store::Store;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio_util::sync::CancellationToken;

/// Errors while setting up a process's sockets.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("could not find a port free for both TCP and UDP near {0}")]
    NoPortPair(SocketAddr),
}

/// Connections the kernel may hold completed but not yet accepted on a TCP
/// listener (`listen(2)` backlog; Linux caps it at `net.core.somaxconn`, 4096 by
/// default since 5.4). The standard library asks for 128: when an edge dies and
/// its 10,000 viewers reconnect to another within a second, a 128-deep queue
/// overflows, the kernel drops the extra handshakes and those clients wait for
/// TCP's SYN retransmits (1 s, 3 s, 7 s, 15 s, 31 s after the first try). That
/// was the tail of the reconnect storm in BENCHMARKS.md, "Chaos".
pub const LISTEN_BACKLOG: i32 = 65_535;

/// Binds TCP and UDP on the same address and port. With port 0 the kernel picks
/// the TCP port and UDP takes the same number; if that UDP port is taken, try
/// again with another pick. The TCP listener gets a [`LISTEN_BACKLOG`]-deep queue.
pub fn bind_pair(addr: SocketAddr) -> Result<(StdTcpListener, UdpSocket), ServeError> {
    let attempts = if addr.port() == 0 { 20 } else { 1 };
    for _ in 0..attempts {
        let tcp = StdTcpListener::bind(addr).map_err(|source| ServeError::Bind { addr, source })?;
        // listen(2) again on a listening socket only changes its backlog.
        socket2::SockRef::from(&tcp)
            .listen(LISTEN_BACKLOG)
            .map_err(|source| ServeError::Bind { addr, source })?;
        let local = tcp
            .local_addr()
            .map_err(|source| ServeError::Bind { addr, source })?;
        match UdpSocket::bind(local) {
            Ok(udp) => {
                tcp.set_nonblocking(true)
                    .map_err(|source| ServeError::Bind { addr, source })?;
                udp.set_nonblocking(true)
                    .map_err(|source| ServeError::Bind { addr, source })?;
                return Ok((tcp, udp));
            }
            Err(source) if attempts == 1 => {
                return Err(ServeError::Bind {
                    addr: local,
                    source,
                });
            }
            Err(_) => continue,
        }
    }
    Err(ServeError::NoPortPair(addr))
}

/// `/metrics` (Prometheus text format of `registry`) and `/healthz`.
pub fn ops_router(registry: Registry) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move { render_metrics(&registry) }
            }),
        )
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
}

/// `/healthz` alone: the public listener's ops route when `/metrics` is served
/// on a separate admin listener ([`ops_router`] there).
pub fn healthz_router() -> Router {
    Router::new().route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
}

/// A process registry with the standard process collector
/// (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_open_fds`, …) already in it: the scheduler's load model reads CPU
/// from every edge's `/metrics`.
pub fn process_registry() -> Registry {
    let registry = Registry::new();
    #[cfg(target_os = "linux")]
    if let Err(e) = registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    )) {
        tracing::warn!(error = %e, "cannot register the process collector");
    }
    registry
}

/// Longest a readiness check waits for the store.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/readyz` checks: the bus and store a process depends on, and the edge
/// (draining, plus its own bus and store checks).
#[derive(Clone, Default)]
pub struct Readiness {
    pub bus: Option<Arc<dyn Bus>>,
    pub store: Option<Arc<dyn Store>>,
    pub edge: Option<Arc<Edge>>,
}

impl Readiness {
    /// `Ok` when every dependency answers; else the first reason it cannot serve.
    pub async fn check(&self) -> Result<(), NotReady> {
        if let Some(edge) = &self.edge {
            edge.readiness().await?;
        }
        if let Some(bus) = &self.bus
            && !bus.healthy()
        {
            return Err(NotReady {
                reason: "bus_unavailable",
                message: format!("the {} bus cannot deliver", bus.kind()),
            });
        }
        if let Some(store) = &self.store {
            match tokio::time::timeout(READY_TIMEOUT, store.ping()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    return Err(NotReady {
                        reason: "store_unavailable",
                        message: e.to_string(),
                    });
                }
                Err(_) => {
                    return Err(NotReady {
                        reason: "store_unavailable",
                        message: format!("store ping took over {READY_TIMEOUT:?}"),
                    });
                }
            }
        }
        Ok(())
    }
}

/// `/readyz`: 200 `{"ready":true}` when the process can serve, else 503
/// `{"ready":false,"reason":"draining|bus_unavailable|store_unavailable","message":"…"}`.
/// Load balancers and the scheduler stop sending work on 503; `/healthz` stays 200
/// (alive: do not restart it).
pub fn readyz_router(readiness: Readiness) -> Router {
    Router::new().route(
        "/readyz",
        get(move || {
            let readiness = readiness.clone();
            async move {
                match readiness.check().await {
                    Ok(()) => (StatusCode::OK, Json(serde_json::json!({"ready": true}))),
                    Err(NotReady { reason, message }) => {
                        tracing::debug!(reason, %message, "not ready");
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            Json(serde_json::json!({
                                "ready": false,
                                "reason": reason,
                                "message": message,
                            })),
                        )
                    }
                }
            }
        }),
    )
}

fn render_metrics(registry: &Registry) -> axum::response::Response {
    let encoder = TextEncoder::new();
    let mut buf = Vec::with_capacity(16 << 10);
    match encoder.encode(&registry.gather(), &mut buf) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, encoder.format_type().to_owned())],
            buf,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// For an edge: the first Ctrl-C or SIGTERM starts a drain (clients are
/// redirected in waves), a second one cancels `shutdown` at once. A finished
/// drain (or a drain started by `POST /admin/drain`) cancels `shutdown` too.
pub fn drain_on_signal(edge: Arc<Edge>, shutdown: CancellationToken) {
    let signalled = CancellationToken::new();
    cancel_on_signal(signalled.clone());
    let drained = edge.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        drained.drained().await;
        stop.cancel();
    });
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = signalled.cancelled() => {}
        }
        tracing::info!("draining before exit; signal again to stop at once");
        edge.request_drain();
        let again = CancellationToken::new();
        cancel_on_signal(again.clone());
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = again.cancelled() => shutdown.cancel(),
        }
    });
}

/// Cancels `token` on Ctrl-C or SIGTERM, so every task can wind down.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {},
            _ = term => {},
        }
        tracing::info!("shutdown signal received");
        token.cancel();
    });
}
