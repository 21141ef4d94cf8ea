//! The store: where reliable-lane messages, group memberships and ack offsets live.
//!
//! [`Store`] is the interface; backends are chosen by URL in [`connect`]:
//!
//! * `embedded:PATH` — [`EmbeddedStore`], one SQLite file (WAL mode, so `PATH-wal` and
//!   `PATH-shm` sit beside it while it is open) for standalone mode. It survives a
//!   restart; one process writes at a time (other processes may open the same file and
//!   wait for the write lock).
//! * `postgres://…` (or `postgresql://…`) — [`PostgresStore`], shared by every ingest and
//!   edge process in distributed mode. Migrations are applied at connect.
//!
//! Both backends keep the same tables (`store/migrations/`) and run the same contract
//! suite (`store/tests/contract.rs`).
//!
//! # Sequence numbers
//!
//! Every channel has its own `seq`, starting at 1 and without gaps, assigned by
//! [`Store::append`] inside the transaction that stores the message: PostgreSQL locks the
//! channel's `channel_seq` row (`INSERT … ON CONFLICT DO UPDATE … RETURNING`, in the same
//! statement as the insert), SQLite takes the database write lock (`BEGIN IMMEDIATE`) and
//! group-commits the appends waiting at that moment. A failed append rolls its `seq`
//! back, so no number is ever skipped, however many processes append to one channel.
//!
//! A message may carry a `client_msg_id`, its sender's idempotency key: the key is
//! `(channel, sender, client_msg_id)`, so two users can never collide. A second append
//! with the same key and the same body (`kind`, `text`, `payload_json`) stores nothing
//! and answers the original `seq` with `duplicate: true`; one whose body differs is
//! refused with [`StoreError::IdempotencyConflict`] (the sender reused a key for a
//! different message: storing nothing and answering success would lose it).
//!
//! # Groups and offsets
//!
//! A group is a channel (`group:<id>`) with persistent membership. Joining records the
//! channel's `last_seq` at that moment as the member's `joined_seq`: a member sees only
//! messages after it ([`Store::read_after_for_member`]). Ack offsets are per user and
//! channel and only move forward; unread = `last_seq − max(acked, joined_seq)`.
//!
//! # Account policy
//!
//! Revoked tokens, user revocations and global blocks are kept as the
//! [`pb::AccountChange`]s that made them ([`Store::record_account_change`]), so
//! every ingest and edge can load them at start ([`Store::account_changes`]) and
//! rebuild its in-memory policy; see `account.rs` for how rows merge.

mod account;
mod embedded;
mod error;
mod membership;
mod migrations;
pub mod moderation;
mod postgres;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use danmaku_proto::pb;

pub use embedded::EmbeddedStore;
pub use error::StoreError;
pub use moderation::{
    AuditEntry, GLOBAL_SCOPE, ModerationAction, ModerationChange, Policy, RoomSettings,
    SettingsPatch,
};
pub use postgres::{PostgresStore, PostgresStoreConfig};

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
    pub ts_ms: i64,
}

