//! The two costs of a flush: building the batch frame once (encode + zstd, and
//! JSON when needed) and fanning it out to every member's bounded queue.
//!
//! `fanout/10k_members` measures the registry push path only (refcount bump +
//! `try_send` per member); queues are drained outside the timed region.

mod support;

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use danmaku_edge::channels::Outbound;
use danmaku_edge::metrics::Metrics;
use danmaku_edge::transport::Transport;
use danmaku_edge::{BatchConfig, FrameBuilder};
use danmaku_proto::ChannelName;
use danmaku_proto::sample::CommentGenerator;
use support::{channels, member};
use tokio::sync::mpsc;

fn fanout(c: &mut Criterion) {
    const MEMBERS: usize = 10_000;
    let metrics = Metrics::unregistered();
    let registry = channels(&metrics);
    let room = ChannelName::parse("room:bench").expect("valid name");
    let mut queues: Vec<mpsc::Receiver<Outbound>> = Vec::with_capacity(MEMBERS);
    let mut wakes = Vec::new();
    for conn in 0..MEMBERS as u64 {
        let (tx, rx) = mpsc::channel(128);
        let transport = if conn % 10 == 0 {
            Transport::WsJson
        } else {
            Transport::WsPb
        };
        registry.join(&room, conn, member(transport, tx, &mut wakes));
        queues.push(rx);
    }
    let channel = registry.get("room:bench").expect("joined");
    let events = CommentGenerator::new(1).events(50, 1_700_000_000_000);
    let mut builder = FrameBuilder::new(&BatchConfig::default()).expect("zstd level 3");
    let (frames, _) = builder
        .build("room:bench", &events, None, true)
        .expect("encodes");

    let mut group = c.benchmark_group("fanout");
    group.throughput(Throughput::Elements(MEMBERS as u64));
    group.bench_function("10k_members", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let out = channel.push(&frames, None);
                total += start.elapsed();
                assert_eq!(out.total_pushed(), MEMBERS as u64);
                for q in &mut queues {
                    while q.try_recv().is_ok() {}
                }
            }
            total
        })
    });
    // The same tick carrying gifts: one atomic max per member on its lane
    // (the whole per-viewer cost of the reliable lane), no extra frame.
    let mut seq = 0u64;
    group.bench_function("10k_members_with_gifts", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let seqs = Some((seq + 1, seq + 10));
                seq += 10;
                let start = Instant::now();
                let out = channel.push(&frames, seqs);
                total += start.elapsed();
                assert_eq!(out.total_pushed(), MEMBERS as u64);
                for q in &mut queues {
                    while q.try_recv().is_ok() {}
                }
            }
            total
        })
    });
    group.finish();
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("build_batch");
    let mut builder = FrameBuilder::new(&BatchConfig::default()).expect("zstd level 3");
    for n in [10usize, 100, 500] {
        let events = CommentGenerator::new(7).events(n, 1_700_000_000_000);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("pb", n), &events, |b, events| {
            b.iter(|| {
                builder
                    .build("room:bench", events, None, false)
                    .expect("encodes")
            })
        });
        group.bench_with_input(BenchmarkId::new("pb+json", n), &events, |b, events| {
            b.iter(|| {
                builder
                    .build("room:bench", events, None, true)
                    .expect("encodes")
            })
        });
    }
    group.finish();
    let events = CommentGenerator::new(7).events(100, 1_700_000_000_000);
    let (_, sizes) = builder
        .build("room:bench", &events, None, false)
        .expect("encodes");
    println!(
        "100 sample events: {} raw bytes -> {} compressed ({:.1}x)",
        sizes.raw,
        sizes.compressed,
        sizes.raw as f64 / sizes.compressed.max(1) as f64
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = fanout, build
}
criterion_main!(benches);
