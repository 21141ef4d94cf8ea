-- Blobs for notify-pull (docs/PROTOCOL.md, "Blobs"): a message carries a blob's id,
-- clients fetch the body over plain HTTP. Content-addressed: id is the lowercase hex
-- SHA-256 of body, so a blob never changes and storing it twice keeps one row.
-- Keep in step with ../postgres/0006_blobs.sql. (0005 belongs to another change.)
CREATE TABLE blobs (
    id           TEXT   PRIMARY KEY,
    content_type TEXT   NOT NULL,
    body         BLOB   NOT NULL,
    created_ms   BIGINT NOT NULL
) WITHOUT ROWID;
