//! Account protection, for tokens of role `app` (the app backend):
//!
//! * `POST /v1/admin/revocations` — `{"jti":"…","expire_at":T}` revokes one
//!   token until `T` (its `exp`); `{"user":"…","issued_before":T}` revokes every
//!   token of the user issued before `T` (and those without `iat`), kept until
//!   `T + max_token_ttl_secs` or the `expire_at` given.
//! * `PUT /v1/users/{user}/block` `{"seconds":N}` (omitted: permanent) and
//!   `DELETE /v1/users/{user}/block` — a global block.
//!
//! Each change is persisted first (`503 store_unavailable` when it cannot be),
//! applied to this node's policy, then announced on the bus under
//! [`ACCOUNT_KEY`] so every other ingest and edge applies it too and edges
//! close the connections it covers (`announcements.rs` is the other ingests'
//! side). Every authenticated call checks the policy ([`Ingest::authenticate`]).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use danmaku_proto::account::{self, ACCOUNT_KEY, MAX_USER_BYTES};
use danmaku_proto::token::{MAX_JTI_BYTES, now_secs};
use danmaku_proto::{frame, now_ms, pb};
use serde::Deserialize;
use serde_json::json;

use crate::body;
use crate::error::ApiError;
use crate::node::Ingest;
use crate::reliable::APP_ROLE;

/// The furthest a time may lie from now (10 years): beyond it is a mistake
/// (milliseconds sent as seconds, a bogus clock), not a policy.
pub const MAX_HORIZON_SECS: u64 = 10 * 365 * 86_400;

