-- thermoflow's base migration: a helper the later migrations call to become hypertables
-- when TimescaleDB is there, and to stay plain tables when it is not.
CREATE OR REPLACE FUNCTION thermoflow_make_hypertable(
    tbl regclass, time_column text, chunk interval, compress_after interval, retain interval,
    segment_by text DEFAULT NULL
) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        RETURN false;
    END IF;
    CREATE EXTENSION IF NOT EXISTS timescaledb;
    PERFORM create_hypertable(tbl, time_column, chunk_time_interval => chunk, if_not_exists => true, migrate_data => true);
    IF segment_by IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %s SET (timescaledb.compress, timescaledb.compress_segmentby = %L)', tbl, segment_by);
        PERFORM add_compression_policy(tbl, compress_after, if_not_exists => true);
    END IF;
    PERFORM add_retention_policy(tbl, retain, if_not_exists => true);
    RETURN true;
END $$;
