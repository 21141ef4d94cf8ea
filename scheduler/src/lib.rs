//! The scheduler: tells a client which edges to connect to, from what it
//! knows of every edge's load.
//!
//! * Edges register themselves (`POST /v1/registry/edges`, an `app`-role
//!   token) and heartbeat every second ([`registry`]); static `--edge`
//!   entries are always there.
//! * Their load is read every second, by scraping each edge's `/metrics`
//!   ([`scrape`]) or by asking a Prometheus server ([`promql`]), and kept in
//!   the sans-IO [`load_model`], which scores edges, ejects silent ones after
//!   3 s and hands out the least loaded, counting its own recent hand-outs.
//! * `GET /v1/edges?k=` answers the best `k` ([`edges`]), so a client can race
//!   connections to several; `GET /v1/channels/{channel}/online` sums the
//!   member counts edges report ([`online`]); `/readyz` says whether any edge
//!   can be handed out ([`readiness`]).
//!
//! [`Scheduler::router`] holds only `GET /v1/edges` (what `danmaku standalone`
//! serves for itself); [`Scheduler::control_router`] adds what a scheduler
//! process serves besides. [`Scheduler::run`] drives the readings and ejections.

pub mod auth;
pub mod config;
pub mod edges;
pub mod error;
pub mod load_model;
pub mod metrics;
pub mod online;
pub mod promql;
pub mod readiness;
pub mod registry;
pub mod scrape;
mod state;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{delete, get, post};
use tokio_util::sync::CancellationToken;

pub use config::{EdgeInfo, LoadSource, SchedulerConfig};
use error::RefusalCode;
pub use error::{ApiError, SchedulerError};
pub use state::Scheduler;

/// How often silent edges are looked for and the registry gauges refreshed.
/// Picks check staleness themselves; this only bounds how late the ejection
/// is counted and logged.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

impl Scheduler {
    /// `GET /v1/edges`. No fallback, so it merges with the other services'
    /// routers (axum refuses to merge two routers that both have one).
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1/edges", get(edges::get_edges))
            .layer(axum::middleware::map_response_with_state(
                self.clone(),
                count_refusal,
            ))
            .with_state(self.clone())
    }

    /// What a scheduler process serves besides [`Scheduler::router`]: the
    /// registry, cluster-wide online counts and `/readyz`. (A standalone
    /// process answers online counts and readiness from its own edge.)
    pub fn control_router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1/registry/edges", post(registry::register))
            .route("/v1/registry/edges/{id}", delete(registry::deregister))
            .route(
                "/v1/registry/edges/{id}/heartbeat",
                post(registry::heartbeat),
            )
            .route("/v1/channels/{channel}/online", get(online::get_online))
            .route("/readyz", get(readiness::readyz))
            .layer(axum::middleware::map_response_with_state(
                self.clone(),
                count_refusal,
            ))
            .with_state(self.clone())
    }

    /// Takes load readings every [`SchedulerConfig::sample_interval`] (and at
    /// once after a registration) and ejects silent edges, until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let sweeper = {
            let me = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(SWEEP_INTERVAL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tick.tick() => me.sweep(Instant::now()),
                    }
                }
            })
        };
        let mut tick = tokio::time::interval(self.config.sample_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
                _ = self.sample_now.notified() => {}
            }
            match &self.config.load_source {
                LoadSource::Scrape => scrape::sample_all(&self).await,
                LoadSource::Prometheus { url } => promql::sample_all(&self, url).await,
            }
        }
        let _ = sweeper.await;
    }
}

/// Counts every error answer by its code (see [`RefusalCode`]).
async fn count_refusal(State(scheduler): State<Arc<Scheduler>>, response: Response) -> Response {
    if let Some(RefusalCode(code)) = response.extensions().get::<RefusalCode>() {
        scheduler
            .metrics
            .refused_total
            .with_label_values(&[code])
            .inc();
    }
    response
}
