//! librdkafka's log lines, as `tracing` events of target `librdkafka`.

use rdkafka::config::RDKafkaLogLevel;

/// Forwards one librdkafka log line at the matching level.
pub(super) fn log_librdkafka(role: &str, level: RDKafkaLogLevel, fac: &str, message: &str) {
    use RDKafkaLogLevel::*;
    match level {
        Emerg | Alert | Critical | Error | Warning => {
            tracing::warn!(target: "librdkafka", role, fac, "{message}")
        }
        Notice | Info => tracing::info!(target: "librdkafka", role, fac, "{message}"),
        Debug => tracing::debug!(target: "librdkafka", role, fac, "{message}"),
    }
}
