//! Blobs for notify-pull (`store/migrations/*/0006_blobs.sql`): bodies too big to
//! push to every viewer (an image for a gift banner) are stored once and fetched
//! on demand; a message carries only the id. Content-addressed: the id is the
//! lowercase hex SHA-256 of the body, so a stored blob never changes, two uploads
//! of the same bytes are one row, and any process can serve it with an immutable
//! cache header.

use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Type};

use crate::error::StoreError;
use crate::sql::Backend;

/// A stored blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub content_type: String,
    pub body: Vec<u8>,
}

/// Longest content type kept (a MIME type with parameters).
pub const MAX_CONTENT_TYPE: usize = 255;

/// Whether `id` has the shape of a blob id: 64 lowercase hex digits.
pub fn is_blob_id(id: &str) -> bool {
    id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub(crate) fn check_id(id: &str) -> Result<(), StoreError> {
    if is_blob_id(id) {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "blob id {id:?} is not 64 lowercase hex digits"
        )))
    }
}

pub(crate) fn check_put(id: &str, content_type: &str) -> Result<(), StoreError> {
    check_id(id)?;
    if content_type.is_empty() || content_type.len() > MAX_CONTENT_TYPE {
        return Err(StoreError::Invalid(format!(
            "content type must be 1 to {MAX_CONTENT_TYPE} bytes"
        )));
    }
    Ok(())
}

/// `INSERT` that keeps an existing row (same id, same bytes).
const PUT: &str = "INSERT INTO blobs (id, content_type, body, created_ms) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING";
const GET: &str = "SELECT content_type, body FROM blobs WHERE id = $1";
const HAS: &str = "SELECT 1 FROM blobs WHERE id = $1";

/// Stores a blob unless its id is already there; whether a row was written.
/// Both backends run this on their writer.
pub(crate) async fn put<'c, DB, E>(
    db: E,
    id: &str,
    content_type: &str,
    body: &[u8],
) -> Result<bool, StoreError>
where
    DB: Backend,
    E: Executor<'c, Database = DB>,
    for<'a> &'a str: Encode<'a, DB> + Type<DB>,
    for<'a> &'a [u8]: Encode<'a, DB> + Type<DB>,
    i64: for<'a> Encode<'a, DB> + Type<DB>,
    for<'a> DB::Arguments: IntoArguments<DB>,
{
    check_put(id, content_type)?;
    let done = sqlx::query::<DB>(PUT)
        .bind(id)
        .bind(content_type)
        .bind(body)
        .bind(danmaku_proto::now_ms())
        .execute(db)
        .await?;
    Ok(DB::rows_affected(&done) > 0)
}

/// The blob stored under `id`, if any.
pub(crate) async fn get<'c, DB, E>(db: E, id: &str) -> Result<Option<Blob>, StoreError>
where
    DB: Database,
    E: Executor<'c, Database = DB>,
    for<'a> &'a str: Encode<'a, DB> + Type<DB>,
    for<'a> DB::Arguments: IntoArguments<DB>,
    (String, Vec<u8>): for<'r> FromRow<'r, DB::Row>,
{
    check_id(id)?;
    let row: Option<(String, Vec<u8>)> = sqlx::query_as::<DB, (String, Vec<u8>)>(GET)
        .bind(id)
        .fetch_optional(db)
        .await?;
    Ok(row.map(|(content_type, body)| Blob { content_type, body }))
}

/// Whether a blob is stored under `id`.
pub(crate) async fn has<'c, DB, E>(db: E, id: &str) -> Result<bool, StoreError>
where
    DB: Database,
    E: Executor<'c, Database = DB>,
    for<'a> &'a str: Encode<'a, DB> + Type<DB>,
    for<'a> DB::Arguments: IntoArguments<DB>,
    (i32,): for<'r> FromRow<'r, DB::Row>,
{
    check_id(id)?;
    let row: Option<(i32,)> = sqlx::query_as::<DB, (i32,)>(HAS)
        .bind(id)
        .fetch_optional(db)
        .await?;
    Ok(row.is_some())
}
