//! [`PostgresStore`]: the store shared by every process in distributed mode.
//!
//! `append` is one statement, so one implicit transaction: bump the channel's
//! `channel_seq` row with `INSERT … ON CONFLICT DO UPDATE … RETURNING` (which row-locks
//! it until commit, so appenders to one channel queue there, across processes) and
//! insert the message with that seq. A failure undoes the bump, so seqs stay gap-free. A retried
//! idempotency key `(channel, sender, client_msg_id)` is found by a read before the
//! transaction; a retry racing the original hits the unique index instead and is
//! answered from a re-read.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgPoolOptions};

use danmaku_proto::pb;

use crate::error::StoreError;
use crate::message::{
    Appended, MAX_READ_LIMIT, Member, NewMessage, StoredMessage, Unread, validate,
};
use crate::migrations;
use crate::moderation::{AuditEntry, Ban, ModerationAction, Policy};
use crate::sql::{
    ClientMsgRow, MessageRow, answer_duplicate, from_db, message_from_row, queries, to_db,
    unread_from_rows,
};
use crate::store::Store;
use crate::{account, blob, membership, moderation};

/// Connection settings of [`PostgresStore`].
#[derive(Debug, Clone)]
pub struct PostgresStoreConfig {
    /// Pool size per process. Appends to one channel are serialized by the database,
    /// so more connections help only with many channels.
    pub max_connections: u32,
    /// How long an operation waits for a free connection (or for the server to accept
    /// one) before failing with [`StoreError::Unavailable`].
    pub acquire_timeout: Duration,
}

