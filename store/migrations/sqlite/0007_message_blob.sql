-- A reliable message may carry a blob (notify-pull, docs/PROTOCOL.md "Blobs"): the
-- id of a row in `blobs`, lowercase hex SHA-256. NULL when the message has none.
-- Not a foreign key: ingest checks the blob exists before appending, and blobs are
-- never deleted. Keep in step with ../postgres/0007_message_blob.sql.
ALTER TABLE messages ADD COLUMN blob TEXT;
