//! `DELETE /v1/channels/{channel}/messages/{id}` (app tokens and the room's
//! moderators): takes one event back. `id` is a danmaku's id (from its `202`
//! answer and its event) or a gift's / chat message's `seq`. Viewers get an
//! event `{"kind":"retract","id":…}` in the room's next tick (published on
//! the channel like any danmaku, never thinned), and the SDKs and the page
//! take the comment off screen. A retracted gift or chat message is stored as
//! such, so history no longer returns it; danmaku are not stored, so only the
//! audit trail keeps the retraction.
//!
//! Refused: an id of neither form (`400 bad_message_id`); a seq the channel
//! does not have yet, or a danmaku id older than [`MAX_DANMAKU_AGE_MS`] or
//! from the future (`404 unknown_message`). Nothing is stored or published
//! then.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use danmaku_proto::{ChannelName, now_ms, pb};
use danmaku_store::ModerationChange;
use serde_json::json;

use super::Allowed;
use crate::error::ApiError;
use crate::message_id::MessageRef;
use crate::node::Ingest;

/// The oldest danmaku that may be retracted (1 day): older ones left every
/// screen long ago.
pub const MAX_DANMAKU_AGE_MS: i64 = 86_400_000;
/// Clock skew tolerated between ingest nodes for a danmaku id's time.
const MAX_SKEW_MS: i64 = 60_000;

pub async fn delete(
    State(ingest): State<Arc<Ingest>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let result = ingest.retract(path, &headers).await;
    ingest.answer(result)
}

impl Ingest {
    async fn retract(
        &self,
        path: Result<Path<(String, String)>, PathRejection>,
        headers: &HeaderMap,
    ) -> Result<Response, ApiError> {
        let claims = self.authenticate(headers)?;
        let Path((channel, id)) = path.map_err(|e| ApiError::BadChannel(e.body_text()))?;
        let channel =
            ChannelName::parse(&channel).map_err(|e| ApiError::BadChannel(e.to_string()))?;
        self.authorize(&claims, Some(&channel), Allowed::AppOrModerator)?;
        let shown: String = id.chars().take(40).collect();
        let target = MessageRef::parse(&id).ok_or_else(|| {
            ApiError::BadMessageId(format!(
                "{shown:?} is neither a danmaku id (27 hex digits) nor a seq"
            ))
        })?;
        let now = now_ms();
        let seq = match target {
            MessageRef::Seq(seq) => {
                let last = self
                    .store_call("last_seq", self.store.last_seq(channel.as_str()))
                    .await?;
                if seq > last {
                    return Err(ApiError::UnknownMessage(format!(
                        "{channel} has no message {seq} (its last seq is {last})"
                    )));
                }
                Some(seq)
            }
            MessageRef::Danmaku { ts_ms } => {
                if ts_ms < now - MAX_DANMAKU_AGE_MS || ts_ms > now + MAX_SKEW_MS {
                    return Err(ApiError::UnknownMessage(format!(
                        "no danmaku {shown} to retract: it was not sent in the last day"
                    )));
                }
                None
            }
        };
        let changed = self
            .apply_moderation(
                channel.as_str(),
                &claims.sub,
                ModerationChange::Retract {
                    id: id.clone(),
                    seq,
                },
            )
            .await?;
        let event = pb::Event {
            kind: pb::Kind::Retract as i32,
            sender: claims.sub.clone(),
            ts_ms: now,
            id: id.clone(),
            ..Default::default()
        };
        self.publish(&channel, event, 0).await.map_err(|e| match e {
            ApiError::BusUnavailable(reason) => ApiError::BusUnavailable(format!(
                "the retraction is stored but viewers were not told ({reason}); retry the DELETE"
            )),
            other => other,
        })?;
        Ok(Json(json!({
            "channel": channel.as_str(),
            "id": id,
            // false: it was already retracted (a gift or chat message).
            "retracted": changed,
        }))
        .into_response())
    }
}
