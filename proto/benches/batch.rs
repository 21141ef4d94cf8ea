//! The batch codec on realistic danmaku (`sample::CommentGenerator`): encode +
//! compress of 10/100/500 events raw and at zstd levels 1 and 3, and decode.
//! Before measuring, prints the compression ratio for 10/50/200/500 events, and
//! what a zstd dictionary trained on other generated comments would add, so the
//! numbers for BENCHMARKS.md come from one command:
//!
//! `cargo bench -p danmaku-proto --bench batch -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use danmaku_proto::pb;
use danmaku_proto::sample::CommentGenerator;
use danmaku_proto::{BatchEncoder, Limits, decode_batch};
use prost::Message;

const SIZES: [usize; 3] = [10, 100, 500];
const START_MS: i64 = 1_732_350_000_000;

fn events(n: usize, seed: u64) -> Vec<pb::Event> {
    CommentGenerator::new(seed).events(n, START_MS)
}

fn raw_payload(evs: &[pb::Event]) -> Vec<u8> {
    let mut out = Vec::new();
    for ev in evs {
        ev.encode_length_delimited(&mut out).expect("Vec grows");
    }
    out
}

/// A 16 KiB zstd dictionary trained on 2,000 small batches (10 events each)
/// from other seeds than the ones measured.
fn train_dictionary() -> Vec<u8> {
    let samples: Vec<Vec<u8>> = (0..2_000u64)
        .map(|s| raw_payload(&events(10, 1_000 + s)))
        .collect();
    zstd::dict::from_samples(&samples, 16 << 10).expect("dictionary trains")
}

/// Compression ratio (raw / compressed) per batch size, with and without a
/// dictionary.
fn report_ratios(dict: &[u8]) {
    let sizes = [10usize, 50, 200, 500];
    eprintln!();
    eprintln!("compression of realistic danmaku (sample::CommentGenerator, mean over 50 batches)");
    eprintln!(
        "| events | raw bytes | zstd-1 | zstd-3 | ratio zstd-3 | zstd-3 + {} B dict | ratio with dict |",
        dict.len()
    );
    eprintln!("|---:|---:|---:|---:|---:|---:|---:|");
    for n in sizes {
        let (mut raw, mut z1, mut z3, mut zd) = (0usize, 0usize, 0usize, 0usize);
        let rounds = 50u64;
        let mut dc = zstd::bulk::Compressor::with_dictionary(3, dict).expect("dict compressor");
        for seed in 0..rounds {
            let payload = raw_payload(&events(n, seed));
            raw += payload.len();
            z1 += zstd::bulk::compress(&payload, 1).expect("zstd").len();
            z3 += zstd::bulk::compress(&payload, 3).expect("zstd").len();
            zd += dc.compress(&payload).expect("zstd dict").len();
        }
        let r = rounds as usize;
        eprintln!(
            "| {n} | {} | {} | {} | {:.2} | {} | {:.2} |",
            raw / r,
            z1 / r,
            z3 / r,
            raw as f64 / z3 as f64,
            zd / r,
            raw as f64 / zd as f64
        );
    }
    eprintln!();
}

fn bench_encode(c: &mut Criterion) {
    report_ratios(&train_dictionary());
    let mut group = c.benchmark_group("batch_encode");
    for n in SIZES {
        let evs = events(n, 7);
        group.throughput(Throughput::Elements(n as u64));
        // Raw: threshold above any payload, so nothing is compressed.
        let mut raw = BatchEncoder::new(1, usize::MAX).expect("encoder");
        group.bench_with_input(BenchmarkId::new("raw", n), &evs, |b, evs| {
            b.iter(|| raw.encode("room:1", black_box(evs)).expect("encode"))
        });
        for level in [1, 3] {
            let mut enc = BatchEncoder::new(level, 0).expect("encoder");
            group.bench_with_input(
                BenchmarkId::new(format!("zstd{level}"), n),
                &evs,
                |b, evs| b.iter(|| enc.encode("room:1", black_box(evs)).expect("encode")),
            );
        }
    }
    group.finish();
}

fn bench_decode(c: &mut Criterion) {
    let limits = Limits::default();
    let mut group = c.benchmark_group("batch_decode");
    for n in SIZES {
        let evs = events(n, 7);
        group.throughput(Throughput::Elements(n as u64));
        let raw = BatchEncoder::new(1, usize::MAX)
            .expect("encoder")
            .encode("room:1", &evs)
            .expect("encode");
        let zstd = BatchEncoder::new(3, 0)
            .expect("encoder")
            .encode("room:1", &evs)
            .expect("encode");
        group.bench_with_input(BenchmarkId::new("raw", n), &raw, |b, batch| {
            b.iter(|| decode_batch(black_box(batch), &limits).expect("decode"))
        });
        group.bench_with_input(BenchmarkId::new("zstd3", n), &zstd, |b, batch| {
            b.iter(|| decode_batch(black_box(batch), &limits).expect("decode"))
        });
    }
    group.finish();
}

/// What a dictionary (`Batch.dict_id`, not used by the codec yet) would cost:
/// compress and decompress of an encoded payload with a prepared dictionary
/// versus without, on the small batches where it helps most.
fn bench_dictionary(c: &mut Criterion) {
    let dict = train_dictionary();
    let enc_dict = zstd::dict::EncoderDictionary::copy(&dict, 3);
    let dec_dict = zstd::dict::DecoderDictionary::copy(&dict);
    let mut group = c.benchmark_group("dictionary");
    for n in [10usize, 50] {
        let payload = raw_payload(&events(n, 7));
        group.throughput(Throughput::Elements(n as u64));
        let mut plain = zstd::bulk::Compressor::new(3).expect("compressor");
        let mut with_dict =
            zstd::bulk::Compressor::with_prepared_dictionary(&enc_dict).expect("dict compressor");
        group.bench_with_input(BenchmarkId::new("compress_zstd3", n), &payload, |b, p| {
            b.iter(|| plain.compress(black_box(p)).expect("compress"))
        });
        group.bench_with_input(
            BenchmarkId::new("compress_zstd3_dict", n),
            &payload,
            |b, p| b.iter(|| with_dict.compress(black_box(p)).expect("compress")),
        );
        let packed = with_dict.compress(&payload).expect("compress");
        let mut dd =
            zstd::bulk::Decompressor::with_prepared_dictionary(&dec_dict).expect("decompressor");
        group.bench_with_input(BenchmarkId::new("decompress_dict", n), &packed, |b, p| {
            b.iter(|| dd.decompress(black_box(p), 1 << 20).expect("decompress"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_encode, bench_decode, bench_dictionary);
criterion_main!(benches);
