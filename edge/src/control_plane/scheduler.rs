//! How the control plane addresses the scheduler: its URLs and the `app`
//! token each call carries, minted with the edge's own key.

use crate::node::Edge;

/// Lifetime of the `app` token the edge mints for each scheduler call.
const TOKEN_TTL_SECS: u64 = 3600;

/// `{scheduler}{path}`, or `None` when the edge has no scheduler.
pub(super) fn scheduler_url(edge: &Edge, path: &str) -> Option<String> {
    let base = edge.config.control.scheduler.as_deref()?;
    Some(format!("{}{path}", base.trim_end_matches('/')))
}

/// An `app`-role token for one scheduler call, minted with the edge's own key.
pub(super) fn app_token(edge: &Edge) -> String {
    edge.tokens.mint(
        &edge.config.id,
        "app",
        danmaku_proto::token::now_secs(),
        TOKEN_TTL_SECS,
    )
}