impl Default for PostgresStoreConfig {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// The PostgreSQL backend.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

/// Bumps the channel's seq (locking its `channel_seq` row until commit) and inserts the
/// message with it, in one statement.
const APPEND: &str = "WITH next AS ( \
         INSERT INTO channel_seq (channel, last_seq) VALUES ($1, 1) \
         ON CONFLICT (channel) DO UPDATE SET last_seq = channel_seq.last_seq + 1 \
         RETURNING last_seq) \
     INSERT INTO messages \
         (channel, seq, client_msg_id, sender, kind, text, payload_json, blob, ts_ms) \
     SELECT $1, next.last_seq, $2, $3, $4, $5, $6, $7, $8 FROM next \
     RETURNING seq";

const ACK: &str = "INSERT INTO acks (user_id, channel, acked_seq) \
     VALUES ($1, $2, LEAST($3, COALESCE((SELECT last_seq FROM channel_seq WHERE channel = $2), 0))) \
     ON CONFLICT (user_id, channel) DO UPDATE \
     SET acked_seq = GREATEST(acks.acked_seq, excluded.acked_seq) \
     RETURNING acked_seq";

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host:port/db`) and applies migrations.
    pub async fn connect(url: &str, config: PostgresStoreConfig) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            .connect(url)
            .await
            .map_err(|e| match StoreError::from(e) {
                StoreError::BadUrl { reason, .. } => StoreError::BadUrl {
                    url: url.to_owned(),
                    reason,
                },
                other => other,
            })?;
        migrations::postgres().run(&pool).await?;
        Ok(Self { pool })
    }

    /// The connection pool, for tools and tests.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The stored message under `m`'s idempotency key, if any, answered as a duplicate
    /// (or a conflict when its body differs).
    async fn find_client_msg(
        &self,
        m: &NewMessage,
        client_msg_id: &str,
    ) -> Result<Option<Appended>, StoreError> {
        let found: Option<ClientMsgRow> = sqlx::query_as(queries::FIND_CLIENT_MSG)
            .bind(&m.channel)
            .bind(&m.sender)
            .bind(client_msg_id)
            .fetch_optional(&self.pool)
            .await?;
        found.map(|row| answer_duplicate(m, row)).transpose()
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn append(&self, m: NewMessage) -> Result<Appended, StoreError> {
        validate(&m)?;
        if let Some(id) = &m.client_msg_id
            && let Some(original) = self.find_client_msg(&m, id).await?
        {
            return Ok(original);
        }
        // One statement: the seq bump and the insert commit (or fail) together, and the
        // channel's row lock is held only while the server runs it, not across round
        // trips.
        let appended: Result<i64, sqlx::Error> = sqlx::query_scalar(APPEND)
            .bind(&m.channel)
            .bind(&m.client_msg_id)
            .bind(&m.sender)
            .bind(&m.kind)
            .bind(&m.text)
            .bind(&m.payload_json)
            .bind(&m.blob)
            .bind(m.ts_ms)
            .fetch_one(&self.pool)
            .await;
        match appended {
            Ok(seq) => Ok(Appended {
                seq: from_db(seq),
                duplicate: false,
                ts_ms: m.ts_ms,
            }),
            // A retry with the same client_msg_id committed between our read and our
            // insert; the failed statement rolled our seq bump back. Answer the original.
            Err(sqlx::Error::Database(e))
                if e.is_unique_violation() && m.client_msg_id.is_some() =>
            {
                let id = m.client_msg_id.as_deref().unwrap_or_default();
                self.find_client_msg(&m, id).await?.ok_or_else(|| {
                    StoreError::Internal(format!(
                        "client_msg_id {id:?} conflicted on {} but is not stored",
                        m.channel
                    ))
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn read_after(
        &self,
        channel: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let limit = limit.min(MAX_READ_LIMIT);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows: Vec<MessageRow> = sqlx::query_as(queries::READ_AFTER)
            .bind(channel)
            .bind(to_db(after_seq))
            .bind(to_db(limit as u64))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| message_from_row(channel, r))
            .collect())
    }

    async fn last_seq(&self, channel: &str) -> Result<u64, StoreError> {
        let seq: Option<i64> = sqlx::query_scalar(queries::LAST_SEQ)
            .bind(channel)
            .fetch_optional(&self.pool)
            .await?;
        Ok(seq.map_or(0, from_db))
    }

    async fn join_group(&self, group: &str, user: &str) -> Result<u64, StoreError> {
        if group.is_empty() || user.is_empty() {
            return Err(StoreError::Invalid("empty group or user".into()));
        }
        let joined: i64 = sqlx::query_scalar(queries::JOIN)
            .bind(group)
            .bind(user)
            .fetch_one(&self.pool)
            .await?;
        Ok(from_db(joined))
    }

    async fn leave_group(&self, group: &str, user: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let removed = membership::leave::<sqlx::Postgres>(&mut tx, group, user).await?;
        tx.commit().await?;
        Ok(removed)
    }

    async fn is_member(&self, group: &str, user: &str) -> Result<Option<u64>, StoreError> {
        membership::is_member(&self.pool, group, user).await
    }

    async fn members(&self, group: &str) -> Result<Vec<Member>, StoreError> {
        membership::members(&self.pool, group).await
    }

    async fn ack(&self, user: &str, channel: &str, seq: u64) -> Result<u64, StoreError> {
        if user.is_empty() || channel.is_empty() {
            return Err(StoreError::Invalid("empty user or channel".into()));
        }
        let acked: i64 = sqlx::query_scalar(ACK)
            .bind(user)
            .bind(channel)
            .bind(to_db(seq))
            .fetch_one(&self.pool)
            .await?;
        Ok(from_db(acked))
    }

    async fn acked(&self, user: &str, channel: &str) -> Result<u64, StoreError> {
        let acked: Option<i64> = sqlx::query_scalar(queries::ACKED)
            .bind(user)
            .bind(channel)
            .fetch_optional(&self.pool)
            .await?;
        Ok(acked.map_or(0, from_db))
    }

    async fn unread(&self, user: &str) -> Result<Unread, StoreError> {
        let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(queries::UNREAD)
            .bind(user)
            .fetch_all(&self.pool)
            .await?;
        Ok(unread_from_rows(rows))
    }

    async fn record_account_change(&self, change: &pb::AccountChange) -> Result<(), StoreError> {
        account::record(&self.pool, &account::POSTGRES, change).await
    }

    async fn account_changes(&self, now: u64) -> Result<Vec<pb::AccountChange>, StoreError> {
        account::load(&self.pool, now).await
    }

    async fn purge_account_changes(&self, now: u64) -> Result<u64, StoreError> {
        account::purge(&self.pool, now).await
    }

    async fn moderate(&self, action: &ModerationAction) -> Result<bool, StoreError> {
        moderation::validate(action)?;
        let mut tx = self.pool.begin().await?;
        let changed = moderation::apply::<sqlx::Postgres>(&mut tx, action).await?;
        tx.commit().await?;
        Ok(changed)
    }

    async fn policy(&self, scope: &str, now_ms: i64) -> Result<Policy, StoreError> {
        moderation::policy(&self.pool, scope, now_ms).await
    }

    async fn policy_scopes(&self, now_ms: i64) -> Result<Vec<String>, StoreError> {
        moderation::scopes(&self.pool, now_ms).await
    }

    async fn moderation_head(&self) -> Result<u64, StoreError> {
        moderation::head(&self.pool).await
    }

    async fn moderation_log(
        &self,
        scope: &str,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        moderation::log(&self.pool, scope, limit).await
    }

    async fn bans(&self, now_ms: i64) -> Result<Vec<Ban>, StoreError> {
        moderation::bans(&self.pool, now_ms).await
    }

    async fn retracted(
        &self,
        channel: &str,
        after_seq: u64,
        upto_seq: u64,
    ) -> Result<Vec<u64>, StoreError> {
        moderation::retracted(&self.pool, channel, after_seq, upto_seq).await
    }

    async fn put_blob(
        &self,
        id: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<bool, StoreError> {
        blob::put::<sqlx::Postgres, _>(&self.pool, id, content_type, body).await
    }

    async fn get_blob(&self, id: &str) -> Result<Option<blob::Blob>, StoreError> {
        blob::get(&self.pool, id).await
    }

    async fn has_blob(&self, id: &str) -> Result<bool, StoreError> {
        blob::has(&self.pool, id).await
    }
}
