-- The gate's state. Portable between SQLite and PostgreSQL.
CREATE TABLE IF NOT EXISTS gate_permits (
    id TEXT PRIMARY KEY,
    operation TEXT NOT NULL,
    cluster TEXT NOT NULL,
    node TEXT,
    domains TEXT NOT NULL,
    requester TEXT NOT NULL,
    holder TEXT NOT NULL,
    state TEXT NOT NULL,
    granted_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    ended_at_ms BIGINT,
    ended_by TEXT
);
CREATE INDEX IF NOT EXISTS gate_permits_active ON gate_permits (state, expires_at_ms);
CREATE INDEX IF NOT EXISTS gate_permits_granted ON gate_permits (granted_at_ms);

-- GCRA: the theoretical arrival time per operation and scope.
CREATE TABLE IF NOT EXISTS gate_rate (
    operation TEXT NOT NULL,
    scope TEXT NOT NULL,
    tat_ms BIGINT NOT NULL,
    PRIMARY KEY (operation, scope)
);

CREATE TABLE IF NOT EXISTS gate_halts (
    id TEXT PRIMARY KEY,
    scope TEXT NOT NULL,
    operations TEXT NOT NULL,
    reason TEXT NOT NULL,
    by_name TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    resumed_at_ms BIGINT,
    resumed_by TEXT
);

CREATE TABLE IF NOT EXISTS gate_breakers (
    id TEXT PRIMARY KEY,
    operation TEXT NOT NULL,
    scope TEXT NOT NULL,
    tripped_at_ms BIGINT NOT NULL,
    reason TEXT NOT NULL,
    until_ms BIGINT,
    reset_at_ms BIGINT,
    reset_by TEXT
);

-- The decision log, bounded by the policy's decision_log_entries.
CREATE TABLE IF NOT EXISTS gate_decisions (
    id TEXT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    operation TEXT NOT NULL,
    cluster TEXT NOT NULL,
    node TEXT,
    requester TEXT NOT NULL,
    holder TEXT NOT NULL,
    granted INTEGER NOT NULL,
    rule TEXT,
    scope TEXT,
    -- Numbers as text: sqlx's Any driver cannot bind a NULL float for PostgreSQL.
    measured TEXT,
    threshold TEXT,
    reason TEXT NOT NULL,
    permit_id TEXT
);
CREATE INDEX IF NOT EXISTS gate_decisions_by_time ON gate_decisions (at_ms);

-- The latest snapshot of each cluster, so a restarted gate has data at once.
CREATE TABLE IF NOT EXISTS gate_snapshots (
    cluster TEXT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    body TEXT NOT NULL
);
