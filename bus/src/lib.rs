//! The bus: ONE global topic that every ingest node publishes to and every edge
//! consumes entirely.
//!
//! [`Bus`] is the interface; backends are chosen by URL in [`connect`]:
//! `memory` (in-process, for standalone) and `kafka://…` ([`KafkaBus`]). Messages are
//! opaque: a key (the channel, so one channel keeps its order) and a payload
//! (an encoded `BusEvent`). Keeping the key outside the payload lets an edge drop
//! events for channels it does not host without decoding them.

mod backend;
mod kafka;
mod memory;
pub mod metrics;
mod stats;

use std::sync::Arc;

pub use backend::{Bus, BusError, BusMessage, Subscription};
pub use kafka::{DEFAULT_PARTITIONS, DEFAULT_TOPIC, KafkaBus, KafkaBusConfig};
pub use memory::{MemoryBus, MemoryBusConfig};
pub use stats::{KafkaStats, PartitionLag, SubscriptionStats};

/// Opens the bus named by `url`: `memory` or
/// `kafka://host:port[,host:port…][?topic=NAME&partitions=N&fetch_wait_ms=MS&linger_ms=MS…]`
/// (every parameter: [`KafkaBusConfig`]).
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
