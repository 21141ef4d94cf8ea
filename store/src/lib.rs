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
//! with the same key and the same body (`kind`, `text`, `payload_json`, `blob`) stores nothing
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
pub mod blob;
mod embedded;
mod error;
mod membership;
mod message;
mod migrations;
pub mod moderation;
mod postgres;
mod sql;
mod store;

use std::sync::Arc;

pub use blob::Blob;
pub use embedded::EmbeddedStore;
pub use error::StoreError;
pub use message::{Appended, MAX_READ_LIMIT, Member, NewMessage, StoredMessage, Unread};
pub use moderation::{
    AuditEntry, Ban, GLOBAL_SCOPE, ModerationAction, ModerationChange, Policy, RoomSettings,
    SettingsPatch,
};
pub use postgres::{PostgresStore, PostgresStoreConfig};
pub use store::Store;

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
