-- Events from the future: an observation time more than 5 minutes past the receive time cannot
-- be trusted (the node's clock is wrong). Such an event is kept, flagged with the skew, and
-- ordered by its receive time; every other by its observation time.
ALTER TABLE fault_events ADD COLUMN sort_at_ms BIGINT;
ALTER TABLE fault_events ADD COLUMN clock_skew_ms BIGINT;
UPDATE fault_events SET
    clock_skew_ms = CASE WHEN observed_at_ms > received_at_ms + 300000 THEN observed_at_ms - received_at_ms END,
    sort_at_ms = CASE WHEN observed_at_ms > received_at_ms + 300000 THEN received_at_ms ELSE observed_at_ms END;
CREATE INDEX IF NOT EXISTS fault_events_by_sort ON fault_events (sort_at_ms);
CREATE INDEX IF NOT EXISTS fault_events_by_node_sort ON fault_events (cluster, node, sort_at_ms);
