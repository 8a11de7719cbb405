-- Issue 14: where TimescaleDB lives, and when thermoflow uses it. Replaces 000_base's helper.
--
-- 000_base ran `CREATE EXTENSION timescaledb` with the search path on thermoflow's schema, so the
-- extension's functions landed in the first schema that ran `init`: a second schema could not
-- find `create_hypertable`, and dropping the first schema dropped the extension and every
-- hypertable in every schema with it. It also created the extension on a server that has the
-- package but does not preload it, which fails (the connection ends with a FATAL error).
--
-- Now the extension goes into `public` (on every thermoflow search path, so `time_bucket` and
-- friends need no qualification in queries), the helper calls TimescaleDB's functions qualified
-- with whatever schema holds it, and a server that does not preload it keeps plain tables.
--
-- Numbered before 010 so a fresh schema has this helper before 010 and 020 call it; a schema
-- from before gets it on its next `init` (the runner applies every migration not yet recorded).

-- The schema holding TimescaleDB, creating the extension in `public` when the server can load it;
-- NULL (and a NOTICE saying why, which thermoflow logs) when it cannot.
CREATE OR REPLACE FUNCTION thermoflow_timescaledb_schema() RETURNS name LANGUAGE plpgsql AS $$
DECLARE
    found name;
BEGIN
    SELECT n.nspname INTO found FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'timescaledb';
    IF found IS NOT NULL THEN
        RETURN found;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        RAISE NOTICE 'thermoflow: plain tables: TimescaleDB is not installed on this server';
        RETURN NULL;
    END IF;
    -- Its loader's settings exist only when it is preloaded; readable by any role, unlike
    -- shared_preload_libraries itself. Creating it without the preload is a FATAL error.
    IF NOT EXISTS (SELECT 1 FROM pg_settings WHERE name = 'timescaledb.max_background_workers') THEN
        RAISE NOTICE 'thermoflow: plain tables: TimescaleDB is installed but not preloaded; start PostgreSQL with shared_preload_libraries = ''timescaledb'' to use it';
        RETURN NULL;
    END IF;
    CREATE EXTENSION IF NOT EXISTS timescaledb SCHEMA public;
    RETURN 'public';
END $$;

CREATE OR REPLACE FUNCTION thermoflow_make_hypertable(
    tbl regclass, time_column text, chunk interval, compress_after interval, retain interval,
    segment_by text DEFAULT NULL
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    ext name := thermoflow_timescaledb_schema();
BEGIN
    IF ext IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('SELECT %I.create_hypertable($1, $2, chunk_time_interval => $3, if_not_exists => true,'
                   ' migrate_data => true)', ext) USING tbl, time_column, chunk;
    IF segment_by IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %s SET (timescaledb.compress, timescaledb.compress_segmentby = %L)', tbl, segment_by);
        EXECUTE format('SELECT %I.add_compression_policy($1, $2, if_not_exists => true)', ext)
            USING tbl, compress_after;
    END IF;
    EXECUTE format('SELECT %I.add_retention_policy($1, $2, if_not_exists => true)', ext) USING tbl, retain;
    RETURN true;
END $$;
