//! What the metrics cost on the fan-out path: one flush of a room (build the
//! batch once, push it to every member's queue, each member's writer takes its
//! frame) timed with the metric updates production does and without them.
//!
//! * `on`: [`Metrics::record_flush`] (the function the batcher calls: a latency
//!   observation per event, a handful of counter adds per batch) and, per frame a
//!   writer takes, the `danmaku_edge_egress_bytes_total` add the WebSocket writer
//!   does (`ws.rs`).
//! * `off`: the same flush with neither.
//! * `updates_only`: the metric updates of one such flush by themselves (the
//!   difference `on` − `off` without the noise of two separate timings).
//!
//! The writers run on this one thread here; in the server they are tasks on
//! several threads adding to one shared atomic, so the egress add can cost more
//! there (cache-line traffic) than measured here.
//!
//! `cargo bench -p danmaku-edge --bench metrics_cost`

mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use danmaku_edge::channels::Outbound;
use danmaku_edge::metrics::{Flush, Metrics};
use danmaku_edge::transport::Transport;
use danmaku_edge::{BatchConfig, FrameBuilder};
use danmaku_proto::ChannelName;
use danmaku_proto::sample::CommentGenerator;
use support::{channels, member};
use tokio::sync::mpsc;

/// Events per batch: a busy room's batch at a 1 s window is ~1,000; 50 is a
/// small room's 50 ms window at 1,000/s.
const EVENTS: usize = 50;

/// What the batcher records for one flush (`Metrics::record_flush`).
fn record(
    metrics: &Metrics,
    now_ms: i64,
    events: &[danmaku_proto::pb::Event],
    window: Duration,
    sizes: &danmaku_edge::BuiltSizes,
    outcome: &danmaku_edge::channels::PushOutcome,
) {
    metrics.record_flush(
        now_ms,
        &Flush {
            events,
            window,
            raw_bytes: sizes.raw,
            compressed_bytes: sizes.compressed,
            pushed: outcome.pushed,
            dropped: outcome.dropped,
            direct: outcome.direct,
            handed: outcome.handed,
            direct_bytes: outcome.direct_bytes,
            built: [false, false, true, false],
        },
    );
}

fn flush(c: &mut Criterion) {
    let mut group = c.benchmark_group("metrics_cost");
    for members in [100usize, 10_000] {
        // A registered set, as in the server (registration does not change the
        // cost of an update; it only makes the series visible).
        let prom = prometheus::Registry::new();
        let metrics = Metrics::register(&prom).expect("fresh registry");
        let registry = channels(&metrics);
        let room = ChannelName::parse("room:bench").expect("valid name");
        let mut queues: Vec<(Transport, mpsc::Receiver<Outbound>)> = Vec::with_capacity(members);
        let mut wakes = Vec::new();
        for conn in 0..members as u64 {
            let (tx, rx) = mpsc::channel(128);
            let transport = if conn % 10 == 0 {
                Transport::WsJson
            } else {
                Transport::WsPb
            };
            registry.join(&room, conn, member(transport, tx, &mut wakes));
            queues.push((transport, rx));
        }
        let channel = registry.get("room:bench").expect("joined");
        let now_ms = danmaku_proto::now_ms();
        let events = CommentGenerator::new(3).events(EVENTS, now_ms - 40);
        let mut builder = FrameBuilder::new(&BatchConfig::default()).expect("zstd level 3");
        let window = Duration::from_millis(50);
        group.throughput(Throughput::Elements(members as u64));
        // One flush: build once, push to every member, every writer takes its frame.
        let mut flush = |on: bool| {
            let (frames, sizes) = builder
                .build("room:bench", &events, None, true)
                .expect("encodes");
            let outcome = channel.push(&frames, None);
            if on {
                record(&metrics, now_ms, &events, window, &sizes, &outcome);
            }
            for (t, q) in &mut queues {
                while let Ok(frame) = q.try_recv() {
                    let n = frame.wire().len() as u64;
                    if on {
                        metrics.egress(*t).inc_by(n);
                    } else {
                        black_box(n);
                    }
                }
            }
            assert_eq!(outcome.total_pushed(), members as u64);
        };
        // Each measured flush is paired with an untimed flush of the other kind,
        // in alternating order, so `on` and `off` see the same machine (this box is
        // shared: two separate timings drift more than the difference measured).
        for on in [true, false] {
            let id = BenchmarkId::new(if on { "on" } else { "off" }, members);
            group.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    let mut timed = Duration::ZERO;
                    for i in 0..iters {
                        if i % 2 == 0 {
                            flush(!on);
                        }
                        let start = Instant::now();
                        flush(on);
                        timed += start.elapsed();
                        if i % 2 == 1 {
                            flush(!on);
                        }
                    }
                    timed
                })
            });
        }
        // The metric updates of that flush alone (what `on` adds to `off`), with
        // the outcome and frame sizes of a real flush: a tight, low-noise number.
        let (frames, sizes) = builder
            .build("room:bench", &events, None, true)
            .expect("encodes");
        let outcome = channel.push(&frames, None);
        let sizes_by_member: Vec<(Transport, u64)> = queues
            .iter_mut()
            .map(|(t, q)| (*t, q.try_recv().expect("pushed").wire().len() as u64))
            .collect();
        group.bench_function(BenchmarkId::new("updates_only", members), |b| {
            b.iter(|| {
                record(&metrics, now_ms, &events, window, &sizes, &outcome);
                for (t, n) in &sizes_by_member {
                    metrics.egress(*t).inc_by(*n);
                }
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = flush
}
criterion_main!(benches);
