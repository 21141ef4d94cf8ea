//! The reliable lane besides posting (which lives in [`crate::messages`]):
//!
//! * `GET /v1/channels/{channel}/messages?after_seq=N&limit=L` — history,
//!   oldest first; in a `group:` channel only for members and only messages
//!   after they joined.
//! * `PUT` / `DELETE /v1/groups/{group}/members/{user}` — membership, for
//!   tokens of role `app` (the app backend) only. A removal is published on the
//!   bus (`BusEvent.membership`) so edges drop the user's live subscriptions;
//!   if the bus is down the answer is `503 bus_unavailable` (the removal is
//!   stored; retry the DELETE).
//! * `POST /v1/channels/{channel}/ack` `{"seq":N}` — the caller's ack offset,
//!   only for channels they can read (a group they belong to, a room with
//!   reliable messages).
//! * `GET /v1/unread` — the caller's unread counts.
//!
//! Every store call goes through [`Ingest::store_call`] so it is timed and its
//! failures counted; a store failure answers `503 store_unavailable`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use danmaku_proto::id::is_valid_id;
use danmaku_proto::{ChannelKind, ChannelName};
use danmaku_store::StoredMessage;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::body;
use crate::error::ApiError;
use crate::node::Ingest;

/// `limit` when the query has none.
pub const DEFAULT_HISTORY_LIMIT: usize = 50;
/// The largest `limit` honoured; larger values are capped.
pub const MAX_HISTORY_LIMIT: usize = danmaku_store::MAX_READ_LIMIT;

/// The role whose tokens may manage group membership.
pub const APP_ROLE: &str = "app";

pub(crate) fn parse_channel(
    path: Result<Path<String>, PathRejection>,
) -> Result<ChannelName, ApiError> {
    let Path(channel) = path.map_err(|e| ApiError::BadChannel(e.body_text()))?;
    ChannelName::parse(&channel).map_err(|e| ApiError::BadChannel(e.to_string()))
}

/// `after_seq` (default 0) and `limit` (default 50, 1 or more, capped at 1000).
pub fn parse_history_query(query: &HashMap<String, String>) -> Result<(u64, usize), ApiError> {
    let after_seq = match query.get("after_seq") {
        None => 0,
        Some(v) => v.parse::<u64>().map_err(|_| {
            ApiError::BadQuery(format!(
                "after_seq must be a non-negative integer, got {:?}",
                truncate(v)
            ))
        })?,
    };
    let limit = match query.get("limit") {
        None => DEFAULT_HISTORY_LIMIT,
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n >= 1 => usize::try_from(n)
                .unwrap_or(MAX_HISTORY_LIMIT)
                .min(MAX_HISTORY_LIMIT),
            _ => {
                return Err(ApiError::BadQuery(format!(
                    "limit must be an integer from 1 to {MAX_HISTORY_LIMIT}, got {:?}",
                    truncate(v)
                )));
            }
        },
    };
    Ok((after_seq, limit))
}

fn truncate(s: &str) -> String {
    s.chars().take(32).collect()
}

/// One history entry as the API shows it; `payload` only when there is one.
fn message_json(m: StoredMessage) -> Value {
    let mut v = json!({
        "seq": m.seq,
        "kind": m.kind,
        "sender": m.sender,
        "text": m.text,
        "ts_ms": m.ts_ms,
    });
    if let Some(payload) = m.payload_json.as_deref().filter(|p| !p.is_empty())
        && let Ok(payload) = serde_json::from_str::<Value>(payload)
    {
        v["payload"] = payload;
    }
    if let Some(blob) = m.blob.filter(|b| !b.is_empty()) {
        v["blob"] = Value::String(blob);
    }
    v
}

/// `GET /v1/channels/{channel}/messages`.
pub async fn history(
    State(ingest): State<Arc<Ingest>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let result = ingest.history(path, query, &headers).await;
    ingest.answer(result)
}

/// `PUT /v1/groups/{group}/members/{user}`.
pub async fn join(
    State(ingest): State<Arc<Ingest>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let result = ingest.membership(path, &headers, true).await;
    ingest.answer(result)
}

/// `DELETE /v1/groups/{group}/members/{user}`.
pub async fn leave(
    State(ingest): State<Arc<Ingest>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let result = ingest.membership(path, &headers, false).await;
    ingest.answer(result)
}

/// `POST /v1/channels/{channel}/ack`.
pub async fn ack(
    State(ingest): State<Arc<Ingest>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = ingest.ack(path, &headers, body).await;
    ingest.answer(result)
}

/// `GET /v1/unread`.
pub async fn unread(State(ingest): State<Arc<Ingest>>, headers: HeaderMap) -> Response {
    let result = ingest.unread(&headers).await;
    ingest.answer(result)
}

#[derive(Debug, Deserialize)]
struct AckBody {
    seq: u64,
}

