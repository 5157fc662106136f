-- Nodes of a cluster sharing this database (`--cluster postgres`). A node holds its row while
-- it runs, renewing `expires_at`; a start with the id of a live node is refused, so two
-- processes never share a node id.
CREATE TABLE cluster_nodes (
    node_id     TEXT PRIMARY KEY CHECK (octet_length(node_id) BETWEEN 1 AND 64),
    started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ NOT NULL
);
