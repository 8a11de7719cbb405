"""The readings sink against real Kafka and PostgreSQL: every reading once, through replays,
SIGKILL and a failing database."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql

from ingest.settings import IngestSettings
from ingest.sink import run_sink
from tests.conftest import Endpoints, unique_name
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
from thermoflow.events import Reading, parse_dead_letter_headers
from thermoflow.metrics import Metrics
from thermoflow.settings import ThermoflowSettings

T0 = 1_764_000_000.0
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
        assert sink.terminate() == 0, sink.log()
    finally:
        sink.close()
    assert count_rows(config) == 10_000
    done, end = await committed(config, config.readings_topic, PARTITIONS)
    assert done == end == 10_000


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
