//! Load source (a), the default: GET every registered edge's `metrics_url`
//! each sampling round and read its load inputs from the Prometheus text format
//! (parsed with the `prometheus-parse` crate):
//!
//! * `danmaku_edge_connections`, summed over its `transport` label;
//! * `process_cpu_seconds_total` (the standard process collector);
//! * `danmaku_edge_egress_bytes_total`, summed over its labels;
//! * `danmaku_edge_connections_accepted_total`, summed over its labels, when
//!   the edge exports it (the in-flight correction then knows exactly how
//!   many clients arrived between two readings; without it, the gauge's
//!   growth stands in).
//!
//! A missing CPU, egress or accepted series is "unknown" (that term scores 0); an
//! exposition without the connections gauge is not an edge's and is refused.
//! The sample is stamped with the instant the request was sent: everything
//! the edge counted before then is in it, which is what the in-flight
//! correction of the [`crate::load_model`] assumes.

use std::time::Instant;

use futures_util::future::join_all;

use crate::load_model::{Sample, SampleOutcome};
use crate::state::Scheduler;

pub const CONNECTIONS: &str = "danmaku_edge_connections";
pub const CPU_SECONDS: &str = "process_cpu_seconds_total";
pub const EGRESS_BYTES: &str = "danmaku_edge_egress_bytes_total";
pub const ACCEPTED: &str = "danmaku_edge_connections_accepted_total";

/// Why an exposition gave no reading.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExpositionError {
    #[error("no {CONNECTIONS} series: not an edge's metrics")]
    NoConnections,
    #[error("unreadable exposition: {0}")]
    Unreadable(String),
}

/// The three load inputs of one exposition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadValues {
    pub connections: f64,
    pub cpu_seconds: Option<f64>,
    pub egress_bytes: Option<f64>,
    pub accepted: Option<f64>,
}

impl LoadValues {
    pub fn at(self, at: Instant) -> Sample {
        Sample {
            at,
            connections: self.connections,
            cpu_seconds: self.cpu_seconds,
            egress_bytes: self.egress_bytes,
            accepted: self.accepted,
        }
    }
}

/// Reads [`LoadValues`] from a Prometheus text exposition.
pub fn parse_exposition(text: &str) -> Result<LoadValues, ExpositionError> {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines)
        .map_err(|e| ExpositionError::Unreadable(e.to_string()))?;
    let mut sums = [None::<f64>; 4];
    for sample in &scrape.samples {
        let slot = match sample.metric.as_str() {
            CONNECTIONS => 0,
            CPU_SECONDS => 1,
            EGRESS_BYTES => 2,
            ACCEPTED => 3,
            _ => continue,
        };
        let v = match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => continue,
        };
        if v.is_finite() {
            *sums[slot].get_or_insert(0.0) += v;
        }
    }
    Ok(LoadValues {
        connections: sums[0].ok_or(ExpositionError::NoConnections)?,
        cpu_seconds: sums[1],
        egress_bytes: sums[2],
        accepted: sums[3],
    })
}

/// One round: scrapes every registered edge concurrently and feeds the model.
pub(crate) async fn sample_all(scheduler: &Scheduler) {
    let targets = scheduler.model().sample_targets();
    let rounds = targets.into_iter().map(|(id, url)| async move {
        let at = Instant::now();
        let result = scrape_one(scheduler, &url).await;
        (id, at, result)
    });
    for (id, at, result) in join_all(rounds).await {
        match result {
            Ok(values) => {
                if scheduler.model().on_sample(&id, values.at(at)) == SampleOutcome::Old {
                    scheduler.metrics.stale_reading("old");
                }
            }
            Err((reason, message)) => {
                tracing::debug!(edge = %id, %message, "no load reading");
                scheduler.metrics.stale_reading(reason);
            }
        }
    }
}

async fn scrape_one(
    scheduler: &Scheduler,
    url: &str,
) -> Result<LoadValues, (&'static str, String)> {
    let response = scheduler
        .http
        .get(url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| ("scrape_error", e.to_string()))?;
    let text = response
        .text()
        .await
        .map_err(|e| ("scrape_error", e.to_string()))?;
    parse_exposition(&text).map_err(|e| ("bad_exposition", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_connections_and_reads_counters() {
        let text = "\
# HELP danmaku_edge_connections open client connections
# TYPE danmaku_edge_connections gauge
danmaku_edge_connections{transport=\"quic\"} 5
danmaku_edge_connections{transport=\"ws_json\"} 7
danmaku_edge_connections{transport=\"ws_pb\"} 30
# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 12.5
# TYPE danmaku_edge_egress_bytes_total counter
danmaku_edge_egress_bytes_total{transport=\"ws\"} 1000
danmaku_edge_egress_bytes_total{transport=\"quic\"} 24
# TYPE danmaku_edge_connections_accepted_total counter
danmaku_edge_connections_accepted_total{transport=\"ws_pb\"} 90
danmaku_edge_connections_accepted_total{transport=\"quic\"} 9
# TYPE danmaku_edge_batch_events histogram
danmaku_edge_batch_events_bucket{le=\"1\"} 3
danmaku_edge_batch_events_sum 4
danmaku_edge_batch_events_count 3
";
        let v = parse_exposition(text).unwrap();
        assert_eq!(v.connections, 42.0);
        assert_eq!(v.cpu_seconds, Some(12.5));
        assert_eq!(v.egress_bytes, Some(1024.0));
        assert_eq!(v.accepted, Some(99.0));
    }

    #[test]
    fn missing_inputs() {
        let v = parse_exposition("danmaku_edge_connections{transport=\"ws_pb\"} 0\n").unwrap();
        assert_eq!(
            (v.connections, v.cpu_seconds, v.egress_bytes, v.accepted),
            (0.0, None, None, None)
        );
        assert_eq!(
            parse_exposition("process_cpu_seconds_total 1\n"),
            Err(ExpositionError::NoConnections)
        );
        assert_eq!(
            parse_exposition("<html>oops</html>"),
            Err(ExpositionError::NoConnections)
        );
    }
}
