//! Moderation state: word lists, room moderators, mutes, room settings and the
//! audit trail (migration 0004). Both backends run these queries word for word;
//! each only hands over where to run them (its reader pool, or the transaction
//! it opened its own way), as in `membership.rs`.
//!
//! Every change goes through [`apply`], which writes the new state AND its
//! audit row in the caller's transaction: an action is either applied and
//! logged, or neither.

use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Type};

use crate::error::StoreError;
use crate::message::MAX_READ_LIMIT;
use crate::sql::{Backend, from_db, to_db};

/// The scope of the global word list (channel names always contain a `:`).
pub const GLOBAL_SCOPE: &str = "*";

/// A room's settings; 0 / false means off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoomSettings {
    /// A user's next post is refused for this many seconds after one.
    pub slow_mode_secs: u64,
    /// Only moderators and app tokens may post.
    pub mute_all: bool,
    /// Danmaku per second edges push to each viewer of the room (thinning).
    pub max_rate: u64,
}

/// A settings change: absent fields keep their stored value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SettingsPatch {
    pub slow_mode_secs: Option<u64>,
    pub mute_all: Option<bool>,
    pub max_rate: Option<u64>,
}

/// One moderation change, applied to `ModerationAction::scope`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModerationChange {
    /// Replaces the scope's word list (both halves).
    SetWordlist {
        block: Vec<String>,
        mask: Vec<String>,
    },
    AddModerator {
        user: String,
    },
    RemoveModerator {
        user: String,
    },
    /// Mutes `user` until `until_ms` (replacing an earlier mute).
    Mute {
        user: String,
        until_ms: i64,
    },
    Unmute {
        user: String,
    },
    Settings(SettingsPatch),
}

impl ModerationChange {
    /// The audit trail's `action`, `target` and `detail`.
    fn describe(&self) -> (&'static str, &str, String) {
        match self {
            Self::SetWordlist { block, mask } => (
                "set_wordlist",
                "",
                format!("block={} mask={}", block.len(), mask.len()),
            ),
            Self::AddModerator { user } => ("add_moderator", user, String::new()),
            Self::RemoveModerator { user } => ("remove_moderator", user, String::new()),
            Self::Mute { user, until_ms } => ("mute", user, format!("until_ms={until_ms}")),
            Self::Unmute { user } => ("unmute", user, String::new()),
            Self::Settings(p) => {
                let mut parts = Vec::new();
                if let Some(s) = p.slow_mode_secs {
                    parts.push(format!("slow_mode_secs={s}"));
                }
                if let Some(m) = p.mute_all {
                    parts.push(format!("mute_all={m}"));
                }
                if let Some(r) = p.max_rate {
                    parts.push(format!("max_rate={r}"));
                }
                ("settings", "", parts.join(" "))
            }
        }
    }
}

/// A moderation change with who made it and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModerationAction {
    /// The channel, or [`GLOBAL_SCOPE`] for the global word list.
    pub scope: String,
    /// Who did it (the token's `sub`).
    pub actor: String,
    pub change: ModerationChange,
    pub ts_ms: i64,
}

/// One row of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: u64,
    pub scope: String,
    pub actor: String,
    /// `set_wordlist`, `add_moderator`, `remove_moderator`, `mute`, `unmute`, `settings`.
    pub action: String,
    /// The user acted on; empty for room-wide actions.
    pub target: String,
    /// Action-specific, e.g. `until_ms=…` or `block=12 mask=3`.
    pub detail: String,
    pub ts_ms: i64,
}

/// Everything enforced for one scope, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub block: Vec<String>,
    pub mask: Vec<String>,
    /// Sorted.
    pub moderators: Vec<String>,
    /// `(user, until_ms)` of mutes still running at the time asked, sorted by user.
    pub mutes: Vec<(String, i64)>,
    pub settings: RoomSettings,
}

/// Checks an action before anything is written.
pub(crate) fn validate(a: &ModerationAction) -> Result<(), StoreError> {
    if a.scope.is_empty() || a.actor.is_empty() {
        return Err(StoreError::Invalid("empty scope or actor".into()));
    }
    match &a.change {
        ModerationChange::SetWordlist { block, mask } => {
            if block
                .iter()
                .chain(mask)
                .any(|w| w.is_empty() || w.contains('\n'))
            {
                return Err(StoreError::Invalid(
                    "words must be non-empty and contain no newline".into(),
                ));
            }
        }
        ModerationChange::AddModerator { user }
        | ModerationChange::RemoveModerator { user }
        | ModerationChange::Mute { user, .. }
        | ModerationChange::Unmute { user } => {
            if user.is_empty() {
                return Err(StoreError::Invalid("empty user".into()));
            }
        }
        ModerationChange::Settings(_) => {}
    }
    if a.scope == GLOBAL_SCOPE && !matches!(a.change, ModerationChange::SetWordlist { .. }) {
        return Err(StoreError::Invalid(
            "only the word list has a global scope".into(),
        ));
    }
    Ok(())
}

