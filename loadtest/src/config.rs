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
    /// Distributed mode: mint tokens locally with this HMAC secret (the cluster's
    /// `--auth-secret`) instead of `POST /v1/dev/token` on the first ingest.
    pub auth_secret: Option<String>,
    /// Ingest base URLs; posts go to them round-robin. Empty = `[target]`.
    pub ingest: Vec<String>,
    /// Edge base URLs; viewer `i` connects to edge `i % edges.len()` (QUIC: the
    /// same host and port over UDP, certificate from that edge's `/v1/cert`).
    /// Empty = `[target]`.
    pub edges: Vec<String>,
    /// Extra danmaku per second posted to rooms no viewer joined
    /// (`room:foreign-<k>`, [`FOREIGN_ROOMS`] of them), to measure what edges pay
    /// for other edges' rooms. Default 0.
    pub foreign_rate: f64,
}

/// Rooms the foreign traffic is spread over (round-robin), so it lands on many
/// bus partitions.
pub const FOREIGN_ROOMS: usize = 64;

/// Name of foreign room `k` (no loadtest viewer ever joins it).
pub fn foreign_room(k: usize) -> String {
    format!("room:foreign-{k}")
}

/// Senders needed to post `rate` per second without any of them exceeding the
/// server's default per-user limit (5/s): `max(min, ceil(rate / 4), 1)`.
pub fn senders_for_rate(rate: f64, min: usize) -> usize {
    let by_rate = (rate / 4.0).ceil();
    let by_rate = if by_rate.is_finite() && by_rate > 0.0 {
        by_rate as usize
    } else {
        0
    };
    min.max(by_rate).max(1)
}

/// Splits a comma-separated URL list (`a,b , c`), dropping empty items.
pub fn split_urls(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Where posts and viewers go, with `target` filling in what was not given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub ingest: Vec<String>,
    pub edges: Vec<String>,
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
            auth_secret: None,
            ingest: Vec::new(),
            edges: Vec::new(),
            foreign_rate: 0.0,
        }
    }
}

impl LoadtestConfig {
    /// Senders actually used: `max(senders, ceil(rate / 4), 1)`.
    pub fn effective_senders(&self) -> usize {
        senders_for_rate(self.rate, self.senders)
    }

    /// Senders of the foreign traffic: `ceil(foreign_rate / 4)`, 0 when off.
    pub fn foreign_senders(&self) -> usize {
        if self.foreign_rate > 0.0 {
            senders_for_rate(self.foreign_rate, 1)
        } else {
            0
        }
    }

    /// Ingest and edge URLs (trailing `/` dropped); an empty list means `[target]`.
    /// Fails when a list is empty and so is `target`.
    pub fn endpoints(&self) -> Result<Endpoints, String> {
        let target = self.target.trim().trim_end_matches('/');
        let pick = |list: &[String], what: &str| -> Result<Vec<String>, String> {
            let list: Vec<String> = list
                .iter()
                .map(|u| u.trim().trim_end_matches('/').to_owned())
                .filter(|u| !u.is_empty())
                .collect();
            if !list.is_empty() {
                Ok(list)
            } else if !target.is_empty() {
                Ok(vec![target.to_owned()])
            } else {
                Err(format!("no {what} URL: give a target or {what} URLs"))
            }
        };
        Ok(Endpoints {
            ingest: pick(&self.ingest, "ingest")?,
            edges: pick(&self.edges, "edge")?,
        })
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

    #[test]
    fn foreign_senders_follow_the_foreign_rate() {
        let c = LoadtestConfig::default();
        assert_eq!(c.foreign_senders(), 0);
        let c = LoadtestConfig {
            foreign_rate: 2000.0,
            ..LoadtestConfig::default()
        };
        assert_eq!(c.foreign_senders(), 500);
        let c = LoadtestConfig {
            foreign_rate: 0.5,
            ..LoadtestConfig::default()
        };
        assert_eq!(c.foreign_senders(), 1);
        assert_eq!(senders_for_rate(f64::NAN, 3), 3);
    }

    #[test]
    fn endpoints_default_to_the_target() {
        let c = LoadtestConfig {
            target: "http://127.0.0.1:7070/".into(),
            ..LoadtestConfig::default()
        };
        let e = c.endpoints().unwrap();
        assert_eq!(e.ingest, vec!["http://127.0.0.1:7070"]);
        assert_eq!(e.edges, vec!["http://127.0.0.1:7070"]);

        let c = LoadtestConfig {
            target: String::new(),
            ingest: split_urls("http://a:1/, http://b:2"),
            edges: split_urls("http://e1:3,,http://e2:4"),
            ..LoadtestConfig::default()
        };
        let e = c.endpoints().unwrap();
        assert_eq!(e.ingest, vec!["http://a:1", "http://b:2"]);
        assert_eq!(e.edges, vec!["http://e1:3", "http://e2:4"]);

        // Only edges given: posts still go to the target.
        let c = LoadtestConfig {
            target: "http://t:1".into(),
            edges: vec!["http://e:2".into()],
            ..LoadtestConfig::default()
        };
        assert_eq!(c.endpoints().unwrap().ingest, vec!["http://t:1"]);

        let c = LoadtestConfig {
            target: String::new(),
            edges: vec!["http://e:2".into()],
            ..LoadtestConfig::default()
        };
        assert!(c.endpoints().unwrap_err().contains("ingest"));
    }

    #[test]
    fn foreign_rooms_are_distinct_from_loadtest_rooms() {
        assert_eq!(foreign_room(3), "room:foreign-3");
        assert_ne!(foreign_room(0), foreign_room(FOREIGN_ROOMS - 1));
    }
}
