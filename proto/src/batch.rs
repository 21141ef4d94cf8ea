//! The batch codec: a channel's events of one tick become ONE payload, encoded
//! and compressed once, then shared by every member of the channel.
//!
//! Payload = length-delimited `Event`s; above `compress_threshold` bytes it is
//! zstd-compressed (danmaku text is short and repetitive, so it shrinks well).
//! Decoding is bounded: event count, decompressed size and string lengths.

use bytes::{Buf, Bytes, BytesMut};
use prost::Message;

use zstd::dict::DecoderDictionary;

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

/// `Batch.encoding`: the compact layout, and a danmaku id that continues the
/// previous danmaku id's node counter sent as `""` (counter + 1) or
/// `"+<difference>"`. A node's counter runs over all its rooms, so in a busy
/// room consecutive ids differ by small gaps: 8 hex digits zstd cannot
/// predict become one or two it can (~2 B per event at 300 events a tick).
/// Only on `danmaku.v3.pb`, with [`crate::dictionary::DICT_DANMAKU_1`].
pub const ENCODING_DENSE: u32 = 2;

/// Highest `Batch.encoding` this build reads.
pub const MAX_ENCODING: u32 = ENCODING_DENSE;

/// How a tick is laid out and compressed for one kind of reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// Events as they are, zstd without a dictionary (`danmaku.v1.pb`, QUIC).
    Plain,
    /// [`ENCODING_COMPACT`] (`danmaku.v2.pb`).
    Compact,
    /// [`ENCODING_DENSE`] compressed with dictionary 1 (`danmaku.v3.pb`).
    Dense,
}

impl Layout {
    pub const ALL: [Layout; 3] = [Layout::Plain, Layout::Compact, Layout::Dense];

    /// The `Batch.encoding` this layout asks for (a tick that cannot be laid
    /// out so goes in a simpler one: see [`BatchEncoder::encode_layout`]).
    pub fn encoding(self) -> u32 {
        match self {
            Layout::Plain => ENCODING_PLAIN,
            Layout::Compact => ENCODING_COMPACT,
            Layout::Dense => ENCODING_DENSE,
        }
    }

    /// The dictionary its payloads are compressed with (0: none).
    pub fn dict_id(self) -> u32 {
        match self {
            Layout::Dense => crate::dictionary::DICT_DANMAKU_1,
            _ => 0,
        }
    }

    /// Position in [`Layout::ALL`], for per-layout arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Hex digits of the time at the start of a danmaku id (ingest's `message_id.rs`).
const ID_TIME_DIGITS: usize = 11;
/// Hex digits of a danmaku id after its time: node tag (8) and counter (8).
const ID_TAIL_DIGITS: usize = 16;

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
    if id.len() != ID_TIME_DIGITS + ID_TAIL_DIGITS || ts_ms < 0 {
        return false;
    }
    let mut hex = String::with_capacity(16);
    let _ = write!(hex, "{ts_ms:011x}");
    hex.len() == ID_TIME_DIGITS && id.as_bytes()[..ID_TIME_DIGITS] == *hex.as_bytes()
}

/// The node tag and counter of an id tail: 16 lowercase hex digits, exactly
/// what `format!("{tag:08x}{n:08x}")` writes back.
fn id_tail(tail: &str) -> Option<(u32, u32)> {
    let b = tail.as_bytes();
    if b.len() != ID_TAIL_DIGITS || !b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let tag = u32::from_str_radix(&tail[..8], 16).ok()?;
    let n = u32::from_str_radix(&tail[8..], 16).ok()?;
    Some((tag, n))
}

