//! The bus contract: the same tests for every backend. A backend is added by
//! instantiating `contract_suite!` with a constructor.
//!
//! The Kafka suite runs against the real broker named by `DANMAKU_TEST_KAFKA`
//! (`scripts/services.sh start kafka`, then `source .services/env`); each test gets a
//! topic of its own.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use danmaku_bus::{Bus, BusError, MemoryBus, MemoryBusConfig, Subscription};

async fn recv(sub: &mut Box<dyn Subscription>) -> danmaku_bus::BusMessage {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), sub.recv()).await {
            Ok(Ok(m)) => return m,
            Ok(Err(BusError::Lagged(_))) => continue,
            Ok(Err(e)) => panic!("recv failed: {e}"),
            Err(_) => panic!("no message within 10 s"),
        }
    }
}

pub async fn publish_reaches_every_subscriber(bus: Arc<dyn Bus>) {
    let mut a = bus.subscribe_all().await.unwrap();
    let mut b = bus.subscribe_all().await.unwrap();
    bus.publish(Bytes::from_static(b"room:1"), Bytes::from_static(b"hello"))
        .await
        .unwrap();
    for sub in [&mut a, &mut b] {
        let m = recv(sub).await;
        assert_eq!(&m.key[..], b"room:1");
        assert_eq!(&m.payload[..], b"hello");
    }
}

pub async fn per_key_order_is_kept(bus: Arc<dyn Bus>) {
    let mut sub = bus.subscribe_all().await.unwrap();
    let keys = ["room:a", "room:b", "room:c"];
    for i in 0..300u32 {
        let key = keys[i as usize % keys.len()];
        bus.publish(Bytes::from(key), Bytes::from(i.to_be_bytes().to_vec()))
            .await
            .unwrap();
    }
    let mut last: std::collections::HashMap<Bytes, u32> = Default::default();
    for _ in 0..300 {
        let m = recv(&mut sub).await;
        let v = u32::from_be_bytes(m.payload[..4].try_into().unwrap());
        if let Some(prev) = last.insert(m.key.clone(), v) {
            assert!(v > prev, "key {:?}: {v} after {prev}", m.key);
        }
    }
    assert_eq!(last.len(), 3);
}

pub async fn many_channels(bus: Arc<dyn Bus>) {
    let mut sub = bus.subscribe_all().await.unwrap();
    for i in 0..1000u32 {
        bus.publish(Bytes::from(format!("room:{i}")), Bytes::from_static(b"x"))
            .await
            .unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..1000 {
        seen.insert(recv(&mut sub).await.key);
    }
    assert_eq!(seen.len(), 1000);
}

pub async fn late_subscriber_sees_only_new(bus: Arc<dyn Bus>) {
    bus.publish(Bytes::from_static(b"room:1"), Bytes::from_static(b"old"))
        .await
        .unwrap();
    let mut sub = bus.subscribe_all().await.unwrap();
    bus.publish(Bytes::from_static(b"room:1"), Bytes::from_static(b"new"))
        .await
        .unwrap();
    assert_eq!(&recv(&mut sub).await.payload[..], b"new");
}

macro_rules! contract_suite {
    ($modname:ident, $make:expr) => {
        mod $modname {
            use super::*;
            #[tokio::test]
            async fn publish_reaches_every_subscriber() {
                super::publish_reaches_every_subscriber($make).await
            }
            #[tokio::test]
            async fn per_key_order_is_kept() {
                super::per_key_order_is_kept($make).await
            }
            #[tokio::test]
            async fn many_channels() {
                super::many_channels($make).await
            }
            #[tokio::test]
            async fn late_subscriber_sees_only_new() {
                super::late_subscriber_sees_only_new($make).await
            }
        }
    };
}

contract_suite!(
    memory,
    Arc::new(MemoryBus::new(MemoryBusConfig::default())) as Arc<dyn Bus>
);

/// A Kafka bus on a fresh topic of the test broker.
async fn kafka_bus() -> Arc<dyn Bus> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let addr = std::env::var("DANMAKU_TEST_KAFKA").unwrap_or_default();
    assert!(
        !addr.is_empty(),
        "DANMAKU_TEST_KAFKA is not set: run `scripts/services.sh start kafka && \
         source .services/env` first (scripts/test.sh does both)"
    );
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let url = format!(
        "kafka://{addr}?topic=contract.{}.{nanos}.{n}",
        std::process::id()
    );
    danmaku_bus::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test broker {addr}: {e}"))
}

contract_suite!(kafka, kafka_bus().await);

#[tokio::test]
async fn connect_parses_urls() {
    assert_eq!(
        danmaku_bus::connect("memory").await.unwrap().kind(),
        "memory"
    );
    let err = danmaku_bus::connect("nats://x").await.err().unwrap();
    assert!(err.to_string().contains("unknown scheme"), "{err}");
}
