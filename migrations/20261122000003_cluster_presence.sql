-- Cluster-wide presence: which users each live node has subscribed to which channel. A node
-- writes its own rows (at each local first join and last leave, and wholesale at every
-- reconciliation); rows of a node whose registration expired are ignored, then deleted with
-- it.
CREATE TABLE cluster_presence (
    node_id  TEXT NOT NULL REFERENCES cluster_nodes (node_id) ON DELETE CASCADE,
    channel  TEXT NOT NULL,
    user_id  TEXT NOT NULL,
    PRIMARY KEY (channel, user_id, node_id)
);

CREATE INDEX cluster_presence_by_node ON cluster_presence (node_id);
