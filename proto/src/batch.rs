//! The batch codec: a channel's events of one tick become ONE payload, encoded
//! and compressed once, then shared by every member of the channel.
//!
//! Payload = length-delimited `Event`s; above `compress_threshold` bytes it is
//! zstd-compressed (danmaku text is short and repetitive, so it shrinks well).
//! Decoding is bounded: event count, decompressed size and string lengths.

use bytes::{Buf, Bytes, BytesMut};
use prost::Message;

use crate::error::ProtoError;
use crate::limits::Limits;
use crate::pb::{self, Codec};

/// Default size above which a payload is compressed: below it zstd's frame
/// header costs more than it saves.
pub const DEFAULT_COMPRESS_THRESHOLD: usize = 256;

/// `Batch.encoding`: events as they are.
pub const ENCODING_PLAIN: u32 = 0;
/// `Batch.encoding`: timestamps as deltas, danmaku ids without the digits that
/// repeat the timestamp (see `danmaku.proto`). zstd matches repeated bytes but
/// not a counter's next value: a varint millisecond clock and the 11 hex
/// digits of it inside every id cost ~5 compressed bytes per event that a
/// delta of a few ms does not (~30 % of a big tick, BENCHMARKS.md).
pub const ENCODING_COMPACT: u32 = 1;

/// Hex digits of the time at the start of a danmaku id (ingest's `message_id.rs`).
const ID_TIME_DIGITS: usize = 11;

fn zigzag(v: i64) -> i64 {
    (v << 1) ^ (v >> 63)
}

