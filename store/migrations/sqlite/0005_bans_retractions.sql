-- Bans and retractions (issue 19, part B). Keep in step with ../postgres/0005_bans_retractions.sql.

-- Channel bans: the user may not post in or join the channel until until_ms (ms since
-- the epoch); until_ms 0 = permanent. A row whose until_ms has passed is no longer a ban.
CREATE TABLE bans (
    channel  TEXT   NOT NULL,
    user_id  TEXT   NOT NULL,
    until_ms BIGINT NOT NULL,
    PRIMARY KEY (channel, user_id)
) WITHOUT ROWID;
CREATE INDEX bans_by_end ON bans (until_ms);

-- Retracted gifts and chat messages (by seq): history no longer returns them.
CREATE TABLE retractions (
    channel TEXT   NOT NULL,
    seq     BIGINT NOT NULL,
    ts_ms   BIGINT NOT NULL,
    PRIMARY KEY (channel, seq)
) WITHOUT ROWID;
