//! Viewer side of a run: many client connections, each joined to one room,
//! logging every comment it receives and its latency.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use danmaku_client::{Client, ClientConfig, ClientError, ServerEvent, Transport};
use hdrhistogram::Histogram;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::tally::ViewerLog;

/// Latency histograms shared by the viewers, sharded so that recording (once
/// per received frame) rarely contends.
pub struct LatencyShards(Vec<Mutex<Histogram<u64>>>);

impl LatencyShards {
    pub fn new(shards: usize) -> Self {
        LatencyShards(
            (0..shards.max(1))
                .map(|_| Mutex::new(new_histogram()))
                .collect(),
        )
    }

    fn record(&self, viewer: usize, latencies: &[u64]) {
        let shard = &self.0[viewer % self.0.len()];
        let mut h = shard.lock().unwrap_or_else(|e| e.into_inner());
        for &v in latencies {
            h.saturating_record(v);
        }
    }

    /// All shards merged.
    pub fn merged(&self) -> Histogram<u64> {
        let mut out = new_histogram();
        for shard in &self.0 {
            let h = shard.lock().unwrap_or_else(|e| e.into_inner());
            // Same bounds on both sides, so adding cannot fail.
            let _ = out.add(&*h);
        }
        out
    }
}

/// Up to one hour, three significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000, 3).expect("constant histogram bounds are valid")
}

/// One edge viewers connect to.
#[derive(Debug, Clone)]
pub struct EdgeTarget {
    /// Base HTTP URL (WebSocket goes to `/v1/ws` on it).
    pub url: String,
    /// QUIC: the edge's UDP address and dev certificate.
    pub quic_addr: Option<SocketAddr>,
    pub cert_der: Option<Vec<u8>>,
}

/// The edge of viewer `id`: round-robin over `edges`.
pub fn edge_of(id: usize, edges: usize) -> usize {
    id % edges.max(1)
}

/// Where and how viewers connect.
pub struct ViewerSetup {
    pub transport: Transport,
    /// Viewer `i` connects to `edges[edge_of(i, edges.len())]`; never empty.
    pub edges: Vec<EdgeTarget>,
    pub tokens: Vec<String>,
    pub source_addrs: Vec<std::net::IpAddr>,
    pub connect_gate: Semaphore,
    pub latency: LatencyShards,
}

/// What a viewer task hands back at the end.
pub struct ViewerOutcome {
    pub id: usize,
    pub room: String,
    /// Base URL of the edge it connected to.
    pub edge: String,
    /// `Err(reason)` when it never got to `Joined`.
    pub joined: Result<(), String>,
    /// The connection closed before the run ended.
    pub dropped: bool,
    pub log: ViewerLog,
}

async fn connect(setup: &ViewerSetup, id: usize) -> Result<Client, ClientError> {
    let config = ClientConfig {
        local_addr: (!setup.source_addrs.is_empty())
            .then(|| setup.source_addrs[id % setup.source_addrs.len()]),
        connect_timeout: Duration::from_secs(20),
        ..ClientConfig::default()
    };
    let token = &setup.tokens[id % setup.tokens.len()];
    let edge = &setup.edges[edge_of(id, setup.edges.len())];
    match (setup.transport, edge.quic_addr) {
        (Transport::Quic, Some(addr)) => {
            Client::connect_quic(addr, edge.cert_der.clone(), token, config).await
        }
        (Transport::Quic, None) => Err(ClientError::Quic("no QUIC address".into())),
        (ws, _) => Client::connect_ws(&edge.url, token, ws, config).await,
    }
}

/// Connects (within the connect gate), joins `room`, reports on `ready`, then
/// logs events until `stop`.
pub async fn run_viewer(
    setup: Arc<ViewerSetup>,
    id: usize,
    room: String,
    ready: mpsc::UnboundedSender<bool>,
    stop: CancellationToken,
) -> ViewerOutcome {
    let mut out = ViewerOutcome {
        id,
        room,
        edge: setup.edges[edge_of(id, setup.edges.len())].url.clone(),
        joined: Ok(()),
        dropped: false,
        log: ViewerLog::default(),
    };
    let client = {
        let _permit = setup.connect_gate.acquire().await;
        match join(&setup, id, &out.room).await {
            Ok(c) => c,
            Err(e) => {
                out.joined = Err(e);
                let _ = ready.send(false);
                return out;
            }
        }
    };
    let _ = ready.send(true);
    let mut client = client;
    let mut latencies = Vec::new();
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => break,
            ev = client.next_event() => ev,
        };
        match ev {
            None => {
                out.dropped = true;
                break;
            }
            Some(ServerEvent::Batch { channel, events }) if channel == out.room => {
                let now = danmaku_proto::now_ms();
                out.log.on_frame();
                latencies.clear();
                for e in &events {
                    out.log.on_event(&e.text);
                    latencies.push(now.saturating_sub(e.ts_ms).max(0) as u64);
                }
                setup.latency.record(id, &latencies);
            }
            Some(ServerEvent::Redirect { .. }) => {
                tracing::warn!(viewer = id, "edge sent a redirect during the load test");
            }
            Some(_) => {}
        }
    }
    out
}

async fn join(setup: &ViewerSetup, id: usize, room: &str) -> Result<Client, String> {
    let mut client = connect(setup, id).await.map_err(|e| short_reason(&e))?;
    client.join(room).await.map_err(|e| short_reason(&e))?;
    let wait = async {
        while let Some(ev) = client.next_event().await {
            match ev {
                ServerEvent::Joined { channel, .. } if channel == room => return Ok(()),
                ServerEvent::Error { code, message } => {
                    return Err(format!("join refused: {code}: {message}"));
                }
                _ => {}
            }
        }
        Err("closed before joined".to_owned())
    };
    match tokio::time::timeout(Duration::from_secs(20), wait).await {
        Ok(Ok(())) => Ok(client),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("timed out waiting for joined".to_owned()),
    }
}

/// A reason short and stable enough to group connection failures by.
fn short_reason(e: &ClientError) -> String {
    let s = e.to_string();
    match s.char_indices().nth(120) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viewers_spread_round_robin_over_edges() {
        let counts = (0..1000).fold([0usize; 2], |mut c, id| {
            c[edge_of(id, 2)] += 1;
            c
        });
        assert_eq!(counts, [500, 500]);
        assert_eq!(edge_of(7, 3), 1);
        assert_eq!(edge_of(7, 0), 0);
    }
}
