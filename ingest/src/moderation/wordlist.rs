//! `PUT`/`GET /v1/channels/{channel}/wordlist` (app tokens and the room's
//! moderators) and `PUT`/`GET /v1/wordlist`, the global list (app tokens only).
//!
//! A `PUT` replaces the whole list: `{"block":[…],"mask":[…]}`, each half
//! optional (absent = empty) but not both; `{"block":[],"mask":[]}` clears it.
//! Every word is checked before anything is stored ([`WordList::validate`]):
//! one bad word refuses the whole list with `400 bad_wordlist`.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use danmaku_proto::ChannelName;
use danmaku_proto::now_ms;
use danmaku_store::{GLOBAL_SCOPE, ModerationChange};
use serde::Deserialize;
use serde_json::json;

use super::{Allowed, MAX_WORDLIST_BODY_BYTES};
use crate::body;
use crate::error::ApiError;
use crate::node::Ingest;
use crate::reliable::parse_channel;
use crate::screening::filter::WordList;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutWordList {
    block: Option<Vec<String>>,
    mask: Option<Vec<String>>,
}

pub async fn put_room(
    State(ingest): State<Arc<Ingest>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let channel = parse_channel(path)?;
        ingest.put_wordlist(Some(&channel), &headers, body).await
    };
    ingest.answer(result.await)
}

pub async fn get_room(
    State(ingest): State<Arc<Ingest>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let channel = parse_channel(path)?;
        ingest.get_wordlist(Some(&channel), &headers).await
    };
    ingest.answer(result.await)
}

pub async fn put_global(
    State(ingest): State<Arc<Ingest>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = ingest.put_wordlist(None, &headers, body).await;
    ingest.answer(result)
}

pub async fn get_global(State(ingest): State<Arc<Ingest>>, headers: HeaderMap) -> Response {
    let result = ingest.get_wordlist(None, &headers).await;
    ingest.answer(result)
}

fn allowed(channel: Option<&ChannelName>) -> Allowed {
    if channel.is_some() {
        Allowed::AppOrModerator
    } else {
        Allowed::App
    }
}

impl Ingest {
    async fn put_wordlist(
        &self,
        channel: Option<&ChannelName>,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Response, ApiError> {
        let claims = self.authenticate(headers)?;
        self.authorize(&claims, channel, allowed(channel))?;
        let bytes = body::read_bounded(headers, body, MAX_WORDLIST_BODY_BYTES).await?;
        let put: PutWordList = body::parse_json(&bytes)?;
        if put.block.is_none() && put.mask.is_none() {
            return Err(ApiError::BadWordList(
                "give \"block\" and/or \"mask\" (send empty arrays to clear the list)".into(),
            ));
        }
        let list = WordList {
            block: put.block.unwrap_or_default(),
            mask: put.mask.unwrap_or_default(),
        };
        list.validate()
            .map_err(|e| ApiError::BadWordList(e.to_string()))?;
        let (block, mask) = (list.block.len(), list.mask.len());
        let scope = channel.map_or(GLOBAL_SCOPE, ChannelName::as_str);
        self.apply_moderation(
            scope,
            &claims.sub,
            ModerationChange::SetWordlist {
                block: list.block,
                mask: list.mask,
            },
        )
        .await?;
        Ok(Json(json!({ "scope": scope, "block": block, "mask": mask })).into_response())
    }

    async fn get_wordlist(
        &self,
        channel: Option<&ChannelName>,
        headers: &HeaderMap,
    ) -> Result<Response, ApiError> {
        let claims = self.authenticate(headers)?;
        self.authorize(&claims, channel, allowed(channel))?;
        let scope = channel.map_or(GLOBAL_SCOPE, ChannelName::as_str);
        let policy = self
            .store_call("policy", self.store.policy(scope, now_ms()))
            .await?;
        Ok(Json(json!({ "block": policy.block, "mask": policy.mask })).into_response())
    }
}
