-- The fleet view counts active incidents and their nodes per cluster and class, and escalated
-- nodes per cluster: partial indexes that hold exactly what it reads, so it walks them in order
-- instead of reading every active incident's row.
CREATE INDEX IF NOT EXISTS incidents_fleet ON incidents (cluster, class, node) WHERE active = 1;
CREATE INDEX IF NOT EXISTS incidents_escalated ON incidents (cluster, node) WHERE active = 1 AND state = 'escalated';
