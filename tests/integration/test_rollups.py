"""The rollups and `thermoflow readings` on real databases: plain PostgreSQL and, when given, TimescaleDB.

On plain PostgreSQL ``readings_1m``, ``readings_1h`` and ``alert_counts_1h`` are views; on
TimescaleDB (``THERMOFLOW_TEST_TIMESCALE_URL``, a server started with
``shared_preload_libraries=timescaledb``) continuous aggregates. Either way a query reads the
same columns and gets the numbers a direct computation over the raw rows gives.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.conftest import Endpoints
from thermoflow import db, readings_query, rollups
from thermoflow.settings import ThermoflowSettings

Reading = tuple[str, str, datetime, float]


@pytest.fixture(params=["postgresql", "timescaledb"])
def backend(
    request: pytest.FixtureRequest, endpoints: Endpoints, timescale_url: str | None
) -> Iterator[ThermoflowSettings]:
    """Settings for a fresh schema on plain PostgreSQL, or on TimescaleDB (conftest's ``timescale_url``)."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    if request.param == "postgresql":
        url = endpoints.database_url
    else:
        if not timescale_url:
            pytest.skip("no TimescaleDB here (neither THERMOFLOW_TEST_TIMESCALE_URL nor an installed one)")
        url = timescale_url
    yield ThermoflowSettings(database_url=url, database_schema=schema)
    db.drop_schema(url, schema)  # waits out a rollup's refresh job holding the schema's objects


def is_timescale(settings: ThermoflowSettings) -> bool:
    """Whether the rollups in the settings' schema are continuous aggregates (else plain views)."""
    with db.connect(settings) as conn:
        if db.timescaledb_schema(conn) is None:
            return False
        row = conn.execute(
            "SELECT count(*) FROM timescaledb_information.continuous_aggregates"
            " WHERE view_schema = current_schema()"
        ).fetchone()
    return row is not None and row[0] == 5


def seed(settings: ThermoflowSettings, now: datetime) -> list[Reading]:
    """Three hours of readings, every 20 s, for two devices (one with two metrics), values varying."""
    start = now - timedelta(hours=3)
    rows: list[Reading] = []
    for device, metrics in (("freezer-0001", ("temperature", "humidity")), ("rack-0002", ("temperature",))):
        for m, metric in enumerate(metrics):
            for i in range(3 * 180):
                ts = start + timedelta(seconds=20 * i + m)
                rows.append((device, metric, ts, round(-18 + ((i * 7 + m) % 23) * 0.25, 2)))
    with db.connect(settings) as conn, conn.cursor() as cur:
        with cur.copy("COPY readings (device_id, metric, ts, value, received_at) FROM STDIN") as copy:
            for device, metric, ts, value in rows:
                copy.write_row((device, metric, ts, value, ts))
        conn.commit()
    return rows


def expected(rows: list[Reading], device: str, step: int, start: datetime) -> dict[tuple[str, float], Any]:
    """min, max, avg, count and last per (metric, bucket start epoch), computed here from the raw rows."""
    groups: dict[tuple[str, float], list[tuple[datetime, float]]] = {}
    for dev, metric, ts, value in rows:
        if dev == device and ts >= start:
            epoch = ts.timestamp()
            groups.setdefault((metric, epoch - epoch % step), []).append((ts, value))
    return {
        key: (
            min(v for _, v in group),
            max(v for _, v in group),
            sum(v for _, v in group) / len(group),
            len(group),
            max(group)[1],
        )
        for key, group in groups.items()
    }


def refresh(settings: ThermoflowSettings) -> None:
    with psycopg.connect(settings.database_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("SET search_path TO {}, public").format(sql.Identifier(settings.database_schema))
        )
        for view in ("readings_1m", "readings_1h", "alert_counts_1h", "fleet_readings_1m", "fleet_alerts_1m"):
            for attempt in range(40):  # the refresh policy's job may be refreshing it right now
                try:
                    conn.execute("CALL refresh_continuous_aggregate(%s, NULL, NULL)", (view,))
                    break
                except psycopg.errors.LockNotAvailable:
                    if attempt == 39:
                        raise
                    time.sleep(0.5)


def check_history(settings: ThermoflowSettings, rows: list[Reading], now: datetime) -> None:
    for every in ("1m", "15m", "1h"):
        plan = readings_query.plan("freezer-0001", since="6h", every=every)
        got = rollups.history(settings, plan, now)
        want = expected(rows, "freezer-0001", plan.step_seconds or 1, plan.start(now))
        assert {(r["metric"], r["time"].timestamp()) for r in got} == set(want), every
        for r in got:
            lo, hi, avg, count, last = want[(r["metric"], r["time"].timestamp())]
            assert (r["min"], r["max"], r["count"], r["last"]) == (lo, hi, count, last), (every, r)
            assert math.isclose(r["avg"], avg, rel_tol=1e-9), (every, r)


def test_migrations_are_idempotent_and_rerunnable(backend: ThermoflowSettings, endpoints: Endpoints) -> None:
    assert "050_rollups" in db.migrate(backend)
    assert db.migrate(backend) == []
    rollup_sql = next(m.sql for m in db.available_migrations() if m.version == "050_rollups")
    with db.connect(backend) as conn:
        conn.execute(rollup_sql.encode())  # again, as if it had not been recorded: no error
        conn.commit()
        names = {
            r[0]
            for r in conn.execute(
                "SELECT relname FROM pg_class WHERE relnamespace = current_schema()::regnamespace"
            )
        }
    assert {"readings_1m", "readings_1h", "alert_counts_1h", "fleet_readings_1m", "fleet_alerts_1m"} <= names
    assert is_timescale(backend) == (backend.database_dsn != endpoints.database_url)


def test_rollups_match_the_raw_rows(backend: ThermoflowSettings) -> None:
    db.migrate(backend)
    now = datetime.now(UTC).replace(microsecond=0)
    rows = seed(backend, now)
    check_history(backend, rows, now)  # TimescaleDB: nothing materialized yet, real-time aggregation answers
    if is_timescale(backend):
        refresh(backend)
        check_history(backend, rows, now)  # now from the materialized buckets (and the newest from raw)
    raw = readings_query.plan("freezer-0001", since="30m", metric="humidity")
    got = rollups.history(backend, raw, now)
    want = sorted(
        (ts, v)
        for d, m, ts, v in rows
        if d == "freezer-0001" and m == "humidity" and ts >= now - timedelta(minutes=30)
    )
    assert raw.source == "readings" and [(r["time"], r["last"]) for r in got] == want
    with db.connect(backend) as conn:
        fleet = conn.execute("SELECT bucket, sample_count FROM fleet_readings_1m").fetchall()
    per_minute: dict[float, int] = {}
    for *_, ts, _ in rows:
        per_minute[ts.timestamp() // 60 * 60] = per_minute.get(ts.timestamp() // 60 * 60, 0) + 1
    assert {b.timestamp(): n for b, n in fleet} == per_minute


def test_alert_counts_per_device_and_hour(backend: ThermoflowSettings) -> None:
    db.migrate(backend)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    events = [
        ("freezer-0001", "critical", 5),
        ("freezer-0001", "critical", 50),
        ("freezer-0001", "warning", 20),
        ("freezer-0001", "critical", 65),  # the next hour
        ("rack-0002", "warning", 10),
    ]
    with db.connect(backend) as conn:
        for n, (device, severity, minute) in enumerate(events):
            ts = hour + timedelta(minutes=minute)
            conn.execute(
                "INSERT INTO alert_events (alert_id, reading_ts, device_id, metric, rule_id, severity,"
                " condition, threshold, value, detected_at)"
                " VALUES (%s, %s, %s, 'temperature', 'r', %s, 'above', 0, 1, %s)",
                (f"a{n}", ts, device, severity, ts),
            )
        conn.commit()
    if is_timescale(backend):
        refresh(backend)
    with db.connect(backend) as conn:
        got = set(conn.execute("SELECT device_id, severity, bucket, alerts FROM alert_counts_1h").fetchall())
    assert got == {
        ("freezer-0001", "critical", hour, 2),
        ("freezer-0001", "warning", hour, 1),
        ("freezer-0001", "critical", hour + timedelta(hours=1), 1),
        ("rack-0002", "warning", hour, 1),
    }
    with db.connect(backend) as conn:
        fleet = conn.execute("SELECT severity, sum(alerts) FROM fleet_alerts_1m GROUP BY 1").fetchall()
    assert dict(fleet) == {"critical": 3, "warning": 2}


def test_readings_command_prints_json_from_the_rollup(backend: ThermoflowSettings) -> None:
    db.migrate(backend)
    now = datetime.now(UTC).replace(microsecond=0)
    rows = seed(backend, now)
    env = {**os.environ, "THERMOFLOW_DATABASE_URL": backend.database_dsn,
           "THERMOFLOW_DATABASE_SCHEMA": backend.database_schema}  # fmt: skip
    args = ["readings", "rack-0002", "--since", "7d", "--metric", "temperature", "--json"]
    result = subprocess.run(
        [sys.executable, "-m", "thermoflow", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert (document["every"], document["source"]) == ("15m", "readings_1m")
    assert sum(r["count"] for r in document["rows"]) == sum(1 for d, *_ in rows if d == "rack-0002")
    table = subprocess.run(
        [sys.executable, "-m", "thermoflow", "readings", "nobody-9999", "--since", "24h"],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert table.returncode == 0 and "no readings of 'nobody-9999'" in table.stderr


def test_init_applies_the_configured_retention(backend: ThermoflowSettings) -> None:
    db.migrate(backend)
    settings = backend.model_copy(
        update={
            "readings_retention_days": 30,
            "alert_events_retention_days": 180,
            "rollup_1m_retention_days": 400,
        }
    )
    if not is_timescale(backend):
        assert rollups.apply_retention(settings) == {}  # plain tables: nothing drops rows
        return
    with db.connect(backend) as conn:
        assert rollups.current_retention(conn) == {
            "readings": "90 days", "alert_events": "365 days", "readings_1m": "365 days",
            "readings_1h": "1825 days", "alert_counts_1h": "1825 days", "fleet_readings_1m": "1825 days",
            "fleet_alerts_1m": "1825 days",
        }  # fmt: skip
    assert rollups.apply_retention(settings) == {"readings": 30, "alert_events": 180, "readings_1m": 400}
    assert rollups.apply_retention(settings) == {}  # already so
    with db.connect(backend) as conn:
        current = rollups.current_retention(conn)
    assert (current["readings"], current["alert_events"], current["readings_1m"], current["readings_1h"]) == (
        "30 days",
        "180 days",
        "400 days",
        "1825 days",
    )


DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "thermoflow.json"


def grafana_sql(query: str, range_s: int) -> str:
    """A panel's SQL as Grafana sends it for the last ``range_s`` seconds on a 1,500 px panel."""
    interval = max(1, range_s // 1500)

    def group(match: re.Match[str]) -> str:
        column, spec = match.group(1).strip(), match.group(2).strip().strip("'")
        seconds = (
            interval if spec == "$__interval" else int(spec[:-1]) * {"s": 1, "m": 60, "h": 3600}[spec[-1]]
        )
        return f'to_timestamp(floor(extract(epoch from {column}) / {seconds}) * {seconds}) AS "time"'

    query = re.sub(r"\$__timeGroupAlias\(([^,]+),\s*([^)]+)\)", group, query)
    query = re.sub(
        r"\$__timeFilter\(([^)]+)\)", rf"\1 BETWEEN now() - interval '{range_s} s' AND now()", query
    )
    query = query.replace("${device:sqlstring}", "'freezer-0001','rack-0002'").replace(
        "$__range_s", str(range_s)
    )
    query = query.replace("$__interval_ms", str(interval * 1000))
    query = query.replace("$__timeFrom()", f"(now() - interval '{range_s} s')").replace(
        "$__timeTo()", "now()"
    )
    assert "$" not in query, query
    return query


@pytest.mark.parametrize("range_s", [3600, 86_400, 7 * 86_400], ids=["1h raw", "24h 1m", "7d 1h"])
def test_dashboard_panels_read_the_rollup_for_the_range(backend: ThermoflowSettings, range_s: int) -> None:
    """Each panel that picks its source by range shows the data: from raw rows, readings_1m or readings_1h."""
    db.migrate(backend)
    now = datetime.now(UTC).replace(microsecond=0)
    rows = seed(backend, now - timedelta(minutes=1))
    with db.connect(backend) as conn:
        conn.execute(
            "INSERT INTO alert_events (alert_id, reading_ts, device_id, metric, rule_id, severity, condition,"
            " threshold, value, detected_at) VALUES ('a1', %s, 'rack-0002', 'temperature', 'r', 'critical',"
            " 'above', 0, 1, %s)",
            (now - timedelta(minutes=10), now - timedelta(minutes=10)),
        )
        conn.commit()
    if is_timescale(backend):
        refresh(backend)
    panels = {p["title"]: p["targets"][0]["rawSql"] for p in json.loads(DASHBOARD.read_text())["panels"]}
    with db.connect(backend) as conn:
        for title in (
            "Temperature per device (°C)",
            "Readings stored per second",
            "Alert rate (per minute, by severity)",
        ):
            got = conn.execute(grafana_sql(panels[title], range_s).encode()).fetchall()
            assert got, f"{title} over {range_s} s: no rows"
            if title.startswith("Temperature"):
                values = [v for d, m, _, v in rows if m == "temperature"]
                assert {r[1] for r in got} == {"freezer-0001", "rack-0002"}
                assert all(min(values) <= r[2] <= max(values) for r in got), title
