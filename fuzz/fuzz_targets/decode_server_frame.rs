//! Bytes from an edge into the client's decoder, including opening any batch it
//! carries and converting it to the JSON form: never panics, limits hold.
#![no_main]

use danmaku_proto::pb::server_frame::Body;
use danmaku_proto::{Limits, decode_batch, frame, json::JsonServerFrame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_batch_events: 64,
        max_batch_raw_bytes: 64 << 10,
        max_string_bytes: 256,
        ..Limits::default()
    };
    let Ok(f) = frame::decode_server(data, &limits) else {
        return;
    };
    if let Some(Body::Batch(b)) = &f.body
        && let Ok(events) = decode_batch(b, &limits)
    {
        assert!(events.len() <= limits.max_batch_events);
        assert_eq!(events.len(), b.count as usize);
        for ev in &events {
            assert!(ev.text.len() <= limits.max_string_bytes);
            assert!(ev.sender.len() <= limits.max_string_bytes);
        }
    }
    if let Ok(j) = JsonServerFrame::from_pb(&f, &limits) {
        let _ = j.to_text();
    }
});
