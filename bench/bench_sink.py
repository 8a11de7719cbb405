"""Readings sink benchmark: rows/s into PostgreSQL from one process, and an ``executemany`` baseline.

    .venv/bin/python bench/bench_sink.py [--readings 500000] [--devices 5000] [--baseline 50000]
                                         [--plain] [--previous REV]

Kafka and PostgreSQL come from THERMOFLOW_KAFKA_BOOTSTRAP / THERMOFLOW_DATABASE_URL (default: the
local stack; a TimescaleDB there makes ``readings`` a hypertable). ``--plain`` starts a private
PostgreSQL without TimescaleDB on this machine for the run (plain tables), and stops it after.
``--previous REV`` first runs the same benchmark on that revision's code (:func:`checkout`),
then on this one: a before/after in one sitting. Each run uses a fresh topic (12 partitions),
consumer group and database schema (dropped at the end). In the same run it measures:

1. the sink (`ReadingsSink`, the code of `thermoflow sink`, one process) draining a pre-filled
   topic: rows/s from its first stored batch until every reading is a row (Kafka -> PostgreSQL);
2. the database side alone (`ReadingsWriter.write`: binary COPY into ``readings``) in batches
   of the sink's size: rows/s; and the same rows again, as a replay (each batch meets stored
   readings: COPY into a staging table, then ``INSERT ... ON CONFLICT DO NOTHING``);
3. the baseline: psycopg's ``executemany`` of the same ``INSERT ... ON CONFLICT DO NOTHING``, one
   row per parameter set, same batch size, rows/s; and the ratios.

Wall-clock rates depend on what else the machine runs; CPU does much less. So each part also
prints CPU-seconds per 1,000 rows, of this process (the sink's, all its threads:
``time.process_time``) and of the PostgreSQL backends of its connections (``/proc/<pid>/stat``
of ``pg_backend_pid()``; the server must run on this machine), and their ratios to the
baseline's. 200,000 rows/s on one core is 0.005 CPU-s per 1,000 rows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from thermoflow import db, kafka
from thermoflow.component import tune_gc
from thermoflow.events import Reading
from thermoflow.ingest.rows import Row, pg_micros
from thermoflow.ingest.settings import IngestSettings
from thermoflow.ingest.sink import ReadingsSink, ReadingsWriter
from thermoflow.metrics import Metrics
from thermoflow.stack.services import Postgres, service_home

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: `bench` is a package of the repository

from bench.common import checkout, cpu_seconds  # noqa: E402

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


def backend_cpu(pids: Iterable[int]) -> dict[int, float]:
    """CPU-seconds (user + system) each process has used (the database's backends run here)."""
    return {pid: cpu_seconds(pid) for pid in pids}


@dataclass(frozen=True)
class Figure:
    """One part's rows/s and CPU-seconds per 1,000 rows: this process's and the database backends'."""

    rate: float
    client_cpu: float
    backend_cpu: float

    @classmethod
    def of(cls, *, rows: int, seconds: float, client: float, backend: float) -> Figure:
        if rows <= 0:  # timed from the first stored batch: nothing came after it
            raise SystemExit("too few readings to time: the first batch held them all (raise --readings)")
        return cls(rows / seconds if seconds else 0.0, client / rows * 1000, backend / rows * 1000)

    def line(self, name: str) -> str:
        return (
            f"{name:<46}{self.rate:>10,.0f} rows/s   CPU-s/1000 rows: process {self.client_cpu:.4f},"
            f" backend {self.backend_cpu:.4f}"
        )


async def bench_sink(settings: IngestSettings, count: int) -> Figure:
    """The sink from its first stored batch until every reading is a row (CPU over the same span)."""
    metrics = Metrics("sink")
    stop = asyncio.Event()
    sink = ReadingsSink(settings, metrics=metrics)
    task = asyncio.create_task(sink.run(stop))
    backends: dict[int, float] = {}
    try:
        while not metrics.counter("rows_inserted"):
            if task.done():
                await task
            await asyncio.sleep(0.005)
        first, first_cpu = time.perf_counter(), time.process_time()
        first_rows = metrics.counter("rows_inserted")
        while metrics.counter("rows_inserted") < count:
            for pid in sink.backend_pids():  # a writer's connection opens at its first batch
                backends.setdefault(pid, backend_cpu([pid])[pid])
            if task.done():
                await task
            await asyncio.sleep(0.05)  # Metrics.counter collects the registry: poll gently
        seconds, client = time.perf_counter() - first, time.process_time() - first_cpu
        backend = sum(backend_cpu(backends).values()) - sum(backends.values())
    finally:
        stop.set()
        await task
    return Figure.of(rows=count - first_rows, seconds=seconds, client=client, backend=backend)


def rows_of(batch: list[Reading]) -> list[Row]:
    return [(r.device_id, r.metric, r.value, pg_micros(r.ts), r.seq, pg_micros(r.received_at)) for r in batch]


def bench_writer(settings: IngestSettings, rows: list[Row], batch_size: int) -> Figure:
    writer = ReadingsWriter(settings)
    try:
        writer.write([])  # connect and create the staging table outside the measurement
        pid = writer.backend_pid
        assert pid is not None
        before, started, cpu = backend_cpu([pid])[pid], time.perf_counter(), time.process_time()
        for start in range(0, len(rows), batch_size):
            writer.write(rows[start : start + batch_size])
        return Figure.of(
            rows=len(rows),
            seconds=time.perf_counter() - started,
            client=time.process_time() - cpu,
            backend=backend_cpu([pid])[pid] - before,
        )
    finally:
        writer.close()


def bench_executemany(settings: IngestSettings, batch: list[Reading], batch_size: int) -> Figure:
    rows = [(r.device_id, r.metric, r.value, r.ts, r.seq, r.received_at) for r in batch]
    insert = (
        "INSERT INTO readings (device_id, metric, value, ts, seq, received_at)"
        " VALUES (%s, %s, %s, to_timestamp(%s), %s, to_timestamp(%s)) ON CONFLICT DO NOTHING"
    )
    with db.connect(settings) as conn:
        pid = conn.info.backend_pid
        before, started, cpu = backend_cpu([pid])[pid], time.perf_counter(), time.process_time()
        for start in range(0, len(rows), batch_size):
            with conn.cursor() as cur:
                cur.executemany(insert, rows[start : start + batch_size])
            conn.commit()
        return Figure.of(
            rows=len(rows),
            seconds=time.perf_counter() - started,
            client=time.process_time() - cpu,
            backend=backend_cpu([pid])[pid] - before,
        )


@contextlib.contextmanager
def plain_postgres() -> Iterator[str]:
    """A private PostgreSQL without TimescaleDB (plain tables), for the run; its URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    home = service_home(ROOT / ".thermoflow" / f"bench-plain-{uuid.uuid4().hex[:8]}")
    with Postgres(home=home, host="127.0.0.1", port=port, timescaledb=False).serving() as url:
        yield url


def run_previous(revision: str, argv: list[str]) -> None:
    """This benchmark, with these arguments, on ``revision``'s thermoflow (its tree first on the path)."""
    tree = checkout(revision, root=ROOT)
    try:
        print(f"--- {revision} ---", flush=True)
        environment = {**os.environ, "PYTHONPATH": str(tree)}
        subprocess.run([sys.executable, __file__, *argv], env=environment, check=True)
        print("--- this tree ---", flush=True)
    finally:
        shutil.rmtree(tree, ignore_errors=True)


async def main(args: argparse.Namespace) -> None:
    if args.plain:
        with plain_postgres() as url:
            os.environ["THERMOFLOW_DATABASE_URL"] = url
            print(f"plain PostgreSQL (no TimescaleDB) at {url}")
            await measure(args)
    else:
        await measure(args)


def code_of() -> str:
    """Which thermoflow this run measures (a previous revision's tree, or this one)."""
    import thermoflow

    return str(Path(thermoflow.__file__).resolve().parent.parent)


async def measure(args: argparse.Namespace) -> None:
    print(f"code: {code_of()}")
    tune_gc()  # as `thermoflow sink` runs (thermoflow.component.run_until_signal)
    tag = uuid.uuid4().hex[:8]
    base = IngestSettings()
    settings = IngestSettings(
        **{name: getattr(base, name) for name in IngestSettings.model_fields},
    ).model_copy(
        update={
            "readings_topic": f"bench-sink-{tag}",
            "sink_group": f"bench-sink-{tag}",
            "database_schema": f"bench_sink_{tag}",
            "http_port": 0,  # no /metrics: another run may hold the port
        }
    )
    await kafka.ensure_topics(settings, {settings.readings_topic: 12})
    try:
        print(f"filling {settings.readings_topic}: {args.readings:,} readings, {args.devices:,} devices ...")
        await fill(settings, settings.readings_topic, readings(args.readings, args.devices))
        sink = await bench_sink(settings, args.readings)
        print(sink.line("sink, Kafka -> PostgreSQL (one process)"))

        # The database side alone, on rows not yet in the table.
        fresh = rows_of(readings(args.writer_rows, args.devices, offset=args.readings))
        writer = await asyncio.to_thread(bench_writer, settings, fresh, settings.sink_batch)
        print(writer.line("ReadingsWriter, new rows (COPY)"))
        # A replay: the same rows again, every batch one of stored readings (staging + ON CONFLICT).
        replay = await asyncio.to_thread(bench_writer, settings, fresh[: args.baseline], settings.sink_batch)
        print(replay.line("ReadingsWriter, stored rows again (a replay)"))
        baseline = readings(args.baseline, args.devices, offset=args.readings + args.writer_rows)
        many = await asyncio.to_thread(bench_executemany, settings, baseline, settings.sink_batch)
        print(many.line("baseline: executemany INSERT ON CONFLICT"))
        for name, figure in (("sink", sink), ("writer", writer), ("replay", replay)):
            print(
                f"{name} / executemany: rate {figure.rate / many.rate:.1f}x,"
                f" process CPU {figure.client_cpu / many.client_cpu:.2f}x,"
                f" backend CPU {figure.backend_cpu / many.backend_cpu:.2f}x"
            )
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
    parser.add_argument("--plain", action="store_true", help="a private PostgreSQL without TimescaleDB")
    parser.add_argument("--previous", metavar="REV", help="run on that revision's code first, then on this")
    arguments = parser.parse_args()
    if arguments.previous:
        previous_argv = [arg for arg in sys.argv[1:] if arg not in ("--previous", arguments.previous)]
        run_previous(arguments.previous, previous_argv)
    asyncio.run(main(arguments))
