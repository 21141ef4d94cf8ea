//! Settings of the scheduler and the description of one edge it hands out.

use std::time::Duration;

use crate::error::SchedulerError;
use crate::load_model::ModelConfig;

/// Settings of the scheduler. `Default`: no static edges, no secret (so no
/// registration), scraping every edge's `/metrics` every second.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    /// Edges known at start (`--edge`), always healthy, with a fixed base
    /// load. Default: none.
    pub static_edges: Vec<EdgeInfo>,
    /// HMAC secret that edges' `app`-role registry tokens are signed with
    /// (`--auth-secret`). `None` refuses every registry call. Default `None`.
    pub auth_secret: Option<String>,
    /// Where edges' load readings come from. Default [`LoadSource::Scrape`].
    pub load_source: LoadSource,
    /// How often readings are taken (scrapes, or Prometheus queries). Default 1 s.
    pub sample_interval: Duration,
    /// Longest one scrape or query may take. Default 800 ms, below the interval
    /// so a hung edge never delays the next round.
    pub sample_timeout: Duration,
    /// Heartbeat period the scheduler asks of edges in the registration
    /// answer. Default 1 s (three missed heartbeats eject an edge).
    pub heartbeat_interval: Duration,
    /// Staleness limits, in-flight allowance and the like.
    pub model: ModelConfig,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            static_edges: Vec::new(),
            auth_secret: None,
            load_source: LoadSource::Scrape,
            sample_interval: Duration::from_secs(1),
            sample_timeout: Duration::from_millis(800),
            heartbeat_interval: Duration::from_secs(1),
            model: ModelConfig::default(),
        }
    }
}

/// Where the load readings of registered edges come from. Both feed the same
/// [`crate::load_model::LoadModel`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LoadSource {
    /// GET each edge's `metrics_url` and parse the Prometheus text format.
    #[default]
    Scrape,
    /// Ask a Prometheus server (`--prometheus-url`, e.g. `http://prom:9090`)
    /// with PromQL; series are matched to edges by their `instance` label,
    /// which must be the `host:port` of the edge's `metrics_url`.
    Prometheus { url: String },
}

/// One edge as clients see it in `GET /v1/edges`: the protocol's edge
/// address, shared with the edge's `redirect` frames and the client.
pub use danmaku_proto::json::JsonEdge as EdgeInfo;

impl SchedulerConfig {
    pub(crate) fn validate(&self) -> Result<(), SchedulerError> {
        let mut ids = std::collections::HashSet::new();
        for edge in &self.static_edges {
            if edge.id.is_empty() {
                return Err(SchedulerError::Config("an edge has an empty id".into()));
            }
            if !ids.insert(edge.id.as_str()) {
                return Err(SchedulerError::Config(format!(
                    "edge id {:?} appears twice",
                    edge.id
                )));
            }
            if edge.ws.is_empty() && edge.quic.is_empty() {
                return Err(SchedulerError::Config(format!(
                    "edge {:?} has neither a ws URL nor a quic address",
                    edge.id
                )));
            }
            if !(edge.load.is_finite() && edge.load >= 0.0) {
                return Err(SchedulerError::Config(format!(
                    "edge {:?} has load {}, expected a finite number >= 0",
                    edge.id, edge.load
                )));
            }
        }
        if let LoadSource::Prometheus { url } = &self.load_source {
            match url::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                _ => {
                    return Err(SchedulerError::Config(format!(
                        "prometheus URL {url:?} is not an http(s) URL"
                    )));
                }
            }
        }
        if self.sample_interval.is_zero() || self.sample_timeout.is_zero() {
            return Err(SchedulerError::Config(
                "sample interval and timeout must be above zero".into(),
            ));
        }
        Ok(())
    }
}
