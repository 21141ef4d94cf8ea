//! Account policy rows (`store/migrations/*/0003_account_policy.sql`): revoked
//! tokens, user revocations and global blocks, in the form of the
//! [`pb::AccountChange`]s that made them. Both backends run these functions
//! word for word on their own pool; only the two upserts that keep the larger
//! of two values differ (SQLite's `MAX(a, b)` is PostgreSQL's `GREATEST`), so
//! each backend passes its [`Upserts`].
//!
//! Rows merge the way the in-memory policy does (`danmaku_proto::account`):
//! revocations only grow, and of two block changes for one user the later by
//! `at_ms` stays, whatever order two ingests write them in.

use danmaku_proto::account::BLOCK_TOMBSTONE_SECS;
use danmaku_proto::pb;
use danmaku_proto::pb::account_change::Change;
use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Type};

use crate::error::StoreError;
use crate::sql::{Backend, from_db, to_db};

/// The backend's statements that keep the larger of the stored and new values.
pub(crate) struct Upserts {
    /// Binds jti, expire_at.
    pub revoke_token: &'static str,
    /// Binds user_id, issued_before, expire_at.
    pub revoke_user: &'static str,
}

pub(crate) const SQLITE: Upserts = Upserts {
    revoke_token: "INSERT INTO revoked_tokens (jti, expire_at) VALUES ($1, $2) \
         ON CONFLICT (jti) DO UPDATE SET expire_at = MAX(revoked_tokens.expire_at, excluded.expire_at)",
    revoke_user: "INSERT INTO revoked_users (user_id, issued_before, expire_at) VALUES ($1, $2, $3) \
         ON CONFLICT (user_id) DO UPDATE SET \
         issued_before = MAX(revoked_users.issued_before, excluded.issued_before), \
         expire_at = MAX(revoked_users.expire_at, excluded.expire_at)",
};

pub(crate) const POSTGRES: Upserts = Upserts {
    revoke_token: "INSERT INTO revoked_tokens (jti, expire_at) VALUES ($1, $2) \
         ON CONFLICT (jti) DO UPDATE SET expire_at = GREATEST(revoked_tokens.expire_at, excluded.expire_at)",
    revoke_user: "INSERT INTO revoked_users (user_id, issued_before, expire_at) VALUES ($1, $2, $3) \
         ON CONFLICT (user_id) DO UPDATE SET \
         issued_before = GREATEST(revoked_users.issued_before, excluded.issued_before), \
         expire_at = GREATEST(revoked_users.expire_at, excluded.expire_at)",
};

/// Binds user_id, until_s, lifted, at_ms; an older change never replaces a newer one.
const BLOCK: &str = "INSERT INTO user_blocks (user_id, until_s, lifted, at_ms) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (user_id) DO UPDATE SET until_s = excluded.until_s, lifted = excluded.lifted, \
     at_ms = excluded.at_ms WHERE user_blocks.at_ms <= excluded.at_ms";

const TOKENS: &str = "SELECT jti, expire_at FROM revoked_tokens WHERE expire_at > $1";
const USERS: &str =
    "SELECT user_id, issued_before, expire_at FROM revoked_users WHERE expire_at > $1";
/// Blocks in force, and ended ones younger than the tombstone time ($1 = now − it).
const BLOCKS: &str = "SELECT user_id, until_s, lifted, at_ms FROM user_blocks \
     WHERE until_s = 0 OR until_s > $1";

const PURGE_TOKENS: &str = "DELETE FROM revoked_tokens WHERE expire_at <= $1";
const PURGE_USERS: &str = "DELETE FROM revoked_users WHERE expire_at <= $1";
/// $1 = now − the tombstone time: ended blocks older than that go.
const PURGE_BLOCKS: &str = "DELETE FROM user_blocks WHERE until_s <> 0 AND until_s <= $1";

