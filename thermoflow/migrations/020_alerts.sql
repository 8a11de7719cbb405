-- The alert store (alerts/store.py): every alert event once, and incidents grouping them.

-- One row per alert event, idempotent on alert_id. alert_id hashes reading_ts, so the
-- (alert_id, reading_ts) key is as unique as alert_id alone, and a hypertable can keep it.
CREATE TABLE IF NOT EXISTS alert_events (
    alert_id     text NOT NULL,
    reading_ts   timestamptz NOT NULL,
    device_id    text NOT NULL,
    metric       text NOT NULL,
    rule_id      text NOT NULL,
    severity     text NOT NULL CHECK (severity IN ('warning', 'critical')),
    condition    text NOT NULL CHECK (condition IN ('above', 'below')),
    threshold    double precision NOT NULL,
    value        double precision NOT NULL,
    detected_at  timestamptz NOT NULL,
    stored_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (alert_id, reading_ts)
);
CREATE INDEX IF NOT EXISTS alert_events_device_rule_ts ON alert_events (device_id, rule_id, reading_ts DESC);

SELECT thermoflow_make_hypertable('alert_events', 'reading_ts', interval '1 day', interval '7 days',
                                  interval '365 days', 'device_id');

-- Incidents: one open (firing or acknowledged) incident per (device_id, rule_id).
CREATE TABLE IF NOT EXISTS incidents (
    incident_id      text PRIMARY KEY,
    device_id        text NOT NULL,
    rule_id          text NOT NULL,
    metric           text NOT NULL,
    condition        text NOT NULL CHECK (condition IN ('above', 'below')),
    threshold        double precision NOT NULL,
    severity         text NOT NULL CHECK (severity IN ('warning', 'critical')),
    status           text NOT NULL CHECK (status IN ('firing', 'acknowledged', 'resolved')),
    opened_at        timestamptz NOT NULL,
    last_breach_at   timestamptz NOT NULL,
    peak_value       double precision NOT NULL,
    breach_count     bigint NOT NULL CHECK (breach_count > 0),
    acknowledged_at  timestamptz,
    acknowledged_by  text,
    resolved_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'resolved') = (resolved_at IS NOT NULL))
) WITH (fillfactor = 70);  -- room for HOT updates: every batch rewrites its incidents' rows
CREATE UNIQUE INDEX IF NOT EXISTS incidents_one_open
    ON incidents (device_id, rule_id) WHERE status <> 'resolved';
-- No index on last_breach_at: it changes with every breach, and indexing it would make each of
-- those updates non-HOT. The resolve sweep scans the open incidents instead.
CREATE INDEX IF NOT EXISTS incidents_device_opened ON incidents (device_id, opened_at DESC);
