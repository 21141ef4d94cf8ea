//! Settings of the scheduler and the description of one edge it can hand out.

use serde::{Deserialize, Serialize};

use crate::SchedulerError;

/// Settings of the scheduler.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SchedulerConfig {
    /// Edges known at start, with a fixed load. Default: none. Self-registration,
    /// heartbeats and measured load come with the load model (a later issue).
    pub static_edges: Vec<EdgeInfo>,
}

/// One edge as clients see it in `GET /v1/edges`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeInfo {
    /// Stable id of the edge (also the `edge` metrics label).
    pub id: String,
    /// WebSocket URL, e.g. `ws://10.0.0.5:7070/v1/ws`.
    pub ws: String,
    /// QUIC address `host:port`; empty when the edge serves no QUIC.
    pub quic: String,
    /// Load score, 0.0 = idle, 1.0 = at capacity (may exceed 1 when overloaded).
    pub load: f64,
}

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
        Ok(())
    }
}
