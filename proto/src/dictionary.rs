//! zstd dictionaries for batch payloads.
//!
//! A tick of a small room holds a handful of events: zstd alone has nothing in
//! such a payload to match against, so it stays raw and every viewer reads
//! every byte. A dictionary trained on danmaku gives the compressor the
//! phrases, field layouts and entropy tables up front, so even a 3-event tick
//! shrinks (BENCHMARKS.md, "zstd dictionary").
//!
//! Dictionaries are numbered (`Batch.dict_id`) and built into both SDKs;
//! a client that negotiated `danmaku.v3.pb` reads dictionary 1. A number is
//! never reused for other bytes: a retrained dictionary gets the next id and
//! a new subprotocol, so old clients keep reading what they know.
//!
//! `dict/danmaku-1.zdict` was trained by
//! `cargo run --release -p danmaku-proto --example train_dictionary` on
//! synthetic realistic danmaku ([`crate::sample`]) in the dense layout
//! ([`crate::batch::ENCODING_DENSE`]); its header carries id 1.

use std::sync::OnceLock;

use zstd::dict::DecoderDictionary;

/// `Batch.dict_id` of [`DANMAKU_1`].
pub const DICT_DANMAKU_1: u32 = 1;

/// Largest dictionary id this build knows.
pub const MAX_DICT_ID: u32 = DICT_DANMAKU_1;

/// Dictionary 1: 16 KiB trained on danmaku ticks in the dense layout.
pub static DANMAKU_1: &[u8] = include_bytes!("../dict/danmaku-1.zdict");

/// The bytes of dictionary `id`, if this build knows it (0 is "none").
pub fn bytes(id: u32) -> Option<&'static [u8]> {
    match id {
        DICT_DANMAKU_1 => Some(DANMAKU_1),
        _ => None,
    }
}

/// Dictionary `id` digested for decompression, once per process (digesting
/// 16 KiB costs more than decoding a small batch).
pub(crate) fn decoder(id: u32) -> Option<&'static DecoderDictionary<'static>> {
    static DANMAKU_1_DECODER: OnceLock<DecoderDictionary<'static>> = OnceLock::new();
    match id {
        DICT_DANMAKU_1 => {
            Some(DANMAKU_1_DECODER.get_or_init(|| DecoderDictionary::copy(DANMAKU_1)))
        }
        _ => None,
    }
}

/// The id a trained dictionary's header carries (bytes 4..8, little endian),
/// or `None` for bytes that are not a zstd dictionary.
pub fn header_id(dict: &[u8]) -> Option<u32> {
    const MAGIC: [u8; 4] = 0xEC30_A437u32.to_le_bytes();
    (dict.len() >= 8 && dict[..4] == MAGIC)
        .then(|| u32::from_le_bytes([dict[4], dict[5], dict[6], dict[7]]))
}

/// Sets the id in a trained dictionary's header: the trainer draws a random
/// one, and zstd writes it into every frame and checks it when decoding, so
/// the header must say the number the dictionary is published under.
pub fn set_header_id(dict: &mut [u8], id: u32) -> bool {
    if header_id(dict).is_none() {
        return false;
    }
    dict[4..8].copy_from_slice(&id.to_le_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_dictionary_is_a_zstd_dictionary_published_under_its_id() {
        assert_eq!(header_id(DANMAKU_1), Some(DICT_DANMAKU_1));
        assert_eq!(bytes(DICT_DANMAKU_1), Some(DANMAKU_1));
        assert_eq!(bytes(0), None);
        assert_eq!(bytes(MAX_DICT_ID + 1), None);
        assert!(decoder(DICT_DANMAKU_1).is_some());
        assert!(decoder(2).is_none());
        // zstd accepts it as a dictionary (not as raw content).
        let c = zstd::bulk::Compressor::with_dictionary(3, DANMAKU_1);
        assert!(c.is_ok());
    }

    #[test]
    fn header_ids_are_read_and_set_only_on_dictionaries() {
        let mut d = DANMAKU_1.to_vec();
        assert!(set_header_id(&mut d, 7));
        assert_eq!(header_id(&d), Some(7));
        let mut raw = b"not a dictionary".to_vec();
        assert!(!set_header_id(&mut raw, 7));
        assert_eq!(raw, b"not a dictionary");
        assert_eq!(header_id(&[]), None);
    }
}