fn unzigzag(v: i64) -> i64 {
    let u = v as u64;
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

/// Whether `id` starts with the 11 hex digits of `ts_ms` (ingest's layout).
fn id_time_prefix(id: &str, ts_ms: i64) -> bool {
    use std::fmt::Write;
    if id.len() != 27 || ts_ms < 0 {
        return false;
    }
    let mut hex = String::with_capacity(16);
    let _ = write!(hex, "{ts_ms:011x}");
    hex.len() == ID_TIME_DIGITS && id.as_bytes()[..ID_TIME_DIGITS] == *hex.as_bytes()
}

/// The compact layout of `events` ([`ENCODING_COMPACT`]), or `None` when a
/// danmaku carries an id of the shortened length that is not a shortened one
/// (no id ingest issues; such a batch goes plain rather than be misread).
fn compact(events: &[pb::Event]) -> Option<Vec<pb::Event>> {
    let danmaku = pb::Kind::Danmaku as i32;
    if events
        .iter()
        .any(|e| e.kind == danmaku && e.id.len() == 27 - ID_TIME_DIGITS)
    {
        return None;
    }
    let mut prev = 0i64;
    let out = events
        .iter()
        .map(|e| {
            let mut c = e.clone();
            c.ts_ms = zigzag(e.ts_ms.wrapping_sub(prev));
            prev = e.ts_ms;
            if e.kind == danmaku && id_time_prefix(&e.id, e.ts_ms) {
                c.id.drain(..ID_TIME_DIGITS);
            }
            c
        })
        .collect();
    Some(out)
}

/// Undoes [`compact`] in place. Never fails or panics, whatever the input: a
/// hostile delta wraps, an id of another length is left as it is.
fn expand(events: &mut [pb::Event]) {
    let mut prev = 0i64;
    for e in events {
        e.ts_ms = prev.wrapping_add(unzigzag(e.ts_ms));
        prev = e.ts_ms;
        if e.kind == pb::Kind::Danmaku as i32 && e.id.len() == 27 - ID_TIME_DIGITS && e.ts_ms >= 0 {
            let tail = std::mem::take(&mut e.id);
            e.id = format!("{:011x}{tail}", e.ts_ms);
        }
    }
}

/// Builds batches. Holds a reusable zstd context, so keep one per thread or task
/// rather than one per batch.
pub struct BatchEncoder {
    compressor: zstd::bulk::Compressor<'static>,
    threshold: usize,
    scratch: BytesMut,
}

impl BatchEncoder {
    /// `level` is the zstd level (1–22; 3 is a good speed/ratio point for text).
    pub fn new(level: i32, threshold: usize) -> Result<Self, ProtoError> {
        let compressor = zstd::bulk::Compressor::new(level)
            .map_err(|e| ProtoError::Compression(e.to_string()))?;
        Ok(BatchEncoder {
            compressor,
            threshold,
            scratch: BytesMut::new(),
        })
    }

    /// Encodes `events` of `channel` into one batch.
    pub fn encode(&mut self, channel: &str, events: &[pb::Event]) -> Result<pb::Batch, ProtoError> {
        self.encode_as(channel, events, ENCODING_PLAIN)
    }

    /// Encodes `events` of `channel` into one batch laid out as `encoding`
    /// ([`ENCODING_PLAIN`] or [`ENCODING_COMPACT`]).
    pub fn encode_as(
        &mut self,
        channel: &str,
        events: &[pb::Event],
        encoding: u32,
    ) -> Result<pb::Batch, ProtoError> {
        self.scratch.clear();
        let compacted;
        let (laid_out, encoding) = match encoding {
            ENCODING_PLAIN => (events, ENCODING_PLAIN),
            ENCODING_COMPACT => match compact(events) {
                Some(c) => {
                    compacted = c;
                    (&compacted[..], ENCODING_COMPACT)
                }
                None => (events, ENCODING_PLAIN),
            },
            other => return Err(ProtoError::UnknownEncoding(other)),
        };
        for ev in laid_out {
            ev.encode_length_delimited(&mut self.scratch)
                .map_err(|e| ProtoError::Malformed(e.to_string()))?;
        }
        let (codec, payload) = if self.scratch.len() > self.threshold {
            let compressed = self
                .compressor
                .compress(&self.scratch)
                .map_err(|e| ProtoError::Compression(e.to_string()))?;
            (Codec::Zstd, Bytes::from(compressed))
        } else {
            (Codec::Raw, Bytes::copy_from_slice(&self.scratch))
        };
        let mut seqs = events.iter().map(|e| e.seq).filter(|&s| s > 0);
        let first_seq = seqs.next().unwrap_or(0);
        let last_seq = seqs.next_back().unwrap_or(first_seq);
        Ok(pb::Batch {
            channel: channel.to_owned(),
            codec: codec as i32,
            dict_id: 0,
            count: events.len() as u32,
            payload,
            first_seq,
            last_seq,
            online: 0,
            sampled_out: 0,
            encoding,
        })
    }

    /// Size of the uncompressed payload of the last `encode`, for metrics.
    pub fn last_raw_len(&self) -> usize {
        self.scratch.len()
    }
}

impl Default for BatchEncoder {
    fn default() -> Self {
        // Level 3 always exists; `new` only fails on invalid levels.
        Self::new(3, DEFAULT_COMPRESS_THRESHOLD).expect("zstd level 3 is valid")
    }
}

/// Opens a batch: decompresses (bounded) and decodes its events.
pub fn decode_batch(batch: &pb::Batch, limits: &Limits) -> Result<Vec<pb::Event>, ProtoError> {
    if batch.encoding > ENCODING_COMPACT {
        return Err(ProtoError::UnknownEncoding(batch.encoding));
    }
    let claimed = batch.count as usize;
    if claimed > limits.max_batch_events {
        return Err(ProtoError::TooManyEvents {
            claimed,
            limit: limits.max_batch_events,
        });
    }
    let raw: Bytes = match Codec::try_from(batch.codec) {
        Ok(Codec::Raw) => batch.payload.clone(),
        Ok(Codec::Zstd) => Bytes::from(decompress_bounded(
            &batch.payload,
            limits.max_batch_raw_bytes,
        )?),
        Err(_) => return Err(ProtoError::UnknownCodec(batch.codec)),
    };
    if raw.len() > limits.max_batch_raw_bytes {
        return Err(ProtoError::BatchTooLarge {
            limit: limits.max_batch_raw_bytes,
        });
    }
    // Every event takes at least one byte, so a tiny frame cannot claim a big allocation.
    let mut events = Vec::with_capacity(claimed.min(raw.len()));
    let mut buf = raw;
    while buf.has_remaining() {
        if events.len() == claimed {
            return Err(ProtoError::CountMismatch {
                claimed,
                actual: claimed + 1,
            });
        }
        let ev = pb::Event::decode_length_delimited(&mut buf)?;
        limits.check_str("sender", &ev.sender)?;
        limits.check_str("text", &ev.text)?;
        limits.check_str("payload", &ev.payload_json)?;
        limits.check_str("client_msg_id", &ev.client_msg_id)?;
        limits.check_str("blob", &ev.blob)?;
        limits.check_str("id", &ev.id)?;
        events.push(ev);
    }
    if events.len() != claimed {
        return Err(ProtoError::CountMismatch {
            claimed,
            actual: events.len(),
        });
    }
    if batch.encoding == ENCODING_COMPACT {
        expand(&mut events);
    }
    Ok(events)
}

fn decompress_bounded(data: &[u8], limit: usize) -> Result<Vec<u8>, ProtoError> {
    // Our encoder records the content size in the frame header: then one reused
    // context decompresses straight into an exact-size buffer (making a context
    // costs more than decoding a small batch). Frames without a size, or claiming
    // more than the limit, take the streaming path that never holds over limit + 1.
    if let Ok(Some(size)) = zstd::zstd_safe::get_frame_content_size(data) {
        if size > limit as u64 {
            return Err(ProtoError::BatchTooLarge { limit });
        }
        return DECOMPRESSOR.with(|cell| {
            let mut slot = cell.borrow_mut();
            let dctx = match slot.as_mut() {
                Some(d) => d,
                None => slot.insert(
                    zstd::bulk::Decompressor::new()
                        .map_err(|e| ProtoError::Compression(e.to_string()))?,
                ),
            };
            dctx.decompress(data, size as usize)
                .map_err(|e| ProtoError::Compression(e.to_string()))
        });
    }
    use std::io::Read;
    let decoder = zstd::stream::read::Decoder::new(data)
        .map_err(|e| ProtoError::Compression(e.to_string()))?;
    let mut out = Vec::new();
    decoder
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ProtoError::Compression(e.to_string()))?;
    if out.len() > limit {
        return Err(ProtoError::BatchTooLarge { limit });
    }
    Ok(out)
}

