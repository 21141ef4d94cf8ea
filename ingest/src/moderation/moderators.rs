//! `PUT`/`DELETE /v1/channels/{channel}/moderators/{user}` (app tokens only):
//! a room's moderators (房管) may mute, change settings, edit the room's word
//! list and read its audit trail with their `user` token.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use danmaku_proto::ChannelName;
use danmaku_proto::id::is_valid_id;
use danmaku_store::ModerationChange;
use serde_json::json;

use super::Allowed;
use crate::error::ApiError;
use crate::node::Ingest;

/// A `{channel}/…/{user}` path, both parsed.
pub(crate) fn channel_and_user(
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<(ChannelName, String), ApiError> {
    let Path((channel, user)) = path.map_err(|e| ApiError::BadChannel(e.body_text()))?;
    let channel = ChannelName::parse(&channel).map_err(|e| ApiError::BadChannel(e.to_string()))?;
    if !is_valid_id(&user) {
        return Err(ApiError::BadUser);
    }
    Ok((channel, user))
}

pub async fn put(
    State(ingest): State<Arc<Ingest>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let result = ingest.set_moderator(path, &headers, true).await;
    ingest.answer(result)
}

pub async fn delete(
    State(ingest): State<Arc<Ingest>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let result = ingest.set_moderator(path, &headers, false).await;
    ingest.answer(result)
}

impl Ingest {
    async fn set_moderator(
        &self,
        path: Result<Path<(String, String)>, PathRejection>,
        headers: &HeaderMap,
        add: bool,
    ) -> Result<Response, ApiError> {
        let claims = self.authenticate(headers)?;
        self.authorize(&claims, None, Allowed::App)?;
        let (channel, user) = channel_and_user(path)?;
        let change = if add {
            ModerationChange::AddModerator { user: user.clone() }
        } else {
            ModerationChange::RemoveModerator { user: user.clone() }
        };
        let changed = self
            .apply_moderation(channel.as_str(), &claims.sub, change)
            .await?;
        let key = if add { "added" } else { "removed" };
        Ok(
            Json(json!({ "channel": channel.as_str(), "user": user, key: changed }))
                .into_response(),
        )
    }
}
