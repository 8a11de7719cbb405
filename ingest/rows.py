"""Kafka reading records to database rows, and the ones that are not readings (pure).

>>> batch = rows_from_values([b'{"device_id":"f-1","value":-18.5,"ts":1.5,"received_at":2.0}', b"junk"])
>>> batch.rows
[('f-1', 'temperature', -18.5, 1.5, None, 2.0)]
>>> batch.errors
[(1, 'invalid reading: JSON is malformed: invalid character (byte 0)')]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from thermoflow.events import EventDecodeError, decode_reading

#: One staged row: device_id, metric, value (°C), ts and received_at (epoch seconds), seq.
Row = tuple[str, str, float, float, int | None, float]

#: The staging table's columns, in :data:`Row` order, and their PostgreSQL types for binary COPY.
STAGE_COLUMNS = ("device_id", "metric", "value", "ts", "seq", "received_at")
STAGE_TYPES = ("text", "text", "float8", "float8", "int8", "float8")


class RowBatch(NamedTuple):
    rows: list[Row]
    errors: list[tuple[int, str]]  # (index in the input, reason)


def rows_from_values(values: Sequence[bytes | None]) -> RowBatch:
    """Decode each record value; a value that is no valid reading becomes an error with its index."""
    rows: list[Row] = []
    errors: list[tuple[int, str]] = []
    for index, value in enumerate(values):
        if value is None:
            errors.append((index, "record has no value"))
            continue
        try:
            r = decode_reading(value)
        except (EventDecodeError, ValueError) as exc:
            errors.append((index, str(exc)))
            continue
        rows.append((r.device_id, r.metric, r.value, r.ts, r.seq, r.received_at))
    return RowBatch(rows, errors)
