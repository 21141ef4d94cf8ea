//! What a load test does: how many viewers, rooms and senders, how fast, how long.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use danmaku_client::Transport;

/// Settings of one load-test run.
#[derive(Debug, Clone)]
pub struct LoadtestConfig {
    /// Base HTTP URL of a standalone server (ingest, edge and `/v1/dev/token` on
    /// one address), e.g. `http://127.0.0.1:7070`. QUIC goes to the same port over UDP.
    pub target: String,
    /// Viewer connections to open. Default 100.
    pub connections: usize,
    /// Rooms the viewers are spread over (viewer `i` joins room `i % rooms`). Default 1.
    pub rooms: usize,
    /// Danmaku posted per second, all senders together. Default 50.
    pub rate: f64,
    /// How long to post. Default 10 s.
    pub duration: Duration,
    /// Transport of the viewers. Default [`Transport::WsPb`].
    pub transport: Transport,
    /// Posting users (each with its own token). Raised to `ceil(rate / 4)` so no
    /// sender exceeds the server's default per-user limit (5 msgs/s). Default 10.
    pub senders: usize,
    /// Write the JSON report here as well.
    pub report: Option<PathBuf>,
    /// Local addresses the viewer sockets bind to, round-robin (127.0.0.2,
    /// 127.0.0.3…), to go past one address's ephemeral ports. Empty = OS default.
    pub source_addrs: Vec<IpAddr>,
    /// Viewers connecting at the same time. Default 200.
    pub connect_concurrency: usize,
    /// Wait after the last post for the last batches to arrive. Default 2 s.
    pub drain_grace: Duration,
}

impl Default for LoadtestConfig {
    fn default() -> Self {
        LoadtestConfig {
            target: "http://127.0.0.1:7070".into(),
            connections: 100,
            rooms: 1,
            rate: 50.0,
            duration: Duration::from_secs(10),
            transport: Transport::WsPb,
            senders: 10,
            report: None,
            source_addrs: Vec::new(),
            connect_concurrency: 200,
            drain_grace: Duration::from_secs(2),
        }
    }
}

impl LoadtestConfig {
    /// Senders actually used: `max(senders, ceil(rate / 4), 1)`.
    pub fn effective_senders(&self) -> usize {
        let by_rate = (self.rate / 4.0).ceil();
        let by_rate = if by_rate.is_finite() && by_rate > 0.0 {
            by_rate as usize
        } else {
            0
        };
        self.senders.max(by_rate).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders_respect_per_user_limit() {
        let c = LoadtestConfig::default();
        assert_eq!(c.effective_senders(), 13);
        let c = LoadtestConfig {
            rate: 10.0,
            senders: 2,
            ..LoadtestConfig::default()
        };
        assert_eq!(c.effective_senders(), 3);
        let c = LoadtestConfig {
            rate: 0.0,
            senders: 0,
            ..LoadtestConfig::default()
        };
        assert_eq!(c.effective_senders(), 1);
    }
}
