-- Whether the node was cordoned before the workflow cordoned it (then it stays cordoned at the
-- end), and when an operator cleared an escalation (until then no fault starts new work).
ALTER TABLE workflows ADD COLUMN was_cordoned INTEGER;
ALTER TABLE workflows ADD COLUMN escalation_cleared_at TEXT;
