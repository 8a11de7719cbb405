"""`thermoflow readings`: flag parsing, the choice of rollup, and bad flags failing before any I/O."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from thermoflow import readings_query as rq
from thermoflow.settings import ConfigError, ThermoflowSettings, load_settings


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("24h", timedelta(hours=24)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(days=14)),
        (" 30d ", timedelta(days=30)),
    ],
)
def test_durations_parse(text: str, expected: timedelta) -> None:
    assert rq.parse_duration(text) == expected


@pytest.mark.parametrize(
    "text", ["", "garbage", "7", "d", "-1d", "0h", "1.5h", "7 days", "1y", "1d2h", "999999d", "+1d"]
)
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(rq.QueryError):
        rq.parse_duration(text)


@pytest.mark.parametrize(
    ("since", "every", "source"),
    [
        ("30m", None, "readings"),  # short range: raw rows
        ("1h", None, "readings"),
        ("6h", None, "readings_1m"),  # one point a minute
        ("24h", None, "readings_1m"),  # 5-minute points from the 1-minute rollup
        ("7d", None, "readings_1m"),  # 15-minute points
        ("30d", None, "readings_1h"),  # hourly points
        ("1y", None, None),  # not a duration
        ("52w", None, "readings_1h"),  # daily points
        ("30d", "1m", "readings_1m"),  # a fine step over a long range still avoids raw rows
        ("1h", "1h", "readings_1h"),
        ("7d", "6h", "readings_1h"),
        ("24h", "raw", "readings"),
    ],
)
def test_the_coarsest_rollup_dividing_the_step_is_read(
    since: str, every: str | None, source: str | None
) -> None:
    if source is None:
        with pytest.raises(rq.QueryError):
            rq.plan("freezer-0001", since=since, every=every)
        return
    assert rq.plan("freezer-0001", since=since, every=every).source == source


def test_every_default_gives_at_most_about_720_points_up_to_two_years() -> None:
    for since in ("1h", "6h", "12h", "2d", "7d", "30d", "26w", "100w"):
        p = rq.plan("d", since=since)
        if p.step_seconds is not None:
            assert p.since / timedelta(seconds=p.step_seconds) <= 721, since


@pytest.mark.parametrize(
    ("device", "every", "since", "message"),
    [
        ("d", "2m", "1d", "--every '2m' is not one of raw, 1m"),
        ("d", "raw", "7d", "raw rows for --since up to 1d"),
        ("d", None, "-7d", "'-7d' is not a duration"),
        ("", None, "1d", "the device must be 1 to 256 characters"),
        ("x" * 257, None, "1d", "the device must be 1 to 256 characters, got 257"),
        ("f\x00-1", None, "1d", "control character (U+0000)"),
        ("f\n1", None, "1d", "control character (U+000A)"),
    ],
)
def test_bad_flags_say_what_is_wrong(device: str, every: str | None, since: str, message: str) -> None:
    with pytest.raises(rq.QueryError, match=re.escape(message)):
        rq.plan(device, since=since, every=every)


def test_quotes_and_sql_in_a_device_id_stay_parameters() -> None:
    """A device id is data: it goes to the server as a parameter, never into the SQL text."""
    hostile = "f-1'; DROP TABLE readings; --"
    for every in ("raw", "15m", "1h"):
        query, params = rq.sql(rq.plan(hostile, since="1d", every=every, metric="te'mp"), datetime.now(UTC))
        assert hostile not in query and "te'mp" not in query
        assert params["device"] == hostile and params["metric"] == "te'mp"


def test_buckets_start_on_whole_steps() -> None:
    now = datetime(2026, 11, 30, 14, 37, 12, tzinfo=UTC)
    assert rq.plan("d", since="7d", every="1h").start(now) == datetime(2026, 11, 23, 14, 0, tzinfo=UTC)
    assert rq.plan("d", since="24h", every="15m").start(now) == datetime(2026, 11, 29, 14, 30, tzinfo=UTC)
    assert rq.plan("d", since="30m", every="raw").start(now) == now - timedelta(minutes=30)


def test_the_query_reads_the_chosen_source() -> None:
    now = datetime.now(UTC)
    assert "FROM readings_1h" in rq.sql(rq.plan("d", since="30d"), now)[0]
    assert "FROM readings_1m" in rq.sql(rq.plan("d", since="24h"), now)[0]
    raw, params = rq.sql(rq.plan("d", since="30m"), now)
    assert "FROM readings\n" in raw and "step" not in params


def test_retention_must_grow_with_the_rollup() -> None:
    settings = ThermoflowSettings()
    assert (settings.readings_retention_days, settings.rollup_1m_retention_days) == (90, 365)
    assert settings.rollup_1h_retention_days == 1825
    with pytest.raises(ConfigError, match="retention must grow with the rollup"):
        load_settings(ThermoflowSettings, readings_retention_days=400)
    with pytest.raises(ConfigError, match="readings_retention_days"):
        load_settings(ThermoflowSettings, readings_retention_days=3)  # inside the 7-day refresh window


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "garbage"], "'garbage' is not a duration"),
        (["--since", "-1d"], "'-1d' is not a duration"),
        (["--every", "3h"], "--every '3h' is not one of"),
        (["--since", "30d", "--every", "raw"], "use --every 1m for 30d"),
    ],
)
def test_the_command_fails_fast_on_bad_flags(args: list[str], message: str) -> None:
    """Exit 2 with the reason and no traceback, before any connection (the database URL is dead)."""
    env = {**os.environ, "THERMOFLOW_DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none"}
    result = subprocess.run(
        [sys.executable, "-m", "thermoflow", "readings", "freezer-0001", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr and "cannot reach" not in result.stderr
