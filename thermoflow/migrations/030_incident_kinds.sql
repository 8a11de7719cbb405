-- Issue 13: the detectors' conditions (offline, stuck, rate, outlier, ingest_silent and the
-- pipeline's own) reach the alert store, and a device can have one open incident per kind at
-- once: a threshold incident and a stuck one, say.

-- Alert events of every condition. The wire decoder already admits only the contract's
-- conditions, so the events table keeps no list of them (on TimescaleDB a compressed hypertable
-- cannot always take a new constraint; dropping one it can).
ALTER TABLE alert_events DROP CONSTRAINT IF EXISTS alert_events_condition_check;

-- Incidents: what kind each is ('threshold' for above/below, else the condition), backfilled
-- for the rows from before, and one open incident per (device, rule, kind).
ALTER TABLE incidents DROP CONSTRAINT IF EXISTS incidents_condition_check;
ALTER TABLE incidents ADD CONSTRAINT incidents_condition_check CHECK (condition IN (
    'above', 'below', 'offline', 'stuck', 'rate', 'outlier', 'ingest_silent',
    'deadletter_rate', 'consumer_lag', 'breaker_open'
));
ALTER TABLE incidents ADD COLUMN IF NOT EXISTS kind text;
UPDATE incidents SET kind = 'threshold' WHERE kind IS NULL;
ALTER TABLE incidents ALTER COLUMN kind SET NOT NULL;
ALTER TABLE incidents ADD CONSTRAINT incidents_kind_of_condition CHECK (
    kind = CASE WHEN condition IN ('above', 'below') THEN 'threshold' ELSE condition END
);
CREATE UNIQUE INDEX IF NOT EXISTS incidents_one_open_per_kind
    ON incidents (device_id, rule_id, kind) WHERE status <> 'resolved';
DROP INDEX IF EXISTS incidents_one_open;
