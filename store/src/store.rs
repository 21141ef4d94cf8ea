//! The [`Store`] trait: the one interface ingest and edge hold (`Arc<dyn Store>`),
//! implemented by the embedded and the PostgreSQL backend.

use async_trait::async_trait;
use danmaku_proto::pb;

use crate::error::StoreError;
use crate::message::{Appended, Member, NewMessage, StoredMessage, Unread};
use crate::moderation::{AuditEntry, Ban, ModerationAction, Policy};

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

    /// Every channel ban in force at `now_ms` (ms since the epoch), over all
    /// channels: what an edge loads at start to refuse `join`.
    async fn bans(&self, now_ms: i64) -> Result<Vec<Ban>, StoreError>;

    /// The seqs of `channel` in `after_seq < seq <= upto_seq` a moderator
    /// retracted, ascending (history leaves them out).
    async fn retracted(
        &self,
        channel: &str,
        after_seq: u64,
        upto_seq: u64,
    ) -> Result<Vec<u64>, StoreError>;

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

    /// Keeps `body` under `id`, the lowercase hex SHA-256 of `body` (the caller
    /// hashes; see [`crate::blob`]). Storing an id again keeps the first row;
    /// returns whether this call stored it. Stores that keep no blobs (test
    /// doubles) answer [`StoreError::Unavailable`].
    async fn put_blob(
        &self,
        _id: &str,
        _content_type: &str,
        _body: &[u8],
    ) -> Result<bool, StoreError> {
        Err(StoreError::Unavailable("this store keeps no blobs".into()))
    }

    /// The blob stored under `id`, if any.
    async fn get_blob(&self, _id: &str) -> Result<Option<crate::blob::Blob>, StoreError> {
        Err(StoreError::Unavailable("this store keeps no blobs".into()))
    }

    /// Whether a blob is stored under `id` (without reading its body).
    async fn has_blob(&self, _id: &str) -> Result<bool, StoreError> {
        Err(StoreError::Unavailable("this store keeps no blobs".into()))
    }
}
