//! A browser's text frame into the edge's JSON decoder (and the client's
//! server-frame JSON decoder): never panics, an accepted frame passes the binary
//! decoder's bounds too, and its JSON form decodes back to the same frame.
#![no_main]

use danmaku_proto::{Limits, frame, json};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_frame_bytes: 16 << 10,
        max_string_bytes: 256,
        ..Limits::default()
    };
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(f) = json::decode_client_json(text, &limits) {
        assert!(f.body.is_some());
        frame::decode_client(&frame::encode(&f), &limits).expect("JSON-accepted frame is valid");
        let back = json::JsonClientFrame::from_pb(&f).expect("has a JSON form");
        let text2 = serde_json::to_string(&back).expect("serializable");
        assert_eq!(
            json::decode_client_json(&text2, &limits).expect("round trip"),
            f
        );
    }
    if let Ok(f) = json::decode_server_json(text, &limits) {
        let _ = f.to_text();
    }
});
