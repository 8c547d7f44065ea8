-- The latest health sample per cluster, and the gate's halts and changes as its topic tells
-- them (the newest state of each wins).
CREATE TABLE IF NOT EXISTS cluster_health (
    cluster TEXT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS gate_halts (
    id TEXT PRIMARY KEY,
    active INTEGER NOT NULL,
    at_ms BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS gate_changes (
    id TEXT PRIMARY KEY,
    updated_at_ms BIGINT NOT NULL,
    body TEXT NOT NULL
);
