//! `GET /v1/edges?k=N[&seed=S]`: the best `k` edges (default 3), best first,
//! so a client can race connections to several and keep the first that
//! answers. `seed` (optional, any u64, e.g. a hash of the user id) makes the
//! answer reproducible: two schedulers with the same registry and readings
//! give the same edges for the same seed.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use danmaku_proto::control::EdgeList;
use serde::Deserialize;

use crate::error::ApiError;
use crate::state::Scheduler;

/// Edges returned when the client does not say.
pub const DEFAULT_K: usize = 3;
/// Most edges one answer may hold.
pub const MAX_K: usize = 16;

#[derive(Debug, Deserialize)]
pub struct EdgesQuery {
    pub k: Option<usize>,
    pub seed: Option<u64>,
}

pub async fn get_edges(
    State(scheduler): State<Arc<Scheduler>>,
    query: Result<Query<EdgesQuery>, QueryRejection>,
) -> Result<Json<EdgeList>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadQuery(e.body_text()))?;
    let k = query.k.unwrap_or(DEFAULT_K);
    if !(1..=MAX_K).contains(&k) {
        return Err(ApiError::BadQuery(format!(
            "k must be between 1 and {MAX_K}"
        )));
    }
    let edges = scheduler.pick(k, query.seed);
    if edges.is_empty() {
        return Err(ApiError::NoEdge(crate::readiness::why_none(&scheduler)));
    }
    Ok(Json(EdgeList { edges }))
}
