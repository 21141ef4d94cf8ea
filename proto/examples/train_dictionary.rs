//! Trains the built-in zstd dictionary, `proto/dict/danmaku-1.zdict`.
//!
//! `cargo run --release -p danmaku-proto --example train_dictionary [-- OUT]`
//!
//! Samples are ticks as an edge builds them for a `danmaku.v3.pb` reader (the
//! dense layout, before compression) of synthetic realistic danmaku
//! (`sample::CommentGenerator`: stock phrases, senders from a pool of 5,000,
//! ids as ingest issues them with counter gaps from other rooms) with a gift
//! now and then. Mostly small ticks: they gain the most, and most rooms are
//! small. Deterministic: the same build writes the same bytes.
//!
//! An operator with real traffic can train on it instead, but must publish the
//! result under a NEW id (a dictionary's bytes never change under an id):
//! see `dictionary.rs`.

use danmaku_proto::batch::ENCODING_DENSE;
use danmaku_proto::dictionary::{DICT_DANMAKU_1, set_header_id};
use danmaku_proto::sample::CommentGenerator;
use danmaku_proto::{BatchEncoder, pb};

/// Dictionary size: past 16 KiB the gain is within 1 % (measured: 64 KiB
/// saves 0.0–0.1 B per event) while every SDK carries it.
const DICT_BYTES: usize = 16 << 10;
/// Seeds the benchmarks and tests do not use, so the dictionary is not
/// trained on the exact texts it is measured with.
const SEEDS: std::ops::Range<u64> = 1_000..1_040;

fn main() -> std::io::Result<()> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/dict/danmaku-1.zdict").into());
    let mut encoder = BatchEncoder::new(3, usize::MAX).expect("level 3");
    let mut samples = Vec::new();
    for seed in SEEDS {
        let mut g = CommentGenerator::new(seed);
        let mut rng = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let tag = next() as u32;
        let mut counter = next() as u32 >> 8;
        let mut ts = 1_796_650_800_000i64 + (seed as i64) * 86_400_000;
        let mut seq = next() % 10_000;
        for _ in 0..250 {
            let n = match next() % 10 {
                0..=4 => 1 + next() % 5,
                5..=7 => 5 + next() % 20,
                _ => 25 + next() % 100,
            } as usize;
            let mut events = Vec::with_capacity(n);
            for _ in 0..n {
                ts += (next() % 40) as i64;
                if next() % 25 == 0 {
                    seq += 1;
                    let gift =
                        ["rocket", "heart", "flower", "car", "lollipop"][(next() % 5) as usize];
                    events.push(pb::Event {
                        kind: pb::Kind::Gift as i32,
                        sender: g.sender(),
                        text: gift.into(),
                        ts_ms: ts,
                        seq,
                        payload_json: format!("{{\"gift\":\"{gift}\",\"n\":{}}}", 1 + next() % 10),
                        client_msg_id: format!("{:016x}", next()),
                        ..Default::default()
                    });
                    continue;
                }
                counter = counter.wrapping_add(1 + (next() % 4) as u32);
                events.push(pb::Event {
                    kind: pb::Kind::Danmaku as i32,
                    sender: g.sender(),
                    text: g.text(),
                    ts_ms: ts,
                    id: format!("{ts:011x}{tag:08x}{counter:08x}"),
                    ..Default::default()
                });
            }
            let batch = encoder
                .encode_as("room:1", &events, ENCODING_DENSE)
                .expect("encodes");
            samples.push(batch.payload.to_vec());
        }
    }
    let mut dict = zstd::dict::from_samples(&samples, DICT_BYTES)?;
    assert!(
        set_header_id(&mut dict, DICT_DANMAKU_1),
        "the trainer wrote a dictionary"
    );
    std::fs::write(&out, &dict)?;
    println!("{out}: {} bytes from {} ticks", dict.len(), samples.len());
    Ok(())
}
