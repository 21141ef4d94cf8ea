//! The ingest service: the upstream half of danmaku. Clients send comments,
//! gifts and chat as short HTTP requests here; they receive over a long
//! connection to an edge. Ingest never talks to viewers.
//!
//! A tour of one `POST /v1/channels/{channel}/messages`:
//!
//! 1. [`auth`] reads `Authorization: Bearer <token>` and verifies the HMAC
//!    token against the shared key; the token's `sub` becomes the sender, so a
//!    client cannot speak for someone else.
//! 2. The channel name is parsed once ([`ChannelName`](danmaku_proto::ChannelName)),
//!    the body is read bounded by `max_body_bytes` ([`body`]) and validated
//!    ([`messages`]: kind, text length in characters, payload, idempotency key).
//! 3. [`rate_limit`] takes one token from the user's bucket, then from the
//!    channel's (so one flooding user cannot eat a hot room's budget).
//! 4. In a `group:` channel the sender must be a member (any kind); `chat` is
//!    only accepted there.
//! 5. A danmaku becomes a `BusEvent`, encoded once and published with the
//!    channel as key; the answer is `202` as soon as the bus accepted it.
//!    A reliable kind (gift, chat) is first appended to the [`Store`], which
//!    assigns the channel's `seq` (idempotent on `client_msg_id`), then
//!    published with that `seq`; the answer `200 {"seq":N}` comes only after
//!    both, so nothing unpersisted is ever acknowledged.
//!
//! Before the rate limits, [`moderation`] screens the post: `mute_all`, a
//! running mute, the block words (global list, then the room's), slow mode;
//! mask words are starred in the text that is published. Its endpoints (word
//! lists, moderators, mutes, settings, audit trail) live in the same module.
//!
//! The rest of the reliable lane lives in [`reliable`]: history paging, group
//! membership (role `app`), ack offsets and unread counts.
//!
//! Every refusal is one [`ApiError`] variant with its status code and JSON body
//! (see docs/PROTOCOL.md), and is counted in [`metrics`]. `POST /v1/dev/token`
//! ([`dev_token`]) mints tokens for standalone demos.
//!
//! Account protection ([`account`]): the app backend revokes tokens and blocks
//! users; every authenticated call checks this node's in-memory policy, which
//! [`announcements`] keeps in step with the other nodes through the bus.

pub mod account;
pub mod announcements;
pub mod auth;
pub mod blobs;
pub mod body;
pub mod config;
pub mod dev_token;
pub mod error;
pub mod message_id;
pub mod messages;
pub mod metrics;
pub mod moderation;
pub mod node;
pub mod rate_limit;
pub mod reliable;
pub mod screening;

use std::sync::Arc;

use axum::Router;
use axum::routing::{delete, get, post, put};

pub use config::IngestConfig;
pub use error::{ApiError, IngestError, RateScope};
pub use node::Ingest;

impl Ingest {
    /// The ingest API with JSON answers for unknown routes (404) and wrong
    /// methods (405). To merge it with another router that has its own
    /// fallback, call `.reset_fallback()` on one of them, or merge
    /// [`Ingest::routes`] instead.
    pub fn router(self: &Arc<Self>) -> Router {
        self.routes().fallback(not_found)
    }

    /// The ingest routes without a fallback, for merging.
    pub fn routes(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1/dev/token", post(dev_token::mint))
            .route("/v1/blobs", post(blobs::post))
            .route("/v1/blobs/{id}", get(blobs::get))
            .route(
                "/v1/channels/{channel}/messages",
                post(messages::post_message).get(reliable::history),
            )
            .route("/v1/channels/{channel}/ack", post(reliable::ack))
            .route(
                "/v1/groups/{group}/members/{user}",
                put(reliable::join).delete(reliable::leave),
            )
            .route("/v1/unread", get(reliable::unread))
            .route("/v1/admin/revocations", post(account::revoke))
            .route(
                "/v1/users/{user}/block",
                put(account::block).delete(account::unblock),
            )
            .route(
                "/v1/wordlist",
                put(moderation::wordlist::put_global).get(moderation::wordlist::get_global),
            )
            .route(
                "/v1/channels/{channel}/wordlist",
                put(moderation::wordlist::put_room).get(moderation::wordlist::get_room),
            )
            .route(
                "/v1/channels/{channel}/moderators/{user}",
                put(moderation::moderators::put).delete(moderation::moderators::delete),
            )
            .route(
                "/v1/channels/{channel}/mutes/{user}",
                put(moderation::mutes::put).delete(moderation::mutes::delete),
            )
            .route(
                "/v1/channels/{channel}/bans/{user}",
                put(moderation::bans::put).delete(moderation::bans::delete),
            )
            .route(
                "/v1/channels/{channel}/messages/{id}",
                delete(moderation::retract::delete),
            )
            .route(
                "/v1/channels/{channel}/settings",
                put(moderation::settings::put).get(moderation::settings::get),
            )
            .route(
                "/v1/channels/{channel}/moderation/log",
                get(moderation::audit::get),
            )
            .method_not_allowed_fallback(method_not_allowed)
            .with_state(self.clone())
    }
}

/// The JSON 404 for unknown routes; usable as any router's fallback.
pub async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// The JSON 405 for a known path with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
