//! Bytes per event of a tick's payload by layout and zstd level, and what a
//! tick costs to build: a tick is encoded and compressed once and written to
//! every member, so in a big room a slower, tighter level is paid once and
//! saved per viewer.
//!
//! `cargo run --release -p danmaku-proto --example tick_compression [-- LEVEL…]`
//!
//! Two event shapes: "app" (a sender from a pool of 5,000, a stock phrase) and
//! "loadtest" (the harness's `lt <sender> <n> <phrase>` texts). Both carry
//! danmaku ids as ingest issues them (time, node tag, counter; one node of
//! two, so consecutive ids in a room skip). Layouts are the encoder's own:
//! plain (`danmaku.v1.pb`), compact (`v2`), dense with dictionary 1 (`v3`),
//! and "dense, no dict" to tell the layout's share from the dictionary's.
//! Seed 7: the dictionary was trained on other seeds.

use std::time::Instant;

use danmaku_proto::batch::ENCODING_DENSE;
use danmaku_proto::sample::CommentGenerator;
use danmaku_proto::{BatchEncoder, Layout, pb};

fn ticks(shape: &str, events_per_tick: usize, count: usize) -> Vec<Vec<pb::Event>> {
    let mut g = CommentGenerator::new(7);
    let tags = [0x3f2a_91c4u32, 0x8b10_77e2];
    let mut counters = [0u32; 2];
    let mut per_sender = vec![0u64; 200];
    let mut ts = 1_796_650_800_000i64;
    let step = (2000 / events_per_tick.max(1)).max(1) as i64;
    (0..count)
        .map(|_| {
            (0..events_per_tick)
                .map(|_| {
                    ts += step;
                    let node = g.text().len() % 2;
                    counters[node] += 1 + (g.text().len() % 3) as u32;
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
                    pb::Event {
                        kind: pb::Kind::Danmaku as i32,
                        sender,
                        text,
                        ts_ms: ts,
                        id: format!("{ts:011x}{:08x}{:08x}", tags[node], counters[node]),
                        ..Default::default()
                    }
                })
                .collect()
        })
        .collect()
}

fn main() {
    // `-- 3 9 19`: the zstd levels to measure (default 3 and 9).
    let mut levels: Vec<i32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    if levels.is_empty() {
        levels = vec![3, 9];
    }
    println!("| shape | events/tick | layout | raw B/event | level | B/event | µs per tick |");
    println!("|---|---:|---|---:|---:|---:|---:|");
    for shape in ["app", "loadtest"] {
        for n in [3usize, 20, 100, 400] {
            let ts = ticks(shape, n, 40);
            for (name, layout) in [
                ("plain", Some(Layout::Plain)),
                ("compact", Some(Layout::Compact)),
                ("dense, no dict", None),
                ("dense + dict 1", Some(Layout::Dense)),
            ] {
                for level in levels.iter().copied() {
                    let mut enc = BatchEncoder::new(level, 0).expect("level");
                    let (mut raw, mut out) = (0, 0);
                    let start = Instant::now();
                    for t in &ts {
                        let b = match layout {
                            Some(l) => enc.encode_layout("room:1", t, l),
                            None => enc.encode_as("room:1", t, ENCODING_DENSE),
                        }
                        .expect("encodes");
                        raw += enc.last_raw_len();
                        out += b.payload.len();
                    }
                    let us = start.elapsed().as_secs_f64() * 1e6 / ts.len() as f64;
                    let per = |b: usize| b as f64 / (n * ts.len()) as f64;
                    println!(
                        "| {shape} | {n} | {name} | {:.1} | {level} | {:.2} | {us:.0} |",
                        per(raw),
                        per(out)
                    );
                }
            }
        }
    }
}
