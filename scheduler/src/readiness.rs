//! `/readyz` of a scheduler process: 200 `{"ready":true,"healthy_edges":N}`
//! while at least one edge can be handed out, else 503
//! `{"ready":false,"reason":"no_edge","message":"…"}` (the same shape as every
//! other process's readiness answer), so a load balancer stops sending clients
//! to a scheduler that would only answer `503 no_edge`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use crate::load_model::EdgeState;
use crate::state::Scheduler;

pub async fn readyz(
    State(scheduler): State<Arc<Scheduler>>,
) -> (StatusCode, Json<serde_json::Value>) {
    let healthy = scheduler
        .state_counts()
        .iter()
        .find(|(s, _)| *s == EdgeState::Healthy)
        .map_or(0, |(_, n)| *n);
    if healthy > 0 {
        (
            StatusCode::OK,
            Json(serde_json::json!({"ready": true, "healthy_edges": healthy})),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "ready": false,
                "reason": "no_edge",
                "message": why_none(&scheduler),
            })),
        )
    }
}

/// Why no edge can be handed out, e.g. "no healthy edge (2 warming, 1 draining)".
pub fn why_none(scheduler: &Scheduler) -> String {
    let others: Vec<String> = scheduler
        .state_counts()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| format!("{n} {}", s.label()))
        .collect();
    if others.is_empty() {
        "no edge is registered".to_owned()
    } else {
        format!("no healthy edge ({})", others.join(", "))
    }
}
