"""Kafka reading records to database rows, and the ones that are not readings (pure).

A row is what binary COPY sends for ``readings``: its timestamps are already PostgreSQL's
binary ``timestamptz``, microseconds since 2000-01-01 UTC, so the database converts nothing
(:func:`pg_micros`, rounded as PostgreSQL's ``to_timestamp`` rounds).

>>> reading = b'{"device_id":"f-1","value":-18.5,"ts":946684801.5,"received_at":946684802.0}'
>>> batch = rows_from_values([reading, b"junk"])
>>> batch.rows
[('f-1', 'temperature', -18.5, 1500000, None, 2000000)]
>>> batch.errors
[(1, 'invalid reading: JSON is malformed: invalid character (byte 0)')]

A reading that decodes but that the database could never store (a timestamp beyond year 9999,
a NUL in a device id, a ``seq`` beyond 64 bits) is an error here too, named by its field, so
it becomes a dead letter instead of a batch that fails forever:

>>> rows_from_values([b'{"device_id":"f-1","value":1.5,"ts":1e19,"received_at":2.0}']).errors
[(0, 'unstorable reading: `ts` 1e+19 is outside the storable time range (years 1 to 9999)')]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, NamedTuple

from thermoflow import db
from thermoflow.events import EventDecodeError, Reading, decode_reading, decode_readings

#: One row: device_id, metric, value (°C), ts, seq, received_at (timestamps in :func:`pg_micros`).
Row = tuple[str, str, float, int, int | None, int]

#: The ``readings`` columns, in :data:`Row` order, and the types binary COPY sends them as. A
#: timestamptz goes as ``int8``: its binary form is that integer, and psycopg's C dumper for
#: ``int`` writes it without a ``datetime`` per value.
ROW_COLUMNS = ("device_id", "metric", "value", "ts", "seq", "received_at")
ROW_TYPES = ("text", "text", "float8", "int8", "int8", "int8")

#: 2000-01-01T00:00:00Z in Unix epoch seconds: PostgreSQL's epoch.
PG_EPOCH: Final = 946_684_800.0

_EPOCH_MIN, _EPOCH_MAX, _INT8_LIMIT = db.EPOCH_MIN, db.EPOCH_MAX, 2**63


def pg_micros(epoch: float) -> int:
    """Unix epoch seconds as a binary ``timestamptz``: microseconds since 2000-01-01 UTC.

    The same arithmetic as PostgreSQL's ``to_timestamp(float8)`` (subtract its epoch, scale, round
    half to even), so a reading stored by either has the same key, and a replay matches it.

    >>> pg_micros(946_684_800.0), pg_micros(946_684_801.25), pg_micros(0.0)
    (0, 1250000, -946684800000000)
    """
    return round((epoch - PG_EPOCH) * 1e6)


class RowBatch(NamedTuple):
    rows: list[Row]
    errors: list[tuple[int, str]]  # (index in the input, reason)
    sources: list[int]  # the input index of each row, for a row the database refuses later


def rows_from_values(values: Sequence[bytes | None]) -> RowBatch:
    """Decode each record value; a value that is no valid reading becomes an error with its index.

    A batch of storable readings, the usual one, is decoded by one call
    (:func:`thermoflow.events.decode_readings`); any other, record by record.
    """
    readings: list[Any] | None = decode_readings(values)  # WireReading or Reading: the same fields
    errors: list[tuple[int, str]] = []
    if readings is not None and all(map(_plainly_storable, readings)):
        sources = list(range(len(readings)))
    else:
        readings, sources = [], []
        for index, value in enumerate(values):
            if value is None:
                errors.append((index, "record has no value"))
                continue
            try:
                r = decode_reading(value)
            except (EventDecodeError, ValueError) as exc:
                errors.append((index, str(exc)))
                continue
            if not _plainly_storable(r):
                reason = unstorable(r)
                if reason is not None:
                    errors.append((index, f"unstorable reading: {reason}"))
                    continue
            readings.append(r)
            sources.append(index)
    rows: list[Row] = [
        (r.device_id, r.metric, r.value, round((r.ts - PG_EPOCH) * 1e6), r.seq,
         round((r.received_at - PG_EPOCH) * 1e6))  # pg_micros, inline: 20,000 a batch
        for r in readings
    ]  # fmt: skip
    return RowBatch(rows, errors, sources)


def _plainly_storable(r: Reading | Any) -> bool:  # Any: a WireReading (decode_readings)
    """The quick test every reading takes (20,000 a batch); :func:`unstorable` then says why not."""
    return (
        _EPOCH_MIN <= r.ts <= _EPOCH_MAX
        and _EPOCH_MIN <= r.received_at <= _EPOCH_MAX
        and (r.seq is None or -_INT8_LIMIT <= r.seq < _INT8_LIMIT)
        and "\x00" not in r.device_id
        and "\x00" not in r.metric
    )


def unstorable(reading: Reading) -> str | None:
    """Why the ``readings`` table cannot take ``reading`` (naming the field), or None if it can."""
    return (
        db.unstorable_epoch("ts", reading.ts)
        or db.unstorable_epoch("received_at", reading.received_at)
        or db.unstorable_int8("seq", reading.seq)
        or db.unstorable_text("device_id", reading.device_id)
        or db.unstorable_text("metric", reading.metric)
    )
