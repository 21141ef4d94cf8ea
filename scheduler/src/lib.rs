//! The scheduler: tells a client which edges to connect to (`GET /v1/edges`).
//!
//! For now it serves a static list from [`SchedulerConfig::static_edges`],
//! ranked by their configured load ([`ranking`]), up to `?k=` edges (default 3)
//! so clients can race connections to several (HttpDNS-style).
//!
//! The load model comes in a later issue: edges self-register and heartbeat;
//! their load is read by scraping each edge's `/metrics` (embedded default) or
//! by querying a Prometheus server (`--prometheus-url`); the score is
//! max(connections / capacity, cpu, egress / egress capacity) plus a correction
//! for clients handed out since the last reading; picks use power of two
//! choices over healthy, non-draining edges, and stale edges are taken out.
//! That logic will live in a sans-IO `load_model.rs` tested with simulated time.

pub mod config;
pub mod edges;
pub mod error;
pub mod metrics;
pub mod ranking;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;

pub use config::{EdgeInfo, SchedulerConfig};
pub use error::{ApiError, SchedulerError};
use metrics::Metrics;

/// The scheduler service, shared by every request as `Arc<Scheduler>`.
pub struct Scheduler {
    edges: Vec<EdgeInfo>,
    metrics: Metrics,
}

impl Scheduler {
    /// Builds the scheduler, registering its metrics into `registry`.
    pub fn new(
        config: SchedulerConfig,
        registry: &prometheus::Registry,
    ) -> Result<Arc<Scheduler>, SchedulerError> {
        config.validate()?;
        let metrics = Metrics::new(registry)?;
        for edge in &config.static_edges {
            metrics
                .edge_load
                .with_label_values(&[edge.id.as_str()])
                .set(edge.load);
        }
        Ok(Arc::new(Scheduler {
            edges: config.static_edges,
            metrics,
        }))
    }

    /// Every known edge, in configuration order.
    pub fn edges(&self) -> &[EdgeInfo] {
        &self.edges
    }

    /// `GET /v1/edges`. No fallback, so it merges with the other services'
    /// routers (axum refuses to merge two routers that both have one).
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1/edges", get(edges::get_edges))
            .with_state(self.clone())
    }
}
