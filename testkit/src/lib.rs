//! Helpers shared by the integration tests of every crate: reading Prometheus
//! text, waiting for a condition with a deadline, installing the TLS provider.
//! Kept free of the service crates so any test can use it.

use std::future::Future;
use std::time::Duration;

/// Installs rustls' ring provider once per test process (quinn uses ring; a
/// second provider elsewhere would make rustls refuse to pick one).
pub fn init_crypto() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub mod kafka;
pub mod promql;

/// The value of a sample in Prometheus text `exposition`: `name` with all of
/// `labels` (a subset match), summed over the series that match.
/// Returns `None` when no series matches.
pub fn metric_value(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in exposition.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let (metric, label_str) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let matches = labels
            .iter()
            .all(|(k, v)| label_str.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
        if let (true, Ok(v)) = (matches, value.parse::<f64>()) {
            *total.get_or_insert(0.0) += v;
        }
    }
    total
}

/// Polls `check` every 20 ms until it returns `Some`, or panics with `what`
/// after `timeout`. For waiting on things that happen "soon" without sleeping
/// a guessed amount.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_labelled_and_plain_samples() {
        let text = "# HELP x y\n# TYPE a counter\na 3\nb{t=\"ws\",k=\"1\"} 2\nb{t=\"quic\"} 5\n";
        assert_eq!(metric_value(text, "a", &[]), Some(3.0));
        assert_eq!(metric_value(text, "b", &[]), Some(7.0));
        assert_eq!(metric_value(text, "b", &[("t", "ws")]), Some(2.0));
        assert_eq!(metric_value(text, "b", &[("t", "tcp")]), None);
        assert_eq!(metric_value(text, "c", &[]), None);
    }
}
