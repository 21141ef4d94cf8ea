//! `GET /v1/edges?k=N`: the best `k` edges (default 3), best first, so a
//! client can race connections to several and keep the first that answers.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};

use crate::{ApiError, EdgeInfo, Scheduler, ranking};

/// Edges returned when the client does not say.
pub const DEFAULT_K: usize = 3;
/// Most edges one answer may hold.
pub const MAX_K: usize = 32;

#[derive(Debug, Deserialize)]
pub struct EdgesQuery {
    pub k: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct EdgesResponse {
    pub edges: Vec<EdgeInfo>,
}

pub async fn get_edges(
    State(scheduler): State<Arc<Scheduler>>,
    query: Result<Query<EdgesQuery>, QueryRejection>,
) -> Result<Json<EdgesResponse>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadQuery(e.body_text()))?;
    let k = query.k.unwrap_or(DEFAULT_K);
    if !(1..=MAX_K).contains(&k) {
        return Err(ApiError::BadQuery(format!(
            "k must be between 1 and {MAX_K}"
        )));
    }
    let edges = ranking::best_edges(scheduler.edges(), k);
    if edges.is_empty() {
        return Err(ApiError::NoEdges);
    }
    for edge in &edges {
        scheduler
            .metrics
            .picks_total
            .with_label_values(&[edge.id.as_str()])
            .inc();
    }
    Ok(Json(EdgesResponse { edges }))
}
