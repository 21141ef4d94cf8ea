//! Load source (b), `--prometheus-url`: each sampling round asks a Prometheus
//! server's HTTP API (`GET /api/v1/query`) for the same inputs the
//! scrape source reads (connections, CPU, egress, accepted), plus the time of each sample:
//!
//! ```text
//! sum by (instance) (danmaku_edge_connections)
//! sum by (instance) (process_cpu_seconds_total)
//! sum by (instance) (danmaku_edge_egress_bytes_total)
//! sum by (instance) (danmaku_edge_connections_accepted_total)
//! max by (instance) (timestamp(danmaku_edge_connections))
//! ```
//!
//! Series are matched to edges by `instance` = the `host:port` of the edge's
//! registered `metrics_url` (what Prometheus sets for a target at that
//! address). Counters are read raw and turned into rates by the load model,
//! exactly as for scrapes; the sample time is Prometheus' own scrape time
//! (`timestamp()`), so an edge Prometheus can no longer scrape goes stale here
//! too (its series vanish, or stop getting newer). Prometheus should scrape
//! edges about every second for readings as fresh as the scrape source's.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::load_model::{Sample, SampleOutcome};
use crate::state::Scheduler;

/// The queries (the metric names are those of [`crate::scrape`]).
pub const Q_CONNECTIONS: &str = "sum by (instance) (danmaku_edge_connections)";
pub const Q_CPU_SECONDS: &str = "sum by (instance) (process_cpu_seconds_total)";
pub const Q_EGRESS_BYTES: &str = "sum by (instance) (danmaku_edge_egress_bytes_total)";
pub const Q_ACCEPTED: &str = "sum by (instance) (danmaku_edge_connections_accepted_total)";
pub const Q_SAMPLE_TIME: &str = "max by (instance) (timestamp(danmaku_edge_connections))";

