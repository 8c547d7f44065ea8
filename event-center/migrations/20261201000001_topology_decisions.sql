-- Each cluster's failure domains as its detector last published them (a `Topology` record:
-- label key → value → nodes, as JSON): correlation groups nodes by them.
CREATE TABLE IF NOT EXISTS topologies (
    cluster TEXT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    body TEXT NOT NULL
);

-- The gate's decisions, as it publishes them, kept with the node and workflow they concern. A
-- requester's denials for the same reason in a row are one row (`repeats`, first and last
-- time; the body is the latest); grants are a row each.
CREATE TABLE IF NOT EXISTS decision_events (
    id TEXT PRIMARY KEY,
    cluster TEXT NOT NULL,
    node TEXT,
    requester TEXT NOT NULL,
    workflow_id TEXT,
    first_at_ms BIGINT NOT NULL,
    last_at_ms BIGINT NOT NULL,
    repeats BIGINT NOT NULL,
    run_key TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decision_events_by_requester ON decision_events (requester, last_at_ms);
CREATE INDEX IF NOT EXISTS decision_events_by_node ON decision_events (cluster, node, last_at_ms);
CREATE INDEX IF NOT EXISTS decision_events_by_workflow ON decision_events (workflow_id, last_at_ms);
