-- Issue 14: rollups for long ranges. Three relations answer "a device (or the fleet) over days":
--   readings_1m      per device, metric and minute: min_value, max_value, avg_value, sample_count, last_value
--   readings_1h      the same per hour
--   alert_counts_1h  per device, hour and severity: alerts
-- and two fleet-wide ones for the dashboard's fleet panels (a month of them is 43,200 rows):
--   fleet_readings_1m  per minute: sample_count (readings of every device)
--   fleet_alerts_1m    per minute and severity: alerts
-- With TimescaleDB (readings is a hypertable) they are continuous aggregates with a refresh
-- policy each, real-time (rows newer than the last refresh are aggregated at query time), and
-- compressed once past the refresh window. Retention: 1 year and 5 years by default here;
-- `thermoflow init` sets the configured ones (thermoflow/rollups.py, settings
-- readings_retention_days, rollup_1m_retention_days, rollup_1h_retention_days).
-- On plain PostgreSQL the same names are ordinary views over the raw tables, so a query reads
-- the same columns on either back end. Idempotent, and in whatever schema is first on the path.
DO $migration$
DECLARE
    ts_schema name;  -- where the timescaledb extension lives: its functions are qualified with it
    hypertable boolean := false;
    rollup text;
BEGIN
    SELECT extnamespace::regnamespace::name INTO ts_schema FROM pg_extension WHERE extname = 'timescaledb';
    IF ts_schema IS NOT NULL THEN
        EXECUTE 'SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables'
                ' WHERE hypertable_schema = current_schema() AND hypertable_name = ''readings'')'
            INTO hypertable;
    END IF;

    IF NOT hypertable THEN
        -- Plain PostgreSQL (or TimescaleDB not preloaded): views computing the same columns.
        -- date_bin from the epoch gives the same UTC-aligned buckets as time_bucket.
        CREATE OR REPLACE VIEW readings_1m AS
        SELECT device_id, metric, date_bin('1 minute', ts, timestamptz '2000-01-01 00:00+00') AS bucket,
               min(value) AS min_value, max(value) AS max_value, avg(value) AS avg_value,
               count(*) AS sample_count, (array_agg(value ORDER BY ts DESC))[1] AS last_value
        FROM readings GROUP BY 1, 2, 3;
        CREATE OR REPLACE VIEW readings_1h AS
        SELECT device_id, metric, date_bin('1 hour', ts, timestamptz '2000-01-01 00:00+00') AS bucket,
               min(value) AS min_value, max(value) AS max_value, avg(value) AS avg_value,
               count(*) AS sample_count, (array_agg(value ORDER BY ts DESC))[1] AS last_value
        FROM readings GROUP BY 1, 2, 3;
        CREATE OR REPLACE VIEW alert_counts_1h AS
        SELECT device_id, severity, date_bin('1 hour', reading_ts, timestamptz '2000-01-01 00:00+00') AS bucket,
               count(*) AS alerts
        FROM alert_events GROUP BY 1, 2, 3;
        CREATE OR REPLACE VIEW fleet_readings_1m AS
        SELECT date_bin('1 minute', ts, timestamptz '2000-01-01 00:00+00') AS bucket, count(*) AS sample_count
        FROM readings GROUP BY 1;
        CREATE OR REPLACE VIEW fleet_alerts_1m AS
        SELECT severity, date_bin('1 minute', reading_ts, timestamptz '2000-01-01 00:00+00') AS bucket,
               count(*) AS alerts
        FROM alert_events GROUP BY 1, 2;
        RETURN;
    END IF;

    -- Continuous aggregates. WITH NO DATA: a migration runs in a transaction, where a refresh
    -- cannot; the refresh policies fill them (and real-time aggregation covers the gap).
    EXECUTE format($sql$
        CREATE MATERIALIZED VIEW IF NOT EXISTS readings_1m
        WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
        SELECT device_id, metric, %1$I.time_bucket(interval '1 minute', ts) AS bucket,
               min(value) AS min_value, max(value) AS max_value, avg(value) AS avg_value,
               count(*) AS sample_count, %1$I.last(value, ts) AS last_value
        FROM readings GROUP BY 1, 2, 3
        WITH NO DATA $sql$, ts_schema);
    EXECUTE format($sql$
        CREATE MATERIALIZED VIEW IF NOT EXISTS readings_1h
        WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
        SELECT device_id, metric, %1$I.time_bucket(interval '1 hour', ts) AS bucket,
               min(value) AS min_value, max(value) AS max_value, avg(value) AS avg_value,
               count(*) AS sample_count, %1$I.last(value, ts) AS last_value
        FROM readings GROUP BY 1, 2, 3
        WITH NO DATA $sql$, ts_schema);
    EXECUTE format($sql$
        CREATE MATERIALIZED VIEW IF NOT EXISTS alert_counts_1h
        WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
        SELECT device_id, severity, %1$I.time_bucket(interval '1 hour', reading_ts) AS bucket,
               count(*) AS alerts
        FROM alert_events GROUP BY 1, 2, 3
        WITH NO DATA $sql$, ts_schema);
    EXECUTE format($sql$
        CREATE MATERIALIZED VIEW IF NOT EXISTS fleet_readings_1m
        WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
        SELECT %1$I.time_bucket(interval '1 minute', ts) AS bucket, count(*) AS sample_count
        FROM readings GROUP BY 1
        WITH NO DATA $sql$, ts_schema);
    EXECUTE format($sql$
        CREATE MATERIALIZED VIEW IF NOT EXISTS fleet_alerts_1m
        WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
        SELECT severity, %1$I.time_bucket(interval '1 minute', reading_ts) AS bucket, count(*) AS alerts
        FROM alert_events GROUP BY 1, 2
        WITH NO DATA $sql$, ts_schema);

    -- Refresh: the 1-minute rollup every minute over the last day, the hourly ones every 30
    -- minutes over the last week. A late reading inside that window is folded in at the next
    -- refresh; the window stays well inside raw retention, so a refresh never recomputes a
    -- bucket whose raw rows are gone.
    FOREACH rollup IN ARRAY ARRAY['readings_1m', 'fleet_readings_1m', 'fleet_alerts_1m'] LOOP
        EXECUTE format('SELECT %I.add_continuous_aggregate_policy(%L, start_offset => interval ''1 day'','
                       ' end_offset => interval ''1 minute'', schedule_interval => interval ''1 minute'','
                       ' if_not_exists => true)', ts_schema, rollup);
    END LOOP;
    EXECUTE format('SELECT %I.add_continuous_aggregate_policy(%L, start_offset => interval ''7 days'','
                   ' end_offset => interval ''1 hour'', schedule_interval => interval ''30 minutes'','
                   ' if_not_exists => true)', ts_schema, 'readings_1h');
    EXECUTE format('SELECT %I.add_continuous_aggregate_policy(%L, start_offset => interval ''7 days'','
                   ' end_offset => interval ''1 hour'', schedule_interval => interval ''30 minutes'','
                   ' if_not_exists => true)', ts_schema, 'alert_counts_1h');

    -- Compression once a bucket is past its refresh window (segmented by the group columns).
    ALTER MATERIALIZED VIEW readings_1m SET (timescaledb.compress = true);
    ALTER MATERIALIZED VIEW readings_1h SET (timescaledb.compress = true);
    ALTER MATERIALIZED VIEW alert_counts_1h SET (timescaledb.compress = true);
    ALTER MATERIALIZED VIEW fleet_readings_1m SET (timescaledb.compress = true);
    ALTER MATERIALIZED VIEW fleet_alerts_1m SET (timescaledb.compress = true);
    FOREACH rollup IN ARRAY ARRAY['readings_1m', 'fleet_readings_1m', 'fleet_alerts_1m'] LOOP
        EXECUTE format('SELECT %I.add_compression_policy(%L, compress_after => interval ''7 days'','
                       ' if_not_exists => true)', ts_schema, rollup);
    END LOOP;
    EXECUTE format('SELECT %I.add_compression_policy(%L, compress_after => interval ''30 days'','
                   ' if_not_exists => true)', ts_schema, 'readings_1h');
    EXECUTE format('SELECT %I.add_compression_policy(%L, compress_after => interval ''30 days'','
                   ' if_not_exists => true)', ts_schema, 'alert_counts_1h');

    -- Default retention, longer than the raw rows' 90 days; `thermoflow init` applies the settings
-- (the fleet rollups, a row a minute, keep as long as the hourly ones).
    EXECUTE format('SELECT %I.add_retention_policy(%L, drop_after => interval ''365 days'', if_not_exists => true)',
                   ts_schema, 'readings_1m');
    EXECUTE format('SELECT %I.add_retention_policy(%L, drop_after => interval ''1825 days'', if_not_exists => true)',
                   ts_schema, 'readings_1h');
    FOREACH rollup IN ARRAY ARRAY['alert_counts_1h', 'fleet_readings_1m', 'fleet_alerts_1m'] LOOP
        EXECUTE format('SELECT %I.add_retention_policy(%L, drop_after => interval ''1825 days'','
                       ' if_not_exists => true)', ts_schema, rollup);
    END LOOP;
END
$migration$;
