//! Signed bearer tokens: `base64url(claims JSON) "." base64url(HMAC-SHA256)`.
//!
//! The app's backend mints them with the shared secret (or `danmaku token`);
//! ingest and edge verify them without a database round trip. The format is
//! documented in docs/PROTOCOL.md so any language can mint one.
//!
//! Key rotation: a [`TokenKey`] is a ring of secrets. The first signs; every one
//! verifies. A token names its signing key in the `kid` claim (a short hash of the
//! secret, [`key_id`]), so verifying costs one HMAC whatever the ring's size; a
//! token without `kid` (minted by an older backend) is tried against each key.
//! Rotate by deploying `new,old` everywhere, moving the backend to `new`, and
//! dropping `old` once its tokens have expired.
//!
//! Revocation: [`TokenKey::mint`] writes a random token id (`jti`) and the
//! issue time (`iat`), so one token, or all of a user's tokens issued before a
//! time, can be refused before `exp` (the account policy, `account.rs`).
//! Tokens without them (older minters) stay valid.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Longest token accepted, so verifying is cheap whatever a peer sends.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// Longest `jti` accepted (a revocation names it; [`new_token_id`] makes 22).
pub const MAX_JTI_BYTES: usize = 128;

/// A fresh random token id: 16 random bytes, base64url without padding (22
/// characters), as `secrets.token_urlsafe(16)` makes them in Python.
pub fn new_token_id() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>())
}

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
    /// Id of the signing key ([`key_id`]); absent in tokens of older minters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// Random token id, so this one token can be revoked; absent in tokens of
    /// older minters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Issued at, seconds since the Unix epoch, so every token of a user issued
    /// before a time can be revoked; absent in tokens of older minters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
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

