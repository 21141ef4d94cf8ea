//! [`Ingest`], one ingest node's state, shared by every request as
//! `Arc<Ingest>`, and the few things every endpoint does with it: run a timed
//! store call, check group membership, turn a result into the answer.
//! The endpoints (`messages`, `reliable`, `account`, `moderation`, …) add
//! their own `impl Ingest` blocks above this module; the router in `lib.rs`
//! ties them together.

use std::sync::Arc;
use std::time::Instant;

use axum::response::{IntoResponse, Response};
use danmaku_bus::Bus;
use danmaku_proto::account::SharedPolicy;
use danmaku_proto::token::TokenKey;
use danmaku_store::{Store, StoreError};

use crate::config::IngestConfig;
use crate::error::{ApiError, IngestError};
use crate::metrics::Metrics;
use crate::rate_limit::RateLimits;
use crate::screening::Moderation;

/// One ingest node: configuration, the bus it publishes to, the store of the
/// reliable lane, the token key, rate limiters and metrics. Shared by every
/// request as `Arc<Ingest>`.
pub struct Ingest {
    pub(crate) config: IngestConfig,
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) tokens: TokenKey,
    pub(crate) limits: RateLimits,
    pub(crate) metrics: Metrics,
    /// Revoked tokens and blocked users (`account.rs`, `announcements.rs`).
    pub(crate) policy: Arc<SharedPolicy>,
    pub(crate) moderation: Moderation,
}

impl Ingest {
    /// Builds the service, registering its metrics into `registry`.
    pub fn new(
        config: IngestConfig,
        bus: Arc<dyn Bus>,
        store: Arc<dyn Store>,
        tokens: TokenKey,
        registry: &prometheus::Registry,
    ) -> Result<Arc<Ingest>, IngestError> {
        config.validate()?;
        let limits = RateLimits::new(&config)?;
        let metrics = Metrics::new(registry)?;
        Ok(Arc::new(Ingest {
            config,
            bus,
            store,
            tokens,
            limits,
            metrics,
            policy: Arc::default(),
            moderation: Moderation::default(),
        }))
    }

    pub fn config(&self) -> &IngestConfig {
        &self.config
    }

    /// The store of the reliable lane (e.g. for a readiness check).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Runs one store call, timing it in `store_op_seconds{op,backend}` and
    /// counting failures in `store_errors_total{op}` ("not a member" and an
    /// idempotency conflict are answers, not failures).
    pub(crate) async fn store_call<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, ApiError> {
        let started = Instant::now();
        let result = call.await;
        self.metrics
            .store_op_seconds
            .with_label_values(&[op, self.store.backend()])
            .observe(started.elapsed().as_secs_f64());
        result.map_err(|e| {
            if !matches!(
                e,
                StoreError::NotMember { .. } | StoreError::IdempotencyConflict { .. }
            ) {
                self.metrics
                    .store_errors_total
                    .with_label_values(&[op])
                    .inc();
                tracing::warn!(op, backend = self.store.backend(), error = %e, "store call failed");
            }
            ApiError::from(e)
        })
    }

    /// `Ok(())` when `user` belongs to `group`, else `not_member`.
    pub(crate) async fn require_member(&self, group: &str, user: &str) -> Result<(), ApiError> {
        match self
            .store_call("membership", self.store.is_member(group, user))
            .await?
        {
            Some(_) => Ok(()),
            None => Err(ApiError::NotMember {
                group: group.to_owned(),
                user: user.to_owned(),
            }),
        }
    }

    /// Turns a handler's result into the response, counting and logging a
    /// refusal.
    pub(crate) fn answer(&self, result: Result<Response, ApiError>) -> Response {
        result.unwrap_or_else(|error| {
            self.metrics.reject(&error);
            if error.status().is_server_error() {
                tracing::warn!(code = error.code(), %error, "answering 5xx");
            } else {
                tracing::debug!(code = error.code(), %error, "request refused");
            }
            error.into_response()
        })
    }
}
