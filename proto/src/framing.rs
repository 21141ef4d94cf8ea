//! Varint length-prefixed framing for byte streams (QUIC streams).
//!
//! [`FrameReader`] is a sans-IO buffer: feed it whatever the stream gave, take
//! out whole frames. It refuses a declared length above the limit before
//! buffering it, so a peer cannot make it allocate more than `max_frame_bytes`.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::ProtoError;

/// Prefixes `frame` with its varint length.
pub fn encode_prefixed(frame: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(frame.len() + 5);
    prost::encoding::encode_varint(frame.len() as u64, &mut out);
    out.put_slice(frame);
    out.freeze()
}

/// Accumulates stream bytes and yields complete frames.
#[derive(Debug)]
pub struct FrameReader {
    buf: BytesMut,
    max_frame: usize,
}

impl FrameReader {
    pub fn new(max_frame: usize) -> Self {
        FrameReader {
            buf: BytesMut::new(),
            max_frame,
        }
    }

    /// Changes the largest frame accepted from now on (e.g. a small limit
    /// until the peer has authenticated, the full one after).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Returns the next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, ProtoError> {
        let mut peek = &self.buf[..];
        let before = peek.len();
        let len = match prost::encoding::decode_varint(&mut peek) {
            Ok(len) => len,
            // A varint is at most 10 bytes; fewer buffered may just be incomplete.
            Err(_) if before < 10 && self.buf.iter().all(|b| b & 0x80 != 0) => return Ok(None),
            Err(_) => return Err(ProtoError::BadLengthPrefix),
        };
        if len > self.max_frame as u64 {
            return Err(ProtoError::FrameTooLarge {
                size: usize::try_from(len).unwrap_or(usize::MAX),
                limit: self.max_frame,
            });
        }
        let prefix = before - peek.len();
        let len = len as usize;
        if peek.len() < len {
            self.buf.reserve(prefix + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(prefix);
        Ok(Some(self.buf.split_to(len).freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_frames_fed_byte_by_byte() {
        let frames: Vec<Vec<u8>> = vec![b"a".to_vec(), vec![7u8; 300], Vec::new(), b"xyz".to_vec()];
        let wire: Vec<u8> = frames
            .iter()
            .flat_map(|f| encode_prefixed(f).to_vec())
            .collect();
        let mut r = FrameReader::new(1024);
        let mut got = Vec::new();
        for b in wire {
            r.push(&[b]);
            while let Some(f) = r.next_frame().unwrap() {
                got.push(f.to_vec());
            }
        }
        assert_eq!(got, frames);
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn refuses_oversize_declared_length() {
        let mut r = FrameReader::new(100);
        r.push(&encode_prefixed(&[0u8; 101])[..3]);
        assert_eq!(
            r.next_frame().unwrap_err(),
            ProtoError::FrameTooLarge {
                size: 101,
                limit: 100
            }
        );
    }

    #[test]
    fn refuses_overlong_varint() {
        let mut r = FrameReader::new(100);
        r.push(&[0xff; 11]);
        assert_eq!(r.next_frame().unwrap_err(), ProtoError::BadLengthPrefix);
    }
}
