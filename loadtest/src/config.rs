//! What a load test does: where it connects, the workload ([`Scenario`]), the
//! viewer mix, how many worker processes and source addresses, and what to
//! compare against (the bare writer, a NATS peer).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::counting::Wire;
use crate::scenario::Scenario;

/// The system under test.
#[derive(Debug, Clone, PartialEq)]
pub enum Peer {
    /// danmaku: standalone (`target`) or a cluster (`ingest` + `edges` or `scheduler`).
    Danmaku,
    /// NATS over its WebSocket listener, `ws://host:port`.
    Nats { ws_url: String },
}

/// Settings of one load-test run.
#[derive(Debug, Clone)]
pub struct LoadtestConfig {
    /// Base HTTP URL of a standalone server (ingest, edge and `/v1/dev/token` on
    /// one address), e.g. `http://127.0.0.1:7070`. QUIC goes to the same port over UDP.
    pub target: String,
    /// Ingest base URLs; posts go to them round-robin. Empty = `[target]`.
    pub ingest: Vec<String>,
    /// Edge base URLs; viewer `i` connects to edge `i % edges.len()`. Empty =
    /// `[target]` unless `scheduler` is set.
    pub edges: Vec<String>,
    /// Viewers ask `GET {scheduler}/v1/edges?k=3` and connect to the first edge.
    pub scheduler: Option<String>,
    /// Mint tokens locally with this HMAC secret (the cluster's `--auth-secret`)
    /// instead of `POST /v1/dev/token` on the first ingest.
    pub auth_secret: Option<String>,
    pub peer: Peer,
    /// Rooms, viewers, rates, duration, churn.
    pub scenario: Scenario,
    /// Transport mix: viewer `i` takes the transport whose cumulative share
    /// covers `i`'s position. Default: all `ws-pb`.
    pub mix: Vec<(Wire, f64)>,
    /// Share of viewers that fully decode every frame and measure latency,
    /// order and duplicates (the rest only count). Default 0.01.
    pub probe_fraction: f64,
    /// Worker processes holding the viewers (≤19k connections each: the
    /// open-file limit is 20,000). 0 = in this process. Default 0.
    pub workers: usize,
    /// The binary to re-execute as a worker (`<exe> loadtest-worker`).
    /// Default: this process's executable.
    pub worker_exe: Option<PathBuf>,
    /// Local addresses viewer sockets bind to, round-robin over viewers
    /// (127.0.0.2, 127.0.0.3…): each has ~28k ephemeral ports.
    pub source_addrs: Vec<IpAddr>,
    /// Connections opened per second, all workers together. 0 = as fast as
    /// `connect_concurrency` allows. Default 2000.
    pub ramp_per_sec: f64,
    /// Viewers connecting at the same time per worker. Default 200.
    pub connect_concurrency: usize,
    /// Viewer heartbeat (`ping`) interval. Default 20 s (edges close a
    /// connection silent for 2.5 × their 30 s interval).
    pub heartbeat: Duration,
    /// Viewers ack gifts cumulatively at most this often (0 = one ack per
    /// gift), or at the edge's pace from `auth_ok` when that is slower. Default
    /// 1 s. Keep it below the edges' retransmit timeout.
    pub ack_interval: Duration,
    /// Wait after the last post for the last batches to arrive. Default 3 s.
    pub drain_grace: Duration,
    /// Extra danmaku per second to rooms no viewer joined (`room:foreign-<k>`). Default 0.
    pub foreign_rate: f64,
    /// Server processes to measure (CPU, RSS). Empty = discovered from the
    /// listening ports of `target`, `ingest`, `edges` and `scheduler`.
    pub server_pids: Vec<u32>,
    /// After the run, run the bare writer with the same viewers, frame size
    /// and frame rate, and report the edge-vs-floor ratio.
    pub bare_writer: bool,
    /// Bare writer only (no system under test): frame bytes and frames per
    /// second per connection.
    pub bare_only: Option<(usize, f64)>,
    /// Print a progress line every second (stderr). Default true.
    pub progress: bool,
    /// Write the JSON report here as well.
    pub report: Option<PathBuf>,
}

