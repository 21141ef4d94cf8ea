//! Kafka-specific behaviour against real tansu brokers: failure modes the contract
//! suite does not cover.
//!
//! Tests that kill a broker start a private one (binary from
//! `DANMAKU_TEST_KAFKA_TANSU`, which `scripts/services.sh start kafka` writes to
//! `.services/env`) so they never disturb the shared broker other tests use.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use danmaku_bus::{Bus, BusError, KafkaBus, KafkaBusConfig, Subscription};
use danmaku_testkit::kafka::{Broker, env_or_fail, free_port, unique};

async fn recv_payload(sub: &mut Box<dyn Subscription>, within: Duration) -> Option<Bytes> {
    match tokio::time::timeout(within, sub.recv()).await {
        Ok(Ok(m)) => Some(m.payload),
        Ok(Err(e)) => panic!("recv failed: {e}"),
        Err(_) => None,
    }
}

/// Waits for `want`, skipping anything else (older events may be re-read after a
/// restart, docs/ARCHITECTURE.md broker quirk 2).
async fn wait_for(sub: &mut Box<dyn Subscription>, want: &[u8], within: Duration) {
    let deadline = Instant::now() + within;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if recv_payload(sub, left).await.as_deref() == Some(want) {
            return;
        }
    }
    panic!(
        "did not receive {:?} within {within:?}",
        String::from_utf8_lossy(want)
    );
}

