-- Webhook calls for incidents that opened or changed state: written in the transaction that marks
-- the incident published (once per change, whatever replica publishes it), deleted once the
-- receiver answered 2xx, retried with a growing delay until then. A restart loses none.
CREATE TABLE IF NOT EXISTS incident_webhooks (
    id TEXT PRIMARY KEY,
    incident_id TEXT NOT NULL,
    url TEXT NOT NULL,
    event TEXT NOT NULL,
    body TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_at_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS incident_webhooks_due ON incident_webhooks (next_at_ms);
CREATE INDEX IF NOT EXISTS incident_webhooks_by_incident ON incident_webhooks (incident_id, url, id);
