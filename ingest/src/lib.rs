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
//! 4. A danmaku becomes a `BusEvent`, encoded once and published with the
//!    channel as key; the answer is `202` as soon as the bus accepted it.
//!    Reliable kinds will be persisted first to get a `seq` (issue 5).
//!
//! Every refusal is one [`ApiError`] variant with its status code and JSON body
//! (see API.md), and is counted in [`metrics`]. `POST /v1/dev/token`
//! ([`dev_token`]) mints tokens for standalone demos.

pub mod auth;
pub mod body;
pub mod config;
pub mod dev_token;
pub mod error;
pub mod messages;
pub mod metrics;
pub mod rate_limit;

use std::sync::Arc;

use axum::Router;
use axum::routing::post;
use danmaku_bus::Bus;
use danmaku_proto::token::TokenKey;

pub use config::IngestConfig;
pub use error::{ApiError, IngestError, RateScope};
use metrics::Metrics;
use rate_limit::RateLimits;

/// One ingest node: configuration, the bus it publishes to, the token key,
/// rate limiters and metrics. Shared by every request as `Arc<Ingest>`.
pub struct Ingest {
    config: IngestConfig,
    bus: Arc<dyn Bus>,
    tokens: TokenKey,
    limits: RateLimits,
    metrics: Metrics,
}

impl Ingest {
    /// Builds the service, registering its metrics into `registry`.
    pub fn new(
        config: IngestConfig,
        bus: Arc<dyn Bus>,
        tokens: TokenKey,
        registry: &prometheus::Registry,
    ) -> Result<Arc<Ingest>, IngestError> {
        config.validate()?;
        let limits = RateLimits::new(&config)?;
        let metrics = Metrics::new(registry)?;
        Ok(Arc::new(Ingest {
            config,
            bus,
            tokens,
            limits,
            metrics,
        }))
    }

    pub fn config(&self) -> &IngestConfig {
        &self.config
    }

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
            .route(
                "/v1/channels/{channel}/messages",
                post(messages::post_message),
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