impl StoredMessage {
    /// The event this message stands for: what ingest published for it, and
    /// what an edge sends from the store (gap fills, resume, missed messages).
    /// Kinds are stored by their protocol names; one the protocol does not
    /// know reads as `Unspecified`. An absent id or payload is empty.
    pub fn into_event(self) -> pb::Event {
        pb::Event {
            kind: pb::Kind::from_name(&self.kind).unwrap_or(pb::Kind::Unspecified) as i32,
            sender: self.sender,
            text: self.text,
            ts_ms: self.ts_ms,
            seq: self.seq,
            payload_json: self.payload_json.unwrap_or_default(),
            client_msg_id: self.client_msg_id.unwrap_or_default(),
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

/// Persistent state of the reliable lane. Object safe: services hold an
/// `Arc<dyn Store>` returned by [`connect`].
///
/// `group` arguments are channel names (`group:7`), the same id space as `channel`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short name for logs and metrics labels (`embedded`, `postgres`).
    fn backend(&self) -> &'static str;

    /// Checks that the database answers (for readiness checks).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Persists a message and assigns the channel's next `seq`, or returns the original
    /// `seq` (`duplicate: true`) when the same sender already stored the same body under
    /// this `client_msg_id` on this channel ([`StoreError::IdempotencyConflict`] when the
    /// stored body differs). When this returns `Ok`, the message is durable.
    async fn append(&self, message: NewMessage) -> Result<Appended, StoreError>;

    /// Messages with `seq > after_seq`, oldest first, at most `limit` (capped at
    /// [`MAX_READ_LIMIT`]). Page on with the last returned `seq`.
    async fn read_after(
        &self,
        channel: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError>;

    /// The highest `seq` of the channel; 0 when it has no message.
    async fn last_seq(&self, channel: &str) -> Result<u64, StoreError>;

    /// Adds `user` to `group` and returns their `joined_seq`: the group's `last_seq`
    /// now, or the original value when they are already a member.
    async fn join_group(&self, group: &str, user: &str) -> Result<u64, StoreError>;

    /// Removes `user` from `group` and forgets their ack offset there (a later join
    /// starts from the then-current `last_seq`). Returns whether they were a member.
    async fn leave_group(&self, group: &str, user: &str) -> Result<bool, StoreError>;

    /// `Some(joined_seq)` when `user` belongs to `group`.
    async fn is_member(&self, group: &str, user: &str) -> Result<Option<u64>, StoreError>;

    /// The group's members, ordered by user name.
    async fn members(&self, group: &str) -> Result<Vec<Member>, StoreError>;

    /// [`read_after`](Store::read_after) as seen by a group member: only messages after
    /// both `after_seq` and the member's `joined_seq`. [`StoreError::NotMember`] when
    /// `user` is not in `group`. Live rooms have no members: use `read_after` for them.
    async fn read_after_for_member(
        &self,
        group: &str,
        user: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let joined_seq =
            self.is_member(group, user)
                .await?
                .ok_or_else(|| StoreError::NotMember {
                    group: group.to_owned(),
                    user: user.to_owned(),
                })?;
        self.read_after(group, after_seq.max(joined_seq), limit)
            .await
    }

    /// Records that `user` has seen `channel` up to `seq`. The stored offset only moves
    /// forward and never past the channel's `last_seq`; returns the stored offset.
    async fn ack(&self, user: &str, channel: &str, seq: u64) -> Result<u64, StoreError>;

    /// The user's ack offset on the channel; 0 when they never acked it.
    async fn acked(&self, user: &str, channel: &str) -> Result<u64, StoreError>;

    /// Unread counts over the user's groups and the channels they acked.
    async fn unread(&self, user: &str) -> Result<Unread, StoreError>;

    /// Applies a moderation change and records it in the audit trail, in one
    /// transaction. Returns whether the state changed (see [`moderation`]).
    async fn moderate(&self, action: &ModerationAction) -> Result<bool, StoreError>;

    /// The stored moderation policy of a channel (or of [`GLOBAL_SCOPE`]: its word
    /// list), with the mutes still running at `now_ms`.
    async fn policy(&self, scope: &str, now_ms: i64) -> Result<Policy, StoreError>;

    /// Every scope with a stored policy (ingest loads them all at start).
    async fn policy_scopes(&self, now_ms: i64) -> Result<Vec<String>, StoreError>;

    /// The id of the newest audit entry of any scope, 0 when there is none. Every
    /// change writes one, so an unchanged head means no change was committed since
    /// (ingest polls it to heal a lost announcement cheaply).
    async fn moderation_head(&self) -> Result<u64, StoreError>;

    /// The newest `limit` (capped at [`MAX_READ_LIMIT`]) audit entries of a scope,
    /// newest first.
    async fn moderation_log(
        &self,
        scope: &str,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError>;

    /// Persists an account change (token revocation, user revocation, block or
    /// lifted block), merged with what is stored for the same token or user:
    /// revocations only grow, an older block change never replaces a newer one.
    async fn record_account_change(&self, change: &pb::AccountChange) -> Result<(), StoreError>;

    /// The stored changes that still refuse something at `now` (unix seconds),
    /// and blocks that ended recently; applied in any order they rebuild the
    /// policy.
    async fn account_changes(&self, now: u64) -> Result<Vec<pb::AccountChange>, StoreError>;

    /// Deletes the account rows that refuse nothing at `now`; returns how many.
    async fn purge_account_changes(&self, now: u64) -> Result<u64, StoreError>;
}

/// Opens the store named by `url`: `embedded:PATH` or `postgres://…`.
pub async fn connect(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if let Some(path) = url.strip_prefix("embedded:") {
        if path.is_empty() {
            return Err(StoreError::BadUrl {
                url: url.to_owned(),
                reason: "embedded: needs a file path, e.g. embedded:./data/danmaku.db".into(),
            });
        }
        return Ok(Arc::new(EmbeddedStore::open(path).await?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(
            PostgresStore::connect(url, PostgresStoreConfig::default()).await?,
        ));
    }
    Err(StoreError::BadUrl {
        url: url.to_owned(),
        reason: "unknown scheme; expected embedded:PATH or postgres://".into(),
    })
}

/// Checks the fields every backend relies on.
fn validate(message: &NewMessage) -> Result<(), StoreError> {
    if message.channel.is_empty() {
        return Err(StoreError::Invalid("empty channel".into()));
    }
    if message.client_msg_id.as_deref() == Some("") {
        return Err(StoreError::Invalid("empty client_msg_id".into()));
    }
    Ok(())
}

/// A `seq` or limit as the databases store it (BIGINT); values past `i64::MAX` saturate.
fn to_db(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A stored `seq` as the API exposes it (never negative).
fn from_db(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Columns of [`queries::FIND_CLIENT_MSG`]: seq, ts_ms, kind, text, payload_json.
type ClientMsgRow = (i64, i64, String, String, Option<String>);

/// The answer to an append whose idempotency key is already stored as `row`: the
/// original seq when the bodies match, else [`StoreError::IdempotencyConflict`].
fn answer_duplicate(m: &NewMessage, row: ClientMsgRow) -> Result<Appended, StoreError> {
    let (seq, ts_ms, kind, text, payload_json) = row;
    if kind != m.kind || text != m.text || payload_json != m.payload_json {
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
type MessageRow = (
    i64,
    Option<String>,
    String,
    String,
    String,
    Option<String>,
    i64,
);

fn message_from_row(channel: &str, row: MessageRow) -> StoredMessage {
    let (seq, client_msg_id, sender, kind, text, payload_json, ts_ms) = row;
    StoredMessage {
        channel: channel.to_owned(),
        seq: from_db(seq),
        client_msg_id,
        sender,
        kind,
        text,
        payload_json,
        ts_ms,
    }
}

/// Rows of [`queries::UNREAD`]: channel, last_seq, acked_seq, joined_seq.
fn unread_from_rows(rows: Vec<(String, i64, i64, i64)>) -> Unread {
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
mod queries {
    /// Binds channel, sender, client_msg_id (the idempotency key).
    pub const FIND_CLIENT_MSG: &str = "SELECT seq, ts_ms, kind, text, payload_json \
         FROM messages WHERE channel = $1 AND sender = $2 AND client_msg_id = $3";

    pub const READ_AFTER: &str = "SELECT seq, client_msg_id, sender, kind, text, payload_json, ts_ms \
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
