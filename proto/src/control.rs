//! The control plane's JSON bodies: what an edge and the scheduler say to each
//! other (`/v1/registry/edges…`) and what `GET /v1/edges` answers clients.
//!
//! One definition for both ends, so a field renamed on one side cannot
//! silently stop reaching the other. The scheduler still checks a
//! registration field by field (its refusals name the field); these types are
//! the shape both ends agree on. Field names are the wire format: they are
//! documented in docs/PROTOCOL.md and must not change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::json::JsonEdge;

/// `POST /v1/registry/edges`: an edge announcing itself (or again, after the
/// scheduler forgot it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeRegistration {
    /// Stable id of the edge, `[A-Za-z0-9._:-]`, at most 64 characters.
    pub id: String,
    /// WebSocket URL clients connect to, `ws://host:port/v1/ws`.
    pub ws: String,
    /// QUIC address `host:port`; empty when the edge serves no QUIC.
    pub quic: String,
    /// Where the scheduler scrapes the edge's `/metrics`.
    pub metrics_url: String,
    /// Client connections the edge is sized for.
    pub capacity: u64,
    /// Egress bytes/s the edge may send; absent: the scheduler assumes 1 Gbit/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_capacity: Option<u64>,
    /// CPU cores of the edge's host.
    pub cores: u64,
}

/// The scheduler's answer to a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterAnswer {
    /// How often the edge should send a heartbeat.
    pub heartbeat_interval_ms: u64,
}

/// `POST /v1/registry/edges/{id}/heartbeat`: an edge's state, every second or
/// so. Missing fields take the values of an idle, ready edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HeartbeatBody {
    /// The edge's own readiness (bus and store answer, not draining).
    pub ready: bool,
    /// The edge is draining: hand it out no more.
    pub draining: bool,
    /// Open client connections.
    pub connections: u64,
    /// Channel memberships, all channels together.
    pub members: u64,
    /// The biggest channels, biggest first (edges send at most 1,000).
    pub channels: Vec<ChannelMembers>,
}

impl Default for HeartbeatBody {
    fn default() -> Self {
        HeartbeatBody {
            ready: true,
            draining: false,
            connections: 0,
            members: 0,
            channels: Vec::new(),
        }
    }
}

/// Local members of one channel on the reporting edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelMembers {
    pub channel: String,
    pub members: u64,
}

/// The scheduler's answer to a heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAnswer {
    /// Cluster-wide members of each channel the heartbeat reported.
    #[serde(default)]
    pub online: BTreeMap<String, u64>,
}

/// `GET /v1/edges?k=N`: up to `k` edges, the scheduler's choice first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeList {
    pub edges: Vec<JsonEdge>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_keeps_its_field_names() {
        let hb = HeartbeatBody {
            ready: true,
            draining: false,
            connections: 3,
            members: 4,
            channels: vec![ChannelMembers {
                channel: "room:1".into(),
                members: 3,
            }],
        };
        assert_eq!(
            serde_json::to_string(&hb).unwrap(),
            r#"{"ready":true,"draining":false,"connections":3,"members":4,"channels":[{"channel":"room:1","members":3}]}"#
        );
        let empty: HeartbeatBody = serde_json::from_str("{}").unwrap();
        assert!(empty.ready && !empty.draining && empty.channels.is_empty());
    }

    #[test]
    fn a_registration_omits_an_unknown_egress_capacity() {
        let reg = EdgeRegistration {
            id: "edge-1".into(),
            ws: "ws://127.0.0.1:7071/v1/ws".into(),
            quic: "127.0.0.1:7071".into(),
            metrics_url: "http://127.0.0.1:7071/metrics".into(),
            capacity: 19_000,
            egress_capacity: None,
            cores: 2,
        };
        assert_eq!(
            serde_json::to_string(&reg).unwrap(),
            r#"{"id":"edge-1","ws":"ws://127.0.0.1:7071/v1/ws","quic":"127.0.0.1:7071","metrics_url":"http://127.0.0.1:7071/metrics","capacity":19000,"cores":2}"#
        );
    }

    #[test]
    fn an_edge_list_reads_edges_without_a_transport() {
        let list: EdgeList =
            serde_json::from_str(r#"{"edges":[{"id":"e1","ws":"ws://h:1/v1/ws"}]}"#).unwrap();
        assert_eq!(list.edges[0].id, "e1");
        assert_eq!(list.edges[0].quic, "");
        assert_eq!(list.edges[0].load, 0.0);
    }
}
