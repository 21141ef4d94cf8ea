//! `PUT /v1/channels/{channel}/mutes/{user}` `{"seconds":N}` and `DELETE`
//! (app tokens and the room's moderators; a moderator cannot mute another
//! moderator). A muted user's posts in that channel are refused `403 muted`
//! until the mute ends; a second `PUT` replaces the end time. The muted user's
//! own connections in the channel get a `notice` frame (code `muted`) from
//! their edge.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use danmaku_proto::now_ms;
use danmaku_store::ModerationChange;
use serde::Deserialize;
use serde_json::json;

use super::moderators::channel_and_user;
use super::{Allowed, MAX_MUTE_SECS};
use crate::body;
use crate::error::ApiError;
use crate::node::Ingest;
use crate::reliable::APP_ROLE;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutMute {
    /// Signed, so that a negative number gets `bad_seconds`, not a parse error.
    seconds: i64,
}

pub async fn put(
    State(ingest): State<Arc<Ingest>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = ingest.mute(path, &headers, Some(body)).await;
    ingest.answer(result)
}

pub async fn delete(
    State(ingest): State<Arc<Ingest>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let result = ingest.mute(path, &headers, None).await;
    ingest.answer(result)
}

impl Ingest {
    /// Mutes (`body` given) or unmutes.
    async fn mute(
        &self,
        path: Result<Path<(String, String)>, PathRejection>,
        headers: &HeaderMap,
        body: Option<Body>,
    ) -> Result<Response, ApiError> {
        let claims = self.authenticate(headers)?;
        let (channel, user) = channel_and_user(path)?;
        self.authorize(&claims, Some(&channel), Allowed::AppOrModerator)?;
        let Some(body) = body else {
            let changed = self
                .apply_moderation(
                    channel.as_str(),
                    &claims.sub,
                    ModerationChange::Unmute { user: user.clone() },
                )
                .await?;
            return Ok(Json(
                json!({ "channel": channel.as_str(), "user": user, "unmuted": changed }),
            )
            .into_response());
        };
        let bytes = body::read_bounded(headers, body, self.config.max_body_bytes).await?;
        let PutMute { seconds } = body::parse_json(&bytes)?;
        if !(1..=MAX_MUTE_SECS).contains(&seconds) {
            return Err(ApiError::BadSeconds(format!(
                "seconds must be 1 to {MAX_MUTE_SECS}, got {seconds}"
            )));
        }
        if claims.role != APP_ROLE
            && self
                .moderation
                .room(channel.as_str())
                .is_some_and(|r| r.is_moderator(&user))
        {
            return Err(ApiError::NotAllowed(format!(
                "{user} is a moderator of {channel}: only app tokens may mute a moderator"
            )));
        }
        let until_ms = now_ms() + seconds * 1000;
        self.apply_moderation(
            channel.as_str(),
            &claims.sub,
            ModerationChange::Mute {
                user: user.clone(),
                until_ms,
            },
        )
        .await?;
        self.publish_mute_notice(&channel, &user, until_ms).await;
        Ok(
            Json(json!({ "channel": channel.as_str(), "user": user, "until_ms": until_ms }))
                .into_response(),
        )
    }
}