fn join(words: &[String]) -> String {
    words.join("\n")
}

fn split(words: &str) -> Vec<String> {
    if words.is_empty() {
        Vec::new()
    } else {
        words.split('\n').map(str::to_owned).collect()
    }
}

mod sql {
    pub const SET_WORDLIST: &str = "INSERT INTO wordlists (scope, block, mask, updated_ms) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (scope) DO UPDATE \
         SET block = excluded.block, mask = excluded.mask, updated_ms = excluded.updated_ms";
    pub const ADD_MODERATOR: &str = "INSERT INTO moderators (channel, user_id) VALUES ($1, $2) \
         ON CONFLICT (channel, user_id) DO NOTHING";
    pub const REMOVE_MODERATOR: &str = "DELETE FROM moderators WHERE channel = $1 AND user_id = $2";
    pub const MUTE: &str = "INSERT INTO mutes (channel, user_id, until_ms) VALUES ($1, $2, $3) \
         ON CONFLICT (channel, user_id) DO UPDATE SET until_ms = excluded.until_ms";
    pub const UNMUTE: &str = "DELETE FROM mutes WHERE channel = $1 AND user_id = $2";
    /// Absent fields (NULL) keep the stored value, or 0 for a new row.
    pub const SETTINGS: &str = "INSERT INTO room_settings \
         (channel, slow_mode_secs, mute_all, max_rate) \
         VALUES ($1, COALESCE($2, 0), COALESCE($3, 0), COALESCE($4, 0)) \
         ON CONFLICT (channel) DO UPDATE SET \
         slow_mode_secs = COALESCE($2, room_settings.slow_mode_secs), \
         mute_all = COALESCE($3, room_settings.mute_all), \
         max_rate = COALESCE($4, room_settings.max_rate)";
    pub const LOG: &str = "INSERT INTO moderation_log \
         (channel, actor, action, target, detail, ts_ms) VALUES ($1, $2, $3, $4, $5, $6)";

    pub const WORDLIST: &str = "SELECT block, mask FROM wordlists WHERE scope = $1";
    pub const MODERATORS: &str =
        "SELECT user_id FROM moderators WHERE channel = $1 ORDER BY user_id";
    pub const MUTES: &str = "SELECT user_id, until_ms FROM mutes \
         WHERE channel = $1 AND until_ms > $2 ORDER BY user_id";
    pub const SETTINGS_OF: &str =
        "SELECT slow_mode_secs, mute_all, max_rate FROM room_settings WHERE channel = $1";
    pub const SCOPES: &str = "SELECT scope FROM wordlists \
         UNION SELECT channel FROM moderators \
         UNION SELECT channel FROM mutes WHERE until_ms > $1 \
         UNION SELECT channel FROM room_settings";
    pub const HEAD: &str = "SELECT COALESCE(MAX(id), 0) FROM moderation_log";
    pub const READ_LOG: &str = "SELECT id, channel, actor, action, target, detail, ts_ms \
         FROM moderation_log WHERE channel = $1 ORDER BY id DESC LIMIT $2";
}

/// Applies `a` and appends its audit row inside the caller's transaction `tx`
/// (committed by the caller). Returns whether the state changed (removing a
/// moderator who was none, or unmuting a user who was not muted, changes
/// nothing but is still logged).
pub(crate) async fn apply<DB>(
    tx: &mut DB::Connection,
    a: &ModerationAction,
) -> Result<bool, StoreError>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: Encode<'a, DB> + Type<DB>,
    String: for<'a> Encode<'a, DB> + Type<DB>,
    i64: for<'a> Encode<'a, DB> + Type<DB>,
    Option<i64>: for<'a> Encode<'a, DB> + Type<DB>,
    DB::Arguments: IntoArguments<DB>,
{
    validate(a)?;
    let scope = a.scope.as_str();
    let result = match &a.change {
        ModerationChange::SetWordlist { block, mask } => {
            sqlx::query::<DB>(sql::SET_WORDLIST)
                .bind(scope)
                .bind(join(block))
                .bind(join(mask))
                .bind(a.ts_ms)
                .execute(&mut *tx)
                .await?
        }
        ModerationChange::AddModerator { user } => {
            sqlx::query::<DB>(sql::ADD_MODERATOR)
                .bind(scope)
                .bind(user.as_str())
                .execute(&mut *tx)
                .await?
        }
        ModerationChange::RemoveModerator { user } => {
            sqlx::query::<DB>(sql::REMOVE_MODERATOR)
                .bind(scope)
                .bind(user.as_str())
                .execute(&mut *tx)
                .await?
        }
        ModerationChange::Mute { user, until_ms } => {
            sqlx::query::<DB>(sql::MUTE)
                .bind(scope)
                .bind(user.as_str())
                .bind(*until_ms)
                .execute(&mut *tx)
                .await?
        }
        ModerationChange::Unmute { user } => {
            sqlx::query::<DB>(sql::UNMUTE)
                .bind(scope)
                .bind(user.as_str())
                .execute(&mut *tx)
                .await?
        }
        ModerationChange::Settings(p) => {
            sqlx::query::<DB>(sql::SETTINGS)
                .bind(scope)
                .bind(p.slow_mode_secs.map(to_db))
                .bind(p.mute_all.map(i64::from))
                .bind(p.max_rate.map(to_db))
                .execute(&mut *tx)
                .await?
        }
    };
    let changed = DB::rows_affected(&result) > 0;
    let (action, target, detail) = a.change.describe();
    sqlx::query::<DB>(sql::LOG)
        .bind(scope)
        .bind(a.actor.as_str())
        .bind(action)
        .bind(target)
        .bind(detail)
        .bind(a.ts_ms)
        .execute(&mut *tx)
        .await?;
    Ok(changed)
}

