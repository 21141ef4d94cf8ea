//! What every danmaku process serves besides its own API: `/metrics` and
//! `/healthz`, the socket pair of one `--listen` address (TCP for HTTP and
//! WebSocket, UDP with the same port number for QUIC), and signal handling.

use std::net::{SocketAddr, TcpListener as StdTcpListener, UdpSocket};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
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

/// Binds TCP and UDP on the same address and port. With port 0 the kernel picks
/// the TCP port and UDP takes the same number; if that UDP port is taken, try
/// again with another pick.
pub fn bind_pair(addr: SocketAddr) -> Result<(StdTcpListener, UdpSocket), ServeError> {
    let attempts = if addr.port() == 0 { 20 } else { 1 };
    for _ in 0..attempts {
        let tcp = StdTcpListener::bind(addr).map_err(|source| ServeError::Bind { addr, source })?;
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
