//! Encoding and bounded decoding of whole `ClientFrame` / `ServerFrame` messages.
//!
//! A decoder checks the size before parsing, then the version and every string
//! field, so a server holds only frames it can act on.

use bytes::Bytes;
use prost::Message;

use crate::error::ProtoError;
use crate::limits::Limits;
use crate::pb::{self, client_frame, server_frame};

/// Protocol version carried in every frame; peers refuse frames from the future.
pub const PROTOCOL_VERSION: u32 = 1;

/// Wraps a body in a `ClientFrame` of the current version.
pub fn client(body: client_frame::Body) -> pb::ClientFrame {
    pb::ClientFrame {
        version: PROTOCOL_VERSION,
        body: Some(body),
    }
}

/// Wraps a body in a `ServerFrame` of the current version.
pub fn server(body: server_frame::Body) -> pb::ServerFrame {
    pb::ServerFrame {
        version: PROTOCOL_VERSION,
        body: Some(body),
    }
}

/// An `Error` server frame with a stable code.
pub fn error(code: &str, message: impl Into<String>) -> pb::ServerFrame {
    server(server_frame::Body::Error(pb::Error {
        code: code.to_owned(),
        message: message.into(),
    }))
}

/// Encodes any message into a fresh `Bytes`.
pub fn encode<M: Message>(m: &M) -> Bytes {
    Bytes::from(m.encode_to_vec())
}

fn check_size(buf: &[u8], limits: &Limits) -> Result<(), ProtoError> {
    if buf.len() > limits.max_frame_bytes {
        return Err(ProtoError::FrameTooLarge {
            size: buf.len(),
            limit: limits.max_frame_bytes,
        });
    }
    Ok(())
}

fn check_version(v: u32) -> Result<(), ProtoError> {
    // Version 0 is what proto3 reads when a peer left the field out; accept it as 1.
    if v > PROTOCOL_VERSION {
        return Err(ProtoError::Version(v));
    }
    Ok(())
}

/// Decodes a frame sent by a client (edge side).
pub fn decode_client(buf: &[u8], limits: &Limits) -> Result<pb::ClientFrame, ProtoError> {
    check_size(buf, limits)?;
    let frame = pb::ClientFrame::decode(buf)?;
    check_version(frame.version)?;
    let body = frame.body.as_ref().ok_or(ProtoError::EmptyFrame)?;
    use client_frame::Body;
    match body {
        Body::Auth(a) => limits.check_str("token", &a.token)?,
        Body::Join(j) => limits.check_str("channel", &j.channel)?,
        Body::Leave(l) => limits.check_str("channel", &l.channel)?,
        Body::Ack(a) => limits.check_str("channel", &a.channel)?,
        Body::Resume(r) => limits.check_str("channel", &r.channel)?,
        Body::Ping(_) => {}
    }
    Ok(frame)
}

/// Decodes a frame sent by an edge (client side). Batches inside stay
/// compressed; [`crate::decode_batch`] opens them with its own bounds.
pub fn decode_server(buf: &[u8], limits: &Limits) -> Result<pb::ServerFrame, ProtoError> {
    check_size(buf, limits)?;
    let frame = pb::ServerFrame::decode(buf)?;
    check_version(frame.version)?;
    if frame.body.is_none() {
        return Err(ProtoError::EmptyFrame);
    }
    Ok(frame)
}

/// Decodes a bus envelope (edge side), bounded like a peer's frame.
pub fn decode_bus_event(buf: &[u8], limits: &Limits) -> Result<pb::BusEvent, ProtoError> {
    check_size(buf, limits)?;
    let ev = pb::BusEvent::decode(buf)?;
    check_version(ev.version)?;
    limits.check_str("channel", &ev.channel)?;
    Ok(ev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_round_trip() {
        let f = client(client_frame::Body::Join(pb::Join {
            channel: "room:1".into(),
        }));
        let back = decode_client(&encode(&f), &Limits::default()).unwrap();
        assert_eq!(back, f);
    }

    #[test]
    fn rejects_oversize_before_parsing() {
        let limits = Limits {
            max_frame_bytes: 8,
            ..Limits::default()
        };
        let err = decode_client(&[0u8; 9], &limits).unwrap_err();
        assert_eq!(err, ProtoError::FrameTooLarge { size: 9, limit: 8 });
    }

    #[test]
    fn rejects_future_version_and_empty_body() {
        let mut f = client(client_frame::Body::Ping(pb::Ping { ts_ms: 1 }));
        f.version = 99;
        let err = decode_client(&encode(&f), &Limits::default()).unwrap_err();
        assert_eq!(err, ProtoError::Version(99));
        let empty = pb::ClientFrame {
            version: 1,
            body: None,
        };
        let err = decode_client(&encode(&empty), &Limits::default()).unwrap_err();
        assert_eq!(err, ProtoError::EmptyFrame);
    }

    #[test]
    fn rejects_long_strings() {
        let limits = Limits {
            max_string_bytes: 10,
            ..Limits::default()
        };
        let f = client(client_frame::Body::Join(pb::Join {
            channel: "room:12345678901".into(),
        }));
        let err = decode_client(&encode(&f), &limits).unwrap_err();
        assert_eq!(err.code(), "string_too_long");
    }

    #[test]
    fn garbage_is_a_typed_error() {
        let err = decode_client(&[0xff, 0xff, 0xff], &Limits::default()).unwrap_err();
        assert_eq!(err.code(), "malformed_frame");
    }
}
