//! The ingest node's Prometheus metrics, all prefixed `danmaku_ingest_` and
//! registered into the registry the caller passes (never the global default,
//! so tests can run many nodes in one process).

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

use crate::{ApiError, IngestError};

/// The store operations ingest times and counts (`op` label values).
pub const STORE_OPS: [&str; 6] = ["append", "read", "ack", "unread", "membership", "account"];

/// The `change` label values of `danmaku_ingest_account_changes_total`.
pub const ACCOUNT_CHANGES: [&str; 4] = ["revoke_token", "revoke_user", "block", "unblock"];

/// Handles to every ingest metric.
#[derive(Clone)]
pub struct Metrics {
    /// `danmaku_ingest_requests_total{kind,status}`: message posts by kind
    /// (`danmaku`, `gift`, `chat`, or `unknown` when the body did not parse)
    /// and HTTP status code.
    pub requests_total: IntCounterVec,
    /// `danmaku_ingest_rate_limited_total{scope}`: refusals by the `user` or
    /// `channel` limiter.
    pub rate_limited_total: IntCounterVec,
    /// `danmaku_ingest_rejected_total{code}`: refused requests by error code.
    pub rejected_total: IntCounterVec,
    /// `danmaku_ingest_publish_latency_seconds`: time for the bus to accept one event.
    pub publish_latency_seconds: Histogram,
    /// `danmaku_ingest_published_bytes_total`: encoded `BusEvent` bytes published.
    pub published_bytes_total: IntCounter,
    /// `danmaku_ingest_reliable_persisted_total{kind}`: reliable messages newly
    /// written to the store (duplicates not included).
    pub reliable_persisted_total: IntCounterVec,
    /// `danmaku_ingest_reliable_duplicates_total`: reliable posts whose
    /// `client_msg_id` was already stored (answered with the original seq).
    pub reliable_duplicates_total: IntCounter,
    /// `danmaku_ingest_store_op_seconds{op,backend}`: time of each store call
    /// made by ingest; `op` is `append`, `read`, `ack`, `unread`, `membership` or
    /// `account`.
    pub store_op_seconds: HistogramVec,
    /// `danmaku_ingest_store_errors_total{op}`: store calls that failed (a
    /// "not a member" answer is not a failure).
    pub store_errors_total: IntCounterVec,
    /// `danmaku_ingest_account_changes_total{change}`: account changes made
    /// through this node's API (`revoke_token`, `revoke_user`, `block`, `unblock`).
    pub account_changes: IntCounterVec,
    /// `danmaku_ingest_account_policy_entries{kind}`: revocations and blocks in
    /// force in this node's memory (`revocations`, `blocks`).
    pub account_entries: IntGaugeVec,
}

impl Metrics {
    pub fn new(registry: &Registry) -> Result<Self, IngestError> {
        let requests_total = IntCounterVec::new(
            Opts::new(
                "danmaku_ingest_requests_total",
                "Message posts by kind and HTTP status.",
            ),
            &["kind", "status"],
        )?;
        let rate_limited_total = IntCounterVec::new(
            Opts::new(
                "danmaku_ingest_rate_limited_total",
                "Requests refused by a rate limiter, by scope (user, channel).",
            ),
            &["scope"],
        )?;
        let rejected_total = IntCounterVec::new(
            Opts::new(
                "danmaku_ingest_rejected_total",
                "Requests refused, by error code.",
            ),
            &["code"],
        )?;
        let publish_latency_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "danmaku_ingest_publish_latency_seconds",
                "Time for the bus to accept one published event.",
            )
            .buckets(vec![
                0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0, 2.5,
            ]),
        )?;
        let published_bytes_total = IntCounter::new(
            "danmaku_ingest_published_bytes_total",
            "Encoded BusEvent bytes published to the bus.",
        )?;
        let reliable_persisted_total = IntCounterVec::new(
            Opts::new(
                "danmaku_ingest_reliable_persisted_total",
                "Reliable messages newly persisted, by kind.",
            ),
            &["kind"],
        )?;
        let reliable_duplicates_total = IntCounter::new(
            "danmaku_ingest_reliable_duplicates_total",
            "Reliable posts answered with the seq of an earlier one with the same client_msg_id.",
        )?;
        let store_op_seconds = HistogramVec::new(
            HistogramOpts::new(
                "danmaku_ingest_store_op_seconds",
                "Time of store calls made by ingest, by operation and backend.",
            )
            .buckets(vec![
                0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                2.5, 5.0,
            ]),
            &["op", "backend"],
        )?;
        let store_errors_total = IntCounterVec::new(
            Opts::new(
                "danmaku_ingest_store_errors_total",
                "Store calls made by ingest that failed, by operation.",
            ),
            &["op"],
        )?;
        let account_changes = IntCounterVec::new(
            Opts::new(
                "danmaku_ingest_account_changes_total",
                "Account changes (revocations, blocks) made through this node, by change.",
            ),
            &["change"],
        )?;
        let account_entries = IntGaugeVec::new(
            Opts::new(
                "danmaku_ingest_account_policy_entries",
                "Token revocations and user blocks in force in this node's memory, by kind.",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(account_changes.clone()))?;
        registry.register(Box::new(account_entries.clone()))?;
        for change in ACCOUNT_CHANGES {
            account_changes.with_label_values(&[change]);
        }
        for kind in ["revocations", "blocks"] {
            account_entries.with_label_values(&[kind]);
        }
        registry.register(Box::new(requests_total.clone()))?;
        registry.register(Box::new(rate_limited_total.clone()))?;
        registry.register(Box::new(rejected_total.clone()))?;
        registry.register(Box::new(publish_latency_seconds.clone()))?;
        registry.register(Box::new(published_bytes_total.clone()))?;
        registry.register(Box::new(reliable_persisted_total.clone()))?;
        registry.register(Box::new(reliable_duplicates_total.clone()))?;
        registry.register(Box::new(store_op_seconds.clone()))?;
        registry.register(Box::new(store_errors_total.clone()))?;
        // Start every operation's error series at 0 so dashboards and alerts see it.
        for op in STORE_OPS {
            store_errors_total.with_label_values(&[op]);
        }
        Ok(Metrics {
            requests_total,
            rate_limited_total,
            rejected_total,
            publish_latency_seconds,
            published_bytes_total,
            reliable_persisted_total,
            reliable_duplicates_total,
            store_op_seconds,
            store_errors_total,
            account_changes,
            account_entries,
        })
    }

    /// Counts a refused request under its code (and its limiter scope).
    pub fn reject(&self, error: &ApiError) {
        self.rejected_total.with_label_values(&[error.code()]).inc();
        if let ApiError::RateLimited { scope, .. } = error {
            self.rate_limited_total
                .with_label_values(&[scope.as_str()])
                .inc();
        }
    }
}
