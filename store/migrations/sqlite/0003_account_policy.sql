-- Account policy: revoked tokens and global user blocks (docs/PROTOCOL.md, "Account
-- protection"). Every ingest and edge loads these rows at start and keeps them in
-- memory; a row goes once it refuses nothing any more (ingest purges them). Times are
-- unix seconds. Keep in step with ../postgres/0003_account_policy.sql.

-- One revoked token by id, refused until expire_at (the token's own exp).
CREATE TABLE revoked_tokens (
    jti       TEXT   PRIMARY KEY,
    expire_at BIGINT NOT NULL
) WITHOUT ROWID;

-- Every token of user_id issued before issued_before (or without iat) is refused
-- until expire_at, when the last of them has expired. Both only grow.
CREATE TABLE revoked_users (
    user_id       TEXT   PRIMARY KEY,
    issued_before BIGINT NOT NULL,
    expire_at     BIGINT NOT NULL
) WITHOUT ROWID;

-- A global block of user_id until until_s (0 = permanent). A lifted block keeps its
-- row (lifted, until_s = when) for a while, so an older block replayed by the bus
-- cannot outvote it; at_ms orders the changes of one user.
CREATE TABLE user_blocks (
    user_id TEXT    PRIMARY KEY,
    until_s BIGINT  NOT NULL,
    lifted  BOOLEAN NOT NULL,
    at_ms   BIGINT  NOT NULL
) WITHOUT ROWID;
