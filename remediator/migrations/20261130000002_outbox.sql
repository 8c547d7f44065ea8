-- The outbox. A step is written unpublished in its transition's transaction and marked once the
-- remediation topic has it; a webhook (escalation, reinstall, hardware ticket) is written in its
-- transition's transaction and deleted once delivered. A crash between the write and the
-- delivery loses neither: the sender picks them up when the remediator starts again. Steps from
-- before the outbox count as published.
ALTER TABLE workflow_steps ADD COLUMN published INTEGER NOT NULL DEFAULT 1;
CREATE INDEX IF NOT EXISTS workflow_steps_unpublished ON workflow_steps (published) WHERE published = 0;
CREATE TABLE IF NOT EXISTS webhook_outbox (
    id TEXT PRIMARY KEY,
    workflow_id TEXT NOT NULL,
    hook TEXT NOT NULL,
    event TEXT NOT NULL,
    body TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_at_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_outbox_due ON webhook_outbox (next_at_ms);
