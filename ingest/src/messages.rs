//! `POST /v1/channels/{channel}/messages`: authenticate, validate, rate-limit,
//! check group membership, then:
//!
//! * danmaku: publish to the bus keyed by channel (so one channel keeps its
//!   order) and answer `202`;
//! * gift, chat: append to the store (which assigns the `seq`, idempotent on
//!   `client_msg_id`), publish with that `seq`, answer `200 {"seq":N}`. A
//!   duplicate is published again (edges dedupe by `seq`), which heals a first
//!   attempt whose publish failed. Store down: `503 store_unavailable`,
//!   nothing acknowledged; bus down after persisting: `503 bus_unavailable`
//!   saying the message is persisted.
//!
//! Any kind may carry `"blob":"<id>"` (notify-pull, see `blobs.rs`): 64
//! lowercase hex digits (else `400 bad_blob`) naming a stored blob (else
//! `400 unknown_blob`). Any sender may reference a blob; only uploading one
//! takes the `app` role, so the app decides what content exists and users
//! only point at it (a gift the app offers with its picture).

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use danmaku_proto::{ChannelKind, ChannelName, PROTOCOL_VERSION, frame, now_ms, pb};
use serde::Deserialize;

use crate::body;
use crate::error::ApiError;
use crate::node::Ingest;

/// Largest `payload` object, serialized, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 1024;
/// Longest `client_msg_id`, in characters.
pub const MAX_CLIENT_MSG_ID_CHARS: usize = 64;

/// The JSON body of a post, as sent. Unknown fields are ignored so clients can
/// be newer than the server.
#[derive(Debug, Deserialize)]
pub struct PostMessage {
    pub kind: String,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub client_msg_id: Option<String>,
    #[serde(default)]
    pub payload: Option<serde_json::Value>,
    /// The id of an uploaded blob the message carries.
    #[serde(default)]
    pub blob: Option<String>,
}

/// A post that passed validation, ready to become an `Event`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub kind: pb::Kind,
    pub text: String,
    /// Empty when the sender gave none (proto3's absent string).
    pub client_msg_id: String,
    /// Serialized JSON object, or empty.
    pub payload_json: String,
    /// A well-formed blob id, or empty; whether it exists is checked later
    /// (it costs a store call).
    pub blob: String,
}

impl PostMessage {
    /// Checks kind, text, idempotency key, payload and the blob id's shape.
    pub fn validate(self, max_text_chars: usize) -> Result<NewMessage, ApiError> {
        let kind = pb::Kind::from_name(&self.kind)
            .ok_or_else(|| ApiError::BadKind(self.kind.chars().take(32).collect()))?;
        if self.text.trim().is_empty() {
            return Err(ApiError::EmptyText);
        }
        let chars = self.text.chars().count();
        if chars > max_text_chars {
            return Err(ApiError::TextTooLong {
                chars,
                limit: max_text_chars,
            });
        }
        let client_msg_id = self.client_msg_id.unwrap_or_default();
        if client_msg_id.chars().count() > MAX_CLIENT_MSG_ID_CHARS {
            return Err(ApiError::BadClientMsgId {
                limit: MAX_CLIENT_MSG_ID_CHARS,
            });
        }
        let payload_json = match self.payload {
            None | Some(serde_json::Value::Null) => String::new(),
            Some(v @ serde_json::Value::Object(_)) => {
                let s = v.to_string();
                if s.len() > MAX_PAYLOAD_BYTES {
                    return Err(ApiError::BadPayload(format!(
                        "payload is {} bytes serialized, limit is {MAX_PAYLOAD_BYTES}",
                        s.len()
                    )));
                }
                s
            }
            Some(_) => return Err(ApiError::BadPayload("payload must be a JSON object".into())),
        };
        let blob = self.blob.unwrap_or_default();
        if !blob.is_empty() && !danmaku_store::blob::is_blob_id(&blob) {
            return Err(ApiError::BadBlob(format!(
                "blob {:?} is not a blob id (64 lowercase hex digits)",
                blob.chars().take(80).collect::<String>()
            )));
        }
        Ok(NewMessage {
            kind,
            text: self.text,
            client_msg_id,
            payload_json,
            blob,
        })
    }
}

/// The axum handler; records `requests_total{kind,status}` and
/// `rejected_total{code}` around [`Ingest::post_message`].
pub async fn post_message(
    State(ingest): State<Arc<Ingest>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut kind = "unknown";
    let result = ingest.post_message(path, &headers, body, &mut kind).await;
    let response = ingest.answer(result);
    ingest
        .metrics
        .requests_total
        .with_label_values(&[kind, response.status().as_str()])
        .inc();
    response
}

