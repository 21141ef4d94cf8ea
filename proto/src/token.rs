//! Signed bearer tokens: `base64url(claims JSON) "." base64url(HMAC-SHA256)`.
//!
//! The app's backend mints them with the shared secret (or `danmaku token`);
//! ingest and edge verify them without a database round trip. The format is
//! documented in docs/PROTOCOL.md so any language can mint one.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Longest token accepted, so verifying is cheap whatever a peer sends.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// What a token asserts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// `user` (default) or `app`; `app` may manage group membership.
    #[serde(default = "default_role")]
    pub role: String,
}

fn default_role() -> String {
    "user".into()
}

impl Claims {
    pub fn is_app(&self) -> bool {
        self.role == "app"
    }
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("missing token")]
    Missing,
    #[error("token is malformed")]
    Malformed,
    #[error("token signature does not match")]
    BadSignature,
    #[error("token expired")]
    Expired,
}

/// Signs and verifies tokens with one HMAC key.
#[derive(Clone)]
pub struct TokenKey {
    secret: Vec<u8>,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        TokenKey {
            secret: secret.as_ref().to_vec(),
        }
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length.
        HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key length")
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{body}.{sig}")
    }

    /// Mints a token for `user` valid for `ttl_secs` from `now_secs`.
    pub fn mint(&self, user: &str, role: &str, now_secs: u64, ttl_secs: u64) -> String {
        self.sign(&Claims {
            sub: user.to_owned(),
            exp: now_secs.saturating_add(ttl_secs),
            role: role.to_owned(),
        })
    }

    /// Checks signature (constant time) and expiry.
    pub fn verify(&self, token: &str, now_secs: u64) -> Result<Claims, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed);
        }
        let (body, sig) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        mac.verify_slice(&sig)
            .map_err(|_| TokenError::BadSignature)?;
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        if claims.sub.is_empty() || claims.sub.len() > 128 {
            return Err(TokenError::Malformed);
        }
        if claims.exp <= now_secs {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_expire() {
        let k = TokenKey::new("s3cret");
        let t = k.mint("alice", "user", 1000, 60);
        let c = k.verify(&t, 1000).unwrap();
        assert_eq!(c.sub, "alice");
        assert!(!c.is_app());
        assert_eq!(k.verify(&t, 1060), Err(TokenError::Expired));
        assert_eq!(
            TokenKey::new("other").verify(&t, 1000),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn tampered_and_garbage_tokens() {
        let k = TokenKey::new("s3cret");
        let t = k.mint("alice", "app", 1000, 60);
        let (body, sig) = t.split_once('.').unwrap();
        let forged_body = URL_SAFE_NO_PAD.encode(br#"{"sub":"mallory","exp":99999,"role":"app"}"#);
        assert_eq!(
            k.verify(&format!("{forged_body}.{sig}"), 1000),
            Err(TokenError::BadSignature)
        );
        assert_eq!(k.verify(body, 1000), Err(TokenError::Malformed));
        assert_eq!(k.verify("", 1000), Err(TokenError::Missing));
        assert_eq!(k.verify("a.!!!", 1000), Err(TokenError::Malformed));
    }
}