/// Stores `change`, merged with what is stored for the same token or user.
pub(crate) async fn record<'c, DB, E>(
    db: E,
    upserts: &Upserts,
    change: &pb::AccountChange,
) -> Result<(), StoreError>
where
    DB: Database,
    E: Executor<'c, Database = DB>,
    for<'a> &'a str: Encode<'a, DB> + Type<DB>,
    i64: for<'a> Encode<'a, DB> + Type<DB>,
    bool: for<'a> Encode<'a, DB> + Type<DB>,
    for<'a> DB::Arguments: IntoArguments<DB>,
{
    let invalid = |what: &str| Err(StoreError::Invalid(format!("account change: {what}")));
    match &change.change {
        Some(Change::RevokeToken(r)) => {
            if r.jti.is_empty() {
                return invalid("empty jti");
            }
            sqlx::query::<DB>(upserts.revoke_token)
                .bind(r.jti.as_str())
                .bind(to_db(r.expire_at))
                .execute(db)
                .await?;
        }
        Some(Change::RevokeUser(r)) => {
            if r.user.is_empty() {
                return invalid("empty user");
            }
            sqlx::query::<DB>(upserts.revoke_user)
                .bind(r.user.as_str())
                .bind(to_db(r.issued_before))
                .bind(to_db(r.expire_at))
                .execute(db)
                .await?;
        }
        Some(Change::Block(b)) => {
            if b.user.is_empty() {
                return invalid("empty user");
            }
            if b.lifted && b.until == 0 {
                return invalid("a lifted block needs the time it ended");
            }
            sqlx::query::<DB>(BLOCK)
                .bind(b.user.as_str())
                .bind(to_db(b.until))
                .bind(b.lifted)
                .bind(change.at_ms)
                .execute(db)
                .await?;
        }
        None => return invalid("no change"),
    }
    Ok(())
}

/// Every stored change that still refuses something at `now` (and blocks lifted
/// or ended within the tombstone time), to apply at start.
pub(crate) async fn load<DB>(
    pool: &sqlx::Pool<DB>,
    now: u64,
) -> Result<Vec<pb::AccountChange>, StoreError>
where
    DB: Database,
    for<'c> &'c sqlx::Pool<DB>: Executor<'c, Database = DB>,
    i64: for<'a> Encode<'a, DB> + Type<DB>,
    for<'a> DB::Arguments: IntoArguments<DB>,
    (String, i64): for<'r> FromRow<'r, DB::Row>,
    (String, i64, i64): for<'r> FromRow<'r, DB::Row>,
    (String, i64, bool, i64): for<'r> FromRow<'r, DB::Row>,
{
    let now_db = to_db(now);
    let mut changes = Vec::new();
    let tokens: Vec<(String, i64)> = sqlx::query_as::<DB, (String, i64)>(TOKENS)
        .bind(now_db)
        .fetch_all(pool)
        .await?;
    for (jti, expire_at) in tokens {
        changes.push(pb::AccountChange {
            change: Some(Change::RevokeToken(pb::RevokeToken {
                jti,
                expire_at: from_db(expire_at),
            })),
            at_ms: 0,
        });
    }
    let users: Vec<(String, i64, i64)> = sqlx::query_as::<DB, (String, i64, i64)>(USERS)
        .bind(now_db)
        .fetch_all(pool)
        .await?;
    for (user, issued_before, expire_at) in users {
        changes.push(pb::AccountChange {
            change: Some(Change::RevokeUser(pb::RevokeUser {
                user,
                issued_before: from_db(issued_before),
                expire_at: from_db(expire_at),
            })),
            at_ms: 0,
        });
    }
    let tombstones_from = to_db(now.saturating_sub(BLOCK_TOMBSTONE_SECS));
    let blocks: Vec<(String, i64, bool, i64)> =
        sqlx::query_as::<DB, (String, i64, bool, i64)>(BLOCKS)
            .bind(tombstones_from)
            .fetch_all(pool)
            .await?;
    for (user, until, lifted, at_ms) in blocks {
        changes.push(pb::AccountChange {
            change: Some(Change::Block(pb::BlockUser {
                user,
                until: from_db(until),
                lifted,
            })),
            at_ms,
        });
    }
    Ok(changes)
}

/// Deletes the rows that refuse nothing at `now`; returns how many.
pub(crate) async fn purge<DB>(pool: &sqlx::Pool<DB>, now: u64) -> Result<u64, StoreError>
where
    DB: Backend,
    for<'c> &'c sqlx::Pool<DB>: Executor<'c, Database = DB>,
    i64: for<'a> Encode<'a, DB> + Type<DB>,
    for<'a> DB::Arguments: IntoArguments<DB>,
{
    let mut deleted = 0;
    let tombstones_before = now.saturating_sub(BLOCK_TOMBSTONE_SECS);
    for (sql, at) in [
        (PURGE_TOKENS, now),
        (PURGE_USERS, now),
        (PURGE_BLOCKS, tombstones_before),
    ] {
        let done = sqlx::query::<DB>(sql).bind(to_db(at)).execute(pool).await?;
        deleted += DB::rows_affected(&done);
    }
    Ok(deleted)
}
