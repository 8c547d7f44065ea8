-- The remediation policy's process that started a workflow and the rung of its ladder (the
-- repair it makes), with why that rung. Workflows from before the policy were reboots.
ALTER TABLE workflows ADD COLUMN process TEXT;
ALTER TABLE workflows ADD COLUMN rung TEXT;
ALTER TABLE workflows ADD COLUMN rung_why TEXT;
CREATE INDEX IF NOT EXISTS workflows_by_node ON workflows (cluster, node, created_at);
