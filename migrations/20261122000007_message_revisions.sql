-- Edits and deletes: a message whose event is "edit" or "delete" names the message it
-- changes by seq in ref_seq (NULL for every other message). The partial index serves the
-- current view (latest edit and delete of each message) and the scrub a delete runs; the
-- column is nullable without a default, so adding it rewrites nothing.
ALTER TABLE messages ADD COLUMN ref_seq BIGINT CHECK (ref_seq IS NULL OR ref_seq > 0);
CREATE INDEX messages_revisions ON messages (channel, ref_seq, seq) WHERE ref_seq IS NOT NULL;