/// The key id of `secret`: the first 8 hex digits of
/// SHA-256(`"danmaku-kid:"` ++ secret). Names a key without revealing it.
pub fn key_id(secret: &[u8]) -> String {
    use sha2::Digest;
    let mut h = Sha256::new();
    h.update(b"danmaku-kid:");
    h.update(secret);
    h.finalize()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Signs tokens with its first secret and verifies them with any of its secrets.
#[derive(Clone)]
pub struct TokenKey {
    /// `(key_id, secret)`, the signing key first. Never empty.
    keys: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// A ring of one secret.
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        let secret = secret.as_ref().to_vec();
        TokenKey {
            keys: vec![(key_id(&secret), secret)],
        }
    }

    /// A ring of several secrets: the first signs, all verify. `None` when empty.
    pub fn ring<S: AsRef<[u8]>>(secrets: impl IntoIterator<Item = S>) -> Option<Self> {
        let keys: Vec<_> = secrets
            .into_iter()
            .map(|s| {
                let s = s.as_ref().to_vec();
                (key_id(&s), s)
            })
            .collect();
        (!keys.is_empty()).then_some(TokenKey { keys })
    }

    /// The id of the signing key (written as `kid` into minted tokens).
    pub fn signing_key_id(&self) -> &str {
        &self.keys[0].0
    }

    fn mac(secret: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length.
        HmacSha256::new_from_slice(secret).expect("HMAC takes any key length")
    }

    /// Signs `claims` as they are (set `kid` to [`TokenKey::signing_key_id`] to
    /// name the key; [`TokenKey::mint`] does).
    pub fn sign(&self, claims: &Claims) -> String {
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let mut mac = Self::mac(&self.keys[0].1);
        mac.update(body.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{body}.{sig}")
    }

    /// Mints a token for `user` valid for `ttl_secs` from `now_secs`, signed by the
    /// first key and naming it in `kid`, with a random `jti` and `iat` = `now_secs`.
    pub fn mint(&self, user: &str, role: &str, now_secs: u64, ttl_secs: u64) -> String {
        self.mint_with_id(user, role, now_secs, ttl_secs, &new_token_id())
    }

    /// [`TokenKey::mint`] with a chosen `jti` (the caller keeps it to revoke the
    /// token later, or a test wants fixed bytes).
    pub fn mint_with_id(
        &self,
        user: &str,
        role: &str,
        now_secs: u64,
        ttl_secs: u64,
        jti: &str,
    ) -> String {
        self.sign(&Claims {
            sub: user.to_owned(),
            exp: now_secs.saturating_add(ttl_secs),
            role: role.to_owned(),
            kid: Some(self.signing_key_id().to_owned()),
            jti: Some(jti.to_owned()),
            iat: Some(now_secs),
        })
    }

    /// Checks signature (constant time) and expiry. A token naming a `kid` is
    /// checked against that key only (an unknown `kid` is a bad signature); one
    /// without is tried against every key.
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
        // The claims are read before the MAC is checked only to pick the key; nothing
        // in them is trusted until a key verifies the signature.
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        let verifies = |secret: &[u8]| {
            let mut mac = Self::mac(secret);
            mac.update(body.as_bytes());
            mac.verify_slice(&sig).is_ok()
        };
        let ok = match &claims.kid {
            Some(kid) => self
                .keys
                .iter()
                .any(|(id, secret)| id == kid && verifies(secret)),
            None => self.keys.iter().any(|(_, secret)| verifies(secret)),
        };
        if !ok {
            return Err(TokenError::BadSignature);
        }
        if claims.sub.is_empty() || claims.sub.len() > 128 {
            return Err(TokenError::Malformed);
        }
        if claims
            .jti
            .as_ref()
            .is_some_and(|j| j.is_empty() || j.len() > MAX_JTI_BYTES)
        {
            return Err(TokenError::Malformed);
        }
        if claims.exp <= now_secs {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

/// The `exp` claim of `token`, read WITHOUT checking the signature: for a client
/// deciding when to refresh its own token, never for authorization.
pub fn unverified_exp(token: &str) -> Option<u64> {
    let (body, _) = token.split_once('.')?;
    let json = URL_SAFE_NO_PAD.decode(body).ok()?;
    serde_json::from_slice::<Claims>(&json).ok().map(|c| c.exp)
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
    fn minted_tokens_carry_a_fresh_id_and_their_issue_time() {
        let k = TokenKey::new("s3cret");
        let a = k.verify(&k.mint("alice", "user", 1000, 60), 1000).unwrap();
        let b = k.verify(&k.mint("alice", "user", 1000, 60), 1000).unwrap();
        assert_eq!(a.iat, Some(1000));
        assert_eq!(a.jti.as_deref().map(str::len), Some(22));
        assert_ne!(a.jti, b.jti);
        let long = k.sign(&Claims {
            jti: Some("x".repeat(MAX_JTI_BYTES + 1)),
            ..a.clone()
        });
        assert_eq!(k.verify(&long, 1000), Err(TokenError::Malformed));
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

    #[test]
    fn rotation_first_signs_all_verify() {
        let old = TokenKey::new("old-secret");
        let ring = TokenKey::ring(["new-secret", "old-secret"]).unwrap();
        assert!(TokenKey::ring(Vec::<String>::new()).is_none());
        // Tokens of the old key still verify on the ring; the ring signs with the new.
        let t_old = old.mint("alice", "user", 1000, 60);
        assert_eq!(ring.verify(&t_old, 1000).unwrap().sub, "alice");
        let t_new = ring.mint("bob", "user", 1000, 60);
        let c = ring.verify(&t_new, 1000).unwrap();
        assert_eq!(c.kid.as_deref(), Some(key_id(b"new-secret").as_str()));
        assert_eq!(old.verify(&t_new, 1000), Err(TokenError::BadSignature));
        assert_eq!(
            TokenKey::new("new-secret")
                .verify(&t_new, 1000)
                .unwrap()
                .sub,
            "bob"
        );
        // After the old key is dropped its tokens are refused.
        let rotated = TokenKey::new("new-secret");
        assert_eq!(rotated.verify(&t_old, 1000), Err(TokenError::BadSignature));
        // No kid: every key is tried (tokens of minters that do not write one).
        let legacy = old.sign(&Claims {
            sub: "carol".into(),
            exp: 2000,
            role: "user".into(),
            kid: None,
            jti: None,
            iat: None,
        });
        assert_eq!(ring.verify(&legacy, 1000).unwrap().sub, "carol");
        // A kid naming a key not on the ring is refused even with a valid MAC.
        let lying = ring.sign(&Claims {
            sub: "dave".into(),
            exp: 2000,
            role: "user".into(),
            kid: Some("00000000".into()),
            jti: None,
            iat: None,
        });
        assert_eq!(ring.verify(&lying, 1000), Err(TokenError::BadSignature));
        assert_eq!(key_id(b"x").len(), 8);
        assert_ne!(key_id(b"x"), key_id(b"y"));
    }
}