thread_local! {
    /// One zstd decompression context per thread, reused across batches.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::CommentGenerator;

    fn events(n: usize) -> Vec<pb::Event> {
        CommentGenerator::new(7).events(n, 1_700_000_000_000)
    }

    #[test]
    fn the_compact_layout_is_smaller_and_reads_back_the_same() {
        let mut events = crate::sample::CommentGenerator::new(5).events(200, 1_796_650_800_000);
        for (i, e) in events.iter_mut().enumerate() {
            e.id = format!("{:011x}{:08x}{i:08x}", e.ts_ms, 0x3f2a_91c4u32);
        }
        let mut enc = BatchEncoder::new(3, DEFAULT_COMPRESS_THRESHOLD).unwrap();
        let plain = enc.encode("room:1", &events).unwrap();
        let compact = enc.encode_as("room:1", &events, ENCODING_COMPACT).unwrap();
        assert_eq!(compact.encoding, ENCODING_COMPACT);
        assert_eq!(decode_batch(&compact, &Limits::default()).unwrap(), events);
        assert!(
            compact.payload.len() * 10 < plain.payload.len() * 9,
            "compact {} B vs plain {} B",
            compact.payload.len(),
            plain.payload.len()
        );
        // A layout this build does not know is refused, not misread.
        let unknown = pb::Batch {
            encoding: 2,
            ..compact
        };
        assert_eq!(
            decode_batch(&unknown, &Limits::default()),
            Err(ProtoError::UnknownEncoding(2))
        );
    }

    #[test]
    fn small_batches_stay_raw_and_big_ones_compress() {
        let mut enc = BatchEncoder::default();
        let small = enc.encode("room:1", &events(1)).unwrap();
        assert_eq!(small.codec, Codec::Raw as i32);
        let big = enc.encode("room:1", &events(200)).unwrap();
        assert_eq!(big.codec, Codec::Zstd as i32);
        assert!(big.payload.len() < enc.last_raw_len());
        assert_eq!(decode_batch(&big, &Limits::default()).unwrap(), events(200));
    }

    #[test]
    fn refuses_too_many_events() {
        let mut enc = BatchEncoder::default();
        let b = enc.encode("room:1", &events(20)).unwrap();
        let limits = Limits {
            max_batch_events: 10,
            ..Limits::default()
        };
        assert_eq!(decode_batch(&b, &limits).unwrap_err().code(), "bad_batch");
    }

    #[test]
    fn refuses_decompression_bombs() {
        let zeros = vec![0u8; 1 << 20];
        let payload = zstd::bulk::compress(&zeros, 3).unwrap();
        assert!(payload.len() < 1000);
        let b = pb::Batch {
            channel: "room:1".into(),
            codec: Codec::Zstd as i32,
            dict_id: 0,
            count: 1,
            payload: payload.into(),
            ..Default::default()
        };
        let limits = Limits {
            max_batch_raw_bytes: 64 << 10,
            ..Limits::default()
        };
        assert_eq!(
            decode_batch(&b, &limits).unwrap_err(),
            ProtoError::BatchTooLarge { limit: 64 << 10 }
        );
    }

    #[test]
    fn count_must_match() {
        let mut enc = BatchEncoder::default();
        let mut b = enc.encode("room:1", &events(3)).unwrap();
        b.count = 2;
        assert_eq!(
            decode_batch(&b, &Limits::default()).unwrap_err().code(),
            "bad_batch"
        );
        b.count = 4;
        assert_eq!(
            decode_batch(&b, &Limits::default()).unwrap_err().code(),
            "bad_batch"
        );
    }

    #[test]
    fn unknown_codec_is_refused() {
        let b = pb::Batch {
            codec: 9,
            ..Default::default()
        };
        assert_eq!(
            decode_batch(&b, &Limits::default()).unwrap_err(),
            ProtoError::UnknownCodec(9)
        );
    }
}
