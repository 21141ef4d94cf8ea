//! An arbitrary `Batch` (codec, count and payload chosen by the fuzzer) into
//! `decode_batch`. The first bytes pick the header so the payload reaches the
//! zstd and event decoders instead of failing the protobuf parse.
#![no_main]

use danmaku_proto::{Limits, decode_batch, pb};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&[codec, count_lo, count_hi], payload)) = data.split_first_chunk::<3>() else {
        return;
    };
    let limits = Limits {
        max_batch_events: 128,
        max_batch_raw_bytes: 256 << 10,
        max_string_bytes: 512,
        ..Limits::default()
    };
    let batch = pb::Batch {
        channel: "room:1".into(),
        // Mostly the two real codecs, sometimes an unknown one.
        codec: i32::from(codec % 3),
        // No dictionary, the built-in one, or one this build does not know.
        dict_id: u32::from(codec / 3 % 3),
        count: u32::from(u16::from_le_bytes([count_lo, count_hi])),
        payload: payload.to_vec().into(),
        // Plain, compact, dense (timestamps and ids rebuilt) or an unknown layout.
        encoding: u32::from(count_hi % 4),
        ..Default::default()
    };
    if let Ok(events) = decode_batch(&batch, &limits) {
        assert!(events.len() <= limits.max_batch_events);
        assert_eq!(events.len(), batch.count as usize);
        for ev in &events {
            for s in [
                &ev.sender,
                &ev.text,
                &ev.payload_json,
                &ev.client_msg_id,
                &ev.blob,
                &ev.id,
            ] {
                assert!(s.len() <= limits.max_string_bytes);
            }
        }
    }
});
