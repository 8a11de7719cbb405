"""The console's server time per page with 10,000 incidents and 30 days of readings for 1,000 devices.

    .venv/bin/python -m bench.bench_console [--database-url URL | --start-timescaledb]
        [--devices 1000] [--days 30] [--incidents 10000] [--keep | --reuse]

Seeds a schema of its own (``--schema``) with :mod:`bench.bench_queries`' data (one reading a
minute per device, an alert event per device and hour, refreshed and compressed rollups) plus
incidents up to ``--incidents`` (the extra ones resolved, spread over the days, a tenth of them
acknowledged with a note), then serves the console in this process (no Kafka: the dead-letter
page is filled with ``--deadletters`` letters in memory) and times each page: the median and
the 95th percentile of ``--runs`` requests after a warm-up, from request to the last byte, over
loopback HTTP, against the 100 ms budget. The overview page renders the sampler's latest figures
from memory; its database query, run each second, is timed on its own.

The URL: ``--database-url``, else ``THERMOFLOW_BENCH_TIMESCALE_URL``, else
``THERMOFLOW_TEST_TIMESCALE_URL``; ``--start-timescaledb`` starts a private server for the run
(the local stack's PostgreSQL with TimescaleDB preloaded). ``--keep`` keeps the schema and
``--reuse`` times a kept one: the 30-day seed takes a while, do it once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from aiohttp.test_utils import TestClient, TestServer
from psycopg import sql

from bench.bench_queries import device_ids, prepare
from thermoflow import db
from thermoflow.console import queries
from thermoflow.console.app import create_app
from thermoflow.console.context import DEADLETTERS, POOL
from thermoflow.console.deadletters import Letter
from thermoflow.console.settings import ConsoleSettings

ROOT = Path(__file__).resolve().parent.parent
TARGET_MS = 100.0


def add_incidents(conn: psycopg.Connection[Any], *, total: int, devices: int, days: int) -> int:
    """Resolved incidents up to ``total`` (bench_queries made one per device), a tenth acknowledged."""
    have = int((conn.execute("SELECT count(*) FROM incidents").fetchone() or (0,))[0])
    extra = max(0, total - have)
    ids = device_ids(devices)
    conn.execute(
        "INSERT INTO incidents (incident_id, device_id, rule_id, metric, condition, kind, threshold,"
        " severity, status, opened_at, last_breach_at, peak_value, breach_count, acknowledged_at,"
        " acknowledged_by, resolved_at)"
        " SELECT md5('extra' || n), (%(ids)s::text[])[1 + n %% %(devices)s], 'freezer', 'temperature',"
        " 'above', 'threshold', -10, CASE WHEN n %% 4 = 0 THEN 'critical' ELSE 'warning' END, 'resolved', t,"
        " t + interval '10 minutes', -3, 5, CASE WHEN n %% 10 = 0 THEN t + interval '2 minutes' END,"
        " CASE WHEN n %% 10 = 0 THEN 'ops' END, t + interval '20 minutes'"
        " FROM generate_series(1, %(extra)s) n,"
        " LATERAL (SELECT now() - make_interval(secs => (n::float8 / %(extra)s) * %(span)s)) o(t)",
        {"ids": ids, "devices": devices, "extra": extra, "span": days * 86_400.0},
    )
    conn.execute("UPDATE incidents SET ack_note = 'looked at it' WHERE acknowledged_at IS NOT NULL")
    conn.execute("ANALYZE incidents")
    return extra


def letters(count: int) -> list[Letter]:
    now = time.time()
    return [
        Letter(
            partition=i % 3,
            offset=i,
            timestamp_ms=int((now - count + i) * 1000),
            error=("payload is neither JSON nor a number" if i % 2 else "no value field in <b>payload</b>"),
            stage="ingest",
            source=f"sensors/dev-{i % 1000:05d}/temperature",
            failed_at=now - count + i,
            payload=b'{"temp": "<script>alert(1)</script>"}' * 4,
            truncated=False,
        )
        for i in range(count)
    ]


@contextmanager
def private_timescaledb() -> Iterator[str]:
    from thermoflow.stack.services import Postgres, service_home

    home = service_home(ROOT / ".thermoflow" / f"bench-timescaledb-{uuid.uuid4().hex[:8]}")
    server = Postgres(home=home, host="127.0.0.1", port=_free_port(), timescaledb=True)
    if not server.timescaledb_installed():
        raise SystemExit(
            "TimescaleDB is not installed here (make setup installs it from ../shared/timescaledb)"
        )
    with server.serving() as url:
        yield url


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def time_pages(settings: ConsoleSettings, *, devices: int, runs: int, deadletters: int) -> bool:
    app = create_app(settings, background=False)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    ok = True
    try:
        app[DEADLETTERS]._letters.extend(letters(deadletters))
        pool = app[POOL]
        some_device = device_ids(devices)[devices // 2]
        incident_id = await pool.run(
            lambda conn: str(
                (conn.execute("SELECT incident_id FROM incidents LIMIT 1").fetchone() or ("",))[0]
            )
        )
        pages = [
            ("overview", "/"),
            ("overview figures (JSON)", "/overview.json"),
            ("incidents", "/incidents"),
            ("incidents open critical", "/incidents?status=open&severity=critical"),
            ("incidents of a device", f"/incidents?device={some_device}"),
            ("incidents 500 (the most)", "/incidents?limit=500"),
            ("incident", f"/incidents/{incident_id}"),
            *[
                (f"device {span}", f"/device?id={some_device}&range={span}")
                for span in ("1h", "24h", "7d", "30d")
            ],
            (f"dead letters ({deadletters} kept)", "/deadletters"),
            ("rules", "/rules"),
        ]
        print(f"{'page':<32} {'median ms':>10} {'p95 ms':>8}  budget {TARGET_MS:.0f} ms")
        for name, path in pages:
            timings = []
            for attempt in range(runs + 2):
                started = time.perf_counter()
                answer = await client.get(path)
                body = await answer.read()
                elapsed = (time.perf_counter() - started) * 1000
                if answer.status != 200:
                    raise SystemExit(f"{path}: {answer.status} {body[:300]!r}")
                if attempt >= 2:  # warm-up: connections, templates, caches
                    timings.append(elapsed)
            median, p95 = statistics.median(timings), sorted(timings)[int(0.95 * (len(timings) - 1))]
            within = p95 <= TARGET_MS
            ok &= within
            print(
                f"{name:<32} {median:>10.1f} {p95:>8.1f}  {'ok' if within else 'OVER'}  ({len(body):,} bytes)"
            )
        sampled = []
        for _ in range(runs):
            started = time.perf_counter()
            await pool.run(queries.fleet)
            sampled.append((time.perf_counter() - started) * 1000)
        print(
            f"{'overview sampler query (1/s)':<32} {statistics.median(sampled):>10.1f} {max(sampled):>8.1f}"
        )
    finally:
        await client.close()
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--database-url", default=os.environ.get("THERMOFLOW_BENCH_TIMESCALE_URL")
                        or os.environ.get("THERMOFLOW_TEST_TIMESCALE_URL"))  # fmt: skip
    parser.add_argument("--start-timescaledb", action="store_true", help="a private TimescaleDB for the run")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--incidents", type=int, default=10_000)
    parser.add_argument("--deadletters", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--schema", default="bench_console")
    parser.add_argument("--keep", action="store_true", help="keep the schema for a later --reuse")
    parser.add_argument("--reuse", action="store_true", help="time the pages on a kept schema's data")
    args = parser.parse_args()
    if args.start_timescaledb:
        with private_timescaledb() as url:
            run(args, url)
    elif args.database_url:
        run(args, args.database_url)
    else:
        parser.error("no database: give --database-url (TimescaleDB preloaded) or --start-timescaledb")


def run(args: argparse.Namespace, url: str) -> None:
    settings = ConsoleSettings(
        database_url=url, database_schema=args.schema, console_deadletters=args.deadletters
    )
    try:
        if not args.reuse:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(args.schema)))
            db.migrate(settings)
            with db.connect(settings, autocommit=True) as conn:
                prepare(conn, args.devices, args.days)
                extra = add_incidents(conn, total=args.incidents, devices=args.devices, days=args.days)
                print(f"  {extra:,} more incidents: {args.incidents:,} in all")
        print(
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {args.devices} devices x {args.days} d,"
            f" schema {args.schema}"
        )
        ok = asyncio.run(
            time_pages(settings, devices=args.devices, runs=args.runs, deadletters=args.deadletters)
        )
        print("every page within 100 ms (p95)" if ok else "a page over 100 ms (p95)")
    finally:
        if not args.keep:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(args.schema)))


if __name__ == "__main__":
    main()
