//! Cost of the word filter per message against list size, and the list
//! compile time (paid once per change). `cargo bench -p danmaku-ingest --bench filter`.
//!
//! Lists are pseudo-random words of 5 to 10 letters, a fifth of them 2 to 4 CJK
//! ideographs; the
//! message is a 30-character comment that hits nothing (the common case) or
//! one mask word.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use danmaku_ingest::screening::filter::{Filter, Verdict, WordList, check};

/// A deterministic word generator (xorshift), so every run benches the same list.
fn words(n: usize) -> Vec<String> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..n)
        .map(|i| {
            // 5 to 10 letters (2 to 4 ideographs): like real lists, and long
            // enough that random words do not hit every comment.
            let len = 5 + (next() % 6) as usize;
            if i % 5 == 0 {
                (0..2 + len % 3)
                    .map(|_| char::from_u32(0x4E00 + (next() % 20_000) as u32).unwrap())
                    .collect()
            } else {
                (0..len)
                    .map(|_| (b'a' + (next() % 26) as u8) as char)
                    .collect()
            }
        })
        .collect()
}

fn list(n: usize) -> WordList {
    let mut block = words(n);
    let mut mask = block.split_off(n / 2);
    // One word the "hit" comment contains.
    mask[0] = "darn".into();
    WordList { block, mask }
}

const CLEAN: &str = "66666 主播好厉害 this is great!!";
const HIT: &str = "hello darn it 主播好厉害 again!";

fn per_message(c: &mut Criterion) {
    let mut g = c.benchmark_group("filter_per_message");
    for n in [100usize, 10_000, 100_000] {
        let f = Filter::compile(&list(n)).unwrap();
        assert!(matches!(check(HIT, [&f]), Verdict::Masked { .. }));
        assert_eq!(check(CLEAN, [&f]), Verdict::Clean);
        g.bench_with_input(BenchmarkId::new("clean_30_chars", n), &f, |b, f| {
            b.iter(|| check(black_box(CLEAN), [f]))
        });
        g.bench_with_input(BenchmarkId::new("masked_30_chars", n), &f, |b, f| {
            b.iter(|| check(black_box(HIT), [f]))
        });
    }
    g.finish();
}

fn compile(c: &mut Criterion) {
    let mut g = c.benchmark_group("filter_compile");
    g.sample_size(10);
    for n in [100usize, 10_000, 100_000] {
        let l = list(n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &l, |b, l| {
            b.iter(|| Filter::compile(l).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, per_message, compile);
criterion_main!(benches);
