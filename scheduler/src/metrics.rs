//! The scheduler's Prometheus metrics, prefixed `danmaku_scheduler_` and
//! registered into the registry the caller passes. Every labelled series with
//! a fixed label set is created at zero up front, so dashboards and alerts see
//! it before the first event.

use prometheus::{GaugeVec, Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::error::ApiError;
use crate::error::SchedulerError;
use crate::load_model::{EdgeState, EjectReason};

/// Why a load reading was not taken (the `reason` of `stale_readings_total`).
pub const STALE_REASONS: [&str; 5] = [
    "scrape_error",
    "bad_exposition",
    "query_error",
    "missing",
    "old",
];

/// Outcomes of `POST /v1/registry/edges` (the `result` of `registrations_total`).
pub const REGISTRATION_RESULTS: [&str; 3] = ["created", "replaced", "refused"];

#[derive(Clone)]
pub struct Metrics {
    /// `danmaku_scheduler_picks_total{edge}`: times an edge was handed to a
    /// client (every edge in an answer counts, not only the first).
    pub picks_total: IntCounterVec,
    /// `danmaku_scheduler_edge_load{edge}`: the load score the ranking used.
    pub edge_load: GaugeVec,
    /// `danmaku_scheduler_edges{state}`: registry size by state.
    pub edges: IntGaugeVec,
    /// `danmaku_scheduler_ejections_total{reason}`.
    pub ejections_total: IntCounterVec,
    /// `danmaku_scheduler_stale_readings_total{reason}`: readings not taken.
    pub stale_readings_total: IntCounterVec,
    /// `danmaku_scheduler_registrations_total{result}`.
    pub registrations_total: IntCounterVec,
    /// `danmaku_scheduler_refused_total{code}`: requests answered with an error.
    pub refused_total: IntCounterVec,
    /// `danmaku_scheduler_decision_seconds`: time to pick the edges of one answer.
    pub decision_seconds: Histogram,
}

impl Metrics {
    pub fn new(registry: &Registry) -> Result<Self, SchedulerError> {
        let counter = |name: &str, help: &str, label: &str| {
            IntCounterVec::new(Opts::new(name, help), &[label])
        };
        let picks_total = counter(
            "danmaku_scheduler_picks_total",
            "Times an edge was handed out in GET /v1/edges.",
            "edge",
        )?;
        let edge_load = GaugeVec::new(
            Opts::new(
                "danmaku_scheduler_edge_load",
                "Load score of each edge as the scheduler sees it (0 idle, 1 full).",
            ),
            &["edge"],
        )?;
        let edges = IntGaugeVec::new(
            Opts::new(
                "danmaku_scheduler_edges",
                "Edges in the registry by state (healthy, warming, not_ready, draining, stale).",
            ),
            &["state"],
        )?;
        let ejections_total = counter(
            "danmaku_scheduler_ejections_total",
            "Edges taken out of the registry for a missed heartbeat or stale load readings.",
            "reason",
        )?;
        let stale_readings_total = counter(
            "danmaku_scheduler_stale_readings_total",
            "Load readings that could not be taken or were older than the last one.",
            "reason",
        )?;
        let registrations_total = counter(
            "danmaku_scheduler_registrations_total",
            "Edge registrations by result.",
            "result",
        )?;
        let refused_total = counter(
            "danmaku_scheduler_refused_total",
            "Requests the scheduler answered with an error, by error code.",
            "code",
        )?;
        let decision_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "danmaku_scheduler_decision_seconds",
                "Time to choose the edges of one GET /v1/edges answer.",
            )
            .buckets(vec![
                1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2,
            ]),
        )?;
        for state in EdgeState::ALL {
            edges.with_label_values(&[state.label()]).set(0);
        }
        for reason in EjectReason::ALL {
            ejections_total.with_label_values(&[reason.label()]);
        }
        for reason in STALE_REASONS {
            stale_readings_total.with_label_values(&[reason]);
        }
        for result in REGISTRATION_RESULTS {
            registrations_total.with_label_values(&[result]);
        }
        for code in ApiError::CODES {
            refused_total.with_label_values(&[code]);
        }
        registry.register(Box::new(picks_total.clone()))?;
        registry.register(Box::new(edge_load.clone()))?;
        registry.register(Box::new(edges.clone()))?;
        registry.register(Box::new(ejections_total.clone()))?;
        registry.register(Box::new(stale_readings_total.clone()))?;
        registry.register(Box::new(registrations_total.clone()))?;
        registry.register(Box::new(refused_total.clone()))?;
        registry.register(Box::new(decision_seconds.clone()))?;
        Ok(Metrics {
            picks_total,
            edge_load,
            edges,
            ejections_total,
            stale_readings_total,
            registrations_total,
            refused_total,
            decision_seconds,
        })
    }

    pub fn stale_reading(&self, reason: &'static str) {
        self.stale_readings_total.with_label_values(&[reason]).inc();
    }
}
