//! Settings of the Kafka bus and the `kafka://` URL that names them.

use std::time::Duration;

use crate::backend::BusError;

/// Default name of the one global topic.
pub const DEFAULT_TOPIC: &str = "danmaku.events";
/// Default partition count of a topic the bus creates.
pub const DEFAULT_PARTITIONS: i32 = 16;

/// Settings of [`KafkaBus`](super::KafkaBus). [`KafkaBusConfig::from_url`] reads the
/// common ones from `kafka://host:port[,host:port…][?topic=NAME&partitions=N&replication=R&fetch_wait_ms=MS]`;
/// every other field keeps its default.
#[derive(Debug, Clone)]
pub struct KafkaBusConfig {
    /// Bootstrap brokers, `host:port` joined with commas (librdkafka `bootstrap.servers`).
    pub brokers: String,
    /// The one global topic. Default `danmaku.events`.
    pub topic: String,
    /// Partitions of the topic when the bus creates it (an existing topic keeps its
    /// own count). Default 16.
    pub partitions: i32,
    /// Replication factor when the bus creates the topic; -1 takes the broker's
    /// default. Default -1.
    pub replication: i32,
    /// How long `publish` waits for the broker's acknowledgement before it reports
    /// [`BusError::Unavailable`] (librdkafka `message.timeout.ms`). Default 5 s.
    pub delivery_timeout: Duration,
    /// How long `connect` waits for the broker to answer before giving up. Default 5 s.
    pub connect_timeout: Duration,
    /// Producer batching delay (`linger.ms`). Default 5 ms.
    pub linger: Duration,
    /// Producer compression codec (`compression.type`: none, gzip, lz4, zstd).
    /// Default lz4.
    pub compression: String,
    /// How long a broker may hold a fetch waiting for data (`fetch.wait.max.ms`).
    /// Default 10 ms: tansu waits the full time, so this is the consumer's latency
    /// floor (docs/ARCHITECTURE.md, broker quirk 1), and every consumer's fetches
    /// cost the broker CPU. `?fetch_wait_ms=` changes it; with tansu, 50 ms made
    /// delivery ~17× later (BENCHMARKS.md), so measure before raising it.
    pub fetch_wait: Duration,
    /// How often the bus checks that the topic exists (creating it again after a
    /// broker lost it) and subscriptions check their assignment. Default 1 s.
    pub watch_interval: Duration,
    /// Messages buffered per subscription between the fetch task and `recv`.
    /// When full, fetching pauses (the backlog stays in Kafka). Default 65,536.
    pub subscription_buffer: usize,
}

impl Default for KafkaBusConfig {
    fn default() -> Self {
        KafkaBusConfig {
            brokers: "127.0.0.1:9092".into(),
            topic: DEFAULT_TOPIC.into(),
            partitions: DEFAULT_PARTITIONS,
            replication: -1,
            delivery_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            linger: Duration::from_millis(5),
            compression: "lz4".into(),
            fetch_wait: Duration::from_millis(10),
            watch_interval: Duration::from_secs(1),
            subscription_buffer: 65_536,
        }
    }
}

impl KafkaBusConfig {
    /// Parses `kafka://host:port[,host:port…][?topic=NAME&partitions=N&replication=R&fetch_wait_ms=MS]`.
    pub fn from_url(url: &str) -> Result<Self, BusError> {
        let bad = |reason: String| BusError::BadUrl {
            url: url.to_owned(),
            reason,
        };
        let rest = url
            .strip_prefix("kafka://")
            .ok_or_else(|| bad("expected the scheme kafka://".into()))?;
        let (hosts, query) = match rest.split_once('?') {
            Some((h, q)) => (h, Some(q)),
            None => (rest, None),
        };
        let hosts = hosts.strip_suffix('/').unwrap_or(hosts);
        if hosts.is_empty() {
            return Err(bad("no broker address; expected kafka://host:port".into()));
        }
        let mut brokers = Vec::new();
        for host in hosts.split(',') {
            let (name, port) = host
                .rsplit_once(':')
                .ok_or_else(|| bad(format!("broker {host:?} has no :port")))?;
            if name.is_empty() || name.contains('/') || name.contains('@') {
                return Err(bad(format!("broker {host:?} has an invalid host")));
            }
            match port.parse::<u16>() {
                Ok(p) if p > 0 => {}
                _ => return Err(bad(format!("broker {host:?} has an invalid port {port:?}"))),
            }
            brokers.push(host);
        }
        let mut config = KafkaBusConfig {
            brokers: brokers.join(","),
            ..KafkaBusConfig::default()
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| bad(format!("query parameter {pair:?} has no value")))?;
            match k {
                "topic" => {
                    validate_topic(v).map_err(|r| bad(format!("topic {v:?}: {r}")))?;
                    config.topic = v.to_owned();
                }
                "partitions" => {
                    config.partitions = match v.parse::<i32>() {
                        Ok(n) if (1..=10_000).contains(&n) => n,
                        _ => return Err(bad(format!("partitions {v:?} is not in 1..=10000"))),
                    }
                }
                "replication" => {
                    config.replication = match v.parse::<i32>() {
                        Ok(n) if n == -1 || (1..=100).contains(&n) => n,
                        _ => return Err(bad(format!("replication {v:?} is not -1 or in 1..=100"))),
                    }
                }
                "fetch_wait_ms" => {
                    config.fetch_wait = match v.parse::<u64>() {
                        Ok(n) if (1..=10_000).contains(&n) => Duration::from_millis(n),
                        _ => return Err(bad(format!("fetch_wait_ms {v:?} is not in 1..=10000"))),
                    }
                }
                other => {
                    return Err(bad(format!(
                        "unknown parameter {other:?}; expected topic, partitions, replication or fetch_wait_ms"
                    )));
                }
            }
        }
        Ok(config)
    }
}

