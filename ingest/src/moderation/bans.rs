//! `PUT /v1/channels/{channel}/bans/{user}` `{"seconds":N}` (or `{}` / no
//! body: permanent) and `DELETE` (app tokens and the room's moderators; a
//! moderator cannot ban another moderator). A banned user's posts in the
//! channel are refused `403 banned` (every kind) until the ban ends; every
//! edge makes the user's connections leave the channel
//! (`{"type":"left","reason":"banned"}`) and refuses a new `join` with the
//! error `banned`. A second `PUT` replaces the end.

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
use super::{Allowed, MAX_BAN_SECS};
use crate::body;
use crate::error::ApiError;
use crate::node::Ingest;
use crate::reliable::APP_ROLE;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBan {
    /// Signed, so that a negative number gets `bad_seconds`, not a parse
    /// error; absent: permanent.
    seconds: Option<i64>,
}

pub async fn put(
    State(ingest): State<Arc<Ingest>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = ingest.ban(path, &headers, Some(body)).await;
    ingest.answer(result)
}

pub async fn delete(
    State(ingest): State<Arc<Ingest>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let result = ingest.ban(path, &headers, None).await;
    ingest.answer(result)
}

impl Ingest {
    /// Bans (`body` given) or lifts a ban.
    async fn ban(
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
                    ModerationChange::Unban { user: user.clone() },
                )
                .await?;
            return Ok(Json(
                json!({ "channel": channel.as_str(), "user": user, "unbanned": changed }),
            )
            .into_response());
        };
        let bytes = body::read_bounded(headers, body, self.config.max_body_bytes).await?;
        let PutBan { seconds } = if bytes.iter().all(u8::is_ascii_whitespace) {
            PutBan::default()
        } else {
            body::parse_json(&bytes)?
        };
        if let Some(s) = seconds
            && !(1..=MAX_BAN_SECS).contains(&s)
        {
            return Err(ApiError::BadSeconds(format!(
                "seconds must be 1 to {MAX_BAN_SECS} (omit it for a permanent ban), got {s}"
            )));
        }
        if claims.role != APP_ROLE
            && self
                .moderation
                .room(channel.as_str())
                .is_some_and(|r| r.is_moderator(&user))
        {
            return Err(ApiError::NotAllowed(format!(
                "{user} is a moderator of {channel}: only app tokens may ban a moderator"
            )));
        }
        let until_ms = seconds.map(|s| now_ms() + s * 1000);
        self.apply_moderation(
            channel.as_str(),
            &claims.sub,
            ModerationChange::Ban {
                user: user.clone(),
                until_ms,
            },
        )
        .await?;
        Ok(Json(json!({
            "channel": channel.as_str(),
            "user": user,
            "banned": true,
            "until_ms": until_ms,
        }))
        .into_response())
    }
}
