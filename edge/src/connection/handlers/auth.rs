//! `Auth` after the session is established, and token expiry.
//!
//! The connection is authenticated before the session starts (query token on
//! WebSocket, first frame on QUIC), and its rights last as long as that token:
//! when it expires the edge sends `error{code:"token_expired"}` and closes. A
//! client keeps the connection by sending a fresh `Auth{token}` for the same
//! user before then (the Rust SDK does, through its token refresh callback):
//! the new expiry applies and the edge answers `AuthOk`. A fresh token for
//! another user is `user_mismatch`, an invalid one `bad_token`, a revoked one
//! `token_revoked`; all keep the connection on its current token (a revocation
//! or block that covers the current token closes the connection by itself,
//! `account.rs`).

use danmaku_proto::account::Refusal;
use danmaku_proto::pb;
use danmaku_proto::pb::server_frame::Body;
use danmaku_proto::token::now_secs;
use tokio::time::Instant;

use crate::account::TokenFacts;
use crate::session::{CloseReason, Flow, Session};

/// When a token valid until `exp` (unix seconds) expires, on the tokio clock;
/// `None` for tokens that never do (`u64::MAX`).
pub(crate) fn expiry_instant(exp: u64) -> Option<Instant> {
    if exp == u64::MAX {
        return None;
    }
    let left = exp.saturating_sub(now_secs());
    // Far-future expiries need no timer (and would overflow Instant).
    (left < 365 * 86_400).then(|| Instant::now() + std::time::Duration::from_secs(left))
}

/// Whether the session's token has expired (`now >= exp`, as the verifier says).
pub(crate) fn expired(session: &Session) -> bool {
    session.token_exp != u64::MAX && now_secs() >= session.token_exp
}

/// Ends a session whose token expired.
pub(crate) async fn on_expired(session: &mut Session) -> Flow {
    session.edge.metrics.refused("token_expired");
    tracing::info!(conn_id = session.conn_id, user = %session.user, "token expired; closing");
    let _ = session
        .reply_error(
            "token_expired",
            "the connection's token expired; send a fresh auth frame before it does, or reconnect with a new token",
        )
        .await;
    Flow::Close(CloseReason::TokenExpired)
}

/// Ends a session the account policy refuses (a change between the
/// handshake's check and the registration): `token_revoked` or `user_blocked`.
pub(crate) async fn refuse_account(session: &mut Session, refusal: Refusal) -> Flow {
    session.edge.metrics.refused(refusal.code());
    tracing::info!(conn_id = session.conn_id, user = %session.user, code = refusal.code(), "refused by the account policy");
    let _ = session.reply_error(refusal.code(), refusal.message()).await;
    Flow::Close(CloseReason::AccountRefused)
}

pub(crate) async fn handle(session: &mut Session, auth: pb::Auth) -> Flow {
    let claims = match session.edge.verify_token(&auth.token) {
        Ok(c) => c,
        Err(e) => {
            return session.reply_error("bad_token", e.to_string()).await;
        }
    };
    if claims.sub != session.user {
        return session
            .reply_error(
                "user_mismatch",
                format!(
                    "this connection is authenticated as {:?}; a fresh token must be for the same user",
                    session.user
                ),
            )
            .await;
    }
    if let Err(refusal) = session.edge.account.check(&claims) {
        session.edge.metrics.refused(refusal.code());
        return session.reply_error(refusal.code(), refusal.message()).await;
    }
    session.token_exp = claims.exp;
    session
        .edge
        .account
        .refresh(&session.user, session.conn_id, &TokenFacts::from(&claims));
    tracing::debug!(
        conn_id = session.conn_id,
        exp = claims.exp,
        "token refreshed"
    );
    session
        .reply(Body::AuthOk(pb::AuthOk {
            user: session.user.clone(),
            ack_interval_ms: session.edge.config.reliable.client_ack_interval_ms(),
        }))
        .await
}
