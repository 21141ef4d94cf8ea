//! Settings of the Kafka bus and the `kafka://` URL that names them.
//!
//! The defaults are chosen for the cost of the bus hop (BENCHMARKS.md, "Bus hop:
//! broker CPU vs fetch settings"). Every edge runs one consumer that reads the whole
//! topic, so the broker's work is (consumers) × (fetches per second) × (partitions and
//! record batches per fetch), whether or not anything is published: with 16 partitions
//! and a 10 ms fetch wait, six idle consumers kept tansu at 0.33–0.40 core and six
//! at 200 msgs/s at 0.71–0.96 core. One partition, a 25 ms fetch wait and a 20 ms
//! producer linger cut that to 0.08–0.09 and 0.14–0.22 core, for a hop p50/p99 of
//! ~16/30 ms instead of ~11/25 ms: well inside an edge tick (50–100 ms).

use std::time::Duration;

use crate::backend::BusError;

/// Default name of the one global topic.
pub const DEFAULT_TOPIC: &str = "danmaku.events";
/// Default partition count of a topic the bus creates: 1 (see
/// [`KafkaBusConfig::partitions`]).
pub const DEFAULT_PARTITIONS: i32 = 1;

/// Settings of [`KafkaBus`](super::KafkaBus). [`KafkaBusConfig::from_url`] reads
/// `kafka://host:port[,host:port…][?topic=NAME&partitions=N&replication=R&fetch_wait_ms=MS&fetch_min_bytes=B&queued_min_messages=N&linger_ms=MS&batch_num_messages=N&compression=C]`;
/// every other field keeps its default.
#[derive(Debug, Clone)]
pub struct KafkaBusConfig {
    /// Bootstrap brokers, `host:port` joined with commas (librdkafka `bootstrap.servers`).
    pub brokers: String,
    /// The one global topic. Default `danmaku.events`. URL `?topic=`.
    pub topic: String,
    /// Partitions of the topic when the bus creates it (an existing topic keeps its
    /// own count). Default 1. URL `?partitions=`.
    ///
    /// Every edge consumes every partition, so partitions buy no consumer
    /// parallelism here; they only spread the topic's leaders over brokers. Each one
    /// adds work to every fetch of every edge (tansu reads each partition on each
    /// fetch: 6 idle consumers cost it 0.38 core with 16 partitions, 0.12 with 1), and
    /// the producer fills one batch per partition, so more partitions also mean
    /// smaller batches. Order is per channel (the message key) either way. One
    /// partition carries far more than a danmaku cluster publishes (tens of MB/s on
    /// Kafka; the bus measures ~86k msgs/s on tansu); raise it only to spread a
    /// large load over several brokers.
    pub partitions: i32,
    /// Replication factor when the bus creates the topic; -1 takes the broker's
    /// default. Default -1. URL `?replication=`.
    pub replication: i32,
    /// How long `publish` waits for the broker's acknowledgement before it reports
    /// [`BusError::Unavailable`] (librdkafka `message.timeout.ms`). Default 5 s.
    pub delivery_timeout: Duration,
    /// How long `connect` waits for the broker to answer before giving up. Default 5 s.
    pub connect_timeout: Duration,
    /// Producer batching delay (`linger.ms`). Default 20 ms. URL `?linger_ms=`.
    ///
    /// Each record batch is work for the broker on every consumer's fetch, so fewer,
    /// fuller batches are the cheapest hop: at 200 msgs/s with 6 consumers (1
    /// partition, 25 ms fetch wait), tansu spent 0.40–0.49 core at 5 ms, 0.30–0.34
    /// at 10 ms and 0.14–0.22 at 20 ms; at any rate 20 ms means at most 50 batches a
    /// second per partition. The hop's latency barely moved (p50 13–15 → 15–18 ms,
    /// p99 ~30 ms either way): a message waits for the consumer's next fetch anyway.
    /// Ingest's `publish` (and so its answer to a post) waits up to this long for
    /// the batch to go out, so a publisher with C publishes awaited at once tops out
    /// near C / (linger + round trip): 256 in flight made 33k msgs/s at 5 ms and
    /// 11.6k at 20 ms. Ingest has one in flight per post it is answering: 1,000
    /// posts/s keep ~25 in flight.
    pub linger: Duration,
    /// Producer compression codec (`compression.type`: none, gzip, snappy, lz4,
    /// zstd). Default lz4. URL `?compression=`.
    pub compression: String,
    /// How long a broker may hold a fetch waiting for data (`fetch.wait.max.ms`).
    /// Default 25 ms. URL `?fetch_wait_ms=`.
    ///
    /// Apache Kafka and Redpanda answer a fetch as soon as `fetch_min_bytes` of data
    /// arrived, so there this only sets how often an idle consumer asks (1000 / wait
    /// per second) and a larger value (100–500 ms) costs no latency. tansu holds
    /// every fetch the full time (docs/ARCHITECTURE.md, broker quirk 1), so there it
    /// is also the hop's latency: measured with 1 partition, 6 consumers and a 5 ms
    /// linger, p50/p99 9/18 ms at 10 ms (0.60 core at 200 msgs/s, 0.12 idle),
    /// 13/30 ms at 25 ms (0.40–0.49, 0.08), 19/39 ms at 50 ms (0.27–0.31, 0.05–0.07),
    /// 32/63–103 ms at 100 ms. With a 20 ms linger, 50 ms saved no CPU under load
    /// over 25 ms and added 10–15 ms to the p99; 25 ms keeps the p99 well under one
    /// edge tick.
    pub fetch_wait: Duration,
    /// The least data a broker should gather before it answers a fetch
    /// (`fetch.min.bytes`). Default 1: answer as soon as anything arrived. URL
    /// `?fetch_min_bytes=`.
    ///
    /// Larger values save a busy Kafka broker some responses but hold each fetch
    /// until that much arrived or `fetch_wait` ran out, which at danmaku's rates
    /// (~100-byte events) means always waiting the full `fetch_wait`. On tansu, 64 KiB
    /// doubled the p50 and p99 and saved no CPU.
    pub fetch_min_bytes: u32,
    /// librdkafka prefetches while fewer than this many messages are queued per
    /// partition (`queued.min.messages`). Default 100,000 (librdkafka's). URL
    /// `?queued_min_messages=`. At 200 msgs/s, 1,000 made no measurable difference:
    /// an edge drains its queue long before either limit.
    pub queued_min_messages: u32,
    /// The most messages in one produce request (`batch.num.messages`). Default
    /// 10,000 (librdkafka's). URL `?batch_num_messages=`. 1 (no batching) made the
    /// broker's CPU 1.5× that of the default.
    pub batch_num_messages: u32,
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
            linger: Duration::from_millis(20),
            compression: "lz4".into(),
            fetch_wait: Duration::from_millis(25),
            fetch_min_bytes: 1,
            queued_min_messages: 100_000,
            batch_num_messages: 10_000,
            watch_interval: Duration::from_secs(1),
            subscription_buffer: 65_536,
        }
    }
}

