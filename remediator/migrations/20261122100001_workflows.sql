-- Portable between SQLite and PostgreSQL.
CREATE TABLE IF NOT EXISTS workflows (
    id TEXT PRIMARY KEY,
    cluster TEXT NOT NULL,
    node TEXT NOT NULL,
    trigger_event_id TEXT NOT NULL UNIQUE,
    fault_kind TEXT NOT NULL,
    state TEXT NOT NULL,
    permit_id TEXT,
    boot_id_before TEXT,
    rebooted_at_ms BIGINT,
    reason TEXT NOT NULL,
    done INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS workflows_open ON workflows (cluster, done);

CREATE TABLE IF NOT EXISTS workflow_steps (
    workflow_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (workflow_id, seq)
);

-- Every fault the remediator consumed, with what it decided.
CREATE TABLE IF NOT EXISTS seen_faults (
    event_id TEXT PRIMARY KEY,
    cluster TEXT NOT NULL,
    node TEXT NOT NULL,
    kind TEXT NOT NULL,
    severity TEXT NOT NULL,
    observed_at_ms BIGINT NOT NULL,
    workflow_id TEXT,
    decision TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS seen_faults_by_node ON seen_faults (cluster, node, observed_at_ms);
