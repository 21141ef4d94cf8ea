//! The result of a run, as a human table ([`Report::render_text`]) and as JSON
//! (the `Report` itself): connections, deliveries per lane against what was
//! accepted, latency, bytes on the wire, and what the servers spent.

use std::collections::BTreeMap;
use std::fmt::Write;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::procstat::ProcSample;
use crate::tally::{LaneTally, WireTally, Worst};

/// Latency summary in milliseconds.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// What the senders did for one lane.
#[derive(Debug, Default, Clone, Serialize)]
pub struct PostReport {
    pub attempted: u64,
    pub accepted: u64,
    pub rate_limited: u64,
    pub failed: u64,
    pub per_s: f64,
}

/// One lane: delivery against acceptance, and probe latency.
#[derive(Debug, Default, Clone, Serialize)]
pub struct LaneReport {
    #[serde(flatten)]
    pub tally: LaneTally,
    /// `lost / expected`.
    pub loss_ratio: f64,
    /// Probe viewers only: receive time − the event's ingest `ts_ms`.
    pub latency_ms: Latency,
}

/// One server process over the run.
#[derive(Debug, Clone, Serialize)]
pub struct ServerReport {
    pub pid: u32,
    pub name: String,
    /// CPU-seconds spent while posting (+ drain grace).
    pub cpu_s: f64,
    pub rss_kb_before: u64,
    /// After every viewer joined, before posting.
    pub rss_kb_connected: u64,
    pub rss_kb_end: u64,
    pub hwm_kb: u64,
}

impl ServerReport {
    pub fn new(
        before: &ProcSample,
        connected: &ProcSample,
        start: &ProcSample,
        end: &ProcSample,
    ) -> Self {
        ServerReport {
            pid: end.pid,
            name: end.name.clone(),
            cpu_s: end.cpu_s - start.cpu_s,
            rss_kb_before: before.rss_kb,
            rss_kb_connected: connected.rss_kb,
            rss_kb_end: end.rss_kb,
            hwm_kb: end.hwm_kb,
        }
    }
}

/// Bytes on the wire per transport.
#[derive(Debug, Clone, Serialize)]
pub struct WireReport {
    #[serde(flatten)]
    pub tally: WireTally,
    /// `bytes_in / deliveries` (0 where bytes are not measured: QUIC).
    pub bytes_per_delivery: f64,
}

/// The bare-writer floor, side by side with the system under test.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BareReport {
    pub connections: u64,
    pub frame_bytes: usize,
    pub frame_rate: f64,
    pub duration_s: f64,
    pub frames_written: u64,
    pub frames_received: u64,
    pub cpu_s: f64,
    pub rss_kb_connected: u64,
    pub frames_per_cpu_s: f64,
    /// The system under test's frames (batches + reliable) per server CPU-second.
    pub sut_frames_per_cpu_s: f64,
    /// `sut_frames_per_cpu_s / frames_per_cpu_s`.
    pub ratio: f64,
}

/// Everything a run measured. Serialized as the JSON report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// `danmaku` or `nats`.
    pub peer: String,
    pub target: String,
    pub ingest: Vec<String>,
    pub edges: Vec<String>,
    pub scheduler: Option<String>,
    pub workers: usize,
    pub source_addrs: Vec<String>,
    pub mix: Vec<(String, f64)>,
    pub rooms: usize,
    pub biggest_room: usize,
    pub danmaku_rate: f64,
    pub gift_rate: f64,
    pub duration_s: f64,

    pub viewers: u64,
    pub connections_ok: u64,
    pub connections_failed: u64,
    /// Connections that closed before the end of the run.
    pub connections_dropped: u64,
    pub connect_errors: BTreeMap<String, u64>,
    /// From the first connect to the last viewer joined.
    pub connect_phase_s: f64,
    /// Connect + join time of one viewer (from its turn in the ramp).
    pub connect_ms: Latency,
    /// `connections_ok / connect_phase_s`.
    pub connects_per_s: f64,
    /// The same per step: `queue` (waiting for one of `--connect-concurrency`
    /// slots: the ramp asked faster than connects complete), `pick` (the
    /// scheduler's answer), `upgrade` (TCP + WebSocket upgrade with the token
    /// check; QUIC: handshake + auth), `join` (join → `joined`).
    pub connect_steps_ms: BTreeMap<String, Latency>,
    pub probes: u64,
    pub counting: u64,
    pub churn_viewers: u64,
    pub churn_cycles: u64,
    pub churn_deliveries: u64,

    pub danmaku_posts: PostReport,
    pub gift_posts: PostReport,
    pub danmaku: LaneReport,
    pub gifts: LaneReport,
    pub worst: Vec<Worst>,
    pub errors: u64,

    pub wires: BTreeMap<String, WireReport>,
    /// Mean size of one posted event as its own JSON object.
    pub raw_json_bytes_per_message: f64,

    pub servers: Vec<ServerReport>,
    /// The harness itself (coordinator and workers), CPU over posting + drain.
    pub load_generator: Vec<ServerReport>,
    pub server_cpu_s: f64,
    /// Events delivered (both lanes, all viewers) per server CPU-second.
    pub deliveries_per_cpu_s: f64,
    /// Frames received by viewers per server CPU-second.
    pub frames_per_cpu_s: f64,
    /// Σ(RSS connected − RSS before) / connections, KB.
    pub rss_kb_per_connection: f64,

    pub bare: Option<BareReport>,
    pub wall_time_s: f64,
}

