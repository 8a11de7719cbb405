-- Issue 14 (the sink at 200,000 rows/s into a hypertable): on TimescaleDB, the readings' index
-- on ts alone is a BRIN index instead of the btree (ts DESC) that create_hypertable adds.
--
-- A batch holds a few seconds of readings from thousands of devices, and the sink writes it in
-- primary-key order (device after device, ingest/sink.py): each row then went to another page of
-- the btree on ts, which cost the database more than the primary key itself (measured on
-- bench/bench_sink.py's writer: backend CPU per 1,000 rows 0.0038-0.0056 s with the btree,
-- 0.0028-0.0038 s with BRIN, same sitting). A BRIN index keeps one summary per 128 pages:
-- readings arrive in about time order, so a range of ts (the dashboards' last hour, the rollups'
-- refresh windows) still reads only the pages that hold it, and an insert costs next to nothing.
-- Per-device history reads the primary key (device_id, metric, ts), as before.
--
-- Plain PostgreSQL never had that index (010), and gets none now.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_indexes
                WHERE schemaname = current_schema() AND tablename = 'readings'
                  AND indexname = 'readings_ts_idx') THEN
        CREATE INDEX IF NOT EXISTS readings_ts_brin ON readings USING brin (ts);
        DROP INDEX readings_ts_idx;
    END IF;
END $$;
