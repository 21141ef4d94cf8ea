//! A client's WebSocket bytes, cut into chunks, into the edge's frame decoder:
//! never panics, never yields a data message above its limit, and what it
//! yields, re-framed as a client would (masked), reads back identically
//! however the stream is split.
#![no_main]

use danmaku_proto::wsframe::{Decoder, Message, OpCode, encode_masked};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 1024;

fn reframe(m: &Message, mask: [u8; 4]) -> Vec<u8> {
    match m {
        Message::Text(b) => encode_masked(true, OpCode::Text, mask, b),
        Message::Binary(b) => encode_masked(true, OpCode::Binary, mask, b),
        Message::Ping(b) => encode_masked(true, OpCode::Ping, mask, b),
        Message::Pong(b) => encode_masked(true, OpCode::Pong, mask, b),
        Message::Close { code, reason } => {
            let mut p = Vec::new();
            if let Some(c) = code {
                p.extend_from_slice(&c.to_be_bytes());
                p.extend_from_slice(reason);
            }
            encode_masked(true, OpCode::Close, mask, &p)
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk_seed, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk_seed % 17) + 1;

    // 1. Arbitrary bytes.
    let mut dec = Decoder::server(MAX);
    let mut msgs = Vec::new();
    'feed: for piece in stream.chunks(chunk) {
        dec.push(piece);
        loop {
            match dec.next_message() {
                Ok(Some(m)) => {
                    if let Message::Text(b) | Message::Binary(b) = &m {
                        assert!(b.len() <= MAX);
                    }
                    msgs.push(m);
                }
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
    }

    // 2. Re-frame what was read: it must come back identical through the same chunking.
    let mask = [chunk_seed, 0x5a, chunk_seed ^ 0xff, 0x11];
    let wire: Vec<u8> = msgs.iter().flat_map(|m| reframe(m, mask)).collect();
    let mut dec = Decoder::server(MAX);
    let mut again = Vec::new();
    for piece in wire.chunks(chunk) {
        dec.push(piece);
        while let Some(m) = dec.next_message().expect("valid framing") {
            again.push(m);
        }
    }
    assert_eq!(again, msgs);
    assert_eq!(dec.buffered(), 0);
});
