//! The in-process bus of standalone mode: a bounded broadcast channel. A slow
//! subscriber does not slow publishers; it skips ahead and learns how many
//! messages it lost ([`BusError::Lagged`]), which the edge counts.

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::broadcast;

use crate::backend::{Bus, BusError, BusMessage, Subscription};

/// Settings of the memory bus.
#[derive(Debug, Clone)]
pub struct MemoryBusConfig {
    /// Messages buffered per subscriber before it starts lagging. Default 65,536
    /// (about a minute of a very hot room's comments).
    pub capacity: usize,
}

impl Default for MemoryBusConfig {
    fn default() -> Self {
        MemoryBusConfig { capacity: 65_536 }
    }
}

/// In-process broadcast bus.
#[derive(Debug)]
pub struct MemoryBus {
    tx: broadcast::Sender<BusMessage>,
}

impl MemoryBus {
    pub fn new(config: MemoryBusConfig) -> Self {
        let (tx, _) = broadcast::channel(config.capacity.max(1));
        MemoryBus { tx }
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, key: Bytes, payload: Bytes) -> Result<(), BusError> {
        // No subscriber is not an error: nobody is watching that room right now.
        let _ = self.tx.send(BusMessage { key, payload });
        Ok(())
    }

    async fn subscribe_all(&self) -> Result<Box<dyn Subscription>, BusError> {
        Ok(Box::new(MemorySubscription {
            rx: self.tx.subscribe(),
        }))
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

struct MemorySubscription {
    rx: broadcast::Receiver<BusMessage>,
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn recv(&mut self) -> Result<BusMessage, BusError> {
        match self.rx.recv().await {
            Ok(m) => Ok(m),
            Err(broadcast::error::RecvError::Lagged(n)) => Err(BusError::Lagged(n)),
            Err(broadcast::error::RecvError::Closed) => Err(BusError::Closed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lag_is_reported_not_fatal() {
        let bus = MemoryBus::new(MemoryBusConfig { capacity: 4 });
        let mut sub = bus.subscribe_all().await.unwrap();
        for i in 0..10u8 {
            bus.publish(Bytes::from_static(b"room:1"), Bytes::from(vec![i]))
                .await
                .unwrap();
        }
        match sub.recv().await {
            Err(BusError::Lagged(n)) => assert_eq!(n, 6),
            other => panic!("expected lag, got {other:?}"),
        }
        let next = sub.recv().await.unwrap();
        assert_eq!(next.payload, Bytes::from(vec![6u8]));
    }
}
