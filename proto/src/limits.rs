//! Bounds applied by every decoder. One struct so a server and its clients agree
//! on them, and so tests can shrink them.

/// Upper bounds on what a decoder accepts. The defaults are generous for real
/// traffic (a 200-character comment is ~600 bytes) and small enough that a
/// hostile peer cannot make a decoder allocate much.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest encoded frame accepted from a peer, in bytes. Default 1 MiB.
    pub max_frame_bytes: usize,
    /// Most events in one batch. Default 10,000.
    pub max_batch_events: usize,
    /// Largest decompressed batch payload, in bytes. Default 8 MiB.
    pub max_batch_raw_bytes: usize,
    /// Longest string field (channel, sender, text, token...), in bytes. Default 8 KiB.
    pub max_string_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 1 << 20,
            max_batch_events: 10_000,
            max_batch_raw_bytes: 8 << 20,
            max_string_bytes: 8 << 10,
        }
    }
}

impl Limits {
    /// Checks one string field against `max_string_bytes`.
    pub fn check_str(&self, field: &'static str, s: &str) -> Result<(), crate::error::ProtoError> {
        if s.len() > self.max_string_bytes {
            return Err(crate::error::ProtoError::StringTooLong {
                field,
                len: s.len(),
                limit: self.max_string_bytes,
            });
        }
        Ok(())
    }
}
