-- Idempotency keys belong to their sender: one message per (channel, sender,
-- client_msg_id). Under 0001 the key was (channel, client_msg_id), so a second user
-- reusing someone else's id got the first user's seq and their message was never stored.
-- The old index was stricter, so existing rows always satisfy the new one.
DROP INDEX messages_client_msg_id;
CREATE UNIQUE INDEX messages_idempotency ON messages (channel, sender, client_msg_id);
