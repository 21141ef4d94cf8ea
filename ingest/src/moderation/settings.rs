//! `PUT`/`GET /v1/channels/{channel}/settings` (app tokens and the room's
//! moderators): `{"slow_mode_secs":N,"mute_all":bool,"max_rate":N}`, each
//! field optional (absent keeps the stored value), 0 / false = off.
//!
//! `slow_mode_secs` and `mute_all` are enforced here, on posts; `max_rate`
//! (danmaku per second pushed to each viewer) is stored for the edges'
//! thinning.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use danmaku_proto::now_ms;
use danmaku_store::{ModerationChange, RoomSettings, SettingsPatch};
use serde::Deserialize;
use serde_json::json;

use super::{Allowed, MAX_ROOM_RATE, MAX_SLOW_MODE_SECS};
use crate::body;
use crate::error::ApiError;
use crate::node::Ingest;
use crate::reliable::parse_channel;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutSettings {
    slow_mode_secs: Option<i64>,
    mute_all: Option<bool>,
    max_rate: Option<i64>,
}

impl PutSettings {
    fn validate(self) -> Result<SettingsPatch, ApiError> {
        let bounded = |name: &str, value: Option<i64>, max: i64| match value {
            Some(v) if !(0..=max).contains(&v) => Err(ApiError::BadSettings(format!(
                "{name} must be 0 (off) to {max}, got {v}"
            ))),
            v => Ok(v.map(|v| v as u64)),
        };
        let patch = SettingsPatch {
            slow_mode_secs: bounded("slow_mode_secs", self.slow_mode_secs, MAX_SLOW_MODE_SECS)?,
            mute_all: self.mute_all,
            max_rate: bounded("max_rate", self.max_rate, MAX_ROOM_RATE)?,
        };
        if patch == SettingsPatch::default() {
            return Err(ApiError::BadSettings(
                "give at least one of slow_mode_secs, mute_all, max_rate".into(),
            ));
        }
        Ok(patch)
    }
}

fn settings_json(s: RoomSettings) -> serde_json::Value {
    json!({
        "slow_mode_secs": s.slow_mode_secs,
        "mute_all": s.mute_all,
        "max_rate": s.max_rate,
    })
}

pub async fn put(
    State(ingest): State<Arc<Ingest>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = ingest.put_settings(path, &headers, body).await;
    ingest.answer(result)
}

pub async fn get(
    State(ingest): State<Arc<Ingest>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let claims = ingest.authenticate(&headers)?;
        let channel = parse_channel(path)?;
        ingest.authorize(&claims, Some(&channel), Allowed::AppOrModerator)?;
        let policy = ingest
            .store_call("policy", ingest.store.policy(channel.as_str(), now_ms()))
            .await?;
        Ok(Json(settings_json(policy.settings)).into_response())
    };
    ingest.answer(result.await)
}

impl Ingest {
    async fn put_settings(
        &self,
        path: Result<Path<String>, PathRejection>,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Response, ApiError> {
        let claims = self.authenticate(headers)?;
        let channel = parse_channel(path)?;
        self.authorize(&claims, Some(&channel), Allowed::AppOrModerator)?;
        let bytes = body::read_bounded(headers, body, self.config.max_body_bytes).await?;
        let put: PutSettings = body::parse_json(&bytes)?;
        let patch = put.validate()?;
        self.apply_moderation(
            channel.as_str(),
            &claims.sub,
            ModerationChange::Settings(patch),
        )
        .await?;
        let settings = self
            .moderation
            .room(channel.as_str())
            .map(|r| r.settings)
            .unwrap_or_default();
        Ok(Json(settings_json(settings)).into_response())
    }
}