async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `RUST_LOG=info cargo test …` shows the bus's and librdkafka's logs.
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn key() -> Bytes {
    Bytes::from_static(b"room:1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_survives_broker_restart() {
    init_logs();
    let mut broker = Broker::start();
    let config = KafkaBusConfig {
        brokers: broker.addr(),
        topic: unique("restart"),
        delivery_timeout: Duration::from_secs(2),
        watch_interval: Duration::from_millis(300),
        ..KafkaBusConfig::default()
    };
    let bus = KafkaBus::connect(config).await.unwrap();
    let mut sub = bus.subscribe_all().await.unwrap();
    bus.publish(key(), Bytes::from_static(b"before"))
        .await
        .unwrap();
    wait_for(&mut sub, b"before", Duration::from_secs(10)).await;
    assert!(bus.healthy());

    broker.kill();
    let started = Instant::now();
    let err = bus
        .publish(key(), Bytes::from_static(b"during"))
        .await
        .expect_err("publish with the broker down must fail");
    assert!(matches!(err, BusError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains(&broker.addr()), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "publish took {:?} to fail",
        started.elapsed()
    );
    wait_until("bus reports unhealthy", Duration::from_secs(10), || {
        !bus.healthy()
    })
    .await;

    // The new broker has lost the topic (memory storage): the bus must re-create it
    // and the SAME subscription must pick up the new topic from its start.
    broker.launch();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match bus.publish(key(), Bytes::from_static(b"after")).await {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("publish after restart: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("publish never recovered: {e}"),
        }
    }
    wait_for(&mut sub, b"after", Duration::from_secs(45)).await;
    for i in 0..20u8 {
        bus.publish(key(), Bytes::from(vec![b'n', i]))
            .await
            .unwrap();
    }
    for i in 0..20u8 {
        wait_for(&mut sub, &[b'n', i], Duration::from_secs(10)).await;
    }
    wait_until("bus healthy again", Duration::from_secs(10), || {
        bus.healthy()
    })
    .await;
    let stats = bus.stats();
    assert!(stats.topic_creations >= 2, "{stats:?}");
    assert!(stats.reassignments >= 1, "{stats:?}");
    assert!(stats.publish_errors >= 1, "{stats:?}");
}

#[tokio::test]
async fn unreachable_broker_fails_fast_naming_it() {
    let addr = format!("127.0.0.1:{}", free_port());
    let started = Instant::now();
    let err = danmaku_bus::connect(&format!("kafka://{addr}"))
        .await
        .err()
        .expect("connect must fail");
    assert!(matches!(err, BusError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains(&addr), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn stats_show_deliveries_and_per_partition_lag() {
    let addr = env_or_fail("DANMAKU_TEST_KAFKA");
    let url = format!("kafka://{addr}?topic={}&partitions=3", unique("stats"));
    let bus: Arc<dyn Bus> = danmaku_bus::connect(&url).await.unwrap();
    assert_eq!(bus.kind(), "kafka");
    let mut sub = bus.subscribe_all().await.unwrap();
    for i in 0..30u32 {
        bus.publish(Bytes::from(format!("room:{i}")), Bytes::from_static(b"x"))
            .await
            .unwrap();
    }
    for _ in 0..30 {
        recv_payload(&mut sub, Duration::from_secs(10))
            .await
            .expect("message");
    }
    // librdkafka publishes statistics every second.
    wait_until("per-partition lag reported", Duration::from_secs(5), || {
        let s = bus.kafka_stats().unwrap();
        s.subscriptions.len() == 1
            && s.subscriptions[0].partitions.len() == 3
            && s.subscriptions[0].partitions.iter().all(|p| p.lag == 0)
    })
    .await;
    let s = bus.kafka_stats().unwrap();
    assert_eq!(s.published, 30);
    assert!(s.consumed >= 30);
    assert!(s.last_delivery.is_some() && s.last_fetch.is_some());
    assert!(s.reachable && bus.healthy());
    drop(sub);
    wait_until(
        "dropped subscription leaves the stats",
        Duration::from_secs(5),
        || bus.kafka_stats().unwrap().subscriptions.is_empty(),
    )
    .await;
}

#[tokio::test]
async fn connect_rejects_bad_kafka_urls() {
    for url in [
        "kafka://",
        "kafka://host",
        "kafka://h:1?topic=a/b",
        "kafka://h:1?x=1",
    ] {
        match danmaku_bus::connect(url).await {
            Err(BusError::BadUrl { .. }) => {}
            other => panic!("{url}: expected BadUrl, got {:?}", other.map(|b| b.kind())),
        }
    }
}

/// A supervisor-style restart: the broker is back on the same port at once, before
/// the bus's watcher has seen it gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_survives_quick_broker_restart() {
    init_logs();
    let mut broker = Broker::start();
    let config = KafkaBusConfig {
        brokers: broker.addr(),
        topic: unique("quick"),
        delivery_timeout: Duration::from_secs(2),
        ..KafkaBusConfig::default()
    };
    let bus = KafkaBus::connect(config).await.unwrap();
    let mut sub = bus.subscribe_all().await.unwrap();
    for i in 0..3u8 {
        let before = [b'b', i];
        bus.publish(key(), Bytes::copy_from_slice(&before))
            .await
            .unwrap();
        wait_for(&mut sub, &before, Duration::from_secs(10)).await;

        broker.kill();
        broker.launch();
        let after = [b'a', i];
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(e) = bus.publish(key(), Bytes::copy_from_slice(&after)).await {
            assert!(Instant::now() < deadline, "publish never recovered: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        wait_for(&mut sub, &after, Duration::from_secs(45)).await;
    }
}

/// Two publishers on one broker, like two ingests: after the broker restarts (and
/// forgets every producer id, handing them out from 1 again), BOTH must publish again
/// soon after the broker is back, not only the one that happens to get a fresh id
/// first. Issue requirement: within 10 s of the broker's return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_publisher_recovers_after_broker_restart() {
    init_logs();
    let mut broker = Broker::start();
    let topic = unique("two");
    let config = KafkaBusConfig {
        brokers: broker.addr(),
        topic: topic.clone(),
        delivery_timeout: Duration::from_secs(3),
        ..KafkaBusConfig::default()
    };
    let a = Arc::new(KafkaBus::connect(config.clone()).await.unwrap());
    let b = Arc::new(KafkaBus::connect(config).await.unwrap());
    for bus in [&a, &b] {
        for _ in 0..3 {
            bus.publish(key(), Bytes::from_static(b"before"))
                .await
                .unwrap();
        }
    }
    broker.kill();
    // Both try (and fail) during the outage, as ingests serving posts would.
    let (ra, rb) = tokio::join!(
        a.publish(key(), Bytes::from_static(b"during")),
        b.publish(key(), Bytes::from_static(b"during"))
    );
    assert!(ra.is_err() && rb.is_err());
    broker.launch();
    let back = Instant::now();
    let recover = |bus: Arc<KafkaBus>, name: &'static str| async move {
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match bus.publish(key(), Bytes::from_static(b"after")).await {
                Ok(()) => return (name, back.elapsed(), attempts),
                Err(e) => {
                    assert!(
                        back.elapsed() < Duration::from_secs(10),
                        "{name} still failing {:?} after the broker came back: {e}",
                        back.elapsed()
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    };
    let (ta, tb) = tokio::join!(recover(a.clone(), "a"), recover(b.clone(), "b"));
    for (name, took, attempts) in [ta, tb] {
        eprintln!(
            "publisher {name}: publishing again {took:?} after the broker's return ({attempts} attempts)"
        );
    }
    // And they keep working, interleaved (a collision of reused producer ids would
    // break one of them again).
    for i in 0..20u8 {
        a.publish(key(), Bytes::from(vec![b'a', i])).await.unwrap();
        b.publish(key(), Bytes::from(vec![b'b', i])).await.unwrap();
    }
}

/// Like the quick restart above, but the topic is re-created by ANOTHER process's
/// bus (an ingest) while this one only subscribes (an edge): the subscription cannot
/// rely on its own bus having re-created the topic and must notice that the
/// partition it resumes is not the one it was reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_survives_quick_broker_restart_with_remote_publisher() {
    init_logs();
    let mut broker = Broker::start();
    let config = KafkaBusConfig {
        brokers: broker.addr(),
        topic: unique("remote"),
        delivery_timeout: Duration::from_secs(2),
        ..KafkaBusConfig::default()
    };
    let publisher = KafkaBus::connect(KafkaBusConfig {
        watch_interval: Duration::from_millis(100),
        ..config.clone()
    })
    .await
    .unwrap();
    let edge = KafkaBus::connect(KafkaBusConfig {
        watch_interval: Duration::from_secs(2),
        ..config
    })
    .await
    .unwrap();
    let mut sub = edge.subscribe_all().await.unwrap();
    for i in 0..3u8 {
        let before = [b'b', i];
        publisher
            .publish(key(), Bytes::copy_from_slice(&before))
            .await
            .unwrap();
        wait_for(&mut sub, &before, Duration::from_secs(10)).await;

        broker.kill();
        broker.launch();
        let after = [b'a', i];
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(e) = publisher
            .publish(key(), Bytes::copy_from_slice(&after))
            .await
        {
            assert!(Instant::now() < deadline, "publish never recovered: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        wait_for(&mut sub, &after, Duration::from_secs(45)).await;
    }
}

/// Many quick broker restarts while one bus publishes without pause and another
/// subscribes, like ingests and an edge riding out a flapping broker. Each restart
/// hands the subscription a new topic under the old name; a consumer that fetched
/// with its old assignment from the restarted broker crashed the process
/// (SIGSEGV in librdkafka, issue 22). `DANMAKU_BUS_STRESS_RESTARTS` sets the count
/// (default 30).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_survives_many_broker_restarts_under_publish_and_consume() {
    init_logs();
    let restarts: u32 = std::env::var("DANMAKU_BUS_STRESS_RESTARTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let mut broker = Broker::start();
    let config = KafkaBusConfig {
        brokers: broker.addr(),
        topic: unique("stress"),
        delivery_timeout: Duration::from_secs(2),
        // Several partitions, as the crash was found with (the default is 1): every
        // restart re-creates and re-assigns all of them.
        partitions: 16,
        ..KafkaBusConfig::default()
    };
    let publisher = Arc::new(
        KafkaBus::connect(KafkaBusConfig {
            watch_interval: Duration::from_millis(100),
            ..config.clone()
        })
        .await
        .unwrap(),
    );
    let edge = KafkaBus::connect(config).await.unwrap();
    let mut sub = edge.subscribe_all().await.unwrap();
    // Background traffic on several keys (partitions), failures ignored: fetches
    // are in flight whenever the broker goes away.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let background = {
        let (publisher, stop) = (publisher.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = Bytes::from(format!("room:{}", n % 8));
                let _ = publisher.publish(key, Bytes::from_static(b"noise")).await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let started = Instant::now();
    for i in 0..restarts {
        broker.kill();
        broker.launch();
        // A marker after each restart must reach the same subscription.
        let marker = format!("after-{i}").into_bytes();
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(e) = publisher
            .publish(key(), Bytes::copy_from_slice(&marker))
            .await
        {
            assert!(
                Instant::now() < deadline,
                "restart {i}: publish never recovered: {e}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        wait_for(&mut sub, &marker, Duration::from_secs(45)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    background.await.unwrap();
    let stats = edge.stats();
    let s = &stats.subscriptions[0];
    eprintln!(
        "{restarts} broker restarts in {:.1} s: subscription saw {} closed connections, \
         held back {} reconnects, re-assigned {} times",
        started.elapsed().as_secs_f64(),
        s.connection_closes,
        s.reconnects_held,
        stats.reassignments
    );
    assert!(
        s.connection_closes >= u64::from(restarts),
        "every restart closed the subscription's connection: {stats:?}"
    );
    assert!(stats.reassignments >= u64::from(restarts), "{stats:?}");
}
