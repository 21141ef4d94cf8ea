//! Serves the edge's HTTP on a TCP listener: HTTP/1.1 only, with upgrades.
//!
//! Why not `axum::serve`: it serves through hyper-util's HTTP/1-or-2 builder,
//! which reads the first bytes to tell the versions apart and wraps the socket
//! in a private type to put them back. An upgraded WebSocket then cannot take
//! its `TcpStream` back from hyper (`ws.rs` downcasts to it), and every read and
//! write of every viewer goes through hyper's boxed IO and `tokio::io::split`'s
//! lock. Viewers speak HTTP/1.1 (a WebSocket upgrade is HTTP/1.1 only), so the
//! edge serves HTTP/1.1 and the socket comes back as it was accepted.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::ConnectInfo;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Pause after a failed `accept` (out of file descriptors, mostly) before the
/// next one, so a full process does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `app` on `listener` until `shutdown`: each accepted socket goes
/// through `tune` (e.g. [`Edge::tune_tcp`](crate::Edge::tune_tcp)), requests
/// carry `ConnectInfo<SocketAddr>`, and on shutdown the server stops accepting,
/// lets requests in flight finish and returns when their connections end
/// (upgraded WebSockets are the edge's own tasks by then, as with `axum::serve`).
pub async fn serve_http1(
    listener: TcpListener,
    app: Router,
    tune: impl Fn(&TcpStream) + Send + 'static,
    shutdown: CancellationToken,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        tune(&tcp);
        conns.spawn(serve_connection(tcp, peer, app.clone(), shutdown.clone()));
    }
    while conns.join_next().await.is_some() {}
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    shutdown: CancellationToken,
) {
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(req.map(axum::body::Body::new))
        });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    tokio::pin!(conn);
    let done = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = done {
        tracing::debug!(error = %e, %peer, "http connection ended with an error");
    }
}
