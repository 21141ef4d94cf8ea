//! A QUIC stream's bytes, cut into chunks, into the varint `FrameReader`: never
//! panics, never yields a frame above its limit, and reassembles exactly what
//! `encode_prefixed` wrote however the stream is split.
#![no_main]

use danmaku_proto::framing::{FrameReader, encode_prefixed};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk_seed, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk_seed % 17) + 1;

    // 1. Arbitrary stream bytes.
    let mut r = FrameReader::new(MAX);
    let mut frames = Vec::new();
    'feed: for piece in stream.chunks(chunk) {
        r.push(piece);
        loop {
            match r.next_frame() {
                Ok(Some(f)) => {
                    assert!(f.len() <= MAX);
                    frames.push(f);
                }
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
    }

    // 2. Re-frame what was read: it must come back identical through the same chunking.
    let wire: Vec<u8> = frames
        .iter()
        .flat_map(|f| encode_prefixed(f).to_vec())
        .collect();
    let mut r = FrameReader::new(MAX);
    let mut again = Vec::new();
    for piece in wire.chunks(chunk) {
        r.push(piece);
        while let Some(f) = r.next_frame().expect("valid framing") {
            again.push(f);
        }
    }
    assert_eq!(again, frames);
    assert_eq!(r.buffered(), 0);
});
