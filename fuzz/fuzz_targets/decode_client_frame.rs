//! Bytes from a client (WebSocket binary frame or QUIC stream frame) into the
//! edge's decoder: never panics, and whatever it accepts is within the limits.
#![no_main]

use danmaku_proto::{Limits, PROTOCOL_VERSION, frame, json::JsonClientFrame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_string_bytes: 256,
        ..Limits::default()
    };
    if let Ok(f) = frame::decode_client(data, &limits) {
        assert!(f.version <= PROTOCOL_VERSION);
        // An accepted frame re-encodes and decodes to itself, and has a JSON form.
        let again = frame::decode_client(&frame::encode(&f), &limits).expect("re-decode");
        assert_eq!(again, f);
        assert!(JsonClientFrame::from_pb(&f).is_some());
    }
    let _ = frame::decode_bus_event(data, &limits);
});
