//! What both backends share below the [`Store`](crate::Store) trait: number
//! conversions to and from BIGINT, row decoding, the answer to a duplicate
//! append, the SQL text they run word for word, and the one thing the shared
//! queries need of a driver ([`Backend`]).

use sqlx::Database;

use crate::error::StoreError;
use crate::message::{Appended, NewMessage, StoredMessage, Unread};

/// What the shared queries need of a backend's driver beyond [`Database`].
pub(crate) trait Backend: Database {
    /// Rows a statement changed (each driver has it, but not through a trait).
    fn rows_affected(result: &Self::QueryResult) -> u64;
}

impl Backend for sqlx::Sqlite {
    fn rows_affected(result: &Self::QueryResult) -> u64 {
        result.rows_affected()
    }
}

impl Backend for sqlx::Postgres {
    fn rows_affected(result: &Self::QueryResult) -> u64 {
        result.rows_affected()
    }
}

/// A `seq` or limit as the databases store it (BIGINT); values past `i64::MAX` saturate.
pub(crate) fn to_db(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A stored `seq` as the API exposes it (never negative).
pub(crate) fn from_db(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Columns of [`queries::FIND_CLIENT_MSG`]: seq, ts_ms, kind, text, payload_json, blob.
pub(crate) type ClientMsgRow = (i64, i64, String, String, Option<String>, Option<String>);

/// The answer to an append whose idempotency key is already stored as `row`: the
/// original seq when the bodies match, else [`StoreError::IdempotencyConflict`].
pub(crate) fn answer_duplicate(m: &NewMessage, row: ClientMsgRow) -> Result<Appended, StoreError> {
    let (seq, ts_ms, kind, text, payload_json, blob) = row;
    // The blob is part of the body: the same key with another blob is another message.
    if kind != m.kind || text != m.text || payload_json != m.payload_json || blob != m.blob {
        return Err(StoreError::IdempotencyConflict {
            channel: m.channel.clone(),
            client_msg_id: m.client_msg_id.clone().unwrap_or_default(),
            seq: from_db(seq),
        });
    }
    Ok(Appended {
        seq: from_db(seq),
        duplicate: true,
        ts_ms,
    })
}

/// Columns of `messages` in the order [`queries::READ_AFTER`] selects them.
pub(crate) type MessageRow = (
    i64,
    Option<String>,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    i64,
);

pub(crate) fn message_from_row(channel: &str, row: MessageRow) -> StoredMessage {
    let (seq, client_msg_id, sender, kind, text, payload_json, blob, ts_ms) = row;
    StoredMessage {
        channel: channel.to_owned(),
        seq: from_db(seq),
        client_msg_id,
        sender,
        kind,
        text,
        payload_json,
        blob,
        ts_ms,
    }
}

/// Rows of [`queries::UNREAD`]: channel, last_seq, acked_seq, joined_seq.
pub(crate) fn unread_from_rows(rows: Vec<(String, i64, i64, i64)>) -> Unread {
    let mut unread = Unread::default();
    for (channel, last_seq, acked, joined) in rows {
        let n = from_db(last_seq).saturating_sub(from_db(acked.max(joined)));
        unread.total += n;
        unread.channels.insert(channel, n);
    }
    unread
}

/// SQL text shared by both backends (`$N` placeholders work in SQLite too, bound by
/// number). Backend-specific statements live in their modules.
pub(crate) mod queries {
    /// Binds channel, sender, client_msg_id (the idempotency key).
    pub const FIND_CLIENT_MSG: &str = "SELECT seq, ts_ms, kind, text, payload_json, blob \
         FROM messages WHERE channel = $1 AND sender = $2 AND client_msg_id = $3";

    pub const READ_AFTER: &str = "SELECT seq, client_msg_id, sender, kind, text, payload_json, blob, ts_ms \
         FROM messages WHERE channel = $1 AND seq > $2 ORDER BY seq LIMIT $3";

    pub const LAST_SEQ: &str = "SELECT last_seq FROM channel_seq WHERE channel = $1";

    pub const JOIN: &str = "INSERT INTO members (channel, user_id, joined_seq) \
         VALUES ($1, $2, COALESCE((SELECT last_seq FROM channel_seq WHERE channel = $1), 0)) \
         ON CONFLICT (channel, user_id) DO UPDATE SET joined_seq = members.joined_seq \
         RETURNING joined_seq";

    pub const IS_MEMBER: &str =
        "SELECT joined_seq FROM members WHERE channel = $1 AND user_id = $2";

    pub const LEAVE: &str = "DELETE FROM members WHERE channel = $1 AND user_id = $2";

    pub const FORGET_ACK: &str = "DELETE FROM acks WHERE channel = $1 AND user_id = $2";

    pub const MEMBERS: &str =
        "SELECT user_id, joined_seq FROM members WHERE channel = $1 ORDER BY user_id";

    pub const ACKED: &str = "SELECT acked_seq FROM acks WHERE user_id = $1 AND channel = $2";

    pub const UNREAD: &str = "SELECT c.channel, COALESCE(s.last_seq, 0), \
         COALESCE(a.acked_seq, 0), COALESCE(m.joined_seq, 0) \
         FROM (SELECT channel FROM members WHERE user_id = $1 \
               UNION SELECT channel FROM acks WHERE user_id = $1) AS c \
         LEFT JOIN channel_seq AS s ON s.channel = c.channel \
         LEFT JOIN acks AS a ON a.user_id = $1 AND a.channel = c.channel \
         LEFT JOIN members AS m ON m.user_id = $1 AND m.channel = c.channel";
}
