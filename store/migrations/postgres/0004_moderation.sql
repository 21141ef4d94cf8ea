-- Moderation (issue 19). Keep in step with ../sqlite/0004_moderation.sql.

-- Word lists: one row per scope (a channel name, or '*' for the global list). Words are
-- newline-separated (they never contain control characters); the row is replaced whole.
CREATE TABLE wordlists (
    scope      TEXT   PRIMARY KEY,
    block      TEXT   NOT NULL,
    mask       TEXT   NOT NULL,
    updated_ms BIGINT NOT NULL
);

-- Room moderators (房管): may mute and change settings in their room.
CREATE TABLE moderators (
    channel TEXT NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (channel, user_id)
);

-- Timed mutes; a row whose until_ms has passed is no longer a mute.
CREATE TABLE mutes (
    channel  TEXT   NOT NULL,
    user_id  TEXT   NOT NULL,
    until_ms BIGINT NOT NULL,
    PRIMARY KEY (channel, user_id)
);

-- Room settings; 0 means off.
CREATE TABLE room_settings (
    channel        TEXT   PRIMARY KEY,
    slow_mode_secs BIGINT NOT NULL,
    mute_all       BIGINT NOT NULL,
    max_rate       BIGINT NOT NULL
);

-- The audit trail: every moderation action, written in the transaction that applies it.
CREATE TABLE moderation_log (
    id      BIGSERIAL PRIMARY KEY,
    channel TEXT    NOT NULL,
    actor   TEXT    NOT NULL,
    action  TEXT    NOT NULL,
    target  TEXT    NOT NULL,
    detail  TEXT    NOT NULL,
    ts_ms   BIGINT  NOT NULL
);
CREATE INDEX moderation_log_by_channel ON moderation_log (channel, id);
