//! [`Scheduler`]: what the scheduler holds (the load model, the token key,
//! its metrics) and the questions every request asks of it: the picks,
//! registry sizes, online counts. The routes and the sampling loop that act
//! on it are in `lib.rs` and the modules above this one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use danmaku_proto::token::TokenKey;
use tokio::sync::Notify;

use crate::config::{EdgeInfo, SchedulerConfig};
use crate::error::SchedulerError;
use crate::load_model::{EdgeState, LoadModel, SplitMix64, StaticEdge};
use crate::metrics::Metrics;

/// The scheduler service, shared by every request as `Arc<Scheduler>`.
pub struct Scheduler {
    pub(crate) config: SchedulerConfig,
    pub(crate) model: Mutex<LoadModel>,
    pub(crate) tokens: Option<TokenKey>,
    pub(crate) metrics: Metrics,
    pub(crate) http: reqwest::Client,
    /// Wakes the sampling loop early (a new registration wants a reading now).
    pub(crate) sample_now: Notify,
    /// Per-request seeds: a process-random base plus a counter, mixed.
    pub(crate) seed_base: u64,
    pub(crate) seed_counter: AtomicU64,
}

impl Scheduler {
    /// Builds the scheduler, registering its metrics into `registry`. Nothing
    /// runs until `Scheduler::run`; static edges are served without it.
    pub fn new(
        config: SchedulerConfig,
        registry: &prometheus::Registry,
    ) -> Result<Arc<Scheduler>, SchedulerError> {
        config.validate()?;
        let metrics = Metrics::new(registry)?;
        let mut model = LoadModel::new(config.model.clone());
        for edge in &config.static_edges {
            metrics
                .edge_load
                .with_label_values(&[edge.id.as_str()])
                .set(edge.load);
            model.add_static(StaticEdge {
                id: edge.id.clone(),
                ws: edge.ws.clone(),
                quic: edge.quic.clone(),
                load: edge.load,
            });
        }
        let http = reqwest::Client::builder()
            .timeout(config.sample_timeout)
            .no_proxy()
            .build()?;
        let scheduler = Scheduler {
            tokens: config.auth_secret.as_deref().map(TokenKey::new),
            model: Mutex::new(model),
            metrics,
            http,
            sample_now: Notify::new(),
            seed_base: rand::random(),
            seed_counter: AtomicU64::new(0),
            config,
        };
        scheduler.refresh_gauges(Instant::now());
        Ok(Arc::new(scheduler))
    }

    /// The best `k` healthy edges, best first (empty when none is healthy).
    /// With a `seed`, the answer is a pure function of it and the registry
    /// and readings (see [`crate::load_model`]); without, each call draws a new one.
    pub fn pick(&self, k: usize, seed: Option<u64>) -> Vec<EdgeInfo> {
        let seed = seed.unwrap_or_else(|| {
            let n = self.seed_counter.fetch_add(1, Ordering::Relaxed);
            SplitMix64::new(self.seed_base ^ n).next_u64()
        });
        let started = Instant::now();
        let picks = self.model().pick(started, k, seed);
        self.metrics
            .decision_seconds
            .observe(started.elapsed().as_secs_f64());
        picks
            .into_iter()
            .map(|p| {
                self.metrics
                    .picks_total
                    .with_label_values(&[p.id.as_str()])
                    .inc();
                EdgeInfo {
                    id: p.id,
                    ws: p.ws,
                    quic: p.quic,
                    load: p.load,
                }
            })
            .collect()
    }

    /// Registry size by state now.
    pub fn state_counts(&self) -> Vec<(EdgeState, usize)> {
        let counts = self.model().state_counts(Instant::now());
        EdgeState::ALL
            .iter()
            .map(|s| (*s, counts.get(s).copied().unwrap_or(0)))
            .collect()
    }

    /// Cluster-wide members of `channel` (see [`load_model::LoadModel::online`]).
    pub fn online(&self, channel: &str) -> u64 {
        self.model().online(channel)
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Ejects stale edges (counted and logged) and refreshes the gauges.
    pub(crate) fn sweep(&self, now: Instant) {
        let ejected = self.model().sweep(now);
        for (id, reason) in ejected {
            tracing::warn!(edge = %id, reason = reason.label(), "edge ejected");
            self.metrics
                .ejections_total
                .with_label_values(&[reason.label()])
                .inc();
            let _ = self.metrics.edge_load.remove_label_values(&[id.as_str()]);
        }
        self.refresh_gauges(now);
    }

    pub(crate) fn refresh_gauges(&self, now: Instant) {
        let (counts, scores) = {
            let model = self.model();
            (model.state_counts(now), model.scores())
        };
        for (state, n) in counts {
            self.metrics
                .edges
                .with_label_values(&[state.label()])
                .set(n as i64);
        }
        for (id, score) in scores {
            self.metrics
                .edge_load
                .with_label_values(&[id.as_str()])
                .set(score);
        }
    }

    /// The model, even if a panic elsewhere poisoned the lock (its state is
    /// plain data that every method leaves consistent).
    pub(crate) fn model(&self) -> MutexGuard<'_, LoadModel> {
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }
}
