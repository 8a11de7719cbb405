-- Issue 14, fix 5: alert events are sparse, and 1-day chunks of them compressed to 0.89 of their
-- size (bigger, with a warning per chunk). thermoflow_set_chunk_interval sizes a hypertable's
-- future chunks; `migrate` calls it for alert_events with the `alert_events_chunk_days` setting
-- (default 30) every time, so a changed setting applies to the chunks made after it. Chunks
-- that exist keep their size. On plain tables it does nothing and returns false.
CREATE OR REPLACE FUNCTION thermoflow_set_chunk_interval(tbl regclass, chunk interval)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    ext name;
BEGIN
    SELECT n.nspname INTO ext FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'timescaledb';
    IF ext IS NULL THEN
        RETURN false;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM timescaledb_information.hypertables h
                    WHERE format('%I.%I', h.hypertable_schema, h.hypertable_name)::regclass = tbl) THEN
        RETURN false;
    END IF;
    EXECUTE format('SELECT %I.set_chunk_time_interval($1, $2)', ext) USING tbl, chunk;
    RETURN true;
END $$;

SELECT thermoflow_set_chunk_interval('alert_events', interval '30 days');
