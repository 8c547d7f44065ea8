-- Halts raised by health rules and failed changes say what raised them and what was measured.
ALTER TABLE gate_halts ADD COLUMN source TEXT;
ALTER TABLE gate_halts ADD COLUMN signals TEXT;

-- Changes (canary and batch rollouts), each a JSON document with its batches and verdicts.
-- `version` guards transitions: an update applies only to the version it read.
CREATE TABLE IF NOT EXISTS gate_changes (
    id TEXT PRIMARY KEY,
    cluster TEXT NOT NULL,
    state TEXT NOT NULL,
    version BIGINT NOT NULL,
    body TEXT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS gate_changes_by_time ON gate_changes (updated_at_ms);
