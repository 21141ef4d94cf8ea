//! Bytes per event of a tick's payload at each zstd level, and what a level
//! costs to compress: a tick is compressed once and written to every member,
//! so in a big room a slower, tighter level is paid once and saved per viewer.
//!
//! `cargo run --release -p danmaku-proto --example tick_compression`
//!
//! Two event shapes: "app" (a sender from a pool of 5,000, a stock phrase) and
//! "loadtest" (the harness's `lt <sender> <n> <phrase>` texts). Both carry a
//! danmaku id as ingest issues it (time, node tag, counter).
//!
//! "compact" rows are an experiment, not the wire format: each event's `ts_ms`
//! as a zigzag delta from the previous event's and its id without the 11 hex
//! digits that repeat `ts_ms` — what a compact tick encoding would save.

use std::time::Instant;

use danmaku_proto::pb;
use danmaku_proto::sample::CommentGenerator;
use prost::Message;

fn ticks(shape: &str, events_per_tick: usize, count: usize, compact: bool) -> Vec<Vec<u8>> {
    let mut g = CommentGenerator::new(7);
    let tags = [0x3f2a_91c4u32, 0x8b10_77e2];
    let mut counters = [0u32; 2];
    let mut per_sender = vec![0u64; 200];
    let mut ts = 1_796_650_800_000i64;
    let step = (2000 / events_per_tick.max(1)).max(1) as i64;
    (0..count)
        .map(|_| {
            let mut raw = Vec::new();
            let mut prev_ts = 0i64;
            for _ in 0..events_per_tick {
                ts += step;
                let node = g.text().len() % 2;
                counters[node] += 1;
                let (sender, text) = if shape == "app" {
                    (g.sender(), g.text())
                } else {
                    let s = (g.text().len() * 7919 + counters[node] as usize) % 200;
                    per_sender[s] += 1;
                    (
                        format!("lt-sender-{s}"),
                        format!("lt {s} {} {}", per_sender[s], g.text()),
                    )
                };
                let mut e = pb::Event {
                    kind: pb::Kind::Danmaku as i32,
                    sender,
                    text,
                    ts_ms: ts,
                    id: format!("{ts:011x}{:08x}{:08x}", tags[node], counters[node]),
                    ..Default::default()
                };
                if compact {
                    e.id = e.id[11..].to_string();
                    let d = e.ts_ms - prev_ts;
                    prev_ts = e.ts_ms;
                    e.ts_ms = if d >= 0 { d * 2 } else { -d * 2 - 1 };
                }
                e.encode_length_delimited(&mut raw).unwrap();
            }
            raw
        })
        .collect()
}

fn main() {
    println!("| shape | events/tick | raw B/event | level | B/event | µs per tick |");
    println!("|---|---:|---:|---:|---:|---:|");
    for shape in ["app", "loadtest"] {
        for n in [20usize, 100, 400] {
            for compact in [false, true] {
                let ts = ticks(shape, n, 40, compact);
                let raw: usize = ts.iter().map(Vec::len).sum();
                for level in [1, 3, 6, 9, 19] {
                    let mut c = zstd::bulk::Compressor::new(level).unwrap();
                    let start = Instant::now();
                    let out: usize = ts.iter().map(|t| c.compress(t).unwrap().len()).sum();
                    let us = start.elapsed().as_secs_f64() * 1e6 / ts.len() as f64;
                    let per = |b: usize| b as f64 / (n * ts.len()) as f64;
                    println!(
                        "| {shape}{} | {n} | {:.1} | {level} | {:.2} | {us:.0} |",
                        if compact { " compact" } else { "" },
                        per(raw),
                        per(out)
                    );
                }
            }
        }
    }
}
