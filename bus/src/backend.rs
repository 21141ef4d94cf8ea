//! What every bus backend is: the [`Bus`] and [`Subscription`] traits and the
//! message and error types they share. The backends (`memory.rs`, `kafka/`)
//! implement them; `lib.rs` picks one by URL.

use async_trait::async_trait;
use bytes::Bytes;

use crate::stats::KafkaStats;

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
