//! Danmaku ids: what a moderator names to take a comment back.
//!
//! Danmaku are not stored, so their id must be unique across ingest nodes
//! without asking anyone: 27 lowercase hex digits, the accept time in ms (11
//! digits, enough until the year 5138), a tag drawn at random when the node
//! starts (8 digits) and the node's counter (8 digits). Two nodes collide only
//! if they draw the same 32-bit tag AND reach the same counter in the same
//! millisecond. The time inside lets a retraction refuse ids too old to be on
//! anyone's screen (`404 unknown_message`) without any memory of issued ids.
//! Gifts and chat messages are named by their `seq` (decimal) instead.

use std::sync::atomic::{AtomicU32, Ordering};

/// Hex digits of a danmaku id.
pub const DANMAKU_ID_LEN: usize = 27;

/// What a `DELETE /v1/channels/{channel}/messages/{id}` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageRef {
    /// A gift or chat message by its seq.
    Seq(u64),
    /// A danmaku, accepted at `ts_ms`.
    Danmaku { ts_ms: i64 },
}

impl MessageRef {
    /// Parses an id: 1–20 decimal digits (a seq, at least 1) or a danmaku id.
    pub fn parse(id: &str) -> Option<Self> {
        if (1..=20).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit()) {
            return id.parse().ok().filter(|&s| s > 0).map(MessageRef::Seq);
        }
        if id.len() == DANMAKU_ID_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return i64::from_str_radix(&id[..11], 16)
                .ok()
                .map(|ts_ms| MessageRef::Danmaku { ts_ms });
        }
        None
    }
}

/// Issues this node's danmaku ids.
#[derive(Debug)]
pub struct MessageIds {
    tag: u32,
    next: AtomicU32,
}

impl Default for MessageIds {
    fn default() -> Self {
        MessageIds {
            tag: rand::random(),
            next: AtomicU32::new(0),
        }
    }
}

impl MessageIds {
    /// The id of a danmaku accepted at `ts_ms`.
    pub fn next(&self, ts_ms: i64) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{:011x}{:08x}{n:08x}", ts_ms.max(0), self.tag)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn ids_are_unique_per_node_and_read_back_their_time() {
        let (a, b) = (MessageIds::default(), MessageIds::default());
        let ts = 1_796_650_800_000;
        let ids: HashSet<String> = (0..1000).flat_map(|_| [a.next(ts), b.next(ts)]).collect();
        assert_eq!(ids.len(), 2000);
        for id in &ids {
            assert_eq!(id.len(), DANMAKU_ID_LEN);
            assert_eq!(
                MessageRef::parse(id),
                Some(MessageRef::Danmaku { ts_ms: ts })
            );
        }
    }

    #[test]
    fn seqs_and_bad_ids() {
        assert_eq!(MessageRef::parse("18"), Some(MessageRef::Seq(18)));
        for bad in [
            "",
            "0",
            "-1",
            "1.5",
            "abc",
            "99999999999999999999",
            "0190A1B2C3D4E5F60718293A4B0",
            "0190a1b2c3d4e5f60718293a4b",
            "0190a1b2c3d4e5f60718293a4bg",
        ] {
            assert_eq!(MessageRef::parse(bad), None, "{bad}");
        }
    }
}
