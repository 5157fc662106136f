-- Idempotency keys of persistent publishes (`idempotency_key` on a publish frame, the
-- `Idempotency-Key` header on REST). A key is written in the transaction that stores its
-- message, so it exists exactly when the message was committed, on every node. A retry with
-- the same key, channel and publisher within the window reads the first publish's ack from
-- here and stores nothing. Rows older than the window are ignored, then pruned.
CREATE TABLE publish_keys (
    channel     TEXT NOT NULL,
    -- The publisher's user id; '' for the server (service publishes).
    publisher   TEXT NOT NULL,
    key         TEXT NOT NULL CHECK (octet_length(key) BETWEEN 1 AND 128),
    seq         BIGINT NOT NULL,
    message_id  UUID NOT NULL,
    -- The message's publish time, for the repeated ack.
    ts          TIMESTAMPTZ NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, publisher, key)
);

-- Serves pruning of expired keys.
CREATE INDEX publish_keys_by_age ON publish_keys (created_at);