impl KafkaBusConfig {
    /// Parses a `kafka://` URL (see [`KafkaBusConfig`]). A bad value is a
    /// [`BusError::BadUrl`] naming the parameter and what it accepts.
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
            // An integer in `range`, or a BadUrl naming the parameter and the range.
            let int = |lo: i64, hi: i64| -> Result<i64, BusError> {
                match v.parse::<i64>() {
                    Ok(n) if (lo..=hi).contains(&n) => Ok(n),
                    _ => Err(bad(format!("{k} {v:?} is not an integer in {lo}..={hi}"))),
                }
            };
            match k {
                "topic" => {
                    validate_topic(v).map_err(|r| bad(format!("topic {v:?}: {r}")))?;
                    config.topic = v.to_owned();
                }
                "partitions" => config.partitions = int(1, 10_000)? as i32,
                "replication" => {
                    config.replication = match v.parse::<i32>() {
                        Ok(n) if n == -1 || (1..=100).contains(&n) => n,
                        _ => return Err(bad(format!("replication {v:?} is not -1 or in 1..=100"))),
                    }
                }
                "fetch_wait_ms" => config.fetch_wait = millis(int(1, 10_000)?),
                "fetch_min_bytes" => config.fetch_min_bytes = int(1, 100_000_000)? as u32,
                "queued_min_messages" => {
                    config.queued_min_messages = int(1, 10_000_000)? as u32;
                }
                "linger_ms" => config.linger = millis(int(0, 900_000)?),
                "batch_num_messages" => config.batch_num_messages = int(1, 1_000_000)? as u32,
                "compression" => {
                    if !COMPRESSIONS.contains(&v) {
                        return Err(bad(format!(
                            "compression {v:?} is not one of {}",
                            COMPRESSIONS.join(", ")
                        )));
                    }
                    config.compression = v.to_owned();
                }
                other => {
                    return Err(bad(format!(
                        "unknown parameter {other:?}; expected one of {}",
                        PARAMETERS.join(", ")
                    )));
                }
            }
        }
        Ok(config)
    }
}

