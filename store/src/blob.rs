//! Blobs for notify-pull (`store/migrations/*/0006_blobs.sql`): bodies too big to
//! push to every viewer (an image for a gift banner) are stored once and fetched
//! on demand; a message carries only the id. Content-addressed: the id is the
//! lowercase hex SHA-256 of the body, so a stored blob never changes, two uploads
//! of the same bytes are one row, and any process can serve it with an immutable
//! cache header.

use crate::error::StoreError;

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
pub(crate) const PUT: &str = "INSERT INTO blobs (id, content_type, body, created_ms) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING";
pub(crate) const GET: &str = "SELECT content_type, body FROM blobs WHERE id = $1";
pub(crate) const HAS: &str = "SELECT 1 FROM blobs WHERE id = $1";
