-- danmaku store schema, SQLite. Keep in step with ../postgres/0001_init.sql.

-- The last seq handed out per channel. Appenders lock this row for the length of their
-- transaction, which serializes them per channel and keeps seqs gap-free.
CREATE TABLE channel_seq (
    channel  TEXT   PRIMARY KEY,
    last_seq BIGINT NOT NULL
) WITHOUT ROWID;

-- Reliable-lane messages, stored once per channel (not per recipient).
CREATE TABLE messages (
    channel       TEXT   NOT NULL,
    seq           BIGINT NOT NULL,
    client_msg_id TEXT,
    sender        TEXT   NOT NULL,
    kind          TEXT   NOT NULL,
    text          TEXT   NOT NULL,
    payload_json  TEXT,
    ts_ms         BIGINT NOT NULL,
    PRIMARY KEY (channel, seq)
) WITHOUT ROWID;

-- Idempotency: one message per (channel, client_msg_id); NULL ids never conflict.
CREATE UNIQUE INDEX messages_client_msg_id ON messages (channel, client_msg_id);

-- Group membership. A member sees messages with seq > joined_seq.
CREATE TABLE members (
    channel    TEXT   NOT NULL,
    user_id    TEXT   NOT NULL,
    joined_seq BIGINT NOT NULL,
    PRIMARY KEY (channel, user_id)
) WITHOUT ROWID;
CREATE INDEX members_by_user ON members (user_id);

-- Per user x channel ack offset (only moves forward).
CREATE TABLE acks (
    user_id   TEXT   NOT NULL,
    channel   TEXT   NOT NULL,
    acked_seq BIGINT NOT NULL,
    PRIMARY KEY (user_id, channel)
) WITHOUT ROWID;
