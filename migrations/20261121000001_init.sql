-- Relay schema. Payloads and channel meta are stored as the exact JSON text the client sent
-- (TEXT, not JSONB): end-to-end-encrypted blobs must come back byte-identical.

CREATE TABLE channels (
    name        TEXT PRIMARY KEY CHECK (octet_length(name) BETWEEN 1 AND 255),
    meta        TEXT,
    created_by  TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE members (
    channel   TEXT NOT NULL REFERENCES channels (name) ON DELETE CASCADE,
    user_id   TEXT NOT NULL,
    added_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, user_id)
);

-- "Channels of a member", ordered by name.
CREATE INDEX members_by_user ON members (user_id, channel);

-- The per-channel sequence counter. Bumping a channel's row locks only that row until commit,
-- so seq assignment is atomic and gap-free per channel while unrelated channels never wait
-- for each other. It is independent of the channel record: any channel name can carry
-- messages. Trimming messages never lowers it, so seqs are never reused.
CREATE TABLE channel_seqs (
    channel   TEXT PRIMARY KEY,
    last_seq  BIGINT NOT NULL CHECK (last_seq >= 0)
);

CREATE TABLE messages (
    channel    TEXT NOT NULL,
    seq        BIGINT NOT NULL CHECK (seq > 0),
    id         UUID NOT NULL UNIQUE,
    from_user  TEXT,
    event      TEXT,
    payload    TEXT NOT NULL,
    ts         TIMESTAMPTZ NOT NULL,
    -- Serves history (after/before/limit, ascending or newest first) and count.
    PRIMARY KEY (channel, seq)
);
