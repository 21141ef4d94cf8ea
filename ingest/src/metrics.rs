//! The ingest node's Prometheus metrics, all prefixed `danmaku_ingest_` and
//! registered into the registry the caller passes (never the global default,
//! so tests can run many nodes in one process).

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::error::{ApiError, IngestError};

/// The store operations ingest times and counts (`op` label values).
pub const STORE_OPS: [&str; 9] = [
    "append",
    "read",
    "ack",
    "unread",
    "membership",
    "account",
    "moderate",
    "policy",
    "moderation_log",
];

/// The `change` label values of `danmaku_ingest_account_changes_total`.
pub const ACCOUNT_CHANGES: [&str; 4] = ["revoke_token", "revoke_user", "block", "unblock"];
/// Post refusals of the moderation policy (`reason` label values).
pub const MODERATION_REFUSALS: [&str; 4] = ["blocked_content", "muted", "room_muted", "slow_mode"];
/// Moderation changes (`what` label values).
pub const MODERATION_CHANGES: [&str; 4] = ["wordlist", "moderators", "mutes", "settings"];

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
    /// `danmaku_ingest_filtered_total{verdict}`: posts the word lists
    /// `blocked` (refused) or `masked` (accepted with words starred).
    pub filtered_total: IntCounterVec,
    /// `danmaku_ingest_moderation_refused_total{reason}`: posts refused by the
    /// moderation policy (`blocked_content`, `muted`, `room_muted`, `slow_mode`).
    pub moderation_refused_total: IntCounterVec,
    /// `danmaku_ingest_active_mutes`: mutes running, as this node knows them.
    pub active_mutes: IntGauge,
    /// `danmaku_ingest_wordlist_words{scope}`: words loaded, `global` and all `rooms`.
    pub wordlist_words: IntGaugeVec,
    /// `danmaku_ingest_moderation_changes_total{what}`: changes applied through this node.
    pub moderation_actions_total: IntCounterVec,
    /// `danmaku_ingest_moderation_reloads_total{trigger,result}`: policy reloads
    /// from the store (`start`, `local`, `bus`, `periodic`, `lagged`).
    pub moderation_reloads_total: IntCounterVec,
    /// `danmaku_ingest_moderation_announce_failures_total`: changes stored but
    /// not announced on the bus (other nodes see them at their next full reload).
    pub moderation_announce_failures_total: IntCounter,
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
        let filtered_total = IntCounterVec::new(
            Opts::new(
                "danmaku_ingest_filtered_total",
                "Posts caught by the word lists, by verdict (blocked, masked).",
            ),
            &["verdict"],
        )?;
        let moderation_refused_total = IntCounterVec::new(
            Opts::new(
                "danmaku_ingest_moderation_refused_total",
                "Posts refused by the moderation policy, by reason.",
            ),
            &["reason"],
        )?;
        let active_mutes = IntGauge::new(
            "danmaku_ingest_active_mutes",
            "Mutes running, as this ingest node knows them.",
        )?;
        let wordlist_words = IntGaugeVec::new(
            Opts::new(
                "danmaku_ingest_wordlist_words",
                "Words in the loaded word lists: the global one and all rooms'.",
            ),
            &["scope"],
        )?;
        let moderation_actions_total = IntCounterVec::new(
            Opts::new(
                "danmaku_ingest_moderation_changes_total",
                "Moderation changes applied through this node, by what changed.",
            ),
            &["what"],
        )?;
        let moderation_reloads_total = IntCounterVec::new(
            Opts::new(
                "danmaku_ingest_moderation_reloads_total",
                "Reloads of the moderation policy from the store, by trigger and result.",
            ),
            &["trigger", "result"],
        )?;
        let moderation_announce_failures_total = IntCounter::new(
            "danmaku_ingest_moderation_announce_failures_total",
            "Moderation changes stored but not announced on the bus.",
        )?;
        registry.register(Box::new(filtered_total.clone()))?;
        registry.register(Box::new(moderation_refused_total.clone()))?;
        registry.register(Box::new(active_mutes.clone()))?;
        registry.register(Box::new(wordlist_words.clone()))?;
        registry.register(Box::new(moderation_actions_total.clone()))?;
        registry.register(Box::new(moderation_reloads_total.clone()))?;
        registry.register(Box::new(moderation_announce_failures_total.clone()))?;
        for verdict in ["blocked", "masked"] {
            filtered_total.with_label_values(&[verdict]);
        }
        for reason in MODERATION_REFUSALS {
            moderation_refused_total.with_label_values(&[reason]);
        }
        for scope in ["global", "rooms"] {
            wordlist_words.with_label_values(&[scope]);
        }
        for what in MODERATION_CHANGES {
            moderation_actions_total.with_label_values(&[what]);
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
            filtered_total,
            moderation_refused_total,
            active_mutes,
            wordlist_words,
            moderation_actions_total,
            moderation_reloads_total,
            moderation_announce_failures_total,
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
