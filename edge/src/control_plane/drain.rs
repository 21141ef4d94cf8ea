//! Drain: leave the cluster without dropping viewers. `POST /admin/drain`
//! (app-role token) or SIGTERM starts it; the edge deregisters, refuses new
//! connections and every second redirects a wave of its connections
//! ([`wave_size`]) to fresh scheduler picks, closing those that stay past
//! [`REDIRECT_GRACE`], until none is left or the deadline passes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use danmaku_proto::control::EdgeList;
use danmaku_proto::frame;
use danmaku_proto::json::{JsonEdge, JsonServerFrame};
use danmaku_proto::pb::{self, server_frame::Body};
use danmaku_proto::wsframe::OpCode;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::registration::deregister;
use super::scheduler::scheduler_url;
use crate::channels::Outbound;
use crate::error::ApiError;
use crate::node::Edge;
use crate::reply::{CloseReason, Reply};

/// How long a redirected client may stay before the drain closes it.
pub const REDIRECT_GRACE: Duration = Duration::from_secs(5);
/// Edges asked from the scheduler for a redirect.
const REDIRECT_PICKS: usize = 3;

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

/// `POST /admin/drain`.
pub(crate) fn router(edge: Arc<Edge>) -> Router {
    Router::new()
        .route("/admin/drain", post(drain_handler))
        .with_state(edge)
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
        edges: edges.iter().map(JsonEdge::from).collect(),
    }
    .to_text();
    let pb = frame::server(Body::Redirect(pb::Redirect { edges }));
    (
        Outbound::encode(OpCode::Binary, &pb),
        Outbound::new(OpCode::Text, json.as_bytes()),
    )
}

pub(super) async fn drain_task(edge: Arc<Edge>, shutdown: CancellationToken) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