/// The query parameters [`KafkaBusConfig::from_url`] reads.
pub const PARAMETERS: &[&str] = &[
    "topic",
    "partitions",
    "replication",
    "fetch_wait_ms",
    "fetch_min_bytes",
    "queued_min_messages",
    "linger_ms",
    "batch_num_messages",
    "compression",
];

/// librdkafka's `compression.type` values.
const COMPRESSIONS: &[&str] = &["none", "gzip", "snappy", "lz4", "zstd"];

fn millis(n: i64) -> Duration {
    Duration::from_millis(n as u64)
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
        assert_eq!(c.partitions, 1);
        assert_eq!(c.replication, -1);
        assert_eq!(c.fetch_wait, Duration::from_millis(25));
        assert_eq!(c.linger, Duration::from_millis(20));
        assert_eq!(c.fetch_min_bytes, 1);
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

    #[test]
    fn fetch_and_produce_settings() {
        let c = KafkaBusConfig::from_url(
            "kafka://h:1?fetch_min_bytes=65536&queued_min_messages=1000&linger_ms=0\
             &batch_num_messages=100&compression=zstd",
        )
        .unwrap();
        assert_eq!(c.fetch_min_bytes, 65_536);
        assert_eq!(c.queued_min_messages, 1000);
        assert_eq!(c.linger, Duration::ZERO);
        assert_eq!(c.batch_num_messages, 100);
        assert_eq!(c.compression, "zstd");
    }

    #[test]
    fn bad_settings_are_typed_errors_naming_the_parameter_and_range() {
        // The whole message, so a change of wording is a deliberate one.
        let err = KafkaBusConfig::from_url("kafka://h:1?fetch_min_bytes=0").unwrap_err();
        assert!(matches!(err, BusError::BadUrl { .. }), "{err:?}");
        assert_eq!(
            reason("kafka://h:1?fetch_min_bytes=0"),
            "fetch_min_bytes \"0\" is not an integer in 1..=100000000"
        );
        assert_eq!(
            reason("kafka://h:1?fetch_wait_ms=1.5"),
            "fetch_wait_ms \"1.5\" is not an integer in 1..=10000"
        );
        assert!(reason("kafka://h:1?fetch_wait_ms=10001").contains("1..=10000"));
        assert!(reason("kafka://h:1?queued_min_messages=").contains("queued_min_messages"));
        assert!(reason("kafka://h:1?linger_ms=-1").contains("linger_ms \"-1\""));
        assert!(reason("kafka://h:1?batch_num_messages=0").contains("batch_num_messages"));
        assert!(reason("kafka://h:1?partitions=10001").contains("partitions"));
        assert_eq!(
            reason("kafka://h:1?compression=brotli"),
            "compression \"brotli\" is not one of none, gzip, snappy, lz4, zstd"
        );
        let unknown = reason("kafka://h:1?fetch.wait.max.ms=5");
        for p in PARAMETERS {
            assert!(unknown.contains(p), "{unknown} does not list {p}");
        }
    }
}