/// Why a query gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("bad prometheus URL: {0}")]
    Url(#[from] url::ParseError),
    #[error("prometheus request: {0}")]
    Http(#[from] reqwest::Error),
    #[error("prometheus answered {status}: {error}")]
    Failed { status: String, error: String },
    #[error("prometheus answered a {0}, expected a vector")]
    NotVector(String),
}

#[derive(Debug, Deserialize)]
struct QueryResponse {
    status: String,
    #[serde(default)]
    data: Option<QueryData>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct QueryData {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<VectorSample>,
}

#[derive(Debug, Deserialize)]
struct VectorSample {
    #[serde(default)]
    metric: HashMap<String, String>,
    /// `[unix seconds, "value"]`.
    value: (f64, String),
}

/// Value per `instance` of one instant-vector query.
async fn query(
    http: &reqwest::Client,
    base: &str,
    promql: &str,
) -> Result<HashMap<String, f64>, QueryError> {
    let mut url = url::Url::parse(base)?.join("api/v1/query")?;
    url.query_pairs_mut().append_pair("query", promql);
    let answer: QueryResponse = http.get(url).send().await?.json().await?;
    if answer.status != "success" {
        return Err(QueryError::Failed {
            status: answer.status,
            error: answer.error.unwrap_or_default(),
        });
    }
    let data = answer
        .data
        .ok_or_else(|| QueryError::NotVector("answer without data".into()))?;
    if data.result_type != "vector" {
        return Err(QueryError::NotVector(data.result_type));
    }
    Ok(data
        .result
        .into_iter()
        .filter_map(|s| {
            let v: f64 = s.value.1.parse().ok()?;
            Some((s.metric.get("instance")?.clone(), v))
        })
        .filter(|(_, v)| v.is_finite())
        .collect())
}

/// The `instance` label Prometheus gives a target scraped at `metrics_url`.
pub fn instance_of(metrics_url: &str) -> Option<String> {
    let url = url::Url::parse(metrics_url).ok()?;
    Some(format!(
        "{}:{}",
        url.host_str()?,
        url.port_or_known_default()?
    ))
}

/// Maps a Prometheus timestamp (Unix seconds) onto this process's monotonic
/// clock, given the wall and monotonic time of now.
pub fn instant_of(unix_secs: f64, now_unix: Duration, now: Instant) -> Instant {
    let age = now_unix.as_secs_f64() - unix_secs;
    if age.is_finite() && age > 0.0 {
        now.checked_sub(Duration::from_secs_f64(age)).unwrap_or(now)
    } else {
        now
    }
}

/// One round: five queries, then one sample per registered edge found.
pub(crate) async fn sample_all(scheduler: &Scheduler, base: &str) {
    let http = &scheduler.http;
    let base = if base.ends_with('/') {
        base.to_owned()
    } else {
        format!("{base}/")
    };
    let (conns, cpu, egress, accepted, times) = tokio::join!(
        query(http, &base, Q_CONNECTIONS),
        query(http, &base, Q_CPU_SECONDS),
        query(http, &base, Q_EGRESS_BYTES),
        query(http, &base, Q_ACCEPTED),
        query(http, &base, Q_SAMPLE_TIME),
    );
    let (conns, times) = match (conns, times) {
        (Ok(c), Ok(t)) => (c, t),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "prometheus query failed");
            scheduler.metrics.stale_reading("query_error");
            return;
        }
    };
    // CPU, egress and accepted are optional inputs: a failed query only
    // loses them.
    let cpu = cpu.unwrap_or_default();
    let egress = egress.unwrap_or_default();
    let accepted = accepted.unwrap_or_default();
    let now = Instant::now();
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    // Bound first: a guard in the `for` head would live through the loop body,
    // which locks the model again.
    let targets = scheduler.model().sample_targets();
    for (id, metrics_url) in targets {
        let found =
            instance_of(&metrics_url).and_then(|i| Some((conns.get(&i)?, times.get(&i)?, i)));
        let Some((&connections, &at, instance)) = found else {
            scheduler.metrics.stale_reading("missing");
            continue;
        };
        let sample = Sample {
            at: instant_of(at, now_unix, now),
            connections,
            cpu_seconds: cpu.get(&instance).copied(),
            egress_bytes: egress.get(&instance).copied(),
            accepted: accepted.get(&instance).copied(),
        };
        if scheduler.model().on_sample(&id, sample) == SampleOutcome::Old {
            scheduler.metrics.stale_reading("old");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_name_the_scraped_metrics() {
        use crate::scrape::{ACCEPTED, CONNECTIONS, CPU_SECONDS, EGRESS_BYTES};
        assert!(Q_CONNECTIONS.contains(CONNECTIONS));
        assert!(Q_CPU_SECONDS.contains(CPU_SECONDS));
        assert!(Q_EGRESS_BYTES.contains(EGRESS_BYTES));
        assert!(Q_ACCEPTED.contains(ACCEPTED));
        assert!(Q_SAMPLE_TIME.contains(CONNECTIONS));
    }

    #[test]
    fn instance_is_host_and_port_of_the_metrics_url() {
        assert_eq!(
            instance_of("http://127.0.0.1:7071/metrics").as_deref(),
            Some("127.0.0.1:7071")
        );
        assert_eq!(
            instance_of("http://edge-3.example/metrics").as_deref(),
            Some("edge-3.example:80")
        );
        assert_eq!(
            instance_of("http://[::1]:9/metrics").as_deref(),
            Some("[::1]:9")
        );
        assert_eq!(instance_of("not a url"), None);
    }

    #[test]
    fn prometheus_time_maps_onto_the_monotonic_clock() {
        let now = Instant::now() + Duration::from_secs(100);
        let unix = Duration::from_secs(1_700_000_000);
        let at = instant_of(1_699_999_998.5, unix, now);
        assert_eq!(now - at, Duration::from_millis(1500));
        // A sample "from the future" (clock skew) counts as now.
        assert_eq!(instant_of(1_700_000_010.0, unix, now), now);
        assert_eq!(instant_of(f64::NAN, unix, now), now);
    }

    #[test]
    fn query_answers_parse() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"instance":"127.0.0.1:7071"},"value":[1700000000.123,"42"]},
            {"metric":{},"value":[1700000000.123,"1"]}]}}"#;
        let r: QueryResponse = serde_json::from_str(body).unwrap();
        let data = r.data.unwrap();
        assert_eq!(data.result_type, "vector");
        assert_eq!(data.result[0].value.1, "42");
        assert_eq!(data.result[0].metric["instance"], "127.0.0.1:7071");
        let err: QueryResponse = serde_json::from_str(
            r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#,
        )
        .unwrap();
        assert_eq!(err.error.as_deref(), Some("parse error"));
    }
}
