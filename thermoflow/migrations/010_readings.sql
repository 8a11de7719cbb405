-- The readings sink (ingest/sink.py): every reading once, idempotent on its natural key.
-- received_at is when the bridge got the MQTT message; stored_at is when this row was written
-- (clock_timestamp(), per row), so a load test can measure publish -> stored-row latency.
CREATE TABLE IF NOT EXISTS readings (
    device_id    text NOT NULL,
    metric       text NOT NULL,
    ts           timestamptz NOT NULL,
    value        double precision NOT NULL,
    seq          bigint,
    received_at  timestamptz NOT NULL,
    stored_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (device_id, metric, ts)
);
-- No second index on ts alone: each index costs every insert (measured: about a fifth of the
-- sink's rate); per-device history uses the primary key, and TimescaleDB adds its own ts index.

SELECT thermoflow_make_hypertable('readings', 'ts', interval '1 day', interval '7 days',
                                  interval '90 days', 'device_id, metric');
