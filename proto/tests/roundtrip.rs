//! Property tests for every codec in `danmaku-proto`.
//!
//! Two families: round trips (what an encoder writes, the matching decoder reads
//! back unchanged, through the raw and zstd batch paths, protobuf and JSON frames,
//! and length-prefixed streams cut at arbitrary points), and hostility (arbitrary
//! bytes into every decoder never panic and never yield more than the limits
//! allow). Case counts are kept small so the file runs in a few seconds; the
//! fuzz targets in `fuzz/` explore the same decoders for longer.

use danmaku_proto::batch::{ENCODING_COMPACT, ENCODING_PLAIN};
use danmaku_proto::framing::{FrameReader, encode_prefixed};
use danmaku_proto::json::{self, JsonClientFrame};
use danmaku_proto::pb::{self, Codec, client_frame};
use danmaku_proto::token::{Claims, TokenKey};
use danmaku_proto::{BatchEncoder, Layout, Limits, ProtoError, decode_batch, frame};
use proptest::prelude::*;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Failures are reported with their minimal input; no regression files in the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn short_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z0-9_:-]{1,16}",
        any::<String>().prop_map(|s| s.chars().take(40).collect()),
        "(666|哈哈|233|😂|前方高能|gg){1,8}",
    ]
}

fn event() -> impl Strategy<Value = pb::Event> {
    (
        0i32..5,
        short_string(),
        short_string(),
        any::<i64>(),
        any::<u64>(),
        prop_oneof![
            Just(String::new()),
            Just(r#"{"gift":"rocket","n":3}"#.to_owned())
        ],
        short_string(),
        short_string(),
        any::<bool>(),
        short_string(),
    )
        .prop_map(
            |(kind, sender, text, ts_ms, seq, payload_json, client_msg_id, id, priority, blob)| {
                pb::Event {
                    kind,
                    sender,
                    text,
                    ts_ms,
                    seq,
                    payload_json,
                    client_msg_id,
                    id,
                    priority,
                    blob,
                }
            },
        )
}

fn client_body() -> impl Strategy<Value = client_frame::Body> {
    use client_frame::Body;
    prop_oneof![
        short_string().prop_map(|token| Body::Auth(pb::Auth { token })),
        short_string().prop_map(|channel| Body::Join(pb::Join { channel })),
        short_string().prop_map(|channel| Body::Leave(pb::Leave { channel })),
        (short_string(), any::<u64>())
            .prop_map(|(channel, seq)| Body::Ack(pb::Ack { channel, seq })),
        (short_string(), any::<u64>())
            .prop_map(|(channel, after_seq)| Body::Resume(pb::Resume { channel, after_seq })),
        any::<i64>().prop_map(|ts_ms| Body::Ping(pb::Ping { ts_ms })),
    ]
}

fn json_client_frame() -> impl Strategy<Value = JsonClientFrame> {
    prop_oneof![
        short_string().prop_map(|token| JsonClientFrame::Auth { token }),
        short_string().prop_map(|channel| JsonClientFrame::Join { channel }),
        short_string().prop_map(|channel| JsonClientFrame::Leave { channel }),
        (short_string(), any::<u64>())
            .prop_map(|(channel, seq)| JsonClientFrame::Ack { channel, seq }),
        (short_string(), any::<u64>())
            .prop_map(|(channel, after_seq)| JsonClientFrame::Resume { channel, after_seq }),
        Just(JsonClientFrame::Ping),
    ]
}

/// Small limits, so hostile inputs reach them quickly.
fn tight_limits() -> Limits {
    Limits {
        max_frame_bytes: 4096,
        max_batch_events: 16,
        max_batch_raw_bytes: 8192,
        max_string_bytes: 64,
    }
}

fn assert_events_within(events: &[pb::Event], limits: &Limits) {
    assert!(events.len() <= limits.max_batch_events);
    for ev in events {
        assert!(ev.sender.len() <= limits.max_string_bytes);
        assert!(ev.text.len() <= limits.max_string_bytes);
        assert!(ev.payload_json.len() <= limits.max_string_bytes);
        assert!(ev.client_msg_id.len() <= limits.max_string_bytes);
        assert!(ev.blob.len() <= limits.max_string_bytes);
        assert!(ev.id.len() <= limits.max_string_bytes);
    }
}

/// Cuts `wire` into chunks at the given (sorted, deduplicated) offsets.
fn chunks<'a>(wire: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    points.push(0);
    points.push(wire.len());
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| &wire[w[0]..w[1]]).collect()
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn batches_round_trip_raw_and_zstd(
        events in prop::collection::vec(event(), 0..40),
        level in 1i32..=3,
    ) {
        let limits = Limits::default();
        // Threshold 0: every non-empty payload is compressed; usize::MAX: never.
        for threshold in [0, usize::MAX] {
            let mut enc = BatchEncoder::new(level, threshold).unwrap();
            let batch = enc.encode("room:1", &events).unwrap();
            let expect_zstd = threshold == 0 && enc.last_raw_len() > 0;
            let codec = if expect_zstd { pb::Codec::Zstd } else { pb::Codec::Raw };
            prop_assert_eq!(batch.codec, codec as i32);
            prop_assert_eq!(batch.count as usize, events.len());
            prop_assert_eq!(&decode_batch(&batch, &limits).unwrap(), &events);

            // The batch also survives the trip inside a ServerFrame.
            let sf = frame::server(pb::server_frame::Body::Batch(batch.clone()));
            let back = frame::decode_server(&frame::encode(&sf), &limits).unwrap();
            prop_assert_eq!(back, sf);
        }
    }

    #[test]
    fn compact_batches_round_trip(
        mut events in prop::collection::vec(event(), 0..40),
        ids in prop::collection::vec(prop::option::of((0i64..1 << 44, any::<u64>())), 40),
        threshold in prop_oneof![Just(0usize), Just(usize::MAX)],
    ) {
        // Some events become danmaku with ids as ingest issues them (their
        // time in 11 hex digits first), the ones the compact layout shortens.
        for (e, id) in events.iter_mut().zip(&ids) {
            if let Some((ts, tail)) = id {
                e.kind = pb::Kind::Danmaku as i32;
                e.ts_ms = *ts;
                e.id = format!("{ts:011x}{tail:016x}");
            }
        }
        let limits = Limits::default();
        let mut enc = BatchEncoder::new(1, threshold).unwrap();
        let batch = enc.encode_as("room:1", &events, ENCODING_COMPACT).unwrap();
        let odd_id = events.iter().any(|e| e.kind == pb::Kind::Danmaku as i32 && e.id.len() == 16);
        prop_assert_eq!(batch.encoding, if odd_id { ENCODING_PLAIN } else { ENCODING_COMPACT });
        prop_assert_eq!(&decode_batch(&batch, &limits).unwrap(), &events);
        let sf = frame::server(pb::server_frame::Body::Batch(batch.clone()));
        let back = frame::decode_server(&frame::encode(&sf), &limits).unwrap();
        prop_assert_eq!(back, sf);
    }

    #[test]
    fn dense_batches_round_trip_with_and_without_the_dictionary(
        mut events in prop::collection::vec(event(), 0..40),
        ids in prop::collection::vec(
            prop::option::of((0i64..1 << 44, 0u32..3, prop_oneof![Just(1u32), 0u32..5, any::<u32>()])),
            40,
        ),
        odd in prop::option::of((0usize..40, prop_oneof![Just(String::new()), Just("+3".to_owned()), "[0-9a-f]{16}"])),
        threshold in prop_oneof![Just(0usize), Just(usize::MAX)],
        layout in prop_oneof![Just(Layout::Dense), Just(Layout::Compact), Just(Layout::Plain)],
    ) {
        // Danmaku with ids as ingest issues them: a few node tags, counters
        // that step by one, by a gap, stay, go back or wrap.
        let mut counter = 0u32;
        for (e, id) in events.iter_mut().zip(&ids) {
            if let Some((ts, tag, step)) = id {
                counter = counter.wrapping_add(*step);
                e.kind = pb::Kind::Danmaku as i32;
                e.ts_ms = *ts;
                e.id = format!("{ts:011x}{:08x}{counter:08x}", 0x3f2a_91c4u32.wrapping_add(*tag));
            }
        }
        // Sometimes a danmaku whose own id looks shortened: the encoder must
        // fall back to a layout that cannot misread it.
        if let Some((i, id)) = odd && i < events.len() {
            events[i].kind = pb::Kind::Danmaku as i32;
            events[i].id = id;
        }
        let limits = Limits::default();
        let mut enc = BatchEncoder::new(3, threshold).unwrap();
        let batch = enc.encode_layout("room:1", &events, layout).unwrap();
        prop_assert!(batch.encoding <= layout.encoding());
        prop_assert!(batch.dict_id == 0 || batch.dict_id == layout.dict_id());
        if batch.dict_id != 0 {
            prop_assert_eq!(batch.codec, Codec::Zstd as i32);
        }
        prop_assert_eq!(&decode_batch(&batch, &limits).unwrap(), &events);
        let sf = frame::server(pb::server_frame::Body::Batch(batch.clone()));
        let back = frame::decode_server(&frame::encode(&sf), &limits).unwrap();
        prop_assert_eq!(back, sf);
    }

    #[test]
    fn batch_limits_are_enforced_on_real_batches(
        events in prop::collection::vec(event(), 0..40),
        threshold in prop_oneof![Just(0usize), Just(usize::MAX)],
    ) {
        let limits = tight_limits();
        let mut enc = BatchEncoder::new(1, threshold).unwrap();
        let batch = enc.encode("room:1", &events).unwrap();
        match decode_batch(&batch, &limits) {
            Ok(decoded) => {
                assert_events_within(&decoded, &limits);
                prop_assert_eq!(decoded, events);
            }
            Err(e) => {
                let too_many = events.len() > limits.max_batch_events;
                let too_big = enc.last_raw_len() > limits.max_batch_raw_bytes;
                let too_long = events.iter().any(|ev| {
                    [&ev.sender, &ev.text, &ev.payload_json, &ev.client_msg_id, &ev.blob, &ev.id]
                        .iter()
                        .any(|s| s.len() > limits.max_string_bytes)
                });
                prop_assert!(too_many || too_big || too_long, "refused a valid batch: {e}");
            }
        }
    }

    #[test]
    fn client_frames_round_trip(body in client_body(), version in 0u32..=1) {
        let f = pb::ClientFrame { version, body: Some(body) };
        let back = frame::decode_client(&frame::encode(&f), &Limits::default()).unwrap();
        prop_assert_eq!(&back, &f);

        // pb -> JSON -> text -> decoder gives the same frame (Ping drops its ts_ms,
        // which the JSON form does not carry).
        let j = JsonClientFrame::from_pb(&f).unwrap();
        let text = serde_json::to_string(&j).unwrap();
        let via_json = json::decode_client_json(&text, &Limits::default()).unwrap();
        let mut expect = f.clone();
        expect.version = danmaku_proto::PROTOCOL_VERSION;
        if let Some(client_frame::Body::Ping(p)) = expect.body.as_mut() {
            p.ts_ms = 0;
        }
        prop_assert_eq!(via_json, expect);
    }

    #[test]
    fn json_client_frames_round_trip(j in json_client_frame()) {
        let text = serde_json::to_string(&j).unwrap();
        let f = json::decode_client_json(&text, &Limits::default()).unwrap();
        prop_assert_eq!(JsonClientFrame::from_pb(&f), Some(j.clone()));
        prop_assert_eq!(JsonClientFrame::from_pb(&j.clone().into_pb()), Some(j));
    }

    #[test]
    fn framing_survives_any_chunking(
        frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..12),
        cuts in prop::collection::vec(any::<usize>(), 0..24),
    ) {
        let wire: Vec<u8> = frames.iter().flat_map(|f| encode_prefixed(f).to_vec()).collect();
        let mut r = FrameReader::new(300);
        let mut got = Vec::new();
        for chunk in chunks(&wire, &cuts) {
            r.push(chunk);
            while let Some(f) = r.next_frame().unwrap() {
                got.push(f.to_vec());
            }
        }
        prop_assert_eq!(got, frames);
        prop_assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn tokens_round_trip(sub in "[a-zA-Z0-9_.@-]{1,64}", app in any::<bool>(), ttl in 1u64..1_000_000) {
        let key = TokenKey::new("prop-secret");
        let role = if app { "app" } else { "user" };
        let t = key.mint(&sub, role, 1_000, ttl);
        let claims = key.verify(&t, 1_000).unwrap();
        let jti = claims.jti.clone();
        prop_assert!(jti.is_some());
        prop_assert_eq!(claims, Claims { sub, exp: 1_000 + ttl, role: role.to_owned(), kid: Some(key.signing_key_id().to_owned()), jti: jti.clone(), iat: Some(1_000) });
        prop_assert!(key.verify(&t, 1_000 + ttl).is_err());
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn arbitrary_bytes_never_panic_frame_decoders(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let limits = tight_limits();
        if let Ok(f) = frame::decode_client(&bytes, &limits) {
            prop_assert!(f.version <= danmaku_proto::PROTOCOL_VERSION);
            prop_assert!(f.body.is_some());
            // Whatever decodes also has a JSON form that decodes the same way.
            let j = JsonClientFrame::from_pb(&f).unwrap();
            let text = serde_json::to_string(&j).unwrap();
            prop_assert!(json::decode_client_json(&text, &limits).is_ok());
        }
        if let Ok(f) = frame::decode_server(&bytes, &limits) {
            prop_assert!(f.body.is_some());
            if let Some(pb::server_frame::Body::Batch(b)) = &f.body
                && let Ok(events) = decode_batch(b, &limits)
            {
                assert_events_within(&events, &limits);
            }
            let _ = json::JsonServerFrame::from_pb(&f, &limits);
        }
        if let Ok(ev) = frame::decode_bus_event(&bytes, &limits) {
            prop_assert!(ev.channel.len() <= limits.max_string_bytes);
        }
        // Anything above the frame limit is refused before parsing.
        let small = Limits { max_frame_bytes: 16, ..limits };
        if bytes.len() > 16 {
            let refused = matches!(
                frame::decode_client(&bytes, &small),
                Err(ProtoError::FrameTooLarge { .. })
            );
            prop_assert!(refused);
        }
    }

    #[test]
    fn arbitrary_batches_never_panic_and_respect_limits(
        count in prop_oneof![0u32..20, any::<u32>()],
        codec in prop_oneof![0i32..2, any::<i32>()],
        dict_id in prop_oneof![0u32..3, any::<u32>()],
        payload in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..512),
            // A real zstd frame around arbitrary bytes reaches the event decoder.
            prop::collection::vec(any::<u8>(), 0..512)
                .prop_map(|raw| zstd::bulk::compress(&raw, 1).unwrap()),
            // Valid events with a count that may or may not match.
            prop::collection::vec(event(), 0..24).prop_map(|evs| {
                BatchEncoder::new(1, usize::MAX).unwrap().encode("room:1", &evs).unwrap().payload.to_vec()
            }),
            // Arbitrary bytes compressed with the built-in dictionary.
            prop::collection::vec(any::<u8>(), 0..512).prop_map(|raw| {
                zstd::bulk::Compressor::with_dictionary(1, danmaku_proto::dictionary::DANMAKU_1)
                    .unwrap()
                    .compress(&raw)
                    .unwrap()
            }),
        ],
    ) {
        let limits = tight_limits();
        // Every layout this build reads, and one it does not.
        let encoding = count % 4;
        let b = pb::Batch { channel: "room:1".into(), codec, dict_id, count, payload: payload.into(), encoding, ..Default::default() };
        if let Ok(events) = decode_batch(&b, &limits) {
            assert_events_within(&events, &limits);
            prop_assert_eq!(events.len(), count as usize);
        }
    }

    #[test]
    fn arbitrary_text_never_panics_json_decoders(
        text in prop_oneof![
            any::<String>(),
            r#"\{"type":"(join|leave|ack|resume|ping|batch|pong|error|redirect|joined)"(,"[a-z_]{1,9}":("[^"]{0,80}"|[0-9-]{1,22}|\[\]|null|\{\}))*\}"#,
        ],
    ) {
        let limits = tight_limits();
        if let Ok(f) = json::decode_client_json(&text, &limits) {
            prop_assert!(f.body.is_some());
            prop_assert!(frame::decode_client(&frame::encode(&f), &limits).is_ok());
        }
        let _ = json::decode_server_json(&text, &limits);
        let huge = "x".repeat(limits.max_frame_bytes + 1);
        let refused = matches!(
            json::decode_client_json(&huge, &limits),
            Err(ProtoError::FrameTooLarge { .. })
        );
        prop_assert!(refused);
    }

    #[test]
    fn arbitrary_streams_never_panic_frame_reader(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let max = 64;
        let mut r = FrameReader::new(max);
        'feed: for chunk in chunks(&bytes, &cuts) {
            r.push(chunk);
            loop {
                match r.next_frame() {
                    Ok(Some(f)) => prop_assert!(f.len() <= max),
                    Ok(None) => break,
                    // A framing error ends the stream, as a server closes the connection.
                    Err(_) => break 'feed,
                }
            }
        }
    }

    #[test]
    fn arbitrary_tokens_never_verify(token in prop_oneof![
        any::<String>(),
        "[A-Za-z0-9_-]{0,60}\\.[A-Za-z0-9_-]{0,60}",
    ]) {
        let key = TokenKey::new("prop-secret");
        prop_assert!(key.verify(&token, 0).is_err());
    }
}