impl Ingest {
    async fn post_message(
        &self,
        path: Result<Path<String>, PathRejection>,
        headers: &HeaderMap,
        body: Body,
        kind_label: &mut &'static str,
    ) -> Result<Response, ApiError> {
        // Cheapest checks first: a bad token or channel costs no body read.
        let claims = self.authenticate(headers)?;
        let Path(channel) = path.map_err(|e| ApiError::BadChannel(e.body_text()))?;
        let channel =
            ChannelName::parse(&channel).map_err(|e| ApiError::BadChannel(e.to_string()))?;
        let bytes = body::read_bounded(headers, body, self.config.max_body_bytes).await?;
        let post: PostMessage = body::parse_json(&bytes)?;
        let message = post.validate(self.config.max_text_chars)?;
        *kind_label = message.kind.name();
        let group = channel.kind() == ChannelKind::Group;
        if message.kind == pb::Kind::Chat && !group {
            return Err(ApiError::ChatNeedsGroup);
        }
        self.limits
            .check(&claims.sub, &channel)
            .map_err(|(scope, wait)| ApiError::rate_limited(scope, wait))?;
        if group {
            self.require_member(channel.as_str(), &claims.sub).await?;
        }
        if !message.blob.is_empty()
            && !self
                .store_call("has_blob", self.store.has_blob(&message.blob))
                .await?
        {
            return Err(ApiError::UnknownBlob(message.blob));
        }
        let screened = self.screen_post(&channel, &claims, message.kind, message.text)?;
        let message = NewMessage {
            text: screened.text,
            ..message
        };
        let masked = screened.masked > 0;
        let (priority, max_rate) = (screened.priority, screened.max_rate);
        if message.kind.is_reliable() {
            let seq = self.post_reliable(&channel, claims.sub, message).await?;
            let answer = if masked {
                serde_json::json!({ "seq": seq, "masked": true })
            } else {
                serde_json::json!({ "seq": seq })
            };
            return Ok(Json(answer).into_response());
        }
        let masked_text = masked.then(|| message.text.clone());
        let ts_ms = now_ms();
        let id = self.ids.next(ts_ms);
        let event = pb::Event {
            kind: message.kind as i32,
            sender: claims.sub,
            text: message.text,
            ts_ms,
            seq: 0,
            payload_json: message.payload_json,
            client_msg_id: message.client_msg_id,
            id: id.clone(),
            priority,
            blob: message.blob,
        };
        self.publish(&channel, event, max_rate).await?;
        Ok((
            StatusCode::ACCEPTED,
            Json(match masked_text {
                Some(text) => {
                    serde_json::json!({ "accepted": true, "id": id, "masked": true, "text": text })
                }
                None => serde_json::json!({ "accepted": true, "id": id }),
            }),
        )
            .into_response())
    }

    /// Persists a gift or chat, then publishes it with its `seq`; returns the
    /// `seq` (the original one for a repeated `client_msg_id`).
    async fn post_reliable(
        &self,
        channel: &ChannelName,
        sender: String,
        message: NewMessage,
    ) -> Result<u64, ApiError> {
        let kind = message.kind.name();
        let new = danmaku_store::NewMessage {
            channel: channel.as_str().to_owned(),
            client_msg_id: non_empty(&message.client_msg_id),
            sender: sender.clone(),
            kind: kind.to_owned(),
            text: message.text.clone(),
            payload_json: non_empty(&message.payload_json),
            blob: non_empty(&message.blob),
            ts_ms: now_ms(),
        };
        let appended = self.store_call("append", self.store.append(new)).await?;
        let mut event = pb::Event {
            kind: message.kind as i32,
            sender,
            text: message.text,
            ts_ms: appended.ts_ms,
            seq: appended.seq,
            payload_json: message.payload_json,
            client_msg_id: message.client_msg_id,
            blob: message.blob,
            ..Default::default()
        };
        if appended.duplicate {
            self.metrics.reliable_duplicates_total.inc();
            // Publish what was stored under that seq, not this request's copy
            // (its original ts_ms and ids).
            let stored = self
                .store_call(
                    "read",
                    self.store
                        .read_after(channel.as_str(), appended.seq.saturating_sub(1), 1),
                )
                .await?;
            if let Some(stored) = stored.into_iter().find(|m| m.seq == appended.seq) {
                // Same kind as this request: a duplicate whose body differs is
                // refused by the store as a conflict.
                event = stored.into_event();
            }
        } else {
            self.metrics
                .reliable_persisted_total
                .with_label_values(&[kind])
                .inc();
        }
        let seq = appended.seq;
        self.publish(channel, event, 0).await.map_err(|e| match e {
            ApiError::BusUnavailable(reason) => ApiError::PersistedNotPublished { seq, reason },
            other => other,
        })?;
        Ok(seq)
    }