/// `events` laid out as `encoding` ([`ENCODING_COMPACT`] or
/// [`ENCODING_DENSE`]), or `None` when a danmaku's own id could be misread as
/// a shortened one (no id ingest issues: 16 characters, or for dense empty or
/// starting with `+`); the caller then takes the next simpler layout.
fn compact(events: &[pb::Event], encoding: u32) -> Option<Vec<pb::Event>> {
    let danmaku = pb::Kind::Danmaku as i32;
    let dense = encoding == ENCODING_DENSE;
    if events.iter().any(|e| {
        e.kind == danmaku
            && (e.id.len() == ID_TAIL_DIGITS
                || (dense && (e.id.is_empty() || e.id.starts_with('+'))))
    }) {
        return None;
    }
    let mut prev_ts = 0i64;
    let mut prev_id: Option<(u32, u32)> = None;
    let out = events
        .iter()
        .map(|e| {
            let mut c = e.clone();
            c.ts_ms = zigzag(e.ts_ms.wrapping_sub(prev_ts));
            prev_ts = e.ts_ms;
            if e.kind == danmaku && id_time_prefix(&e.id, e.ts_ms) {
                c.id.drain(..ID_TIME_DIGITS);
                if dense && let Some((tag, n)) = id_tail(&c.id) {
                    if let Some((ptag, pn)) = prev_id
                        && ptag == tag
                        && n > pn
                    {
                        c.id.clear();
                        if n - pn > 1 {
                            use std::fmt::Write;
                            let _ = write!(c.id, "+{}", n - pn);
                        }
                    }
                    prev_id = Some((tag, n));
                }
            }
            c
        })
        .collect();
    Some(out)
}

/// Undoes [`compact`] in place. Never fails or panics, whatever the input: a
/// hostile delta wraps, an id of another length or a counter step without a
/// counter before it is left as it is.
fn expand(events: &mut [pb::Event], encoding: u32) {
    let dense = encoding == ENCODING_DENSE;
    let mut prev_ts = 0i64;
    let mut prev_id: Option<(u32, u32)> = None;
    for e in events {
        e.ts_ms = prev_ts.wrapping_add(unzigzag(e.ts_ms));
        prev_ts = e.ts_ms;
        if e.kind != pb::Kind::Danmaku as i32 || e.ts_ms < 0 {
            continue;
        }
        if dense && (e.id.is_empty() || e.id.starts_with('+')) {
            let step = if e.id.is_empty() {
                Some(1)
            } else {
                let digits = &e.id[1..];
                (!digits.is_empty()
                    && digits.len() <= 10
                    && digits.bytes().all(|b| b.is_ascii_digit()))
                .then(|| digits.parse::<u32>().ok())
                .flatten()
            };
            let Some(((tag, pn), step)) = prev_id.zip(step) else {
                continue;
            };
            let Some(n) = pn.checked_add(step) else {
                continue;
            };
            e.id = format!("{:011x}{tag:08x}{n:08x}", e.ts_ms);
            prev_id = Some((tag, n));
        } else if e.id.len() == ID_TAIL_DIGITS {
            if dense && let Some(tail) = id_tail(&e.id) {
                prev_id = Some(tail);
            }
            let tail = std::mem::take(&mut e.id);
            e.id = format!("{:011x}{tail}", e.ts_ms);
        }
    }
}

/// Payloads laid out for a dictionary reader are compressed from this size
/// up: with the dictionary even a one-comment tick shrinks (a zstd frame
/// header without dictionary id or checksum is 2–6 bytes); the smaller of the
/// two is sent.
pub const DICT_COMPRESS_THRESHOLD: usize = 16;