/// The stored policy of `scope`, with the mutes still running at `now_ms`.
pub(crate) async fn policy<'c, DB, E>(db: E, scope: &str, now_ms: i64) -> Result<Policy, StoreError>
where
    DB: Database,
    E: Executor<'c, Database = DB> + Copy,
    for<'a> &'a str: Encode<'a, DB> + Type<DB>,
    i64: for<'a> Encode<'a, DB> + Type<DB>,
    DB::Arguments: IntoArguments<DB>,
    (String, String): for<'r> FromRow<'r, DB::Row>,
    (String,): for<'r> FromRow<'r, DB::Row>,
    (String, i64): for<'r> FromRow<'r, DB::Row>,
    (i64, i64, i64): for<'r> FromRow<'r, DB::Row>,
{
    let words: Option<(String, String)> = sqlx::query_as::<DB, (String, String)>(sql::WORDLIST)
        .bind(scope)
        .fetch_optional(db)
        .await?;
    let moderators: Vec<(String,)> = sqlx::query_as::<DB, (String,)>(sql::MODERATORS)
        .bind(scope)
        .fetch_all(db)
        .await?;
    let mutes: Vec<(String, i64)> = sqlx::query_as::<DB, (String, i64)>(sql::MUTES)
        .bind(scope)
        .bind(now_ms)
        .fetch_all(db)
        .await?;
    let settings: Option<(i64, i64, i64)> = sqlx::query_as::<DB, (i64, i64, i64)>(sql::SETTINGS_OF)
        .bind(scope)
        .fetch_optional(db)
        .await?;
    let (block, mask) = words.map_or_else(Default::default, |(b, m)| (split(&b), split(&m)));
    Ok(Policy {
        block,
        mask,
        moderators: moderators.into_iter().map(|(u,)| u).collect(),
        mutes,
        settings: settings.map_or_else(Default::default, |(s, m, r)| RoomSettings {
            slow_mode_secs: from_db(s),
            mute_all: m != 0,
            max_rate: from_db(r),
        }),
    })
}

/// Every scope with some stored policy (a word list, moderators, a running
/// mute at `now_ms`, settings), in no particular order.
pub(crate) async fn scopes<'c, DB, E>(db: E, now_ms: i64) -> Result<Vec<String>, StoreError>
where
    DB: Database,
    E: Executor<'c, Database = DB>,
    i64: for<'a> Encode<'a, DB> + Type<DB>,
    DB::Arguments: IntoArguments<DB>,
    (String,): for<'r> FromRow<'r, DB::Row>,
{
    let rows: Vec<(String,)> = sqlx::query_as::<DB, (String,)>(sql::SCOPES)
        .bind(now_ms)
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().map(|(s,)| s).collect())
}

/// The id of the newest audit entry of any scope (0 when there is none).
pub(crate) async fn head<'c, DB, E>(db: E) -> Result<u64, StoreError>
where
    DB: Database,
    E: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    (i64,): for<'r> FromRow<'r, DB::Row>,
{
    let (id,): (i64,) = sqlx::query_as::<DB, (i64,)>(sql::HEAD)
        .fetch_one(db)
        .await?;
    Ok(from_db(id))
}

/// The newest `limit` audit entries of `scope`, newest first.
pub(crate) async fn log<'c, DB, E>(
    db: E,
    scope: &str,
    limit: usize,
) -> Result<Vec<AuditEntry>, StoreError>
where
    DB: Database,
    E: Executor<'c, Database = DB>,
    for<'a> &'a str: Encode<'a, DB> + Type<DB>,
    i64: for<'a> Encode<'a, DB> + Type<DB>,
    DB::Arguments: IntoArguments<DB>,
    (i64, String, String, String, String, String, i64): for<'r> FromRow<'r, DB::Row>,
{
    let limit = limit.min(MAX_READ_LIMIT);
    let rows =
        sqlx::query_as::<DB, (i64, String, String, String, String, String, i64)>(sql::READ_LOG)
            .bind(scope)
            .bind(to_db(limit as u64))
            .fetch_all(db)
            .await?;
    Ok(rows
        .into_iter()
        .map(
            |(id, scope, actor, action, target, detail, ts_ms)| AuditEntry {
                id: from_db(id),
                scope,
                actor,
                action,
                target,
                detail,
                ts_ms,
            },
        )
        .collect())
}
