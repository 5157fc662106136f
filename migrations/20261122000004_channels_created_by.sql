-- The per-user channel quota counts the records a user created.
CREATE INDEX IF NOT EXISTS channels_created_by ON channels (created_by) WHERE created_by IS NOT NULL;