/// Builds batches. Holds reusable zstd contexts, so keep one per thread or
/// task rather than one per batch.
pub struct BatchEncoder {
    compressor: zstd::bulk::Compressor<'static>,
    /// With dictionary 1 loaded, made at the first [`Layout::Dense`] tick.
    dict_compressor: Option<zstd::bulk::Compressor<'static>>,
    level: i32,
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
            dict_compressor: None,
            level,
            threshold,
            scratch: BytesMut::new(),
        })
    }

    /// Encodes `events` of `channel` into one batch.
    pub fn encode(&mut self, channel: &str, events: &[pb::Event]) -> Result<pb::Batch, ProtoError> {
        self.encode_as(channel, events, ENCODING_PLAIN)
    }

    /// Encodes `events` of `channel` into one batch laid out as `encoding`
    /// ([`ENCODING_PLAIN`], [`ENCODING_COMPACT`] or [`ENCODING_DENSE`]),
    /// compressed without a dictionary.
    pub fn encode_as(
        &mut self,
        channel: &str,
        events: &[pb::Event],
        encoding: u32,
    ) -> Result<pb::Batch, ProtoError> {
        if encoding > MAX_ENCODING {
            return Err(ProtoError::UnknownEncoding(encoding));
        }
        self.encode_with(channel, events, encoding, 0)
    }

    /// Encodes `events` of `channel` for readers of `layout`: laid out as it
    /// asks when the tick allows (else the next simpler layout, which every
    /// reader of it also reads) and, for [`Layout::Dense`], compressed with
    /// its dictionary.
    pub fn encode_layout(
        &mut self,
        channel: &str,
        events: &[pb::Event],
        layout: Layout,
    ) -> Result<pb::Batch, ProtoError> {
        self.encode_with(channel, events, layout.encoding(), layout.dict_id())
    }

    fn encode_with(
        &mut self,
        channel: &str,
        events: &[pb::Event],
        encoding: u32,
        dict_id: u32,
    ) -> Result<pb::Batch, ProtoError> {
        self.scratch.clear();
        let mut encoding = encoding;
        let mut compacted = None;
        while encoding > ENCODING_PLAIN {
            compacted = compact(events, encoding);
            if compacted.is_some() {
                break;
            }
            encoding -= 1;
        }
        for ev in compacted.as_deref().unwrap_or(events) {
            ev.encode_length_delimited(&mut self.scratch)
                .map_err(|e| ProtoError::Malformed(e.to_string()))?;
        }
        let compress = |c: &mut zstd::bulk::Compressor<'static>, raw: &[u8]| {
            c.compress(raw)
                .map_err(|e| ProtoError::Compression(e.to_string()))
        };
        let (codec, payload, dict_id) = match crate::dictionary::bytes(dict_id) {
            Some(dict) if self.scratch.len() >= DICT_COMPRESS_THRESHOLD => {
                let c = match &mut self.dict_compressor {
                    Some(c) => c,
                    slot => slot.insert(dict_compressor(self.level, dict)?),
                };
                let compressed = compress(c, &self.scratch)?;
                if compressed.len() < self.scratch.len() {
                    (Codec::Zstd, Bytes::from(compressed), dict_id)
                } else {
                    (Codec::Raw, Bytes::copy_from_slice(&self.scratch), 0)
                }
            }
            _ if self.scratch.len() > self.threshold => {
                let compressed = compress(&mut self.compressor, &self.scratch)?;
                (Codec::Zstd, Bytes::from(compressed), 0)
            }
            _ => (Codec::Raw, Bytes::copy_from_slice(&self.scratch), 0),
        };
        let mut seqs = events.iter().map(|e| e.seq).filter(|&s| s > 0);
        let first_seq = seqs.next().unwrap_or(0);
        let last_seq = seqs.next_back().unwrap_or(first_seq);
        Ok(pb::Batch {
            channel: channel.to_owned(),
            codec: codec as i32,
            dict_id,
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

/// A compressor with `dict` loaded once (zstd keeps it across frames). The
/// dictionary id is left out of each frame: `Batch.dict_id` names it already.
fn dict_compressor(level: i32, dict: &[u8]) -> Result<zstd::bulk::Compressor<'static>, ProtoError> {
    let err = |e: std::io::Error| ProtoError::Compression(e.to_string());
    let mut c = zstd::bulk::Compressor::with_dictionary(level, dict).map_err(err)?;
    c.set_parameter(zstd::zstd_safe::CParameter::DictIdFlag(false))
        .map_err(err)?;
    Ok(c)
}

impl Default for BatchEncoder {
    fn default() -> Self {
        // Level 3 always exists; `new` only fails on invalid levels.
        Self::new(3, DEFAULT_COMPRESS_THRESHOLD).expect("zstd level 3 is valid")
    }
}

/// Opens a batch: decompresses (bounded) and decodes its events.
pub fn decode_batch(batch: &pb::Batch, limits: &Limits) -> Result<Vec<pb::Event>, ProtoError> {
    if batch.encoding > MAX_ENCODING {
        return Err(ProtoError::UnknownEncoding(batch.encoding));
    }
    let dict = match batch.dict_id {
        0 => None,
        id => Some(crate::dictionary::decoder(id).ok_or(ProtoError::UnknownDictionary(id))?),
    };
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
            dict.map(|d| (batch.dict_id, d)),
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
    if batch.encoding != ENCODING_PLAIN {
        expand(&mut events, batch.encoding);
    }
    Ok(events)
}

fn decompress_bounded(
    data: &[u8],
    limit: usize,
    dict: Option<(u32, &'static DecoderDictionary<'static>)>,
) -> Result<Vec<u8>, ProtoError> {
    let err = |e: std::io::Error| ProtoError::Compression(e.to_string());
    // Our encoder records the content size in the frame header: then one reused
    // context decompresses straight into an exact-size buffer (making a context
    // costs more than decoding a small batch). Frames without a size, or claiming
    // more than the limit, take the streaming path that never holds over limit + 1.
    if let Ok(Some(size)) = zstd::zstd_safe::get_frame_content_size(data) {
        if size > limit as u64 {
            return Err(ProtoError::BatchTooLarge { limit });
        }
        return DECOMPRESSORS.with(|cell| {
            let mut slots = cell.borrow_mut();
            let key = dict.map_or(0, |(id, _)| id);
            let dctx = match slots.iter_mut().position(|(k, _)| *k == key) {
                Some(i) => &mut slots[i].1,
                None => {
                    let d = match dict {
                        Some((_, dict)) => zstd::bulk::Decompressor::with_prepared_dictionary(dict),
                        None => zstd::bulk::Decompressor::new(),
                    }
                    .map_err(err)?;
                    slots.push((key, d));
                    &mut slots.last_mut().expect("just pushed").1
                }
            };
            dctx.decompress(data, size as usize).map_err(err)
        });
    }
    use std::io::Read;
    let decoder: Box<dyn Read> = match dict {
        Some((_, dict)) => Box::new(
            zstd::stream::read::Decoder::with_prepared_dictionary(data, dict).map_err(err)?,
        ),
        None => Box::new(zstd::stream::read::Decoder::new(data).map_err(err)?),
    };
    let mut out = Vec::new();
    decoder
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(err)?;
    if out.len() > limit {
        return Err(ProtoError::BatchTooLarge { limit });
    }
    Ok(out)
}

/// One zstd decompression context per thread and dictionary id (0: none),
/// reused across batches.
type Decompressors = Vec<(u32, zstd::bulk::Decompressor<'static>)>;

thread_local! {
    static DECOMPRESSORS: std::cell::RefCell<Decompressors> =
        const { std::cell::RefCell::new(Vec::new()) };
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
            encoding: 3,
            ..compact
        };
        assert_eq!(
            decode_batch(&unknown, &Limits::default()),
            Err(ProtoError::UnknownEncoding(3))
        );
    }

    /// Danmaku as ingest ids them: node `tags[i % tags.len()]`, its counter
    /// stepping by `step`.
    fn ingest_ids(events: &mut [pb::Event], tags: &[u32], step: u32) {
        let mut counters = vec![0x0001_0000u32; tags.len()];
        for (i, e) in events.iter_mut().enumerate() {
            let node = i % tags.len();
            counters[node] += step;
            e.id = format!("{:011x}{:08x}{:08x}", e.ts_ms, tags[node], counters[node]);
        }
    }

    #[test]
    fn the_dense_layout_sends_counter_steps_and_reads_back_the_same() {
        let mut events = events(60);
        ingest_ids(&mut events[..30], &[0x3f2a_91c4], 1);
        ingest_ids(&mut events[30..], &[0x3f2a_91c4, 0x8b10_77e2], 3);
        events[40].kind = pb::Kind::Gift as i32;
        events[40].seq = 9;
        let mut enc = BatchEncoder::new(3, usize::MAX).unwrap();
        let dense = enc.encode_as("room:1", &events, ENCODING_DENSE).unwrap();
        assert_eq!(dense.encoding, ENCODING_DENSE);
        assert_eq!(dense.codec, Codec::Raw as i32);
        let mut raw = dense.payload.clone();
        let wire: Vec<pb::Event> = (0..60)
            .map(|_| pb::Event::decode_length_delimited(&mut raw).unwrap())
            .collect();
        // One node counting by one: every id after the first is empty.
        assert_eq!(wire[0].id.len(), ID_TAIL_DIGITS);
        assert!(
            wire[1..30].iter().all(|e| e.id.is_empty()),
            "{:?}",
            &wire[1..30]
        );
        // Two nodes interleaved: each id follows the other node's, so it goes
        // whole; the gift in between is not a danmaku and keeps its own id.
        assert!(wire[31..40].iter().all(|e| e.id.len() == ID_TAIL_DIGITS));
        assert_eq!(decode_batch(&dense, &Limits::default()).unwrap(), events);
        let compact = enc.encode_as("room:1", &events, ENCODING_COMPACT).unwrap();
        assert!(dense.payload.len() + 29 * 17 <= compact.payload.len() + 29);
        // Gaps within one node go as "+<gap>".
        let mut gaps = self::events(10);
        ingest_ids(&mut gaps, &[7], 12);
        let b = enc.encode_as("room:1", &gaps, ENCODING_DENSE).unwrap();
        let mut raw = b.payload.clone();
        let wire: Vec<pb::Event> = (0..10)
            .map(|_| pb::Event::decode_length_delimited(&mut raw).unwrap())
            .collect();
        assert!(wire[1..].iter().all(|e| e.id == "+12"), "{wire:?}");
        assert_eq!(decode_batch(&b, &Limits::default()).unwrap(), gaps);
    }

    #[test]
    fn a_danmaku_id_that_looks_shortened_sends_the_tick_in_a_simpler_layout() {
        let mut events = events(5);
        ingest_ids(&mut events, &[7], 1);
        let mut enc = BatchEncoder::new(3, usize::MAX).unwrap();
        for (id, encoding) in [
            ("", ENCODING_COMPACT),
            ("+2", ENCODING_COMPACT),
            ("0123456789abcdef", ENCODING_PLAIN),
        ] {
            let mut odd = events.clone();
            odd[2].id = id.into();
            let b = enc.encode_layout("room:1", &odd, Layout::Dense).unwrap();
            assert_eq!(b.encoding, encoding, "id {id:?}");
            assert_eq!(decode_batch(&b, &Limits::default()).unwrap(), odd);
        }
    }

    #[test]
    fn hostile_dense_ids_are_left_as_they_are() {
        // As they arrive (ts_ms 0 = no delta): a step with no id before it, a
        // node counter at u32::MAX - 1, a step past u32::MAX, a step that is
        // not a number, then a plain "+1" step.
        let wire = ["+5", "00000007fffffffe", "+9", "+x1", ""];
        let mut payload = BytesMut::new();
        for id in wire {
            pb::Event {
                kind: pb::Kind::Danmaku as i32,
                id: id.into(),
                ..Default::default()
            }
            .encode_length_delimited(&mut payload)
            .unwrap();
        }
        let b = pb::Batch {
            count: wire.len() as u32,
            payload: payload.freeze(),
            encoding: ENCODING_DENSE,
            ..Default::default()
        };
        let ids: Vec<String> = decode_batch(&b, &Limits::default())
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        let t = "0".repeat(ID_TIME_DIGITS);
        assert_eq!(
            ids,
            [
                "+5".to_owned(),
                format!("{t}00000007fffffffe"),
                "+9".into(),
                "+x1".into(),
                format!("{t}00000007ffffffff"),
            ]
        );
    }

    #[test]
    fn dense_ticks_are_compressed_with_the_dictionary_even_when_small() {
        let mut events = events(3);
        ingest_ids(&mut events, &[7], 1);
        let mut enc = BatchEncoder::default();
        let plain = enc
            .encode_layout("room:1", &events, Layout::Compact)
            .unwrap();
        assert_eq!(
            plain.codec,
            Codec::Raw as i32,
            "3 events are below the threshold"
        );
        let dense = enc.encode_layout("room:1", &events, Layout::Dense).unwrap();
        assert_eq!(dense.codec, Codec::Zstd as i32);
        assert_eq!(dense.dict_id, crate::dictionary::DICT_DANMAKU_1);
        assert!(
            dense.payload.len() * 10 < plain.payload.len() * 8,
            "dense + dict {} B vs compact {} B",
            dense.payload.len(),
            plain.payload.len()
        );
        assert_eq!(decode_batch(&dense, &Limits::default()).unwrap(), events);
        // Without the dictionary, or with one this build does not know, the
        // payload is refused, never misread.
        for dict_id in [0, 2, u32::MAX] {
            let b = pb::Batch {
                dict_id,
                ..dense.clone()
            };
            assert_eq!(
                decode_batch(&b, &Limits::default()).unwrap_err().code(),
                "bad_compression",
                "dict {dict_id}"
            );
        }
        // One event of nothing is not worth a frame header: it goes raw.
        let tiny = [pb::Event::default()];
        let b = enc.encode_layout("room:1", &tiny, Layout::Dense).unwrap();
        assert_eq!((b.codec, b.dict_id), (Codec::Raw as i32, 0));
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
