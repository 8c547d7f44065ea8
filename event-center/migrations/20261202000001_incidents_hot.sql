-- Every occurrence rewrites its incident (count, last seen, version). On PostgreSQL such an
-- update stays in its page and writes no index entry (a HOT update) only when no indexed column
-- changes, and an index's predicate counts. Before this, the board's indexes held last_seen_ms
-- and the outbox's predicate compared versions, so each occurrence added an entry to every index
-- of the table and left a dead row for vacuum: a fill of 1 M faults slowed to 400/s. Now the
-- board orders by first seen (a stable board: an incident does not jump as it recurs), the
-- node index ends at active, and the outbox is a flag that a change sets (to 1, again and again:
-- no change) and publishing clears.
ALTER TABLE incidents ADD COLUMN unpublished INTEGER NOT NULL DEFAULT 0;
UPDATE incidents SET unpublished = 1 WHERE version > published_version;
DROP INDEX IF EXISTS incidents_board;
DROP INDEX IF EXISTS incidents_by_cluster;
DROP INDEX IF EXISTS incidents_by_node;
DROP INDEX IF EXISTS incidents_unpublished;
CREATE INDEX IF NOT EXISTS incidents_board ON incidents (board_key, first_seen_ms DESC, id DESC);
CREATE INDEX IF NOT EXISTS incidents_by_cluster ON incidents (cluster, board_key, first_seen_ms DESC, id DESC);
CREATE INDEX IF NOT EXISTS incidents_by_node ON incidents (cluster, node, active);
CREATE INDEX IF NOT EXISTS incidents_outbox ON incidents (id) WHERE unpublished = 1;
