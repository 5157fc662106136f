-- no-transaction
-- The index of edits and deletes by the message they change: serves the current view
-- (latest edit and delete of each message) and the scrub a delete runs. Built
-- CONCURRENTLY (hence outside a transaction), so a large messages table stays readable and
-- writable meanwhile. Should the build fail, it leaves an invalid index behind: drop it
-- (DROP INDEX CONCURRENTLY messages_revisions) and run the migration again.
CREATE INDEX CONCURRENTLY IF NOT EXISTS messages_revisions
    ON messages (channel, ref_seq, seq) WHERE ref_seq IS NOT NULL;
