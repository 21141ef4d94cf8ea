//! The danmaku wire protocol, sans IO.
//!
//! Everything a peer needs to speak to an edge or to read the bus lives here as
//! plain functions over bytes: protobuf types generated from `danmaku.proto`
//! ([`pb`]), the bounded frame decoders ([`frame`]), the length-prefix framing used
//! on QUIC streams ([`framing`]), the batch codec that encodes and compresses a
//! channel's events once per tick ([`batch`]), the JSON form of frames for browsers
//! ([`json`]), the control plane's JSON bodies between edges, scheduler and
//! clients ([`control`]), WebSocket framing with frames prepared once for
//! every receiver ([`wsframe`]), channel names ([`channel`]), the id alphabet
//! they share with user ids ([`id`]) and signed tokens ([`token`]).
//! No tokio, no sockets: the edge, ingest and client crates move the bytes.

pub mod account;
pub mod batch;
pub mod channel;
pub mod control;
pub mod dictionary;
pub mod error;
pub mod frame;
pub mod framing;
pub mod id;
pub mod json;
pub mod limits;
pub mod moderation;
pub mod pb;
pub mod sample;
pub mod token;
pub mod wsframe;

pub use batch::{BatchEncoder, Layout, decode_batch};
pub use channel::{ChannelKind, ChannelName};
pub use error::ProtoError;
pub use frame::PROTOCOL_VERSION;
pub use limits::Limits;

/// Milliseconds since the Unix epoch, the clock used for `ts_ms` fields.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