/// Kafka's own rule: 1–249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn validate_topic(topic: &str) -> Result<(), &'static str> {
    if topic.is_empty() || topic.len() > 249 {
        return Err("must be 1 to 249 characters");
    }
    if topic == "." || topic == ".." {
        return Err("must not be . or ..");
    }
    if !topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err("may only contain ASCII letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(url: &str) -> String {
        match KafkaBusConfig::from_url(url) {
            Err(BusError::BadUrl { reason, .. }) => reason,
            other => panic!("{url}: expected BadUrl, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let c = KafkaBusConfig::from_url("kafka://127.0.0.1:9092").unwrap();
        assert_eq!(c.brokers, "127.0.0.1:9092");
        assert_eq!(c.topic, "danmaku.events");
        assert_eq!(c.partitions, 16);
        assert_eq!(c.replication, -1);
        assert_eq!(c.fetch_wait, Duration::from_millis(10));
        assert_eq!(c.delivery_timeout, Duration::from_secs(5));
    }

    #[test]
    fn several_brokers_and_parameters() {
        let c = KafkaBusConfig::from_url(
            "kafka://k1:9092,k2.example:19092/?topic=my_events-1&partitions=4&replication=3",
        )
        .unwrap();
        assert_eq!(c.brokers, "k1:9092,k2.example:19092");
        assert_eq!(c.topic, "my_events-1");
        assert_eq!(c.partitions, 4);
        assert_eq!(c.replication, 3);
        let c = KafkaBusConfig::from_url("kafka://k1:9092?fetch_wait_ms=50").unwrap();
        assert_eq!(c.fetch_wait, Duration::from_millis(50));
        let c = KafkaBusConfig::from_url("kafka://[::1]:9092").unwrap();
        assert_eq!(c.brokers, "[::1]:9092");
    }

    #[test]
    fn bad_urls_say_why() {
        assert!(reason("memory").contains("kafka://"));
        assert!(reason("kafka://").contains("no broker"));
        assert!(reason("kafka://?topic=x").contains("no broker"));
        assert!(reason("kafka://host").contains("no :port"));
        assert!(reason("kafka://host:").contains("invalid port"));
        assert!(reason("kafka://host:99999").contains("invalid port"));
        assert!(reason("kafka://a:1,,b:2").contains("no :port"));
        assert!(reason("kafka://user@h:1").contains("invalid host"));
        assert!(reason("kafka://h:1?topic=").contains("1 to 249"));
        assert!(reason("kafka://h:1?topic=a/b").contains("may only contain"));
        assert!(reason("kafka://h:1?topic=..").contains("must not be"));
        assert!(reason("kafka://h:1?partitions=0").contains("partitions"));
        assert!(reason("kafka://h:1?partitions=x").contains("partitions"));
        assert!(reason("kafka://h:1?replication=0").contains("replication"));
        assert!(reason("kafka://h:1?topic").contains("no value"));
        assert!(reason("kafka://h:1?fetch_wait_ms=0").contains("fetch_wait_ms"));
        assert!(reason("kafka://h:1?fetch_wait_ms=soon").contains("fetch_wait_ms"));
        assert!(reason("kafka://h:1?group=x").contains("unknown parameter"));
    }
}
