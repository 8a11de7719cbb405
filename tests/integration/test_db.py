"""The schema on a real PostgreSQL, plain and with TimescaleDB (issue 14, fixes 1, 2, 3 and 5).

A test that means something on both servers runs on both (``both_databases``); the hypertable
ones run on TimescaleDB only (``ON_TIMESCALEDB``), and skip, saying why, where there is none.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql
from pydantic import SecretStr
from structlog.testing import capture_logs

from tests.conftest import ROOT, free_port
from tests.integration.test_dashboard import panel_queries, substitute_macros
from thermoflow import db
from thermoflow.errors import ServiceError
from thermoflow.settings import ThermoflowSettings
from thermoflow.stack import Stack, StackConfig
from thermoflow.stack.services import Postgres, remove_home, service_home

ON_TIMESCALEDB = pytest.mark.parametrize("database", ["timescaledb"], indirect=True)

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)


def _on_timescaledb(settings: ThermoflowSettings) -> bool:
    with psycopg.connect(settings.database_dsn) as conn:
        return db.timescaledb_available(conn)


@contextmanager
def fresh_database(settings: ThermoflowSettings) -> Iterator[str]:
    """A database of its own on the test's server (no extension created in it yet); its URL."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    parts = urlsplit(settings.database_dsn)
    with psycopg.connect(settings.database_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(settings.database_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _in(settings: ThermoflowSettings, url: str, schema: str) -> ThermoflowSettings:
    return settings.model_copy(update={"database_url": SecretStr(url), "database_schema": schema})


def _store_rows(settings: ThermoflowSettings, count: int = 100) -> None:
    with db.connect(settings) as conn:
        conn.execute(
            "INSERT INTO readings (device_id, metric, ts, value, seq, received_at)"
            " SELECT 'freezer-0001', 'temperature', %s - g * interval '1 hour', -18, g, %s"
            " FROM generate_series(1, %s) g",
            (NOW, NOW, count),
        )
        conn.execute(
            "INSERT INTO alert_events (alert_id, reading_ts, device_id, metric, rule_id, severity, condition,"
            " threshold, value, detected_at) VALUES ('a1', %s, 'freezer-0001', 'temperature', 'freezer',"
            " 'critical', 'above', -10, -4.2, %s)",
            (NOW, NOW),
        )
        conn.commit()


def _counts(settings: ThermoflowSettings) -> tuple[int, int]:
    with db.connect(settings) as conn:
        readings = conn.execute("SELECT count(*) FROM readings").fetchone()
        alerts = conn.execute("SELECT count(*) FROM alert_events").fetchone()
    assert readings is not None and alerts is not None
    return int(readings[0]), int(alerts[0])


@pytest.mark.both_databases
def test_init_works_in_a_second_schema_and_dropping_the_first_keeps_the_seconds_rows(
    settings: ThermoflowSettings,
) -> None:
    """Fix 1: before, the first `init` put TimescaleDB into its own schema: a second schema's
    `init` could not find `create_hypertable`, and dropping the first schema emptied the second's
    hypertables."""
    with fresh_database(settings) as url:
        first, second = _in(settings, url, "tf_a"), _in(settings, url, "tf_b")
        db.migrate(first)
        db.migrate(second)
        _store_rows(second)
        with psycopg.connect(url) as conn:
            assert db.extensions_in(conn, "tf_a") == []
            expected = ["alert_events", "readings"] if db.timescaledb_available(conn) else []
            assert db.hypertables(conn, "tf_b") == expected

        db.drop_schema(url, "tf_a")

        assert _counts(second) == (100, 1)
        with psycopg.connect(url) as conn:
            assert db.hypertables(conn, "tf_b") == expected


def _jobs_running(conn: psycopg.Connection[Any], schema: str) -> list[str]:
    """The names of ``schema``'s TimescaleDB jobs whose workers run now."""
    rows = conn.execute(
        "SELECT j.application_name FROM timescaledb_information.jobs j JOIN pg_stat_activity a"
        " ON a.backend_type = j.application_name WHERE j.hypertable_schema = %s",
        (schema,),
    ).fetchall()
    return [str(row[0]) for row in rows]


@ON_TIMESCALEDB
def test_dropping_a_schema_while_its_jobs_run_keeps_the_server_up(settings: ThermoflowSettings) -> None:
    """A rollup dropped under its refresh job crashed that job's worker (TimescaleDB 2.28, signal
    11), and the server then ended every connection: CI lost a run's last tests to it. `drop_schema`
    first unschedules the schema's jobs and waits until none runs (`stop_jobs`); a connection opened
    before outlives the drops."""
    with psycopg.connect(settings.database_dsn, autocommit=True) as watcher:
        backend = watcher.info.backend_pid
        for _ in range(3):
            schema = f"test_jobs_{uuid.uuid4().hex[:8]}"
            db.migrate(settings.model_copy(update={"database_schema": schema}))
            extension = db.timescaledb_schema(watcher)  # the first migrate may be what creates it
            assert extension is not None
            watcher.execute(
                sql.SQL(
                    "SELECT {}.alter_job(job_id, next_start => now()) FROM timescaledb_information.jobs"
                    " WHERE hypertable_schema = %s"
                ).format(sql.Identifier(extension)),
                (schema,),
            )
            deadline = time.monotonic() + 30
            while not _jobs_running(watcher, schema):
                assert time.monotonic() < deadline, f"no job of {schema} started in 30 s: no race to test"
                time.sleep(0.02)

            db.stop_jobs(watcher, schema)

            assert _jobs_running(watcher, schema) == []
            scheduled = watcher.execute(
                "SELECT count(*) FILTER (WHERE scheduled), count(*) FROM timescaledb_information.jobs"
                " WHERE hypertable_schema = %s",
                (schema,),
            ).fetchone()
            assert scheduled is not None and scheduled[0] == 0 and scheduled[1] > 0
            db.drop_schema(settings.database_dsn, schema)
        assert watcher.execute("SELECT pg_backend_pid()").fetchone() == (backend,)


@pytest.mark.both_databases
def test_a_schema_holding_an_extension_is_never_dropped_and_other_schemas_keep_their_rows(
    settings: ThermoflowSettings,
) -> None:
    """Where an older thermoflow put TimescaleDB into a thermoflow schema, `drop_schema` (the test
    fixtures' and the harness's) refuses that schema, and the other schemas' rows survive."""
    with fresh_database(settings) as url:
        legacy, other = _in(settings, url, "tf_legacy"), _in(settings, url, "tf_other")
        extension = "timescaledb" if _on_timescaledb(settings) else "pg_trgm"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA tf_legacy")
            conn.execute(sql.SQL("CREATE EXTENSION {} SCHEMA tf_legacy").format(sql.Identifier(extension)))
        db.migrate(legacy)
        db.migrate(other)  # TimescaleDB's calls are qualified: they find it in tf_legacy
        _store_rows(other)

        with contextlib.suppress(db.SchemaHoldsExtension):
            db.drop_schema(url, "tf_legacy")

        assert _counts(other) == (100, 1)  # before: (0, 0) on TimescaleDB, its extension gone with tf_legacy
        assert _counts(legacy) == (0, 0)  # still there, tables and all
        with pytest.raises(db.SchemaHoldsExtension, match=extension):
            db.drop_schema(url, "tf_legacy")
        db.drop_schema(url, "tf_other")  # one without an extension goes
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT to_regnamespace('tf_other')").fetchone() == (None,)


@pytest.fixture(scope="module")
def installed_not_preloaded() -> Iterator[str]:
    """A private PostgreSQL that has TimescaleDB installed but does not preload it."""
    home = service_home(ROOT / ".thermoflow" / f"pg-nopreload-{uuid.uuid4().hex[:8]}")
    server = Postgres(home=home, host="127.0.0.1", port=free_port(), timescaledb=False)
    if not server.timescaledb_installed():
        pytest.skip("TimescaleDB is not installed here: nothing to not preload")
    with server.serving() as url:
        yield url


def test_timescaledb_installed_but_not_preloaded_gives_plain_tables_and_says_why(
    settings: ThermoflowSettings, installed_not_preloaded: str
) -> None:
    """Fix 2: before, `init` failed there (`extension "timescaledb" must be preloaded`)."""
    config = _in(settings, installed_not_preloaded, settings.database_schema)
    with capture_logs() as logs:
        assert "010_readings" in db.migrate(config)
    _store_rows(config)
    assert _counts(config) == (100, 1)
    with psycopg.connect(installed_not_preloaded) as conn:
        assert conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
        assert not db.timescaledb_available(conn)
        assert db.extensions_in(conn, "public") == []
    said = [line for line in logs if line["event"] == "database_plain_tables"]
    assert said and said[0]["log_level"] == "warning"
    assert "not preloaded" in said[0]["reason"] and "shared_preload_libraries" in said[0]["reason"]
    db.drop_schema(installed_not_preloaded, config.database_schema)


@ON_TIMESCALEDB
def test_alert_events_chunks_follow_the_setting_and_compress_smaller(settings: ThermoflowSettings) -> None:
    """Fix 5: 1-day chunks of sparse alert events compressed to 0.89 of their size (bigger)."""
    db.migrate(settings)
    with db.connect(settings) as conn:
        interval = conn.execute(
            "SELECT time_interval FROM timescaledb_information.dimensions"
            " WHERE hypertable_schema = %s AND hypertable_name = 'alert_events'",
            (settings.database_schema,),
        ).fetchone()
        assert interval == (timedelta(days=30),)
        # 30 days of a sparse fleet: 20 devices, an alert per device every 4 hours (measured: 1-day
        # chunks compress to 0.85 of their size, 30-day ones to 0.26).
        conn.execute(
            "INSERT INTO alert_events (alert_id, reading_ts, device_id, metric, rule_id, severity, condition,"
            " threshold, value, detected_at)"
            " SELECT 'a' || d || '-' || h, %s - h * interval '4 hours', 'freezer-' || d, 'temperature',"
            " 'freezer', 'warning', 'above', -10, -9 + random(), %s - h * interval '4 hours'"
            " FROM generate_series(1, 20) d, generate_series(1, 179) h",
            (NOW, NOW),
        )
        conn.execute("SELECT compress_chunk(c) FROM show_chunks('alert_events') c")
        before, after = conn.execute(
            "SELECT sum(before_compression_total_bytes), sum(after_compression_total_bytes)"
            " FROM chunk_compression_stats('alert_events')"
        ).fetchone() or (None, None)
        conn.commit()
    assert before and after and after < before / 2, (before, after)

    db.migrate(settings.model_copy(update={"alert_events_chunk_days": 7}))  # a changed setting applies
    with db.connect(settings) as conn:
        assert conn.execute(
            "SELECT time_interval FROM timescaledb_information.dimensions"
            " WHERE hypertable_schema = %s AND hypertable_name = 'alert_events'",
            (settings.database_schema,),
        ).fetchone() == (timedelta(days=7),)


def _chunks_scanned(plan: Any) -> set[str]:
    """The TimescaleDB chunks an EXPLAIN (FORMAT JSON) plan reads."""
    found: set[str] = set()
    if isinstance(plan, dict):
        if re.fullmatch(r"_hyper_\d+_\d+_chunk", str(plan.get("Relation Name", ""))):
            found.add(plan["Relation Name"])
        for value in plan.values():
            found |= _chunks_scanned(value)
    elif isinstance(plan, list):
        for value in plan:
            found |= _chunks_scanned(value)
    return found


@ON_TIMESCALEDB
def test_every_dashboard_query_on_a_hypertable_reads_only_the_chunks_of_its_range(
    settings: ThermoflowSettings,
) -> None:
    """Fix 3: "Readings stored per second" filtered on `stored_at` and "Alert rate" on
    `detected_at` only, so a 1-hour view read every chunk (91 and 366 of them: 1 s and 8 s)."""
    db.migrate(settings.model_copy(update={"alert_events_chunk_days": 1}))
    now = datetime.now(UTC).replace(microsecond=0)  # the device variable's query asks now()
    with db.connect(settings) as conn:
        # 20 days, a reading per device every 10 minutes and an alert an hour: 20 chunks each.
        conn.execute(
            "INSERT INTO readings (device_id, metric, ts, value, seq, received_at, stored_at)"
            " SELECT d, 'temperature', t, -18, 0, t, t + interval '2 seconds'"
            " FROM unnest(ARRAY['freezer-0001', 'rack-0002']) d,"
            "      generate_series(%s - interval '20 days', %s, interval '10 minutes') t",
            (now, now),
        )
        conn.execute(
            "INSERT INTO alert_events (alert_id, reading_ts, device_id, metric, rule_id, severity, condition,"
            " threshold, value, detected_at) SELECT 'a' || extract(epoch FROM t), t, 'freezer-0001',"
            " 'temperature', 'freezer', 'critical', 'above', -10, -4.2, t + interval '1 second'"
            " FROM generate_series(%s - interval '20 days', %s, interval '1 hour') t",
            (now, now),
        )
        conn.execute("ANALYZE readings")
        conn.execute("ANALYZE alert_events")
        conn.commit()
        total = conn.execute("SELECT count(*) FROM show_chunks('readings')").fetchone()
        assert total is not None and total[0] >= 20
        start, end = f"'{(now - timedelta(hours=1)).isoformat()}'", f"'{now.isoformat()}'"
        checked = []
        for title, query in panel_queries():
            if "readings" not in query and "alert_events" not in query:
                continue
            grafana_sql = substitute_macros(query, start, end)
            row = conn.execute(f"EXPLAIN (FORMAT JSON) {grafana_sql}".encode()).fetchone()
            assert row is not None
            plan = row[0] if isinstance(row[0], list) else json.loads(row[0])
            scanned = _chunks_scanned(plan)
            assert 1 <= len(scanned) <= 2, f"{title}: reads {len(scanned)} chunks for a 1-hour view"
            checked.append(title)
    assert {"Readings stored per second", "Alert rate (per minute, by severity)"} <= set(checked)


def test_the_stacks_postgres_preloads_timescaledb_when_it_is_installed_and_says_so() -> None:
    """`thermoflow stack up` starts PostgreSQL with TimescaleDB preloaded by default where it is
    installed (`stack up --no-timescaledb` for plain PostgreSQL); asking for it where it is not
    installed is an error naming the fix."""
    state = ROOT / ".thermoflow" / f"stack-{uuid.uuid4().hex[:8]}"
    stack = Stack(StackConfig(state_dir=state, mqtt_port=free_port(), kafka_port=free_port(),
                              kafka_controller_port=free_port(), postgres_port=free_port()))  # fmt: skip
    if not stack.postgres.timescaledb_installed():
        assert not stack.postgres.preloads_timescaledb()
        with pytest.raises(ServiceError, match="TimescaleDB is not installed"):
            Postgres(home=state, host="127.0.0.1", port=1, timescaledb=True).preloads_timescaledb()
        pytest.skip("TimescaleDB is not installed here: checked that asking for it fails, and that is all")
    try:
        stack.postgres.up()  # only PostgreSQL: the rest of the stack plays no part here
        assert stack.postgres.timescaledb_loaded()
        assert stack.database_kind().startswith("TimescaleDB preloaded")
        with psycopg.connect(stack.postgres.address) as conn:
            assert db.timescaledb_available(conn)
    finally:
        stack.postgres.down()
        shutil.rmtree(state, ignore_errors=True)
        remove_home(stack.postgres.home)
