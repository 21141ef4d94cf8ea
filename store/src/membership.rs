//! Group membership queries that both backends run word for word: leaving a
//! group (with its ack offset), checking and listing members. Each backend
//! only hands over where to run them: its reader pool, or the transaction it
//! opened its own way (SQLite takes the write lock up front with
//! `BEGIN IMMEDIATE`, PostgreSQL a plain `BEGIN`).
//!
//! Joining stays in the backends: the statement is shared ([`queries::JOIN`](crate::sql::queries::JOIN))
//! but SQLite must run it under its write lock and PostgreSQL needs no
//! transaction at all.

use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Type};

use crate::error::StoreError;
use crate::message::Member;
use crate::sql::{Backend, from_db, queries};

/// Removes `user` from `group` and forgets their ack offset there, inside the
/// caller's transaction `tx` (committed by the caller). Whether they were a member.
pub(crate) async fn leave<DB>(
    tx: &mut DB::Connection,
    group: &str,
    user: &str,
) -> Result<bool, StoreError>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: Encode<'a, DB> + Type<DB>,
    DB::Arguments: IntoArguments<DB>,
{
    let removed = sqlx::query::<DB>(queries::LEAVE)
        .bind(group)
        .bind(user)
        .execute(&mut *tx)
        .await?;
    sqlx::query::<DB>(queries::FORGET_ACK)
        .bind(group)
        .bind(user)
        .execute(&mut *tx)
        .await?;
    Ok(DB::rows_affected(&removed) > 0)
}

/// `Some(joined_seq)` when `user` belongs to `group`.
pub(crate) async fn is_member<'c, DB, E>(
    db: E,
    group: &str,
    user: &str,
) -> Result<Option<u64>, StoreError>
where
    DB: Database,
    E: Executor<'c, Database = DB>,
    for<'a> &'a str: Encode<'a, DB> + Type<DB>,
    DB::Arguments: IntoArguments<DB>,
    (i64,): for<'r> FromRow<'r, DB::Row>,
{
    let joined: Option<i64> = sqlx::query_scalar::<DB, i64>(queries::IS_MEMBER)
        .bind(group)
        .bind(user)
        .fetch_optional(db)
        .await?;
    Ok(joined.map(from_db))
}

/// The group's members, ordered by user name.
pub(crate) async fn members<'c, DB, E>(db: E, group: &str) -> Result<Vec<Member>, StoreError>
where
    DB: Database,
    E: Executor<'c, Database = DB>,
    for<'a> &'a str: Encode<'a, DB> + Type<DB>,
    DB::Arguments: IntoArguments<DB>,
    (String, i64): for<'r> FromRow<'r, DB::Row>,
{
    let rows: Vec<(String, i64)> = sqlx::query_as::<DB, (String, i64)>(queries::MEMBERS)
        .bind(group)
        .fetch_all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(user, joined_seq)| Member {
            user,
            joined_seq: from_db(joined_seq),
        })
        .collect())
}
