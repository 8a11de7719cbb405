"""The readings sink against real Kafka and PostgreSQL: every reading once, through replays,
SIGKILL and a failing database."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import psycopg
import pytest
from psycopg import sql

from tests.conftest import Endpoints, unique_name
from tests.integration.alerts.helpers import until_members
from tests.integration.ingest.helpers import (
    Component,
    KafkaReader,
    committed,
    count_rows,
    ingest_settings,
    produce_raw,
    produce_readings,
    wait_for,
)
from thermoflow import db
from thermoflow.events import Reading, parse_dead_letter_headers
from thermoflow.ingest.settings import IngestSettings
from thermoflow.ingest.sink import run_sink
from thermoflow.metrics import Metrics
from thermoflow.settings import ThermoflowSettings
from thermoflow.watchdog import EXIT_STALLED

# The storage tests: once on plain PostgreSQL, once on TimescaleDB (tests/conftest.py).
pytestmark = pytest.mark.both_databases

# Readings of the last hours: on TimescaleDB the retention policy (90 days) drops older chunks
# within seconds of the migration, and a fixed date in the past would soon fall out.
T0 = float(int(time.time()) // 3600 * 3600 - 12 * 3600)
PARTITIONS = 4


def fleet_readings(count: int = 10_000, devices: int = 1000) -> list[Reading]:
    return [
        Reading(
            device_id=f"freezer-{i % devices:04d}",
            value=-20.0 + (i % 97) / 8,
            ts=T0 + i + 0.125,
            seq=i,
            received_at=T0 + i + 0.5,
        )
        for i in range(count)
    ]


def sink_settings(
    settings: ThermoflowSettings, new_topic: Callable[..., str], **overrides: object
) -> IngestSettings:
    return ingest_settings(
        settings,
        readings_topic=new_topic("readings", partitions=PARTITIONS),
        deadletter_topic=new_topic("deadletter"),
        sink_group=unique_name("sink"),
        **overrides,
    )


def table(settings: ThermoflowSettings) -> sql.Composed:
    return sql.SQL("{}.readings").format(sql.Identifier(settings.database_schema))


async def test_ten_thousand_readings_and_a_full_replay_make_ten_thousand_rows(
    endpoints: Endpoints, settings: ThermoflowSettings, new_topic: Callable[..., str]
) -> None:
    config = sink_settings(settings, new_topic)
    readings = fleet_readings()
    await produce_readings(config, config.readings_topic, readings)
    await produce_raw(config, config.readings_topic, [b"not a reading"])
    metrics = Metrics("sink")
    stop = asyncio.Event()
    sink = asyncio.create_task(run_sink(config, stop=stop, metrics=metrics))
    try:
        await wait_for(lambda: metrics.counter("consumed") >= 10_001, timeout=90, what="the first pass")
        assert count_rows(config) == 10_000
        await produce_readings(config, config.readings_topic, readings)  # the full replay
        await wait_for(lambda: metrics.counter("consumed") >= 20_001, timeout=90, what="the replay")
    finally:
        stop.set()
        await asyncio.wait_for(sink, 60)

    assert count_rows(config) == 10_000
    assert metrics.counter("rows_inserted") == 10_000
    assert metrics.counter("rows_duplicate") == 10_000
    done, end = await committed(config, config.readings_topic, PARTITIONS)
    assert done == end == 20_001  # offsets committed after the rows
    with psycopg.connect(config.database_dsn) as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT device_id, metric, ts, value, seq, received_at, stored_at FROM {} ORDER BY seq"
            ).format(table(config))
        ).fetchall()
    for row, reading in zip(rows, readings, strict=True):
        device_id, metric, ts, value, seq, received_at, stored_at = row
        assert (device_id, metric, value, seq) == (
            reading.device_id,
            "temperature",
            reading.value,
            reading.seq,
        )
        assert ts == datetime.fromtimestamp(reading.ts, UTC)
        assert received_at == datetime.fromtimestamp(reading.received_at, UTC)
        assert stored_at >= received_at
    # The record that was no reading went to the dead-letter topic, with its reason.
    async with KafkaReader(endpoints.kafka_bootstrap, config.deadletter_topic) as kafka:
        await kafka.until_count(config.deadletter_topic, 1, timeout=30)
    [letter] = kafka.records[config.deadletter_topic]
    reason = parse_dead_letter_headers(letter.headers)
    assert letter.value == b"not a reading"
    assert reason.stage == "ingest" and reason.source.startswith(f"{config.readings_topic}/")
    assert "invalid reading" in reason.error


async def test_sigkill_mid_stream_and_restart_make_exactly_ten_thousand_rows(
    settings: ThermoflowSettings, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    config = sink_settings(settings, new_topic, sink_batch=100)  # many small transactions
    await produce_readings(config, config.readings_topic, fleet_readings())
    sink = Component("sink", config, tmp_path)
    sink.start()
    try:
        await wait_for(
            lambda: count_rows(config) >= 2000, timeout=90, what="2000 rows before the kill", every=0.01
        )
        sink.kill()
        assert count_rows(config) < 10_000, "the kill must come mid-stream"
        sink.start()
        await wait_for(lambda: count_rows(config) >= 10_000, timeout=90, what="10,000 rows after the restart")
        # Every row can be in before the restarted sink has read them all: the killed one stored
        # some it never committed, and those come again (as duplicates) after the rows are complete.
        await until_committed(config, 10_000)
        assert sink.terminate() == 0, sink.log()
    finally:
        sink.close()
    assert count_rows(config) == 10_000
    done, end = await committed(config, config.readings_topic, PARTITIONS)
    assert done == end == 10_000


async def until_committed(config: IngestSettings, count: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while (await committed(config, config.readings_topic, PARTITIONS))[0] < count:
        assert time.monotonic() < deadline, f"the sink's group did not commit {count} readings in {timeout} s"
        await asyncio.sleep(0.5)


async def test_a_failing_database_pauses_the_sink_and_nothing_is_lost(
    settings: ThermoflowSettings, new_topic: Callable[..., str]
) -> None:
    config = sink_settings(settings, new_topic)
    metrics = Metrics("sink")
    stop = asyncio.Event()
    sink = asyncio.create_task(run_sink(config, stop=stop, metrics=metrics))
    try:
        await wait_for(
            lambda: count_rows(config) == 0 and _table_exists(config), timeout=60, what="migrations"
        )
        # The table stops taking rows (as if the database refused writes) while readings arrive.
        with psycopg.connect(config.database_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER TABLE {} RENAME COLUMN value TO value_away").format(table(config)))
        await produce_readings(config, config.readings_topic, fleet_readings(1000, devices=50))
        await wait_for(lambda: metrics.counter("write_failures") >= 2, timeout=60, what="failed writes")
        done, _ = await committed(config, config.readings_topic, PARTITIONS)
        assert done == 0  # nothing committed while nothing was written
        with psycopg.connect(config.database_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER TABLE {} RENAME COLUMN value_away TO value").format(table(config)))
        await wait_for(lambda: metrics.counter("consumed") >= 1000, timeout=90, what="the retried batch")
    finally:
        stop.set()
        await asyncio.wait_for(sink, 60)
    assert count_rows(config) == 1000


def _table_exists(settings: ThermoflowSettings) -> bool:
    with psycopg.connect(settings.database_dsn) as conn:
        row = conn.execute("SELECT to_regclass(%s)", (f"{settings.database_schema}.readings",)).fetchone()
        return row is not None and row[0] is not None


# Records no bridge should let through, produced straight onto the readings topic: the sink
# defends itself. Before, each of these stalled it (retried forever) or crash-looped it.
UNSTORABLE = {
    b'{"device_id":"freezer-x","value":1.5,"ts":1e19,"received_at":1764000000.0}': "`ts`",
    b'{"device_id":"freezer\\u0000x","value":1.5,"ts":1764000000.0,"received_at":1764000000.0}': (
        "`device_id`"
    ),
    b'{"device_id":"freezer-x","value":1.5,"ts":1764000000.0,"seq":9223372036854775808,'
    b'"received_at":1764000000.0}': "`seq`",
}


async def _dead_letters(endpoints: Endpoints, topic: str, count: int) -> dict[bytes, tuple[str, str, str]]:
    """``count`` dead letters: original bytes -> (error, stage, source)."""
    async with KafkaReader(endpoints.kafka_bootstrap, topic) as kafka:
        await kafka.until_count(topic, count, timeout=60)
        await kafka.settle(1.0)
    letters: dict[bytes, tuple[str, str, str]] = {}
    for record in kafka.records[topic]:
        reason = parse_dead_letter_headers(record.headers)
        letters[record.value] = (reason.error, reason.stage, reason.source)
    assert len(kafka.records[topic]) == count, letters
    return letters


async def test_unstorable_readings_become_dead_letters_and_every_other_reading_is_stored(
    endpoints: Endpoints, settings: ThermoflowSettings, new_topic: Callable[..., str]
) -> None:
    config = sink_settings(settings, new_topic)
    readings = fleet_readings(3000, devices=100)
    await produce_readings(config, config.readings_topic, readings[:1500])
    await produce_raw(config, config.readings_topic, list(UNSTORABLE))
    await produce_readings(config, config.readings_topic, readings[1500:])
    total = len(readings) + len(UNSTORABLE)
    metrics = Metrics("sink")
    stop = asyncio.Event()
    sink = asyncio.create_task(run_sink(config, stop=stop, metrics=metrics))
    try:
        await wait_for(lambda: metrics.counter("consumed") >= total, timeout=90, what="every record")
    finally:
        stop.set()
        await asyncio.wait_for(sink, 60)
    assert count_rows(config) == len(readings)
    assert metrics.counter("write_failures") == 0  # nothing was retried: the bad ones never got written
    done, end = await committed(config, config.readings_topic, PARTITIONS)
    assert done == end == total
    letters = await _dead_letters(endpoints, config.deadletter_topic, len(UNSTORABLE))
    for value, field in UNSTORABLE.items():
        error, stage, source = letters[value]
        assert field in error and stage == "ingest", error
        assert source.startswith(f"{config.readings_topic}/")


async def test_rows_the_database_refuses_are_set_apart_and_the_rest_of_their_batch_is_stored(
    endpoints: Endpoints, settings: ThermoflowSettings, new_topic: Callable[..., str]
) -> None:
    """A refusal no check before the write foresaw (here an operator's CHECK constraint): the batch
    is split until the refused rows stand alone; they are dead-lettered, the rest is written."""
    config = sink_settings(settings, new_topic)
    await asyncio.to_thread(db.migrate, config)
    with psycopg.connect(config.database_dsn, autocommit=True) as conn:
        check = sql.SQL("ALTER TABLE {} ADD CONSTRAINT plausible CHECK (value < 100)")
        conn.execute(check.format(table(config)))
    readings = fleet_readings(2000, devices=100)
    hot = {17, 1234, 1235, 1999}
    readings = [
        msgspec.structs.replace(reading, value=500.0 + i) if i in hot else reading
        for i, reading in enumerate(readings)
    ]
    await produce_readings(config, config.readings_topic, readings)
    metrics = Metrics("sink")
    stop = asyncio.Event()
    sink = asyncio.create_task(run_sink(config, stop=stop, metrics=metrics))
    try:
        await wait_for(lambda: metrics.counter("consumed") >= len(readings), timeout=90, what="every record")
    finally:
        stop.set()
        await asyncio.wait_for(sink, 60)
    assert count_rows(config) == len(readings) - len(hot)
    assert metrics.counter("rows_inserted") == len(readings) - len(hot)
    done, end = await committed(config, config.readings_topic, PARTITIONS)
    assert done == end == len(readings)
    letters = await _dead_letters(endpoints, config.deadletter_topic, len(hot))
    assert {msgspec.json.decode(value)["seq"] for value in letters} == hot
    for error, stage, source in letters.values():
        assert "plausible" in error and stage == "ingest", error
        topic, partition, offset = source.rsplit("/", 2)
        assert topic == config.readings_topic and partition.isdigit() and offset.isdigit()


async def test_sigkill_under_load_the_restarted_static_member_resumes_and_stores_each_reading_once(
    settings: ThermoflowSettings, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """Readings keep arriving while the sink is killed and restarted as the same static member
    (``THERMOFLOW_INSTANCE``, as `thermoflow run` sets it): every reading stored, none twice."""
    config = sink_settings(settings, new_topic, sink_batch=500, instance=0)
    readings = fleet_readings(20_000, devices=500)
    sink = Component("sink", config, tmp_path)

    async def feed() -> None:  # ~5,000 readings/s for 4 s
        for start in range(0, len(readings), 1000):
            await produce_readings(config, config.readings_topic, readings[start : start + 1000])
            await asyncio.sleep(0.2)

    sink.start()
    feeding = asyncio.create_task(feed())
    try:
        await wait_for(lambda: count_rows(config) >= 3000, timeout=90, what="3000 rows", every=0.01)
        sink.kill()
        at_kill = count_rows(config)
        assert not feeding.done(), "the kill must come while readings arrive"
        sink.start()
        restarted = time.monotonic()
        await wait_for(
            lambda: count_rows(config) > at_kill, timeout=60, what="rows after the restart", every=0.02
        )
        print(f"sink stored again {time.monotonic() - restarted:.2f} s after its restart")  # the figure
        await feeding
        await wait_for(lambda: count_rows(config) >= len(readings), timeout=90, what="every reading stored")
        await until_committed(config, len(readings))  # the killed sink's uncommitted rows come again
        assert sink.terminate() == 0, sink.log()
    finally:
        feeding.cancel()
        sink.close()
    with psycopg.connect(config.database_dsn) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*), count(DISTINCT seq) FROM {}").format(table(config))
        ).fetchone()
    assert row == (len(readings), len(readings))
    done, end = await committed(config, config.readings_topic, PARTITIONS)
    assert done == end == len(readings)


async def test_a_sink_whose_writes_hang_exits_as_stalled_and_its_restart_stores_everything(
    settings: ThermoflowSettings, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """A write that neither fails nor finishes (a lock held elsewhere) is no outage the sink can
    see: its watchdog ends it with exit code 3, for `thermoflow run` to restart it."""
    config = sink_settings(settings, new_topic, stall_timeout=2.0)
    await asyncio.to_thread(db.migrate, config)
    sink = Component("sink", config, tmp_path)
    locker = psycopg.connect(config.database_dsn)
    try:
        locker.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(table(config)))
        sink.start()
        await produce_readings(config, config.readings_topic, fleet_readings(1000, devices=50))
        assert sink.process is not None
        code = await asyncio.to_thread(sink.process.wait, 60)
        assert code == EXIT_STALLED, sink.log()
        assert '"component_stalled"' in sink.log()
        locker.rollback()  # the lock goes
        sink.start()
        await wait_for(lambda: count_rows(config) >= 1000, timeout=60, what="the rows after the restart")
        assert sink.terminate() == 0, sink.log()
    finally:
        locker.close()
        sink.close()
    assert count_rows(config) == 1000


def _log_events(component: Component, event: str) -> list[dict[str, object]]:
    """The JSON log lines of ``event`` in every run of ``component``."""
    found = []
    for path in sorted(component.log_dir.glob(f"{component.command}-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if f'"{event}"' in line and line.startswith("{"):
                found.append(json.loads(line))
    return found


async def test_a_second_instance_joins_and_leaves_mid_run_and_each_reading_is_stored_once(
    settings: ThermoflowSettings, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """Readings arrive in small batches (many commits) while a second sink joins the group and
    later stops: two rebalances under load, with commits refused or drained around them. Neither
    process crashes or restarts, every reading is one row, and every offset is committed."""
    config = sink_settings(settings, new_topic, sink_batch=50)
    readings = fleet_readings(24_000, devices=600)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = Component("sink", config.model_copy(update={"instance": 0}), tmp_path / "a")
    second = Component("sink", config.model_copy(update={"instance": 1}), tmp_path / "b")

    async def feed() -> None:  # ~1,000 readings/s for ~24 s
        for start in range(0, len(readings), 250):
            await produce_readings(config, config.readings_topic, readings[start : start + 250])
            await asyncio.sleep(0.25)

    first.start()
    feeding = asyncio.create_task(feed())
    try:
        await wait_for(lambda: count_rows(config) >= 1000, timeout=90, what="1000 rows from the first sink")
        second.start()
        await until_members(config, config.sink_group, config.readings_topic, 2)
        at_join = count_rows(config)
        await wait_for(lambda: count_rows(config) >= at_join + 2000, timeout=60, what="rows from both")
        assert second.terminate() == 0, second.log()  # a clean stop: its batches drained and committed
        assert not feeding.done(), "the second sink must leave while readings arrive"
        await feeding
        await wait_for(lambda: count_rows(config) >= len(readings), timeout=120, what="every reading stored")
        await until_committed(config, len(readings))
        assert first.process is not None and first.process.poll() is None, first.log()  # never died
        assert first.terminate() == 0, first.log()
    finally:
        feeding.cancel()
        first.close()
        second.close()
    assert (first.runs, second.runs) == (1, 1)
    with psycopg.connect(config.database_dsn) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*), count(DISTINCT seq) FROM {}").format(table(config))
        ).fetchone()
    assert row == (len(readings), len(readings))
    done, end = await committed(config, config.readings_topic, PARTITIONS)
    assert done == end == len(readings)
    # The first sink went through the join and the leave: revoked twice, assigned three times.
    assert len(_log_events(first, "partitions_revoked")) >= 2, first.log()
    stored = {
        name: _log_events(component, "sink_stopped")[-1]["counters"]
        for name, component in (("first", first), ("second", second))
    }
    refused = len(_log_events(first, "offset_commit_refused")) + len(
        _log_events(second, "offset_commit_refused")
    )
    print(f"rows inserted/duplicate per sink: {stored}; commits refused by a rebalance: {refused}")
