-- Read markers: per user and channel, the highest seq the user has read. Monotonic (writes
-- keep the greater value) and never past the channel's latest seq. The primary key, led by
-- the user, serves both a user's markers and the unread counts of the user's channels.
CREATE TABLE read_markers (
    user_id     TEXT NOT NULL,
    channel     TEXT NOT NULL,
    seq         BIGINT NOT NULL CHECK (seq >= 0),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, channel)
);