impl Ingest {
    async fn history(
        &self,
        path: Result<Path<String>, PathRejection>,
        query: Result<Query<HashMap<String, String>>, QueryRejection>,
        headers: &HeaderMap,
    ) -> Result<Response, ApiError> {
        let claims = self.authenticate(headers)?;
        let channel = parse_channel(path)?;
        let Query(query) = query.map_err(|e| ApiError::BadQuery(e.body_text()))?;
        let (mut after_seq, limit) = parse_history_query(&query)?;
        // Retracted messages are left out. A page of nothing but retracted
        // messages would read as the end: read on until one is left or the
        // channel ends.
        let (messages, next_after_seq) = loop {
            let page = match channel.kind() {
                ChannelKind::Group => {
                    self.store_call(
                        "read",
                        self.store.read_after_for_member(
                            channel.as_str(),
                            &claims.sub,
                            after_seq,
                            limit,
                        ),
                    )
                    .await?
                }
                ChannelKind::Room => {
                    self.store_call(
                        "read",
                        self.store.read_after(channel.as_str(), after_seq, limit),
                    )
                    .await?
                }
            };
            let (Some(first), Some(last)) = (page.first(), page.last()) else {
                break (page, after_seq);
            };
            let (first, last, full) = (first.seq, last.seq, page.len() >= limit);
            let retracted = self
                .store_call(
                    "read",
                    self.store
                        .retracted(channel.as_str(), first.saturating_sub(1), last),
                )
                .await?;
            let page: Vec<_> = page
                .into_iter()
                .filter(|m| retracted.binary_search(&m.seq).is_err())
                .collect();
            if !page.is_empty() || !full {
                break (page, last);
            }
            after_seq = last;
        };
        let messages: Vec<Value> = messages.into_iter().map(message_json).collect();
        Ok(Json(json!({
            "messages": messages,
            "next_after_seq": next_after_seq,
        }))
        .into_response())
    }

    async fn membership(
        &self,
        path: Result<Path<(String, String)>, PathRejection>,
        headers: &HeaderMap,
        join: bool,
    ) -> Result<Response, ApiError> {
        let claims = self.authenticate(headers)?;
        if claims.role != APP_ROLE {
            return Err(ApiError::Forbidden);
        }
        let Path((group, user)) = path.map_err(|e| ApiError::BadChannel(e.body_text()))?;
        let group = ChannelName::parse(&group).map_err(|e| ApiError::BadChannel(e.to_string()))?;
        if group.kind() != ChannelKind::Group {
            return Err(ApiError::BadChannel(format!(
                "{group} is not a group: membership needs a group:<id> channel"
            )));
        }
        if !is_valid_id(&user) {
            return Err(ApiError::BadUser);
        }
        let answer = if join {
            let joined_seq = self
                .store_call("membership", self.store.join_group(group.as_str(), &user))
                .await?;
            tracing::info!(%group, %user, joined_seq, by = %claims.sub, "member joined");
            json!({ "joined_seq": joined_seq })
        } else {
            let removed = self
                .store_call("membership", self.store.leave_group(group.as_str(), &user))
                .await?;
            tracing::info!(%group, %user, removed, by = %claims.sub, "member left");
            // Tell the edges, so the user's live subscriptions end now. Sent even
            // when the user was no longer a member: a retried DELETE heals a first
            // attempt whose publish failed.
            self.publish_membership(&group, &user, true).await?;
            json!({ "removed": removed })
        };
        Ok(Json(answer).into_response())
    }

    async fn ack(
        &self,
        path: Result<Path<String>, PathRejection>,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Response, ApiError> {
        let claims = self.authenticate(headers)?;
        let channel = parse_channel(path)?;
        let bytes = body::read_bounded(headers, body, self.config.max_body_bytes).await?;
        let AckBody { seq } = body::parse_json(&bytes)?;
        // Only channels the caller can read get an offset row: a group they
        // belong to, or a room that has reliable messages. Anything else would let
        // one token grow the acks table (and its /v1/unread) without bound.
        match channel.kind() {
            ChannelKind::Group => self.require_member(channel.as_str(), &claims.sub).await?,
            ChannelKind::Room => {
                let last_seq = self
                    .store_call("ack", self.store.last_seq(channel.as_str()))
                    .await?;
                if last_seq == 0 {
                    return Err(ApiError::UnknownChannel(channel.to_string()));
                }
            }
        }
        let acked = self
            .store_call("ack", self.store.ack(&claims.sub, channel.as_str(), seq))
            .await?;
        Ok(Json(json!({ "acked": acked })).into_response())
    }

    async fn unread(&self, headers: &HeaderMap) -> Result<Response, ApiError> {
        let claims = self.authenticate(headers)?;
        let unread = self
            .store_call("unread", self.store.unread(&claims.sub))
            .await?;
        Ok(Json(json!({
            "total": unread.total,
            "channels": unread.channels,
        }))
        .into_response())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn history_query_defaults_caps_and_refusals() {
        assert_eq!(parse_history_query(&q(&[])).unwrap(), (0, 50));
        assert_eq!(
            parse_history_query(&q(&[("after_seq", "7"), ("limit", "3")])).unwrap(),
            (7, 3)
        );
        assert_eq!(
            parse_history_query(&q(&[("limit", "5000")])).unwrap(),
            (0, MAX_HISTORY_LIMIT)
        );
        for bad in [
            q(&[("after_seq", "-1")]),
            q(&[("after_seq", "x")]),
            q(&[("limit", "0")]),
            q(&[("limit", "")]),
            q(&[("limit", "1.5")]),
        ] {
            assert_eq!(
                parse_history_query(&bad).unwrap_err().code(),
                "bad_query",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn payload_and_blob_only_when_present() {
        let m = StoredMessage {
            channel: "group:1".into(),
            seq: 3,
            client_msg_id: None,
            sender: "alice".into(),
            kind: "chat".into(),
            text: "hi".into(),
            payload_json: None,
            blob: None,
            ts_ms: 5,
        };
        let v = message_json(m.clone());
        assert!(v.get("payload").is_none(), "{v}");
        let v = message_json(StoredMessage {
            payload_json: Some(r#"{"a":1}"#.into()),
            ..m.clone()
        });
        assert_eq!(v["payload"], json!({"a": 1}));
        assert!(v.get("blob").is_none(), "{v}");
        let v = message_json(StoredMessage {
            blob: Some("ab".repeat(32)),
            ..m
        });
        assert_eq!(v["blob"], json!("ab".repeat(32)));
        assert_eq!(v["seq"], 3);
    }
}