impl Default for LoadtestConfig {
    fn default() -> Self {
        LoadtestConfig {
            target: "http://127.0.0.1:7070".into(),
            ingest: Vec::new(),
            edges: Vec::new(),
            scheduler: None,
            auth_secret: None,
            peer: Peer::Danmaku,
            scenario: Scenario::uniform(100, 1, 50.0, 0.0, Duration::from_secs(10)),
            mix: vec![(Wire::WsPb, 1.0)],
            probe_fraction: 0.01,
            workers: 0,
            worker_exe: None,
            source_addrs: Vec::new(),
            ramp_per_sec: 2000.0,
            connect_concurrency: 200,
            heartbeat: Duration::from_secs(20),
            ack_interval: Duration::from_secs(1),
            drain_grace: Duration::from_secs(3),
            foreign_rate: 0.0,
            server_pids: Vec::new(),
            bare_writer: false,
            bare_only: None,
            progress: true,
            report: None,
        }
    }
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

/// Parses a transport mix: `ws-pb` or `ws-pb=0.8,ws-json=0.1,quic=0.1`
/// (shares are normalised).
pub fn parse_mix(s: &str) -> Result<Vec<(Wire, f64)>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, share) = part.split_once('=').unwrap_or((part, "1"));
        let wire: Wire = name.trim().parse()?;
        let share: f64 = share
            .trim()
            .parse()
            .map_err(|_| format!("bad share in {part:?}"))?;
        if !(share.is_finite() && share >= 0.0) {
            return Err(format!("bad share in {part:?}"));
        }
        out.push((wire, share));
    }
    let total: f64 = out.iter().map(|(_, s)| s).sum();
    if out.is_empty() || total <= 0.0 {
        return Err("the transport mix is empty".into());
    }
    Ok(out.into_iter().map(|(w, s)| (w, s / total)).collect())
}

/// The transport of viewer `i` of `n` under `mix` (shares summing to 1):
/// interleaved, so every room gets its share of each transport.
pub fn wire_of(i: u64, mix: &[(Wire, f64)]) -> Wire {
    // Position of i within a cycle of 1000 viewers, spread by a golden-ratio step.
    let x = ((i as f64) * 0.618_033_988_75).fract();
    let mut acc = 0.0;
    for &(w, s) in mix {
        acc += s;
        if x < acc {
            return w;
        }
    }
    mix.last().map(|(w, _)| *w).unwrap_or(Wire::WsPb)
}

/// Where posts and viewers go, with `target` filling in what was not given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub ingest: Vec<String>,
    pub edges: Vec<String>,
}

impl LoadtestConfig {
    /// Ingest and edge URLs (trailing `/` dropped); an empty list means `[target]`.
    /// Fails when a list is empty and so is `target`. Edges may stay empty when
    /// a scheduler hands them out.
    pub fn endpoints(&self) -> Result<Endpoints, String> {
        let target = self.target.trim().trim_end_matches('/');
        let pick = |list: &[String], what: &str, optional: bool| -> Result<Vec<String>, String> {
            let list: Vec<String> = list
                .iter()
                .map(|u| u.trim().trim_end_matches('/').to_owned())
                .filter(|u| !u.is_empty())
                .collect();
            if !list.is_empty() || optional {
                Ok(list)
            } else if !target.is_empty() {
                Ok(vec![target.to_owned()])
            } else {
                Err(format!("no {what} URL: give a target or {what} URLs"))
            }
        };
        Ok(Endpoints {
            ingest: pick(&self.ingest, "ingest", false)?,
            edges: pick(&self.edges, "edge", self.scheduler.is_some())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders_respect_per_user_limit() {
        assert_eq!(senders_for_rate(50.0, 1), 13);
        assert_eq!(senders_for_rate(10.0, 2), 3);
        assert_eq!(senders_for_rate(0.0, 0), 1);
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

        let c = LoadtestConfig {
            target: String::new(),
            edges: vec!["http://e:2".into()],
            ..LoadtestConfig::default()
        };
        assert!(c.endpoints().unwrap_err().contains("ingest"));

        // With a scheduler, edges come from it.
        let c = LoadtestConfig {
            target: String::new(),
            ingest: vec!["http://i:1".into()],
            scheduler: Some("http://s:1".into()),
            ..LoadtestConfig::default()
        };
        assert!(c.endpoints().unwrap().edges.is_empty());
    }

    #[test]
    fn mixes_parse_and_spread() {
        assert_eq!(parse_mix("ws-pb").unwrap(), vec![(Wire::WsPb, 1.0)]);
        let m = parse_mix("ws-pb=8,ws-json=1,quic=1").unwrap();
        assert!((m[0].1 - 0.8).abs() < 1e-9);
        let mut counts = std::collections::HashMap::new();
        for i in 0..10_000 {
            *counts.entry(wire_of(i, &m)).or_insert(0) += 1;
        }
        assert!((7_900..8_100).contains(&counts[&Wire::WsPb]), "{counts:?}");
        assert!((900..1_100).contains(&counts[&Wire::Quic]), "{counts:?}");
        assert!(parse_mix("smoke").is_err());
        assert!(parse_mix("ws-pb=0").is_err());
    }
}