    /// Publishes a membership change of `group` (keyed by the group, so it stays
    /// in order with the group's messages).
    pub(crate) async fn publish_membership(
        &self,
        group: &ChannelName,
        user: &str,
        removed: bool,
    ) -> Result<(), ApiError> {
        let event = pb::BusEvent {
            version: PROTOCOL_VERSION,
            channel: group.as_str().to_owned(),
            event: None,
            origin: self.config.node_id.clone(),
            membership: Some(pb::Membership {
                user: user.to_owned(),
                removed,
            }),
            account: None,
            moderation: None,
            room_max_rate: 0,
        };
        let key = Bytes::copy_from_slice(group.as_str().as_bytes());
        self.bus
            .publish(key, frame::encode(&event))
            .await
            .map_err(|e| {
                ApiError::BusUnavailable(format!(
                    "{user} was removed from {group} but edges were not told ({e}); retry the DELETE"
                ))
            })
    }

    /// Encodes the event once and publishes it keyed by channel;
    /// `room_max_rate` is the room's thinning cap (danmaku; 0: none).
    pub(crate) async fn publish(
        &self,
        channel: &ChannelName,
        event: pb::Event,
        room_max_rate: u32,
    ) -> Result<(), ApiError> {
        let event = pb::BusEvent {
            version: PROTOCOL_VERSION,
            channel: channel.as_str().to_owned(),
            event: Some(event),
            origin: self.config.node_id.clone(),
            membership: None,
            account: None,
            moderation: None,
            room_max_rate,
        };
        let payload = frame::encode(&event);
        let len = payload.len() as u64;
        let key = Bytes::copy_from_slice(channel.as_str().as_bytes());
        let started = Instant::now();
        let result = self.bus.publish(key, payload).await;
        self.metrics
            .publish_latency_seconds
            .observe(started.elapsed().as_secs_f64());
        result.map_err(|e| ApiError::BusUnavailable(e.to_string()))?;
        self.metrics.published_bytes_total.inc_by(len);
        Ok(())
    }
}

/// `None` for proto3's absent (empty) string.
fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(kind: &str, text: &str) -> PostMessage {
        PostMessage {
            kind: kind.into(),
            text: text.into(),
            client_msg_id: None,
            payload: None,
            blob: None,
        }
    }

    #[test]
    fn valid_danmaku() {
        let m = post("danmaku", "hi").validate(200).unwrap();
        assert_eq!(m.kind, pb::Kind::Danmaku);
        assert_eq!(m.text, "hi");
        assert_eq!(m.client_msg_id, "");
        assert_eq!(m.payload_json, "");
        assert_eq!(m.blob, "");
    }

    #[test]
    fn blob_ids_are_checked_for_shape() {
        let id = "0123456789abcdef".repeat(4);
        let mut p = post("gift", "rocket");
        p.blob = Some(id.clone());
        assert_eq!(p.validate(200).unwrap().blob, id);
        for bad in [
            String::new() + "x",
            id.to_uppercase(),
            id[..63].to_owned(),
            format!("{id}0"),
            "../etc/passwd".into(),
        ] {
            let mut p = post("danmaku", "hi");
            p.blob = Some(bad.clone());
            assert_eq!(p.validate(200).unwrap_err().code(), "bad_blob", "{bad:?}");
        }
        let mut p = post("danmaku", "hi");
        p.blob = Some(String::new());
        assert_eq!(p.validate(200).unwrap().blob, "", "empty: no blob");
    }

    #[test]
    fn text_limit_counts_characters_not_bytes() {
        let cjk = "弹".repeat(200);
        assert!(post("danmaku", &cjk).validate(200).is_ok());
        let err = post("danmaku", &format!("{cjk}!"))
            .validate(200)
            .unwrap_err();
        assert_eq!(err.code(), "text_too_long");
        assert_eq!(
            post("danmaku", "  \n").validate(200).unwrap_err().code(),
            "empty_text"
        );
    }

    #[test]
    fn kind_payload_and_client_msg_id_checks() {
        assert_eq!(
            post("like", "x").validate(200).unwrap_err().code(),
            "bad_kind"
        );
        assert_eq!(
            post("unspecified", "x").validate(200).unwrap_err().code(),
            "bad_kind"
        );

        let mut p = post("gift", "rocket");
        p.payload = Some(serde_json::json!({"gift_id": 7}));
        p.client_msg_id = Some("m-1".into());
        let m = p.validate(200).unwrap();
        assert_eq!(m.payload_json, r#"{"gift_id":7}"#);
        assert_eq!(m.client_msg_id, "m-1");

        let mut p = post("gift", "rocket");
        p.payload = Some(serde_json::json!([1, 2]));
        assert_eq!(p.validate(200).unwrap_err().code(), "bad_payload");

        let mut p = post("gift", "rocket");
        p.payload = Some(serde_json::json!({"pad": "x".repeat(MAX_PAYLOAD_BYTES)}));
        assert_eq!(p.validate(200).unwrap_err().code(), "bad_payload");

        let mut p = post("danmaku", "x");
        p.client_msg_id = Some("x".repeat(MAX_CLIENT_MSG_ID_CHARS + 1));
        assert_eq!(p.validate(200).unwrap_err().code(), "bad_client_msg_id");
    }
}
