"""Readings sink benchmark: rows/s into PostgreSQL from one process, and an ``executemany`` baseline.

    .venv/bin/python bench/bench_sink.py [--readings 500000] [--devices 5000] [--baseline 50000]

Kafka and PostgreSQL come from THERMOFLOW_KAFKA_BOOTSTRAP / THERMOFLOW_DATABASE_URL (default: the
local stack). Each run uses a fresh topic (12 partitions), consumer group and database schema
(dropped at the end). In the same run it measures:

1. the sink (`ReadingsSink`, the code of `thermoflow sink`, one process) draining a pre-filled
   topic: rows/s from its first stored batch until every reading is a row (Kafka -> PostgreSQL);
2. the database side alone (`ReadingsWriter.write`: binary COPY into a staging table, then
   ``INSERT ... ON CONFLICT DO NOTHING``) in batches of the sink's size: rows/s;
3. the baseline: psycopg's ``executemany`` of the same ``INSERT ... ON CONFLICT DO NOTHING``, one
   row per parameter set, same batch size, rows/s; and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import psycopg
from psycopg import sql

from thermoflow import db, kafka
from thermoflow.events import Reading
from thermoflow.ingest.rows import Row
from thermoflow.ingest.settings import IngestSettings
from thermoflow.ingest.sink import ReadingsSink, ReadingsWriter
from thermoflow.metrics import Metrics

T0 = 1_764_000_000.0


def readings(count: int, devices: int, *, offset: int = 0) -> list[Reading]:
    return [
        Reading(
            device_id=f"freezer-{i % devices:05d}",
            value=-20.0 + (i % 97) / 8,
            ts=T0 + (offset + i) / 1000,
            seq=offset + i,
            received_at=T0 + (offset + i) / 1000 + 0.01,
        )
        for i in range(count)
    ]


async def fill(settings: IngestSettings, topic: str, batch: list[Reading]) -> None:
    await kafka.produce_events(settings, topic, batch, chunk=50_000)


async def bench_sink(settings: IngestSettings, count: int) -> float:
    metrics = Metrics("sink")
    stop = asyncio.Event()
    task = asyncio.create_task(ReadingsSink(settings, metrics=metrics).run(stop))
    first: float | None = None
    try:
        while metrics.counter("rows_inserted") < count:
            if task.done():
                await task
            if first is None and metrics.counter("rows_inserted"):
                first = time.perf_counter()
                first_rows = metrics.counter("rows_inserted")
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - (first or time.perf_counter())
    finally:
        stop.set()
        await task
    return (count - first_rows) / elapsed if elapsed else 0.0


def rows_of(batch: list[Reading]) -> list[Row]:
    return [(r.device_id, r.metric, r.value, r.ts, r.seq, r.received_at) for r in batch]


def bench_writer(settings: IngestSettings, rows: list[Row], batch_size: int) -> float:
    writer = ReadingsWriter(settings)
    try:
        started = time.perf_counter()
        for start in range(0, len(rows), batch_size):
            writer.write(rows[start : start + batch_size])
        return len(rows) / (time.perf_counter() - started)
    finally:
        writer.close()


def bench_executemany(settings: IngestSettings, rows: list[Row], batch_size: int) -> float:
    insert = (
        "INSERT INTO readings (device_id, metric, value, ts, seq, received_at)"
        " VALUES (%s, %s, %s, to_timestamp(%s), %s, to_timestamp(%s)) ON CONFLICT DO NOTHING"
    )
    with db.connect(settings) as conn:
        started = time.perf_counter()
        for start in range(0, len(rows), batch_size):
            with conn.cursor() as cur:
                cur.executemany(insert, rows[start : start + batch_size])
            conn.commit()
        return len(rows) / (time.perf_counter() - started)


async def main(args: argparse.Namespace) -> None:
    tag = uuid.uuid4().hex[:8]
    base = IngestSettings()
    settings = IngestSettings(
        **{name: getattr(base, name) for name in IngestSettings.model_fields},
    ).model_copy(
        update={
            "readings_topic": f"bench-sink-{tag}",
            "sink_group": f"bench-sink-{tag}",
            "database_schema": f"bench_sink_{tag}",
        }
    )
    await kafka.ensure_topics(settings, {settings.readings_topic: 12})
    try:
        print(f"filling {settings.readings_topic}: {args.readings:,} readings, {args.devices:,} devices ...")
        await fill(settings, settings.readings_topic, readings(args.readings, args.devices))
        sink_rate = await bench_sink(settings, args.readings)
        print(f"sink, Kafka -> PostgreSQL (one process)        {sink_rate:>10,.0f} rows/s")

        # The database side alone, on rows not yet in the table.
        fresh = rows_of(readings(args.writer_rows, args.devices, offset=args.readings))
        writer_rate = await asyncio.to_thread(bench_writer, settings, fresh, settings.sink_batch)
        print(f"ReadingsWriter (COPY + INSERT ON CONFLICT)     {writer_rate:>10,.0f} rows/s")
        baseline = rows_of(readings(args.baseline, args.devices, offset=args.readings + args.writer_rows))
        many_rate = await asyncio.to_thread(bench_executemany, settings, baseline, settings.sink_batch)
        print(f"baseline: executemany INSERT ON CONFLICT       {many_rate:>10,.0f} rows/s")
        print(f"ratio sink / executemany:   {sink_rate / many_rate:.1f}x")
        print(f"ratio writer / executemany: {writer_rate / many_rate:.1f}x")
    finally:
        with psycopg.connect(settings.database_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(settings.database_schema))
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--readings", type=int, default=500_000, help="readings pre-filled for the sink")
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--writer-rows", type=int, default=500_000, help="rows for the database-only figure")
    parser.add_argument("--baseline", type=int, default=50_000, help="rows for the executemany baseline")
    asyncio.run(main(parser.parse_args()))
