-- Portable between SQLite and PostgreSQL.
CREATE TABLE IF NOT EXISTS fault_events (
    id TEXT PRIMARY KEY,
    cluster TEXT NOT NULL,
    node TEXT NOT NULL,
    class TEXT NOT NULL,
    kind TEXT NOT NULL,
    severity TEXT NOT NULL,
    source TEXT NOT NULL,
    observed_at TEXT NOT NULL,
    observed_at_ms BIGINT NOT NULL,
    message TEXT NOT NULL,
    evidence TEXT NOT NULL,
    received_at TEXT NOT NULL,
    received_at_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS fault_events_by_time ON fault_events (observed_at_ms);
CREATE INDEX IF NOT EXISTS fault_events_by_node ON fault_events (cluster, node, observed_at_ms);

CREATE TABLE IF NOT EXISTS remediation_events (
    id TEXT PRIMARY KEY,
    workflow_id TEXT NOT NULL,
    cluster TEXT NOT NULL,
    node TEXT NOT NULL,
    trigger_event_id TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    at TEXT NOT NULL,
    at_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS remediation_events_by_time ON remediation_events (at_ms);

-- Records that could not be decoded: kept, never silently dropped.
CREATE TABLE IF NOT EXISTS rejected_messages (
    topic TEXT NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset BIGINT NOT NULL,
    message_key TEXT,
    payload TEXT,
    error TEXT NOT NULL,
    received_at TEXT NOT NULL,
    PRIMARY KEY (topic, kafka_partition, kafka_offset)
);
