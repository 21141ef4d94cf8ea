//! `GET /v1/channels/{channel}/moderation/log?limit=N` (app tokens and the
//! room's moderators): the room's moderation actions, newest first (`limit`
//! default 50, 1 to 1000).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::Allowed;
use crate::error::ApiError;
use crate::node::Ingest;
use crate::reliable::parse_channel;

/// Entries returned when `limit` is not given.
pub const DEFAULT_LOG_LIMIT: usize = 50;

pub async fn get(
    State(ingest): State<Arc<Ingest>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let claims = ingest.authenticate(&headers)?;
        let channel = parse_channel(path)?;
        ingest.authorize(&claims, Some(&channel), Allowed::AppOrModerator)?;
        let Query(query) = query.map_err(|e| ApiError::BadQuery(e.body_text()))?;
        let limit = match query.get("limit") {
            None => DEFAULT_LOG_LIMIT,
            Some(l) => l
                .parse::<usize>()
                .ok()
                .filter(|l| (1..=danmaku_store::MAX_READ_LIMIT).contains(l))
                .ok_or_else(|| {
                    ApiError::BadQuery(format!(
                        "limit must be 1 to {}, got {l:?}",
                        danmaku_store::MAX_READ_LIMIT
                    ))
                })?,
        };
        let entries = ingest
            .store_call(
                "moderation_log",
                ingest.store.moderation_log(channel.as_str(), limit),
            )
            .await?;
        let entries: Vec<_> = entries
            .into_iter()
            .map(|e| {
                json!({
                    "id": e.id,
                    "actor": e.actor,
                    "action": e.action,
                    "target": e.target,
                    "detail": e.detail,
                    "ts_ms": e.ts_ms,
                })
            })
            .collect();
        Ok(Json(json!({ "channel": channel.as_str(), "entries": entries })).into_response())
    };
    ingest.answer(result.await)
}
