//! What the client limits cost. They act on frames a client *sends* (join,
//! leave, resume, ack, auth, ping), never on the frames the edge fans out, so
//! a danmaku batch reaching 10,000 members passes no limit at all; this times
//! what one client frame pays: its connection's bucket and its user's bucket
//! behind a mutex (what `ConnLimits::check_frame` does).
//!
//! `cargo bench -p danmaku-edge --bench limits_cost`

use std::hint::black_box;
use std::sync::{Arc, Mutex};

use criterion::{Criterion, criterion_group, criterion_main};
use danmaku_edge::limits::TokenBucket;
use tokio::time::Instant;

fn check_frame(c: &mut Criterion) {
    let mut group = c.benchmark_group("limits_cost");
    let start = Instant::now();
    // Rates high enough that every take succeeds: the common case.
    let mut conn = TokenBucket::new(1e9, 1_000_000, start);
    let user = Arc::new(Mutex::new(TokenBucket::new(1e9, 1_000_000, start)));
    group.bench_function("connection_bucket", |b| {
        b.iter(|| black_box(conn.take(black_box(Instant::now()))))
    });
    group.bench_function("connection_and_user_bucket", |b| {
        b.iter(|| {
            let now = Instant::now();
            let a = conn.take(now);
            let u = user.lock().unwrap_or_else(|e| e.into_inner()).take(now);
            black_box((a, u))
        })
    });
    group.bench_function("clock_read_alone", |b| b.iter(|| black_box(Instant::now())));
    group.finish();
}

criterion_group!(benches, check_frame);
criterion_main!(benches);
