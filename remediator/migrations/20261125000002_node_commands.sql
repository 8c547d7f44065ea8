-- What the nodes' actuators reported on the commands workflows sent them (reboots, restarts),
-- each report once.
CREATE TABLE IF NOT EXISTS command_reports (
    command_id TEXT NOT NULL,
    workflow_id TEXT NOT NULL,
    cluster TEXT NOT NULL,
    node TEXT NOT NULL,
    action TEXT NOT NULL,
    outcome TEXT NOT NULL,
    boot_id TEXT NOT NULL,
    detail TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (command_id, outcome, boot_id)
);
CREATE INDEX IF NOT EXISTS command_reports_by_workflow ON command_reports (workflow_id);
