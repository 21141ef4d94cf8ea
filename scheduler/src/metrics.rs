//! The scheduler's Prometheus metrics, prefixed `danmaku_scheduler_` and
//! registered into the registry the caller passes.

use prometheus::{GaugeVec, IntCounterVec, Opts, Registry};

use crate::SchedulerError;

#[derive(Clone)]
pub struct Metrics {
    /// `danmaku_scheduler_picks_total{edge}`: times an edge was handed to a
    /// client (every edge in an answer counts, not only the first).
    pub picks_total: IntCounterVec,
    /// `danmaku_scheduler_edge_load{edge}`: the load score the ranking used.
    pub edge_load: GaugeVec,
}

impl Metrics {
    pub fn new(registry: &Registry) -> Result<Self, SchedulerError> {
        let picks_total = IntCounterVec::new(
            Opts::new(
                "danmaku_scheduler_picks_total",
                "Times an edge was handed out in GET /v1/edges.",
            ),
            &["edge"],
        )?;
        let edge_load = GaugeVec::new(
            Opts::new(
                "danmaku_scheduler_edge_load",
                "Load score of each edge as the scheduler sees it (0 idle, 1 full).",
            ),
            &["edge"],
        )?;
        registry.register(Box::new(picks_total.clone()))?;
        registry.register(Box::new(edge_load.clone()))?;
        Ok(Metrics {
            picks_total,
            edge_load,
        })
    }
}