/// How far ahead of this node's clock `issued_before` may be (another
/// machine's clock minting a token may run ahead).
pub const CLOCK_SKEW_SECS: u64 = 60;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevocationBody {
    jti: Option<String>,
    expire_at: Option<u64>,
    user: Option<String>,
    issued_before: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockBody {
    seconds: Option<u64>,
}

/// `POST /v1/admin/revocations`.
pub async fn revoke(State(ingest): State<Arc<Ingest>>, headers: HeaderMap, body: Body) -> Response {
    let result = ingest.revoke(&headers, body).await;
    ingest.answer(result)
}

/// `PUT /v1/users/{user}/block`.
pub async fn block(
    State(ingest): State<Arc<Ingest>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = ingest.block(path, &headers, Some(body)).await;
    ingest.answer(result)
}

/// `DELETE /v1/users/{user}/block`.
pub async fn unblock(
    State(ingest): State<Arc<Ingest>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let result = ingest.block(path, &headers, None).await;
    ingest.answer(result)
}

fn check_user(user: &str) -> Result<(), ApiError> {
    if user.is_empty() || user.len() > MAX_USER_BYTES {
        return Err(ApiError::BadSubject);
    }
    Ok(())
}

/// `expire_at` of a revocation: after now, within the horizon.
fn check_expire_at(expire_at: u64, now: u64) -> Result<u64, ApiError> {
    if expire_at <= now {
        return Err(ApiError::BadTime(format!(
            "expire_at {expire_at} is not in the future (now {now}): the token has expired already"
        )));
    }
    if expire_at > now + MAX_HORIZON_SECS {
        return Err(ApiError::BadTime(format!(
            "expire_at {expire_at} is more than 10 years ahead; it is unix seconds"
        )));
    }
    Ok(expire_at)
}

impl Ingest {
    fn require_app(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        let claims = self.authenticate(headers)?;
        if claims.role != APP_ROLE {
            return Err(ApiError::Forbidden);
        }
        Ok(claims.sub)
    }

    async fn revoke(&self, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
        let by = self.require_app(headers)?;
        let bytes = body::read_bounded(headers, body, self.config.max_body_bytes).await?;
        let b: RevocationBody = body::parse_json(&bytes)?;
        let now = now_secs();
        let change = match b {
            RevocationBody {
                jti: Some(jti),
                expire_at: Some(expire_at),
                user: None,
                issued_before: None,
            } => {
                if jti.is_empty() || jti.len() > MAX_JTI_BYTES {
                    return Err(ApiError::BadJson(format!(
                        "jti must be 1 to {MAX_JTI_BYTES} bytes"
                    )));
                }
                account::revoke_token(&jti, check_expire_at(expire_at, now)?, now_ms())
            }
            RevocationBody {
                jti: None,
                expire_at,
                user: Some(user),
                issued_before: Some(issued_before),
            } => {
                check_user(&user)?;
                if issued_before > now + CLOCK_SKEW_SECS {
                    return Err(ApiError::BadTime(format!(
                        "issued_before {issued_before} is in the future (now {now}); it is unix seconds"
                    )));
                }
                if issued_before.saturating_add(MAX_HORIZON_SECS) < now {
                    return Err(ApiError::BadTime(format!(
                        "issued_before {issued_before} is more than 10 years ago; it is unix seconds"
                    )));
                }
                let expire_at = match expire_at {
                    Some(t) => check_expire_at(t, now)?,
                    None => issued_before
                        .saturating_add(self.config.max_token_ttl_secs)
                        .max(now + 1),
                };
                account::revoke_user(&user, issued_before, expire_at, now_ms())
            }
            _ => {
                return Err(ApiError::BadJson(
                    "expected {\"jti\",\"expire_at\"} or {\"user\",\"issued_before\"} \
                     (optionally with \"expire_at\")"
                        .into(),
                ));
            }
        };
        let answer = match &change.change {
            Some(pb::account_change::Change::RevokeToken(r)) => {
                json!({ "jti": r.jti, "expire_at": r.expire_at })
            }
            Some(pb::account_change::Change::RevokeUser(r)) => json!({
                "user": r.user,
                "issued_before": r.issued_before,
                "expire_at": r.expire_at,
            }),
            _ => json!({}),
        };
        self.change_account(change, &by).await?;
        Ok(Json(answer).into_response())
    }

    async fn block(
        &self,
        path: Result<Path<String>, PathRejection>,
        headers: &HeaderMap,
        body: Option<Body>,
    ) -> Result<Response, ApiError> {
        let by = self.require_app(headers)?;
        let Path(user) = path.map_err(|_| ApiError::BadSubject)?;
        check_user(&user)?;
        let now = now_secs();
        let (change, answer) = match body {
            Some(body) => {
                let bytes = body::read_bounded(headers, body, self.config.max_body_bytes).await?;
                let b: BlockBody = if bytes.iter().all(u8::is_ascii_whitespace) {
                    BlockBody::default()
                } else {
                    body::parse_json(&bytes)?
                };
                let until = match b.seconds {
                    None => None,
                    Some(s) if s == 0 || s > MAX_HORIZON_SECS => {
                        return Err(ApiError::BadTime(format!(
                            "seconds must be 1 to {MAX_HORIZON_SECS} (omit it for a permanent block), got {s}"
                        )));
                    }
                    Some(s) => Some(now + s),
                };
                (
                    account::block(&user, until, false, now_ms()),
                    json!({ "user": user, "blocked": true, "until": until }),
                )
            }
            None => (
                account::block(&user, Some(now), true, now_ms()),
                json!({ "user": user, "blocked": false }),
            ),
        };
        self.change_account(change, &by).await?;
        Ok(Json(answer).into_response())
    }

    /// Persists `change`, applies it here, and announces it to every other
    /// ingest and edge.
    async fn change_account(&self, change: pb::AccountChange, by: &str) -> Result<(), ApiError> {
        let kind = change_kind(&change);
        self.store_call("account", self.store.record_account_change(&change))
            .await?;
        self.policy.apply(&change, now_secs());
        self.metrics
            .account_changes
            .with_label_values(&[kind])
            .inc();
        tracing::info!(change = kind, by, ?change, "account change");
        let event = account::bus_event(change, &self.config.node_id);
        self.bus
            .publish(
                Bytes::from_static(ACCOUNT_KEY.as_bytes()),
                frame::encode(&event),
            )
            .await
            .map_err(|e| {
                ApiError::BusUnavailable(format!(
                    "the {kind} change is stored and applied on this node, but other nodes \
                     were not told ({e}); retry the request"
                ))
            })
    }
}

/// The `change` label of `danmaku_ingest_account_changes_total`.
pub fn change_kind(change: &pb::AccountChange) -> &'static str {
    use pb::account_change::Change;
    match &change.change {
        Some(Change::RevokeToken(_)) => "revoke_token",
        Some(Change::RevokeUser(_)) => "revoke_user",
        Some(Change::Block(b)) if b.lifted => "unblock",
        Some(Change::Block(_)) => "block",
        None => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_must_be_ahead_and_within_the_horizon() {
        assert_eq!(check_expire_at(101, 100).unwrap(), 101);
        assert_eq!(check_expire_at(100, 100).unwrap_err().code(), "bad_time");
        let absurd = 100 + MAX_HORIZON_SECS + 1;
        assert_eq!(check_expire_at(absurd, 100).unwrap_err().code(), "bad_time");
        assert_eq!(check_user("").unwrap_err().code(), "bad_user");
        assert!(check_user(&"u".repeat(MAX_USER_BYTES)).is_ok());
        assert!(check_user(&"u".repeat(MAX_USER_BYTES + 1)).is_err());
    }
}
