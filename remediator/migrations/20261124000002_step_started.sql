-- When the running timed step (drain, verification) began, so that its deadline survives a
-- restart of the remediator.
ALTER TABLE workflows ADD COLUMN step_started_at_ms BIGINT;
