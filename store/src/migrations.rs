//! The schema, embedded in the binary: `store/migrations/{postgres,sqlite}/NNNN_name.sql`.
//!
//! Applied at connect by sqlx's migrator, which records what ran in its own table
//! ([`TABLE`], so the store can share a database with other sqlx users) and, on
//! PostgreSQL, holds an advisory lock so that processes starting together do not race.
//! To change the schema, add a new file to BOTH folders and list it here; never edit an
//! applied one (its checksum is checked).

use sqlx::SqlStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

/// The table where applied migrations are recorded.
pub const TABLE: &str = "danmaku_store_migrations";

const POSTGRES: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "idempotency_per_sender",
        include_str!("../migrations/postgres/0002_idempotency_per_sender.sql"),
    ),
    (
        3,
        "account_policy",
        include_str!("../migrations/postgres/0003_account_policy.sql"),
    ),
    (
        4,
        "moderation",
        include_str!("../migrations/postgres/0004_moderation.sql"),
    ),
    (
        5,
        "bans_retractions",
        include_str!("../migrations/postgres/0005_bans_retractions.sql"),
    ),
    (
        6,
        "blobs",
        include_str!("../migrations/postgres/0006_blobs.sql"),
    ),
    (
        7,
        "message_blob",
        include_str!("../migrations/postgres/0007_message_blob.sql"),
    ),
];

const SQLITE: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "idempotency_per_sender",
        include_str!("../migrations/sqlite/0002_idempotency_per_sender.sql"),
    ),
    (
        3,
        "account_policy",
        include_str!("../migrations/sqlite/0003_account_policy.sql"),
    ),
    (
        4,
        "moderation",
        include_str!("../migrations/sqlite/0004_moderation.sql"),
    ),
    (
        5,
        "bans_retractions",
        include_str!("../migrations/sqlite/0005_bans_retractions.sql"),
    ),
    (
        6,
        "blobs",
        include_str!("../migrations/sqlite/0006_blobs.sql"),
    ),
    (
        7,
        "message_blob",
        include_str!("../migrations/sqlite/0007_message_blob.sql"),
    ),
];

pub fn postgres() -> Migrator {
    migrator(POSTGRES)
}

pub fn sqlite() -> Migrator {
    migrator(SQLITE)
}

fn migrator(files: &[(i64, &'static str, &'static str)]) -> Migrator {
    let migrations = files
        .iter()
        .map(|&(version, description, sql)| {
            Migration::new(
                version,
                description.into(),
                MigrationType::Simple,
                SqlStr::from_static(sql),
                false,
            )
        })
        .collect();
    let mut migrator = Migrator::with_migrations(migrations);
    migrator.dangerous_set_table_name(TABLE);
    migrator
}

#[cfg(test)]
mod tests {
    //! Databases created by an older release must migrate: each test builds a database
    //! with only `0001_init` applied, stores alice's gift under `client_msg_id` "x" the
    //! old way, then opens it with the current store, where bob may reuse "x".

    use std::time::{SystemTime, UNIX_EPOCH};

    use super::*;
    use crate::message::NewMessage;
    use crate::store::Store;

    const INSERT_V1: &str = "INSERT INTO messages \
         (channel, seq, client_msg_id, sender, kind, text, payload_json, ts_ms) \
         VALUES ('room:1', 1, 'x', 'alice', 'gift', 'rocket', NULL, 1)";
    const SEQ_V1: &str = "INSERT INTO channel_seq (channel, last_seq) VALUES ('room:1', 1)";

    fn gift(sender: &str, text: &str) -> NewMessage {
        NewMessage {
            channel: "room:1".into(),
            client_msg_id: Some("x".into()),
            sender: sender.into(),
            kind: "gift".into(),
            text: text.into(),
            payload_json: None,
            blob: None,
            ts_ms: 2,
        }
    }

    async fn check_migrated(store: &dyn Store) {
        let bob = store.append(gift("bob", "castle")).await.unwrap();
        assert_eq!((bob.seq, bob.duplicate), (2, false));
        let alice = store.append(gift("alice", "rocket")).await.unwrap();
        assert_eq!((alice.seq, alice.duplicate), (1, true));
        let err = store.append(gift("alice", "castle")).await.unwrap_err();
        assert_eq!(err.kind(), "idempotency_conflict");
    }

    #[tokio::test]
    async fn sqlite_v1_database_migrates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true);
            let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
            migrator(&SQLITE[..1]).run(&pool).await.unwrap();
            sqlx::query(INSERT_V1).execute(&pool).await.unwrap();
            sqlx::query(SEQ_V1).execute(&pool).await.unwrap();
            pool.close().await;
        }
        let store = crate::embedded::EmbeddedStore::open(&path).await.unwrap();
        check_migrated(&store).await;
    }

    /// Needs `DANMAKU_TEST_POSTGRES` (like the contract suite); works in a database of
    /// its own, dropped at the end.
    #[tokio::test]
    async fn postgres_v1_database_migrates() {
        let url = std::env::var("DANMAKU_TEST_POSTGRES").unwrap_or_default();
        assert!(
            !url.is_empty(),
            "DANMAKU_TEST_POSTGRES is not set: run `scripts/services.sh start postgres && \
             source .services/env` first"
        );
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let db = format!("danmaku_migrate_v1_{}_{nanos}", std::process::id());
        let admin = sqlx::PgPool::connect(&url).await.unwrap();
        // `db` is made of digits and underscores only.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
            .execute(&admin)
            .await
            .unwrap();
        let (base, _) = url.rsplit_once('/').unwrap();
        let db_url = format!("{base}/{db}");
        {
            let pool = sqlx::PgPool::connect(&db_url).await.unwrap();
            migrator(&POSTGRES[..1]).run(&pool).await.unwrap();
            sqlx::query(INSERT_V1).execute(&pool).await.unwrap();
            sqlx::query(SEQ_V1).execute(&pool).await.unwrap();
            pool.close().await;
        }
        let store = crate::postgres::PostgresStore::connect(&db_url, Default::default())
            .await
            .unwrap();
        check_migrated(&store).await;
        store.pool().close().await;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {db}")))
            .execute(&admin)
            .await
            .unwrap();
    }
}
