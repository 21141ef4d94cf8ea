//! The two costs of a flush: building the batch frame once (encode + zstd, and
//! JSON when needed) and fanning it out to every member's bounded queue.
//!
//! `fanout/10k_members` measures the registry push path only (refcount bump +
//! `try_send` per member); queues are drained outside the timed region.
//!
//! `metrics/*` is what metrics add to that path: the counter and histogram
//! updates one flush makes (the same calls as `batcher::flush_to`), the per-event
//! top-rooms count, one top-rooms ranking of 10k channels, and one `/metrics`
//! render of an edge registry. Metrics "off" = `fanout` alone.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use danmaku_edge::metrics::{Metrics, TopRoomGauges};
use danmaku_edge::registry::{Member, Outbound, Registry, Transport};
use danmaku_edge::top_rooms::{RoomSample, rank};
use danmaku_edge::{BatchConfig, FrameBuilder};
use danmaku_proto::ChannelName;
use danmaku_proto::sample::CommentGenerator;
use tokio::sync::mpsc;

fn fanout(c: &mut Criterion) {
    const MEMBERS: usize = 10_000;
    let registry = Registry::new(Metrics::unregistered());
    let room = ChannelName::parse("room:bench").expect("valid name");
    let mut queues: Vec<mpsc::Receiver<Outbound>> = Vec::with_capacity(MEMBERS);
    for conn in 0..MEMBERS as u64 {
        let (tx, rx) = mpsc::channel(128);
        let transport = if conn % 10 == 0 {
            Transport::WsJson
        } else {
            Transport::WsPb
        };
        registry.join(&room, conn, Member::new(transport, tx));
        queues.push(rx);
    }
    let channel = registry.get("room:bench").expect("joined");
    let events = CommentGenerator::new(1).events(50, 1_700_000_000_000);
    let mut builder = FrameBuilder::new(&BatchConfig::default()).expect("zstd level 3");
    let (frames, _) = builder.build("room:bench", &events, true).expect("encodes");

    let mut group = c.benchmark_group("fanout");
    group.throughput(Throughput::Elements(MEMBERS as u64));
    group.bench_function("10k_members", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let out = channel.push(&frames);
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
            b.iter(|| builder.build("room:bench", events, false).expect("encodes"))
        });
        group.bench_with_input(BenchmarkId::new("pb+json", n), &events, |b, events| {
            b.iter(|| builder.build("room:bench", events, true).expect("encodes"))
        });
    }
    group.finish();
    let events = CommentGenerator::new(7).events(100, 1_700_000_000_000);
    let (_, sizes) = builder
        .build("room:bench", &events, false)
        .expect("encodes");
    println!(
        "100 sample events: {} raw bytes -> {} compressed ({:.1}x)",
        sizes.raw,
        sizes.compressed,
        sizes.raw as f64 / sizes.compressed.max(1) as f64
    );
}

fn metrics(c: &mut Criterion) {
    let registry = prometheus::Registry::new();
    let m = Metrics::register(&registry).expect("registers");
    let gauges = TopRoomGauges::register(&registry, 20).expect("registers");
    let events = CommentGenerator::new(3).events(50, danmaku_proto::now_ms());
    let mut group = c.benchmark_group("metrics");
    // Mirrors the metric updates of `batcher::flush_to` for one 50-event batch
    // pushed to 10k members (9k pb, 1k json).
    group.bench_function("per_flush_50_events", |b| {
        b.iter(|| {
            let now_ms = danmaku_proto::now_ms();
            for ev in &events {
                let ms = now_ms.saturating_sub(ev.ts_ms).max(0);
                m.delivery_latency.observe(ms as f64 / 1000.0);
            }
            m.batches.inc();
            m.batch_events.observe(events.len() as f64);
            m.batch_window.observe(0.1);
            m.batch_raw_bytes.inc_by(4_000);
            m.batch_compressed_bytes.inc_by(1_500);
            m.pushed(Transport::WsPb).inc_by(9_000);
            m.pushed(Transport::WsJson).inc_by(1_000);
            m.events_delivered.inc_by(10_000 * events.len() as u64);
        })
    });
    let reg = Registry::new(Metrics::unregistered());
    let room = ChannelName::parse("room:count").expect("valid name");
    let (tx, _rx) = mpsc::channel(1);
    reg.join(&room, 1, Member::new(Transport::WsPb, tx));
    let ch = reg.get("room:count").expect("joined");
    group.bench_function("count_inbound_per_event", |b| b.iter(|| ch.count_inbound()));
    let names: Vec<String> = (0..10_000).map(|i| format!("room:{i}")).collect();
    group.bench_function("top_rooms_rank_10k_channels", |b| {
        b.iter(|| {
            let (by_members, by_inbound) = rank(
                20,
                Duration::from_secs(5),
                names.iter().enumerate().map(|(i, n)| RoomSample {
                    channel: n,
                    members: (i * 7919 % 10_007) as u64,
                    inbound: (i % 97) as u64,
                }),
            );
            gauges.set(&by_members, &by_inbound);
        })
    });
    group.bench_function("render_edge_registry", |b| {
        b.iter(|| {
            let mut buf = Vec::with_capacity(16 << 10);
            prometheus::Encoder::encode(
                &prometheus::TextEncoder::new(),
                &registry.gather(),
                &mut buf,
            )
            .expect("encodes");
            buf.len()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = fanout, build, metrics
}
criterion_main!(benches);
