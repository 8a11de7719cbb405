"""Kafka reading records to database rows, and the ones that are not readings (pure).

>>> batch = rows_from_values([b'{"device_id":"f-1","value":-18.5,"ts":1.5,"received_at":2.0}', b"junk"])
>>> batch.rows
[('f-1', 'temperature', -18.5, 1.5, None, 2.0)]
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
from typing import NamedTuple

from thermoflow import db
from thermoflow.events import EventDecodeError, Reading, decode_reading

#: One staged row: device_id, metric, value (°C), ts and received_at (epoch seconds), seq.
Row = tuple[str, str, float, float, int | None, float]

#: The staging table's columns, in :data:`Row` order, and their PostgreSQL types for binary COPY.
STAGE_COLUMNS = ("device_id", "metric", "value", "ts", "seq", "received_at")
STAGE_TYPES = ("text", "text", "float8", "float8", "int8", "float8")


_EPOCH_MIN, _EPOCH_MAX, _INT8_LIMIT = db.EPOCH_MIN, db.EPOCH_MAX, 2**63


class RowBatch(NamedTuple):
    rows: list[Row]
    errors: list[tuple[int, str]]  # (index in the input, reason)
    sources: list[int]  # the input index of each row, for a row the database refuses later


def rows_from_values(values: Sequence[bytes | None]) -> RowBatch:
    """Decode each record value; a value that is no valid reading becomes an error with its index."""
    rows: list[Row] = []
    errors: list[tuple[int, str]] = []
    sources: list[int] = []
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
        rows.append((r.device_id, r.metric, r.value, r.ts, r.seq, r.received_at))
        sources.append(index)
    return RowBatch(rows, errors, sources)


def _plainly_storable(r: Reading) -> bool:
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