fn pct(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        100.0 * a as f64 / b as f64
    }
}

fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

impl Report {
    /// The human table.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        if self.peer == "bare" {
            if let Some(b) = &self.bare {
                let _ = writeln!(
                    s,
                    "bare writer   {} conns × {:.2} frames/s × {} B for {:.0} s: {} written ({} received), {:.2} CPU-s → {} frames per CPU-s; RSS {:.1} MB connected",
                    b.connections,
                    b.frame_rate,
                    b.frame_bytes,
                    b.duration_s,
                    b.frames_written,
                    b.frames_received,
                    b.cpu_s,
                    si(b.frames_per_cpu_s),
                    b.rss_kb_connected as f64 / 1024.0
                );
            }
            return s;
        }
        let _ = writeln!(
            s,
            "danmaku loadtest → {} ({}{}), {} workers, {} rooms (biggest {}), {:.0} danmaku/s + {:.1} gifts/s for {:.0} s",
            self.peer,
            if let Some(sch) = &self.scheduler {
                format!("scheduler {sch}")
            } else if !self.edges.is_empty() {
                format!("edges {}", self.edges.join(","))
            } else {
                self.target.clone()
            },
            if self.source_addrs.is_empty() {
                String::new()
            } else {
                format!(", from {}", self.source_addrs.join(","))
            },
            self.workers,
            self.rooms,
            self.biggest_room,
            self.danmaku_rate,
            self.gift_rate,
            self.duration_s
        );
        let _ = writeln!(
            s,
            "connections   {} / {} viewers ({} probes, {} counting)  failed {}  dropped {}  phase {:.1} s  connect p50 {} ms p99 {} ms max {} ms",
            self.connections_ok,
            self.viewers,
            self.probes,
            self.counting,
            self.connections_failed,
            self.connections_dropped,
            self.connect_phase_s,
            self.connect_ms.p50,
            self.connect_ms.p99,
            self.connect_ms.max
        );
        let steps: Vec<String> = self
            .connect_steps_ms
            .iter()
            .filter(|(_, l)| l.count > 0)
            .map(|(name, l)| format!("{name} {}/{}", l.p50, l.p99))
            .collect();
        if !steps.is_empty() {
            let _ = writeln!(
                s,
                "  {:.0} connects/s; per step p50/p99 ms: {}",
                self.connects_per_s,
                steps.join("  ")
            );
        }
        for (reason, n) in &self.connect_errors {
            let _ = writeln!(s, "  {n} × {reason}");
        }
        if self.churn_viewers > 0 {
            let _ = writeln!(
                s,
                "churn         {} viewers left and rejoined {} times ({} events received; not in loss accounting)",
                self.churn_viewers, self.churn_cycles, self.churn_deliveries
            );
        }
        let _ = writeln!(s, "posts         accepted (per s)  rate-limited  failed");
        for (name, p) in [
            ("danmaku", &self.danmaku_posts),
            ("gifts", &self.gift_posts),
        ] {
            let _ = writeln!(
                s,
                "  {name:<10}  {} ({:.1}/s)  {}  {}",
                p.accepted, p.per_s, p.rate_limited, p.failed
            );
        }
        let _ = writeln!(
            s,
            "lane          delivered/expected      lost (%)          excess  dup  order  unexpected │ latency ms p50 p90 p99 p99.9 max (n)"
        );
        for (name, l) in [("danmaku", &self.danmaku), ("gifts", &self.gifts)] {
            let t = &l.tally;
            let m = &l.latency_ms;
            let _ = writeln!(
                s,
                "  {name:<10}  {}/{}  {} ({:.4}%)  {}  {}  {}  {} │ {} {} {} {} {} ({})",
                t.received,
                t.expected,
                t.lost,
                pct(t.lost, t.expected),
                t.excess,
                t.duplicates,
                t.order_violations,
                t.unexpected,
                m.p50,
                m.p90,
                m.p99,
                m.p999,
                m.max,
                m.count
            );
        }
        for w in self.worst.iter().take(5) {
            let _ = writeln!(
                s,
                "  most loss: viewer {} {} {}: {}/{}",
                w.viewer, w.room, w.lane, w.received, w.expected
            );
        }
        let _ = writeln!(
            s,
            "wire          bytes per delivered message (raw JSON of one event: {:.0} B)",
            self.raw_json_bytes_per_message
        );
        for (name, w) in &self.wires {
            let _ = writeln!(
                s,
                "  {name:<10}  {} viewers  {} frames  {} deliveries  {} bytes  {:.1} B/msg",
                w.tally.viewers,
                w.tally.frames,
                w.tally.deliveries,
                w.tally.bytes_in,
                w.bytes_per_delivery
            );
        }
        if self.servers.is_empty() {
            let _ = writeln!(s, "servers       none measured (give --server-pids)");
        } else {
            let _ = writeln!(
                s,
                "servers       pid  name  CPU-s  RSS MB before → connected → end (peak)"
            );
            for p in &self.servers {
                let _ = writeln!(
                    s,
                    "  {:>8}  {}  {:.1}  {:.0} → {:.0} → {:.0} ({:.0})",
                    p.pid,
                    p.name,
                    p.cpu_s,
                    p.rss_kb_before as f64 / 1024.0,
                    p.rss_kb_connected as f64 / 1024.0,
                    p.rss_kb_end as f64 / 1024.0,
                    p.hwm_kb as f64 / 1024.0
                );
            }
            let _ = writeln!(
                s,
                "  total {:.1} CPU-s: {} deliveries per CPU-s, {} frames per CPU-s, {:.1} KB RSS per connection",
                self.server_cpu_s,
                si(self.deliveries_per_cpu_s),
                si(self.frames_per_cpu_s),
                self.rss_kb_per_connection
            );
            if !self.load_generator.is_empty() {
                let cpu: Vec<String> = self
                    .load_generator
                    .iter()
                    .map(|p| format!("{:.1}", p.cpu_s))
                    .collect();
                let _ = writeln!(
                    s,
                    "  load generator CPU-s (coordinator, workers…): {}",
                    cpu.join(" ")
                );
            }
        }
        if let Some(b) = &self.bare {
            let _ = writeln!(
                s,
                "bare writer   {} conns × {:.2} frames/s × {} B for {:.0} s: {} written, {:.1} CPU-s → {} frames per CPU-s; system under test {} → ratio {:.2}×",
                b.connections,
                b.frame_rate,
                b.frame_bytes,
                b.duration_s,
                b.frames_written,
                b.cpu_s,
                si(b.frames_per_cpu_s),
                si(b.sut_frames_per_cpu_s),
                b.ratio
            );
        }
        let _ = writeln!(
            s,
            "errors {}  wall time {:.1} s",
            self.errors, self.wall_time_s
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_of_empty_and_filled_histograms() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000, 3).unwrap();
        assert_eq!(Latency::from_histogram(&h), Latency::default());
        for v in 1..=1000 {
            h.record(v).unwrap();
        }
        let l = Latency::from_histogram(&h);
        assert_eq!(
            (l.count, l.p50, l.p90, l.p99, l.p999, l.max),
            (1000, 500, 900, 990, 999, 1000)
        );
    }

    #[test]
    fn text_report_names_every_section() {
        let r = Report {
            peer: "danmaku".into(),
            servers: vec![],
            load_generator: vec![],
            ..Report::default()
        };
        let t = r.render_text();
        for k in [
            "connections",
            "posts",
            "lane",
            "wire",
            "servers",
            "wall time",
        ] {
            assert!(t.contains(k), "{k} missing from {t}");
        }
    }
}
