-- Edits and deletes: a message whose event is "edit" or "delete" names the message it
-- changes by seq in ref_seq (NULL for every other message). Nullable, with no default and
-- no constraint, so adding it rewrites and scans nothing and holds its lock for an instant.
-- Its index comes in the next migration, built without blocking reads or writes.
ALTER TABLE messages ADD COLUMN ref_seq BIGINT;
