"""The sink's database side against real PostgreSQL and TimescaleDB: rows COPYed straight into
``readings``, and a batch holding readings stored before keeps only its new ones."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from tests.integration.ingest.helpers import count_rows, ingest_settings
from thermoflow import db
from thermoflow.events import Reading, encode
from thermoflow.ingest.rows import Row, rows_from_values
from thermoflow.ingest.settings import IngestSettings
from thermoflow.ingest.sink import ReadingsWriter
from thermoflow.settings import ThermoflowSettings

pytestmark = pytest.mark.both_databases

# Readings of the last hours: TimescaleDB's retention policy would drop older chunks.
T0 = float(int(time.time()) // 3600 * 3600 - 12 * 3600)


def fleet(start: int, stop: int, *, devices: int = 50) -> list[Reading]:
    return [
        Reading(device_id=f"freezer-{i % devices:02d}", value=-20.0 + i / 8, ts=T0 + i + 0.125, seq=i,
                received_at=T0 + i + 0.5)
        for i in range(start, stop)
    ]  # fmt: skip


def rows(readings: list[Reading]) -> list[Row]:
    """The rows the sink makes of these readings' Kafka records."""
    batch = rows_from_values([encode(reading) for reading in readings])
    assert not batch.errors
    return batch.rows


@pytest.fixture
def config(settings: ThermoflowSettings) -> IngestSettings:
    config = ingest_settings(settings)
    db.migrate(config)
    return config


@pytest.fixture
def writer(config: IngestSettings) -> Iterator[ReadingsWriter]:
    writer = ReadingsWriter(config)
    yield writer
    writer.close()


def stored(config: IngestSettings) -> list[tuple[object, ...]]:
    query = sql.SQL(
        "SELECT seq, device_id, value, extract(epoch FROM ts)::float8 FROM {}.readings ORDER BY seq"
    )
    with psycopg.connect(config.database_dsn) as conn:
        return list(conn.execute(query.format(sql.Identifier(config.database_schema))).fetchall())


def test_a_batch_of_stored_and_repeated_readings_stores_each_new_reading_once(
    config: IngestSettings, writer: ReadingsWriter
) -> None:
    assert writer.write(rows(fleet(0, 1000))) == 1000
    # Half of it again (a replay), 500 new ones, and one of those twice (the bridge's at-least-once).
    mixed = fleet(500, 1000) + fleet(1000, 1500) + fleet(1200, 1201)
    assert writer.write(rows(mixed)) == 500
    assert writer.write(rows(fleet(1500, 2000))) == 500
    assert writer.write(rows(fleet(1900, 2100))) == 100

    readings = fleet(0, 2100)
    assert count_rows(config) == 2100
    assert stored(config) == [(r.seq, r.device_id, r.value, r.ts) for r in readings]


def test_readings_stored_through_to_timestamp_are_found_again_by_their_copied_rows(
    config: IngestSettings, writer: ReadingsWriter
) -> None:
    """Rows stored by an older sink (``to_timestamp(float)`` in the database) and the same readings
    replayed through today's (microseconds computed in Python) have the same key: nothing doubles."""
    draw = random.Random(14)
    readings = [
        Reading(device_id=f"f-{i % 7}", value=1.0, ts=T0 + draw.uniform(0, 3600) + i * 1e-7, seq=i,
                received_at=T0 + draw.random())
        for i in range(3000)
    ]  # fmt: skip
    insert = (
        "INSERT INTO readings (device_id, metric, ts, value, seq, received_at)"
        " VALUES (%s, %s, to_timestamp(%s), %s, %s, to_timestamp(%s))"
    )
    with db.connect(config) as conn:
        with conn.cursor() as cur:
            params = [(r.device_id, r.metric, r.ts, r.value, r.seq, r.received_at) for r in readings]
            cur.executemany(insert, params)
        conn.commit()

    assert writer.write(rows(readings)) == 0
    assert count_rows(config) == len(readings)


@pytest.mark.parametrize("database", ["timescaledb"], indirect=True)
def test_a_replay_into_compressed_chunks_stores_only_the_new_readings(
    config: IngestSettings, writer: ReadingsWriter
) -> None:
    assert writer.write(rows(fleet(0, 1000))) == 1000
    with db.connect(config) as conn:
        compressed = conn.execute("SELECT count(compress_chunk(c)) FROM show_chunks('readings') c").fetchone()
        conn.commit()
    assert compressed is not None and compressed[0] >= 1

    assert writer.write(rows(fleet(0, 1000) + fleet(1000, 1010))) == 10
    assert writer.write(rows(fleet(1010, 1020))) == 10
    assert count_rows(config) == 1020


@pytest.mark.parametrize("database", ["timescaledb"], indirect=True)
def test_a_hypertables_index_on_ts_is_brin_and_still_serves_a_time_range(
    config: IngestSettings, writer: ReadingsWriter
) -> None:
    """The sink writes in key order, which scattered every row over a btree on ts (080)."""
    assert writer.write(rows(fleet(0, 2000))) == 2000
    with db.connect(config) as conn:
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()"
            " AND tablename = 'readings'"
        ).fetchall()
        conn.execute("SET enable_seqscan = off")  # a few rows: the planner would rather scan them
        plan = conn.execute(
            "EXPLAIN SELECT count(*) FROM readings WHERE ts >= to_timestamp(%s) AND ts < to_timestamp(%s)",
            (T0 + 100, T0 + 200),
        ).fetchall()
    assert {name for name, _ in indexes} == {"readings_pkey", "readings_ts_brin"}
    assert "USING brin (ts)" in dict(indexes)["readings_ts_brin"]
    assert any("readings_ts_brin" in line for (line,) in plan), plan
