//! The fallback transports for clients whose network breaks WebSocket
//! (corporate proxies, some carriers, old WebViews): server-sent events
//! (`sse.rs`, one more writer next to `ws.rs` and `quic.rs`, sharing the
//! connection task, the reliable lane and the batches' JSON bytes) and
//! long-poll (`poll.rs`, no connection at all between polls: a bounded ring of
//! recent ticks per room and the store for the reliable lane).
//!
//! This file holds what both check before anything else, the same way the
//! WebSocket handshake does: the token, the account policy (a revoked token or
//! a blocked user is refused here with a readable status, so a browser's
//! `EventSource` stops reconnecting), the channel names and the cap of
//! channels per connection. Every refusal is a typed JSON error, counted in
//! `danmaku_edge_errors_total{code}` (and account refusals in
//! `danmaku_edge_refused_total{code}`).

pub(crate) mod poll;
pub(crate) mod sse;

use axum::http::StatusCode;
use danmaku_proto::ChannelName;
use danmaku_proto::token::Claims;

use crate::error::ApiError;
use crate::node::Edge;

/// The query of `GET /v1/sse` and `GET /v1/poll`: repeated keys allowed
/// (`channel=a&channel=b`), so it is read as pairs.
pub(crate) type Pairs = Vec<(String, String)>;

/// Counts `code` in `errors_total` and builds its HTTP answer.
pub(crate) fn refuse(
    edge: &Edge,
    status: StatusCode,
    code: &'static str,
    message: impl Into<String>,
) -> ApiError {
    edge.metrics.error(code);
    ApiError::new(status, code, message)
}

/// The values of `key` in the query, in order.
pub(crate) fn values<'a>(pairs: &'a Pairs, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    pairs
        .iter()
        .filter(move |(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The one value of `key`, if given (`bad_request` when given twice).
pub(crate) fn single<'a>(
    edge: &Edge,
    pairs: &'a Pairs,
    key: &'a str,
) -> Result<Option<&'a str>, ApiError> {
    let mut it = values(pairs, key);
    let first = it.next();
    if it.next().is_some() {
        return Err(refuse(
            edge,
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("`{key}` given more than once"),
        ));
    }
    Ok(first)
}

/// Verifies the token and the account policy, as a WebSocket upgrade and a
/// session start do.
pub(crate) fn authenticate(edge: &Edge, pairs: &Pairs) -> Result<Claims, ApiError> {
    let token = single(edge, pairs, "token")?.unwrap_or_default();
    let claims = edge
        .verify_token(token)
        .map_err(|e| refuse(edge, StatusCode::UNAUTHORIZED, "bad_token", e.to_string()))?;
    if let Err(refusal) = edge.account.check(&claims) {
        edge.metrics.refused(refusal.code());
        return Err(refuse(
            edge,
            StatusCode::FORBIDDEN,
            refusal.code(),
            refusal.message(),
        ));
    }
    Ok(claims)
}

/// The `channel` values: each a valid name, at most `max_channels_per_conn`,
/// no repeats; at least one unless `may_be_empty` (an SSE stream may start
/// with none: it then carries `auth_ok` and heartbeats, and a client reopens
/// it with the channels it joins).
pub(crate) fn channels(
    edge: &Edge,
    pairs: &Pairs,
    may_be_empty: bool,
) -> Result<Vec<ChannelName>, ApiError> {
    let max = edge.config.max_channels_per_conn;
    let mut out: Vec<ChannelName> = Vec::new();
    for raw in values(pairs, "channel") {
        let name = ChannelName::parse(raw)
            .map_err(|e| refuse(edge, StatusCode::BAD_REQUEST, "bad_channel", e.to_string()))?;
        if !out.contains(&name) {
            out.push(name);
        }
        if out.len() > max {
            return Err(refuse(
                edge,
                StatusCode::BAD_REQUEST,
                "too_many_channels",
                format!("at most {max} channels per stream"),
            ));
        }
    }
    if out.is_empty() && !may_be_empty {
        return Err(refuse(
            edge,
            StatusCode::BAD_REQUEST,
            "bad_channel",
            "name at least one channel: `channel=room:1`",
        ));
    }
    Ok(out)
}
