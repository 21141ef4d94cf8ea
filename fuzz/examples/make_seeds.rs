//! Writes a small seed corpus for every target into `corpus/<target>/`: real
//! frames, raw and zstd batches, framed streams and JSON texts. Without seeds a
//! short run rarely finds a valid zstd frame, so the decompression and event
//! decoding paths of `decode_batch` would go unexplored.
//!
//! `cargo run --example make_seeds` (from `fuzz/`), then `cargo fuzz run <target>`.

use std::fs;
use std::path::Path;

use danmaku_proto::framing::encode_prefixed;
use danmaku_proto::pb::{self, client_frame, server_frame};
use danmaku_proto::sample::CommentGenerator;
use danmaku_proto::{BatchEncoder, frame, json, wsframe};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    fs::create_dir_all(&dir).expect("create corpus dir");
    fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
}

fn main() {
    let mut generator = CommentGenerator::new(42);
    let mut batches = Vec::new();
    for n in [1usize, 3, 20, 60] {
        let events = generator.events(n, 1_732_350_000_000);
        for (codec, threshold) in [("raw", usize::MAX), ("zstd", 0)] {
            let b = BatchEncoder::new(3, threshold)
                .expect("encoder")
                .encode("room:1", &events)
                .expect("encode");
            // decode_batch target: [codec, count_lo, count_hi] + payload.
            let mut input = vec![b.codec as u8];
            input.extend_from_slice(&(b.count as u16).to_le_bytes());
            input.extend_from_slice(&b.payload);
            write("decode_batch", &format!("{codec}-{n}"), &input);
            batches.push((format!("{codec}-{n}"), b));
        }
    }

    let mut server_frames: Vec<(String, pb::ServerFrame)> = batches
        .into_iter()
        .map(|(name, b)| {
            (
                format!("batch-{name}"),
                frame::server(server_frame::Body::Batch(b)),
            )
        })
        .collect();
    let gift = pb::Event {
        kind: pb::Kind::Gift as i32,
        sender: "bob".into(),
        text: "rocket".into(),
        ts_ms: 1_732_350_000_500,
        seq: 18,
        payload_json: r#"{"gift":"rocket","n":1}"#.into(),
        client_msg_id: "m-1".into(),
        blob: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        ..Default::default()
    };
    server_frames.extend([
        (
            "joined".into(),
            frame::server(server_frame::Body::Joined(pb::Joined {
                channel: "room:42".into(),
                last_seq: 17,
                ack_interval_ms: 5000,
            })),
        ),
        (
            "reliable".into(),
            frame::server(server_frame::Body::Reliable(pb::Reliable {
                channel: "group:7".into(),
                seq: 18,
                event: Some(gift),
            })),
        ),
        (
            "redirect".into(),
            frame::server(server_frame::Body::Redirect(pb::Redirect {
                edges: vec![pb::EdgeAddr {
                    id: "edge-2".into(),
                    ws: "ws://127.0.0.1:7071/v1/ws".into(),
                    quic: "127.0.0.1:7071".into(),
                    load: 0.25,
                }],
            })),
        ),
        (
            "error".into(),
            frame::error("bad_channel", "invalid channel name"),
        ),
        (
            "pong".into(),
            frame::server(server_frame::Body::Pong(pb::Pong { ts_ms: 5 })),
        ),
        (
            "auth-ok".into(),
            frame::server(server_frame::Body::AuthOk(pb::AuthOk {
                user: "alice".into(),
                ack_interval_ms: 1000,
            })),
        ),
    ]);
    for (name, f) in &server_frames {
        write("decode_server_frame", name, &frame::encode(f));
    }

    let client_frames = [
        (
            "auth",
            client_frame::Body::Auth(pb::Auth {
                token: "eyJzdWIiOiJhbGljZSJ9.c2ln".into(),
            }),
        ),
        (
            "join",
            client_frame::Body::Join(pb::Join {
                channel: "room:42".into(),
            }),
        ),
        (
            "leave",
            client_frame::Body::Leave(pb::Leave {
                channel: "room:42".into(),
            }),
        ),
        (
            "ack",
            client_frame::Body::Ack(pb::Ack {
                channel: "group:7".into(),
                seq: 18,
            }),
        ),
        (
            "resume",
            client_frame::Body::Resume(pb::Resume {
                channel: "group:7".into(),
                after_seq: 12,
            }),
        ),
        (
            "ping",
            client_frame::Body::Ping(pb::Ping {
                ts_ms: 1_732_350_000_000,
            }),
        ),
    ];
    let mut stream = vec![3u8]; // frame_reader target: chunk-size byte, then the stream
    let mut ws_stream = vec![5u8]; // ws_decoder target: chunk-size byte, then masked frames
    for (name, body) in client_frames {
        let f = frame::client(body);
        let bytes = frame::encode(&f);
        ws_stream.extend(wsframe::encode_masked(
            true,
            wsframe::OpCode::Binary,
            [1, 2, 3, 4],
            &bytes,
        ));
        write("decode_client_frame", name, &bytes);
        stream.extend_from_slice(&encode_prefixed(&bytes));
        let text = serde_json::to_string(&json::JsonClientFrame::from_pb(&f).expect("json form"))
            .expect("serialize");
        write("json_client_frame", name, text.as_bytes());
    }
    write("frame_reader", "client-frames", &stream);
    ws_stream.extend(wsframe::encode_masked(
        true,
        wsframe::OpCode::Ping,
        [9, 8, 7, 6],
        b"hb",
    ));
    ws_stream.extend(wsframe::encode_masked(
        false,
        wsframe::OpCode::Text,
        [0; 4],
        b"{\"type\":",
    ));
    ws_stream.extend(wsframe::encode_masked(
        true,
        wsframe::OpCode::Continuation,
        [5; 4],
        b"\"ping\"}",
    ));
    ws_stream.extend(wsframe::encode_masked(
        true,
        wsframe::OpCode::Close,
        [1; 4],
        b"\x03\xe8bye",
    ));
    write("ws_decoder", "client-frames", &ws_stream);
    let mut stream = vec![7u8];
    for (_, f) in &server_frames {
        stream.extend_from_slice(&encode_prefixed(&frame::encode(f)));
    }
    write("frame_reader", "server-frames", &stream);

    let events = CommentGenerator::new(7).events(3, 1_732_350_000_000);
    write(
        "json_client_frame",
        "batch",
        json::batch_json("room:1", &events, None, 0).as_bytes(),
    );
    write(
        "json_client_frame",
        "error",
        br#"{"type":"error","code":"rate_limited","message":"slow down"}"#,
    );
    eprintln!("seeds written under corpus/");
}
