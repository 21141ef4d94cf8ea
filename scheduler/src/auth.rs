//! Who may call the registry: bearer tokens of the `app` role, signed with the
//! cluster's shared secret (the same key every process verifies user tokens
//! with), so a stranger cannot register an edge and attract clients.

use axum::http::{HeaderMap, header};
use danmaku_proto::token::{Claims, TokenKey, now_secs};

use crate::error::ApiError;

/// The claims of a valid `app`-role bearer token in `headers`.
/// No key configured, no token, a bad or expired one → `bad_token` (401);
/// a valid token of another role → `forbidden` (403).
pub fn require_app(key: Option<&TokenKey>, headers: &HeaderMap) -> Result<Claims, ApiError> {
    let key = key.ok_or_else(|| {
        ApiError::BadToken("this scheduler has no --auth-secret: edge registration is off".into())
    })?;
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .trim();
    let claims = key
        .verify(token, now_secs())
        .map_err(|e| ApiError::BadToken(e.to_string()))?;
    if !claims.is_app() {
        return Err(ApiError::Forbidden);
    }
    Ok(claims)
}
