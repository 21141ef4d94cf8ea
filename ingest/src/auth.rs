//! Who is calling: the `Authorization: Bearer <token>` header, verified with the
//! shared HMAC key (no database round trip). Pure functions of the headers and
//! the clock so they are tested without a server.

use axum::http::{HeaderMap, header};
use danmaku_proto::token::{Claims, TokenKey, now_secs};

use crate::error::ApiError;
use crate::node::Ingest;

/// The token of an `Authorization: Bearer …` header. The scheme is matched
/// case-insensitively, as RFC 6750 allows.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(ApiError::MissingToken)?;
    let value = value.to_str().map_err(|_| ApiError::BadToken)?;
    let (scheme, token) = value.split_once(' ').ok_or(ApiError::BadToken)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::BadToken);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(ApiError::MissingToken);
    }
    Ok(token)
}

/// Verifies the caller's bearer token at `now_secs` and returns its claims.
pub fn authenticate(
    headers: &HeaderMap,
    key: &TokenKey,
    now_secs: u64,
) -> Result<Claims, ApiError> {
    let token = bearer_token(headers)?;
    Ok(key.verify(token, now_secs)?)
}

impl Ingest {
    /// The caller's verified claims, unless the account policy refuses them
    /// (`401 token_revoked`, `403 user_blocked`): one hash lookup or three.
    pub(crate) fn authenticate(&self, headers: &HeaderMap) -> Result<Claims, ApiError> {
        let now = now_secs();
        let claims = authenticate(headers, &self.tokens, now)?;
        self.policy.check(&claims, now)?;
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[test]
    fn accepts_a_valid_bearer_token() {
        let key = TokenKey::new("k");
        let token = key.mint("alice", "user", 100, 60);
        let claims = authenticate(&headers(&format!("Bearer {token}")), &key, 100).unwrap();
        assert_eq!(claims.sub, "alice");
        let claims = authenticate(&headers(&format!("bearer  {token}")), &key, 100).unwrap();
        assert_eq!(claims.sub, "alice");
    }

    #[test]
    fn refuses_missing_wrong_scheme_bad_and_expired() {
        let key = TokenKey::new("k");
        let token = key.mint("alice", "user", 100, 60);
        let code = |h: &HeaderMap, now| authenticate(h, &key, now).unwrap_err().code();
        assert_eq!(code(&HeaderMap::new(), 100), "missing_token");
        assert_eq!(code(&headers("Bearer "), 100), "missing_token");
        assert_eq!(code(&headers(&format!("Basic {token}")), 100), "bad_token");
        assert_eq!(code(&headers(&token), 100), "bad_token");
        assert_eq!(code(&headers("Bearer nonsense"), 100), "bad_token");
        assert_eq!(
            code(&headers(&format!("Bearer {token}")), 160),
            "token_expired"
        );
        let other = TokenKey::new("other").mint("alice", "user", 100, 60);
        assert_eq!(code(&headers(&format!("Bearer {other}")), 100), "bad_token");
    }
}
