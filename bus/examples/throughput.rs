//! Publish throughput and publish→receive latency of a bus backend.
//!
//! ```text
//! cargo run --release -p danmaku-bus --example throughput -- memory
//! cargo run --release -p danmaku-bus --example throughput -- "kafka://$DANMAKU_TEST_KAFKA?topic=bench.1"
//! ```
//! Options after the URL: `--messages N` (default 50,000), `--concurrency C` (default
//! 256 publishes in flight), `--rate R` (latency phase, messages/s, default 2,000).
//!
//! Phase 1 publishes N messages with C in flight (each `publish` waits for its
//! acknowledgement, as ingest does) while one subscriber drains them. Phase 2
//! publishes at a steady rate and measures, per message, the time from calling
//! `publish` to the subscriber receiving it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use danmaku_bus::{Bus, BusError};
use hdrhistogram::Histogram;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "memory".into());
    let (mut messages, mut concurrency, mut rate) = (50_000u64, 256u64, 2_000u64);
    while let Some(flag) = args.next() {
        let value: u64 = args
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{flag} needs a number"));
        match flag.as_str() {
            "--messages" => messages = value,
            "--concurrency" => concurrency = value.max(1),
            "--rate" => rate = value.max(1),
            other => panic!("unknown option {other}"),
        }
    }
    let bus = danmaku_bus::connect(&url).await.expect("connect");
    println!("backend {} ({url})", bus.kind());
    throughput(&bus, messages, concurrency).await;
    latency(&bus, (rate * 3).min(10_000), rate).await;
}

/// A 64-byte payload, about the size of a short comment event.
fn payload(seq: u64, sent_ns: u64) -> Bytes {
    let mut p = vec![b'x'; 64];
    p[..8].copy_from_slice(&seq.to_be_bytes());
    p[8..16].copy_from_slice(&sent_ns.to_be_bytes());
    Bytes::from(p)
}

async fn throughput(bus: &Arc<dyn Bus>, messages: u64, concurrency: u64) {
    let mut sub = bus.subscribe_all().await.expect("subscribe");
    let receiver = tokio::spawn(async move {
        let mut got = 0u64;
        let mut last = Instant::now();
        while got < messages {
            match tokio::time::timeout(Duration::from_secs(10), sub.recv()).await {
                Ok(Ok(_)) => {
                    got += 1;
                    last = Instant::now();
                }
                Ok(Err(BusError::Lagged(n))) => got += n,
                Ok(Err(e)) => panic!("recv: {e}"),
                Err(_) => break,
            }
        }
        (got, last)
    });
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let bus = bus.clone();
        tasks.push(tokio::spawn(async move {
            let mut seq = w;
            while seq < messages {
                let key = Bytes::from(format!("room:{}", seq % 1000));
                bus.publish(key, payload(seq, 0)).await.expect("publish");
                seq += concurrency;
            }
        }));
    }
    for t in tasks {
        t.await.expect("publisher");
    }
    let published = start.elapsed();
    let (got, last) = receiver.await.expect("receiver");
    let received = last.duration_since(start);
    println!(
        "publish: {messages} msgs in {:.2} s = {:.0} msgs/s ({concurrency} in flight); \
         received {got} in {:.2} s = {:.0} msgs/s",
        published.as_secs_f64(),
        messages as f64 / published.as_secs_f64(),
        received.as_secs_f64(),
        got as f64 / received.as_secs_f64(),
    );
}

async fn latency(bus: &Arc<dyn Bus>, messages: u64, rate: u64) {
    let mut sub = bus.subscribe_all().await.expect("subscribe");
    let base = Instant::now();
    let receiver = tokio::spawn(async move {
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
        let mut got = 0;
        while got < messages {
            match tokio::time::timeout(Duration::from_secs(10), sub.recv()).await {
                Ok(Ok(m)) if m.payload.len() >= 16 => {
                    let sent = u64::from_be_bytes(m.payload[8..16].try_into().expect("8 bytes"));
                    let now = base.elapsed().as_nanos() as u64;
                    hist.saturating_record(now.saturating_sub(sent) / 1_000);
                    got += 1;
                }
                Ok(Ok(_)) => {}
                Ok(Err(BusError::Lagged(n))) => got += n,
                Ok(Err(e)) => panic!("recv: {e}"),
                Err(_) => break,
            }
        }
        hist
    });
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    let mut inflight = Vec::new();
    for seq in 0..messages {
        tick.tick().await;
        let bus = bus.clone();
        let sent = base.elapsed().as_nanos() as u64;
        inflight.push(tokio::spawn(async move {
            let key = Bytes::from(format!("room:{}", seq % 100));
            bus.publish(key, payload(seq, sent)).await.expect("publish");
        }));
    }
    for t in inflight {
        t.await.expect("publisher");
    }
    let hist = receiver.await.expect("receiver");
    println!(
        "latency publish→recv at {rate} msgs/s ({} samples): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        hist.len(),
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        hist.max() as f64 / 1000.0,
    );
}
