-- Incidents: one per fingerprint (cluster/node/kind) while active; each fault is an occurrence
-- of one. Times are epoch milliseconds. `board_key` is the board's order in one integer
-- (state's urgency * 10 + 2 - severity's rank), so the board, its state filter (a range of it)
-- and its cursor use one index.
CREATE TABLE IF NOT EXISTS incidents (
    id TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    cluster TEXT NOT NULL,
    node TEXT NOT NULL,
    class TEXT NOT NULL,
    kind TEXT NOT NULL,
    severity TEXT NOT NULL,
    state TEXT NOT NULL,
    board_key INTEGER NOT NULL,
    reason TEXT NOT NULL,
    first_seen_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    occurrences BIGINT NOT NULL,
    expected BIGINT NOT NULL,
    workflow_id TEXT,
    workflow_state TEXT,
    correlation_id TEXT,
    acknowledged_by TEXT,
    assignee TEXT,
    silenced_until_ms BIGINT,
    resolved_at_ms BIGINT,
    active INTEGER NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    version BIGINT NOT NULL,
    published_version BIGINT NOT NULL,
    -- The state last published: a webhook is told when the state differs.
    published_state TEXT
);
-- At most one active incident per fingerprint, whichever replica writes.
CREATE UNIQUE INDEX IF NOT EXISTS incidents_active_fingerprint ON incidents (fingerprint) WHERE active = 1;
CREATE INDEX IF NOT EXISTS incidents_board ON incidents (board_key, last_seen_ms DESC, id DESC);
CREATE INDEX IF NOT EXISTS incidents_by_cluster ON incidents (cluster, board_key, last_seen_ms DESC, id DESC);
CREATE INDEX IF NOT EXISTS incidents_by_node ON incidents (cluster, node, active, last_seen_ms);
CREATE INDEX IF NOT EXISTS incidents_by_kind ON incidents (cluster, kind, active, first_seen_ms);
CREATE INDEX IF NOT EXISTS incidents_unpublished ON incidents (updated_at_ms) WHERE version > published_version;
CREATE INDEX IF NOT EXISTS incidents_resolved ON incidents (resolved_at_ms) WHERE active = 0;

-- Operators' actions on incidents (ack, silence, assign, annotate, clear): the incident's
-- timeline shows them.
CREATE TABLE IF NOT EXISTS incident_notes (
    id TEXT PRIMARY KEY,
    incident_id TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    by_name TEXT NOT NULL,
    action TEXT NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS incident_notes_by_incident ON incident_notes (incident_id, at_ms);

-- Many nodes of a cluster reporting one kind within a window.
CREATE TABLE IF NOT EXISTS correlations (
    id TEXT PRIMARY KEY,
    cluster TEXT NOT NULL,
    kind TEXT NOT NULL,
    first_seen_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    body TEXT NOT NULL,
    version BIGINT NOT NULL,
    published_version BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS correlations_by_time ON correlations (last_seen_ms);

-- Each fault's incident; whether Firebreak's own remediation caused it; whether it went out on
-- the occurrences topic (the outbox: 0 until delivered). Faults stored before incidents existed
-- are not occurrences of any and are not published.
ALTER TABLE fault_events ADD COLUMN incident_id TEXT;
ALTER TABLE fault_events ADD COLUMN expected INTEGER NOT NULL DEFAULT 0;
ALTER TABLE fault_events ADD COLUMN published INTEGER NOT NULL DEFAULT 1;
CREATE INDEX IF NOT EXISTS fault_events_by_incident ON fault_events (incident_id, sort_at_ms);
CREATE INDEX IF NOT EXISTS fault_events_unpublished ON fault_events (received_at_ms) WHERE published = 0;

CREATE INDEX IF NOT EXISTS remediation_events_by_node ON remediation_events (cluster, node, at_ms);
CREATE INDEX IF NOT EXISTS remediation_events_by_workflow ON remediation_events (workflow_id, at_ms);
CREATE INDEX IF NOT EXISTS remediation_events_by_trigger ON remediation_events (trigger_event_id);

-- Every fault query orders by sort_at_ms (its indexes are in 20261130100001): these two only
-- cost writes.
DROP INDEX IF EXISTS fault_events_by_time;
DROP INDEX IF EXISTS fault_events_by_node;
