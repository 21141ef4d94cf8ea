//! The result of a run: what was posted, what every viewer received, and the
//! end-to-end latency (receive time − the event's ingest `ts_ms`).

use std::collections::BTreeMap;
use std::fmt::Write;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::tally::Tally;

/// Latency summary in milliseconds.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
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
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// One viewer's line in the report.
#[derive(Debug, Clone, Serialize)]
pub struct ClientReport {
    pub client: usize,
    pub room: String,
    /// Base URL of the edge it connected to.
    pub edge: String,
    /// Connected and joined before posting started.
    pub connected: bool,
    /// The connection closed before the end of the run.
    pub dropped: bool,
    #[serde(flatten)]
    pub tally: Tally,
}

/// Everything a run measured. Serialized as the JSON report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: String,
    /// Ingest nodes posted to (round-robin).
    pub ingest: Vec<String>,
    /// Edges the viewers were spread over (round-robin).
    pub edges: Vec<String>,
    pub transport: String,
    pub rooms: usize,
    pub senders: usize,
    /// Requested total posting rate, danmaku per second.
    pub rate: f64,
    pub duration_s: f64,

    pub connections_attempted: u64,
    pub connections_ok: u64,
    pub connections_failed: u64,
    /// Connections that closed before the end of the run.
    pub connections_dropped: u64,
    /// Failure reasons of connections, with counts.
    pub connect_errors: BTreeMap<String, u64>,
    pub connect_time_s: f64,

    pub posts_attempted: u64,
    pub posts_accepted: u64,
    pub posts_rate_limited: u64,
    pub posts_failed: u64,
    /// Accepted posts per second actually achieved.
    pub posts_per_s: f64,

    /// Sum over connected viewers of the posts accepted for their room.
    pub events_expected: u64,
    /// Sum over connected viewers of distinct posts received.
    pub events_received: u64,
    pub events_lost: u64,
    /// `events_lost / events_expected`.
    pub loss_ratio: f64,
    pub events_unexpected: u64,
    pub duplicates: u64,
    pub order_violations: u64,
    /// Events received whose text was not a loadtest post.
    pub foreign_events: u64,

    /// Requested rate of posts to rooms no viewer joined.
    pub foreign_rate: f64,
    pub foreign_posts_accepted: u64,
    pub foreign_posts_rate_limited: u64,
    pub foreign_posts_failed: u64,
    pub foreign_posts_per_s: f64,

    pub frames_received: u64,
    pub events_per_frame: f64,
    /// Receive time − event `ts_ms`, over every received event.
    pub latency_ms: Latency,
    pub wall_time_s: f64,

    pub clients: Vec<ClientReport>,
}

impl Report {
    /// A human summary: totals, rates, latency, and the viewers with the most loss.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        let pct = |a: u64, b: u64| {
            if b == 0 {
                0.0
            } else {
                100.0 * a as f64 / b as f64
            }
        };
        let _ = writeln!(
            s,
            "danmaku loadtest → {} over {} ({} rooms, {} senders, {:.1} msg/s for {:.1} s)",
            if self.target.is_empty() {
                "cluster"
            } else {
                &self.target
            },
            self.transport,
            self.rooms,
            self.senders,
            self.rate,
            self.duration_s
        );
        let _ = writeln!(
            s,
            "connections  attempted {}  ok {}  failed {}  dropped {}  (connect phase {:.1} s)",
            self.connections_attempted,
            self.connections_ok,
            self.connections_failed,
            self.connections_dropped,
            self.connect_time_s
        );
        if self.ingest.len() > 1 || self.edges.len() > 1 || self.ingest != self.edges {
            let _ = writeln!(
                s,
                "cluster      ingest {}  edges {}",
                self.ingest.join(","),
                self.edges.join(",")
            );
        }
        for (reason, n) in &self.connect_errors {
            let _ = writeln!(s, "  {n} × {reason}");
        }
        let _ = writeln!(
            s,
            "posts        attempted {}  accepted {} ({:.1}/s)  rate-limited {}  failed {}",
            self.posts_attempted,
            self.posts_accepted,
            self.posts_per_s,
            self.posts_rate_limited,
            self.posts_failed
        );
        if self.foreign_rate > 0.0 {
            let _ = writeln!(
                s,
                "foreign      accepted {} ({:.1}/s of {:.1} asked, rooms no viewer joined)  rate-limited {}  failed {}",
                self.foreign_posts_accepted,
                self.foreign_posts_per_s,
                self.foreign_rate,
                self.foreign_posts_rate_limited,
                self.foreign_posts_failed
            );
        }
        let _ = writeln!(
            s,
            "delivery     expected {}  received {}  lost {} ({:.3}%)  duplicates {}  order violations {}  unexpected {}  foreign {}",
            self.events_expected,
            self.events_received,
            self.events_lost,
            pct(self.events_lost, self.events_expected),
            self.duplicates,
            self.order_violations,
            self.events_unexpected,
            self.foreign_events
        );
        let _ = writeln!(
            s,
            "frames       {}  ({:.2} events/frame)",
            self.frames_received, self.events_per_frame
        );
        let l = &self.latency_ms;
        let _ = writeln!(
            s,
            "latency ms   p50 {}  p90 {}  p99 {}  max {}  mean {:.1}  (n = {})",
            l.p50, l.p90, l.p99, l.max, l.mean, l.count
        );
        let _ = writeln!(s, "wall time    {:.1} s", self.wall_time_s);
        let mut worst: Vec<&ClientReport> = self
            .clients
            .iter()
            .filter(|c| c.connected && c.tally.lost > 0)
            .collect();
        worst.sort_by_key(|c| std::cmp::Reverse(c.tally.lost));
        if !worst.is_empty() {
            let _ = writeln!(s, "most loss    (client room: received/expected)");
            for c in worst.iter().take(5) {
                let _ = writeln!(
                    s,
                    "  #{} {}: {}/{}{}",
                    c.client,
                    c.room,
                    c.tally.received,
                    c.tally.expected,
                    if c.dropped { " (dropped)" } else { "" }
                );
            }
        }
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
        for v in 1..=100 {
            h.record(v).unwrap();
        }
        let l = Latency::from_histogram(&h);
        assert_eq!(
            (l.count, l.p50, l.p90, l.p99, l.max),
            (100, 50, 90, 99, 100)
        );
    }
}
