//! The bus: ONE global topic that every ingest node publishes to and every edge
//! consumes entirely.
//!
//! [`Bus`] is the interface; backends are chosen by URL in [`connect`]:
//! `memory` (in-process, for standalone) and `kafka://…` ([`KafkaBus`]). Messages are
//! opaque: a key (the channel, so one channel keeps its order) and a payload
//! (an encoded `BusEvent`). Keeping the key outside the payload lets an edge drop
//! events for channels it does not host without decoding them.

mod kafka;
mod memory;
pub mod metrics;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

pub use kafka::{
    DEFAULT_PARTITIONS, DEFAULT_TOPIC, KafkaBus, KafkaBusConfig, KafkaStats, PartitionLag,
    SubscriptionStats,
};
pub use memory::{MemoryBus, MemoryBusConfig};

/// One message on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusMessage {
    /// The channel name, as UTF-8 bytes.
    pub key: Bytes,
    /// An encoded `danmaku.v1.BusEvent`.
    pub payload: Bytes,
}

/// Errors of bus backends.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The subscriber fell behind and `0` messages were skipped. Recoverable:
    /// the next `recv` returns newer messages.
    #[error("subscriber lagged behind and skipped {0} messages")]
    Lagged(u64),
    #[error("bus is closed")]
    Closed,
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    #[error("invalid bus URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
}

/// A publish/subscribe bus with one global topic.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes one message. Returns once the backend has accepted it (for
    /// Kafka: acknowledged by the broker), so callers may answer their client.
    async fn publish(&self, key: Bytes, payload: Bytes) -> Result<(), BusError>;

    /// Subscribes to everything published from now on, across all keys.
    async fn subscribe_all(&self) -> Result<Box<dyn Subscription>, BusError>;

    /// A short name for logs and metrics labels (`memory`, `kafka`).
    fn kind(&self) -> &'static str;

    /// Whether the backend can currently publish and deliver (for readiness checks
    /// and a `danmaku_bus_up` gauge). The memory bus always can.
    fn healthy(&self) -> bool {
        true
    }

    /// Counters and consumer lag of the Kafka backend; `None` for other backends.
    fn kafka_stats(&self) -> Option<KafkaStats> {
        None
    }
}

/// A stream of bus messages for one consumer.
#[async_trait]
pub trait Subscription: Send {
    /// The next message; `Err(Lagged)` means some were skipped and the stream goes on.
    async fn recv(&mut self) -> Result<BusMessage, BusError>;
}

/// Opens the bus named by `url`: `memory` or
/// `kafka://host:port[,host:port…][?topic=NAME&partitions=N&replication=R]`
/// (see [`KafkaBusConfig::from_url`]).
pub async fn connect(url: &str) -> Result<Arc<dyn Bus>, BusError> {
    match url.split_once("://").map(|(s, _)| s).unwrap_or(url) {
        "memory" => Ok(Arc::new(MemoryBus::new(MemoryBusConfig::default()))),
        "kafka" => Ok(Arc::new(
            KafkaBus::connect(KafkaBusConfig::from_url(url)?).await?,
        )),
        other => Err(BusError::BadUrl {
            url: url.to_owned(),
            reason: format!("unknown scheme {other:?}; expected memory or kafka://"),
        }),
    }
}
