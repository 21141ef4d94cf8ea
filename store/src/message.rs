//! The records of the reliable lane as every backend reads and writes them:
//! a message to append, the answer, a stored message (and the event it stands
//! for), group members and unread counts.

use std::collections::BTreeMap;

use danmaku_proto::pb;

use crate::error::StoreError;

/// The most messages one [`Store::read_after`] call returns; larger limits are capped.
pub const MAX_READ_LIMIT: usize = 1000;

/// A message to persist on the reliable lane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// The channel name, e.g. `group:7` or `room:42`.
    pub channel: String,
    /// The sender's idempotency key; `None` disables deduplication for this message.
    pub client_msg_id: Option<String>,
    /// The sending user.
    pub sender: String,
    /// `gift`, `chat`, … (not interpreted by the store).
    pub kind: String,
    pub text: String,
    /// Extra JSON chosen by the sender, stored verbatim.
    pub payload_json: Option<String>,
    /// The id of a blob the message carries (notify-pull); ingest checked it exists.
    /// Part of the body for idempotency: the same key with another blob conflicts.
    pub blob: Option<String>,
    /// When ingest accepted the message (milliseconds since the Unix epoch).
    pub ts_ms: i64,
}

/// The answer to [`Store::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The message's `seq` in its channel (the original one for a duplicate).
    pub seq: u64,
    /// True when the same sender already stored this message under the same
    /// `client_msg_id`: nothing new was written.
    pub duplicate: bool,
    /// The stored message's timestamp (the original one for a duplicate).
    pub ts_ms: i64,
}

/// A persisted message, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub channel: String,
    pub seq: u64,
    pub client_msg_id: Option<String>,
    pub sender: String,
    pub kind: String,
    pub text: String,
    pub payload_json: Option<String>,
    pub blob: Option<String>,
    pub ts_ms: i64,
}

impl StoredMessage {
    /// The event this message stands for: what ingest published for it, and
    /// what an edge sends from the store (gap fills, resume, missed messages).
    /// Kinds are stored by their protocol names; one the protocol does not
    /// know reads as `Unspecified`. An absent id, payload or blob is empty.
    pub fn into_event(self) -> pb::Event {
        pb::Event {
            kind: pb::Kind::from_name(&self.kind).unwrap_or(pb::Kind::Unspecified) as i32,
            sender: self.sender,
            text: self.text,
            ts_ms: self.ts_ms,
            seq: self.seq,
            payload_json: self.payload_json.unwrap_or_default(),
            client_msg_id: self.client_msg_id.unwrap_or_default(),
            blob: self.blob.unwrap_or_default(),
            ..Default::default()
        }
    }
}

/// One member of a group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Member {
    pub user: String,
    /// The group's `last_seq` when the user joined; the user sees only later messages.
    pub joined_seq: u64,
}

/// A user's unread counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unread {
    /// The sum over `channels`.
    pub total: u64,
    /// Every channel the user follows — the groups they belong to and the channels
    /// they have acked — with its unread count, zeros included (so a client can clear a
    /// badge).
    pub channels: BTreeMap<String, u64>,
}

/// Checks the fields every backend relies on.
pub(crate) fn validate(message: &NewMessage) -> Result<(), StoreError> {
    if message.channel.is_empty() {
        return Err(StoreError::Invalid("empty channel".into()));
    }
    if message.client_msg_id.as_deref() == Some("") {
        return Err(StoreError::Invalid("empty client_msg_id".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_message_is_the_event_ingest_published() {
        let m = StoredMessage {
            channel: "room:1".into(),
            seq: 7,
            client_msg_id: Some("c-1".into()),
            sender: "alice".into(),
            kind: "gift".into(),
            text: "rocket".into(),
            payload_json: None,
            blob: Some("ab".repeat(32)),
            ts_ms: 1_700_000_000_000,
        };
        assert_eq!(
            m.clone().into_event(),
            pb::Event {
                kind: pb::Kind::Gift as i32,
                sender: "alice".into(),
                text: "rocket".into(),
                ts_ms: 1_700_000_000_000,
                seq: 7,
                payload_json: String::new(),
                client_msg_id: "c-1".into(),
                blob: "ab".repeat(32),
                ..Default::default()
            }
        );
        let odd = StoredMessage {
            kind: "sticker".into(),
            ..m
        };
        assert_eq!(odd.into_event().kind, pb::Kind::Unspecified as i32);
    }
}
