//! [`StoreError`] and how database errors map onto it.
//!
//! Callers care about one distinction above all: [`StoreError::Unavailable`] means "the
//! database could not be reached or is overloaded; nothing is known to be persisted, try
//! again later" (ingest answers 503), everything else is a bug or bad input.

/// Errors of store backends.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached, timed out or is busy. Retry later; for an
    /// `append`, retry with the same `client_msg_id` (it may have been persisted).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("invalid store URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    /// The caller passed something the store cannot keep (empty channel, …).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// [`crate::Store::read_after_for_member`] for a user outside the group.
    #[error("{user:?} is not a member of {group:?}")]
    NotMember { group: String, user: String },
    /// The sender already stored a different message under this `client_msg_id` on this
    /// channel (as `seq`). Nothing was written; the client must use a fresh id.
    #[error(
        "client_msg_id {client_msg_id:?} was already used on {channel} for a different \
         message (seq {seq}); use a new client_msg_id for a new message"
    )]
    IdempotencyConflict {
        channel: String,
        client_msg_id: String,
        seq: u64,
    },
    /// Creating or upgrading the schema failed.
    #[error("store migration failed: {0}")]
    Migration(String),
    /// The database answered something unexpected (constraint violation, bad data).
    #[error("store error: {0}")]
    Internal(String),
}

impl StoreError {
    /// A stable snake_case name for metrics labels and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Unavailable(_) => "unavailable",
            StoreError::BadUrl { .. } => "bad_url",
            StoreError::Invalid(_) => "invalid",
            StoreError::NotMember { .. } => "not_member",
            StoreError::IdempotencyConflict { .. } => "idempotency_conflict",
            StoreError::Migration(_) => "migration",
            StoreError::Internal(_) => "internal",
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match &e {
            E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => {
                StoreError::Unavailable(e.to_string())
            }
            E::Database(db) => {
                let sqlite = db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some();
                let code = db.code();
                let transient = if sqlite {
                    sqlite_transient(code.as_deref())
                } else {
                    postgres_transient(code.as_deref())
                };
                if transient {
                    StoreError::Unavailable(e.to_string())
                } else {
                    StoreError::Internal(e.to_string())
                }
            }
            E::Configuration(_) => StoreError::BadUrl {
                url: String::new(),
                reason: e.to_string(),
            },
            E::Migrate(m) => StoreError::Migration(m.to_string()),
            _ => StoreError::Internal(e.to_string()),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        match e {
            sqlx::migrate::MigrateError::Execute(inner) => match StoreError::from(inner) {
                StoreError::Internal(msg) => StoreError::Migration(msg),
                other => other,
            },
            other => StoreError::Migration(other.to_string()),
        }
    }
}

/// PostgreSQL SQLSTATEs that mean "try again", not "you asked something wrong":
/// 08 connection exception, 53 insufficient resources, 57P0x shutdown / cannot connect
/// now, 40001 serialization failure, 40P01 deadlock.
fn postgres_transient(code: Option<&str>) -> bool {
    let Some(code) = code else { return false };
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57P")
        || code == "40001"
        || code == "40P01"
}

/// SQLite (extended) result codes that mean "try again": SQLITE_BUSY 5, SQLITE_LOCKED 6,
/// SQLITE_IOERR 10, SQLITE_FULL 13, SQLITE_CANTOPEN 14. Extended codes keep the primary
/// code in their low byte.
fn sqlite_transient(code: Option<&str>) -> bool {
    match code.and_then(|c| c.parse::<u32>().ok()) {
        Some(n) => matches!(n & 0xff, 5 | 6 | 10 | 13 | 14),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_codes() {
        for code in ["08006", "57P01", "53300", "40001", "40P01"] {
            assert!(postgres_transient(Some(code)), "{code}");
        }
        for code in ["23505", "42P01", "22012"] {
            assert!(!postgres_transient(Some(code)), "{code}");
        }
        for code in ["5", "517", "6", "10", "3338"] {
            assert!(sqlite_transient(Some(code)), "{code}");
        }
        for code in ["19", "2067", "1", "11"] {
            assert!(!sqlite_transient(Some(code)), "{code}");
        }
        assert!(!postgres_transient(None) && !sqlite_transient(None));
    }

    #[test]
    fn kinds_are_distinct() {
        let all = [
            StoreError::Unavailable(String::new()),
            StoreError::BadUrl {
                url: String::new(),
                reason: String::new(),
            },
            StoreError::Invalid(String::new()),
            StoreError::NotMember {
                group: String::new(),
                user: String::new(),
            },
            StoreError::IdempotencyConflict {
                channel: String::new(),
                client_msg_id: String::new(),
                seq: 0,
            },
            StoreError::Migration(String::new()),
            StoreError::Internal(String::new()),
        ];
        let kinds: std::collections::HashSet<_> = all.iter().map(StoreError::kind).collect();
        assert_eq!(kinds.len(), all.len());
    }
}
