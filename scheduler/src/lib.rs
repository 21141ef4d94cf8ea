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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{delete, get, post};
use danmaku_proto::token::TokenKey;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use config::{EdgeInfo, LoadSource, SchedulerConfig};
use error::RefusalCode;
pub use error::{ApiError, SchedulerError};
use load_model::{EdgeState, LoadModel, SplitMix64, StaticEdge};
use metrics::Metrics;

/// How often silent edges are looked for and the registry gauges refreshed.
/// Picks check staleness themselves; this only bounds how late the ejection
/// is counted and logged.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// The scheduler service, shared by every request as `Arc<Scheduler>`.
pub struct Scheduler {
    config: SchedulerConfig,
    model: Mutex<LoadModel>,
    tokens: Option<TokenKey>,
    metrics: Metrics,
    http: reqwest::Client,
    /// Wakes the sampling loop early (a new registration wants a reading now).
    sample_now: Notify,
    /// Per-request seeds: a process-random base plus a counter, mixed.
    seed_base: u64,
    seed_counter: AtomicU64,
}

impl Scheduler {
    /// Builds the scheduler, registering its metrics into `registry`. Nothing
    /// runs until [`Scheduler::run`]; static edges are served without it.
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

    /// The best `k` healthy edges, best first (empty when none is healthy).
    /// With a `seed`, the answer is a pure function of it and the registry
    /// and readings (see [`load_model`]); without, each call draws a new one.
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

    /// Ejects stale edges (counted and logged) and refreshes the gauges.
    fn sweep(&self, now: Instant) {
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

    fn refresh_gauges(&self, now: Instant) {
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
    fn model(&self) -> MutexGuard<'_, LoadModel> {
        self.model.lock().unwrap_or_else(|e| e.into_inner())
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
