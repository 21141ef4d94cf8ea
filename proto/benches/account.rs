//! The account policy check (`danmaku_proto::account`): what a connect (edge)
//! and a post (ingest) pay for token revocation and user blocks. One read lock
//! and up to three hash lookups, against an empty policy and one holding
//! 100,000 revoked token ids, 10,000 user revocations and 10,000 blocks; next
//! to it, the HMAC verification every connect and post already pays, for scale.
//!
//! `cargo bench -p danmaku-proto --bench account -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use danmaku_proto::account::{self, SharedPolicy};
use danmaku_proto::token::TokenKey;

const NOW: u64 = 1_732_350_000;

fn full_policy() -> SharedPolicy {
    let p = SharedPolicy::default();
    for i in 0..100_000 {
        p.apply(
            &account::revoke_token(&format!("jti-{i:06}-xxxxxxxx"), NOW + 3600, 1),
            NOW,
        );
    }
    for i in 0..10_000 {
        p.apply(
            &account::revoke_user(&format!("revoked-{i}"), NOW - 10, NOW + 3600, 1),
            NOW,
        );
        p.apply(
            &account::block(&format!("blocked-{i}"), None, false, 1),
            NOW,
        );
    }
    p
}

fn bench(c: &mut Criterion) {
    let key = TokenKey::new("bench-secret");
    let token = key.mint("viewer-12345", "user", NOW, 3600);
    let claims = key.verify(&token, NOW).expect("verifies");
    let mut revoked = claims.clone();
    revoked.jti = Some("jti-050000-xxxxxxxx".into());
    let mut blocked = claims.clone();
    blocked.sub = "blocked-5000".into();
    let mut old = claims.clone();
    old.sub = "revoked-5000".into();
    old.iat = Some(NOW - 100);

    let empty = SharedPolicy::default();
    let full = full_policy();
    let mut g = c.benchmark_group("account_check");
    g.bench_function("empty policy", |b| {
        b.iter(|| black_box(empty.check(black_box(&claims), NOW)))
    });
    g.bench_function("120k entries, allowed", |b| {
        b.iter(|| black_box(full.check(black_box(&claims), NOW)))
    });
    g.bench_function("120k entries, revoked id", |b| {
        b.iter(|| black_box(full.check(black_box(&revoked), NOW)))
    });
    g.bench_function("120k entries, issued before", |b| {
        b.iter(|| black_box(full.check(black_box(&old), NOW)))
    });
    g.bench_function("120k entries, blocked", |b| {
        b.iter(|| black_box(full.check(black_box(&blocked), NOW)))
    });
    g.bench_function("token verify (HMAC), for scale", |b| {
        b.iter(|| black_box(key.verify(black_box(&token), NOW)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
