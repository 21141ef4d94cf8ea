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

const POSTGRES: &[(i64, &str, &str)] = &[(
    1,
    "init",
    include_str!("../migrations/postgres/0001_init.sql"),
)];

const SQLITE: &[(i64, &str, &str)] = &[(
    1,
    "init",
    include_str!("../migrations/sqlite/0001_init.sql"),
)];

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
