//! Health snapshots a backend reports for `/metrics` and readiness checks
//! ([`Bus::kafka_stats`](crate::backend::Bus::kafka_stats)). Plain data, below
//! the backends that fill them in.

use std::time::SystemTime;

/// A snapshot of the Kafka bus's health, for `/metrics` and readiness checks.
#[derive(Debug, Clone, Default)]
pub struct KafkaStats {
    /// The last topic probe (every `KafkaBusConfig::watch_interval`) reached the
    /// broker and found the topic.
    pub reachable: bool,
    /// When a probe last succeeded.
    pub last_probe_ok: Option<SystemTime>,
    /// When the broker last acknowledged a published message.
    pub last_delivery: Option<SystemTime>,
    /// When any subscription last received a message.
    pub last_fetch: Option<SystemTime>,
    /// Messages acknowledged by the broker.
    pub published: u64,
    /// `publish` calls that failed.
    pub publish_errors: u64,
    /// Messages received, summed over subscriptions.
    pub consumed: u64,
    /// Times the bus created the topic (at start and after a broker lost it).
    pub topic_creations: u64,
    /// Times a subscription re-assigned its partitions (topic re-created or resized).
    pub reassignments: u64,
    /// Times the producer was rebuilt after a fatal error.
    pub producer_restarts: u64,
    /// One entry per live subscription.
    pub subscriptions: Vec<SubscriptionStats>,
}

/// Consumer lag of one partition, as of librdkafka's last statistics (every second).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionLag {
    pub partition: i32,
    /// Offset of the next message this subscription will receive (-1: unknown yet).
    pub position: i64,
    /// The partition's high watermark (-1: unknown yet).
    pub high_watermark: i64,
    /// `high_watermark - position`, or -1 when either is unknown.
    pub lag: i64,
}

/// Health of one subscription.
#[derive(Debug, Clone, Default)]
pub struct SubscriptionStats {
    /// Messages fetched but not yet taken by `recv`.
    pub buffered: usize,
    /// Per-partition lag, sorted by partition.
    pub partitions: Vec<PartitionLag>,
    /// Broker connections that closed (any reason) since the subscription began.
    pub connection_closes: u64,
    /// Reconnects refused because the assignment predated a closed connection.
    pub reconnects_held: u64,
}
