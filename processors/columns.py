"""Batch decoding: raw Kafka records in, a :class:`ReadingBatch` (columns) and the rejects out.

Pure: no Kafka client. The fast path decodes a whole batch in one msgspec call
(:func:`thermoflow.events.decode_readings`); when any record is not exactly one valid reading,
it falls back to one decode per record so each bad record gets its own reason.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import numpy as np

from thermoflow.events import decode_reading, decode_readings
from thermoflow.processors.thresholds import F64, I64, ReadingColumns

_value: Final = operator.attrgetter("value")
_partition: Final = operator.attrgetter("partition")
_offset: Final = operator.attrgetter("offset")


class KafkaRecord(Protocol):
    """What the codec needs of a record: aiokafka's ``ConsumerRecord`` and :class:`RawRecord` both fit."""

    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One Kafka record as the runtime received it."""

    key: bytes | None
    value: bytes | None
    partition: int
    offset: int
    headers: Sequence[tuple[str, bytes]] = ()


@dataclass(frozen=True, slots=True)
class Reject:
    """A record that is not a valid reading, and why."""

    record: KafkaRecord
    error: str


@dataclass(frozen=True, eq=False)
class ReadingBatch:
    """The valid readings of one batch: columns for the check, plus where each reading came from."""

    topic: str
    columns: ReadingColumns
    partition: I64
    offset: I64
    records: Sequence[KafkaRecord]  # the valid readings' original records, in the same order
    received_at: F64  # the bridge's receive time: the offline detector's clock
    event_ts: F64  # min(ts, received_at): how far a reading moves its partition's watermark

    def __len__(self) -> int:
        return len(self.columns)

    def device_id(self, reading: int) -> str:
        return self.columns.device_ids[int(self.columns.pair[reading])]

    def metric(self, reading: int) -> str:
        return self.columns.metrics[int(self.columns.pair[reading])]


def _floats(column: list[float]) -> F64:
    """A column of a batch's readings as an array.

    The columns are read from the decoded readings with list comprehensions, not
    ``map(operator.attrgetter(...))``: the interpreter reads a struct field in a comprehension
    through its specialized slot access, where attrgetter takes the generic attribute lookup
    each time. Counted with callgrind, the decode's column reads cost 27% fewer instructions.
    """
    return np.fromiter(column, dtype=np.float64, count=len(column))


def _pairs(readings: Sequence[Any]) -> tuple[I64, list[str], list[str]]:
    """Each reading's (device, metric) pair as an index, and the distinct pairs in first-seen order.

    When the batch has one metric (the usual case) the device ids are the keys: a string
    caches its hash, a (device, metric) tuple computes it again at every lookup. One dict pass:
    ``setdefault(key, position)`` answers each reading with its key's first position, which
    numbers the pairs in first-seen order with array operations (the dict keeps that order).
    """
    # Comprehensions, not map() (see _floats); one metric is told by list.count, which compares
    # the equal strings, where a set would hash every reading's.
    names = [reading.metric for reading in readings]
    single = bool(names) and names.count(names[0]) == len(names)
    keys: list[Any]
    if single:
        keys = [reading.device_id for reading in readings]
    else:
        keys = [(reading.device_id, reading.metric) for reading in readings]
    index: dict[Any, int] = {}
    first = np.fromiter(map(index.setdefault, keys, itertools.count()), dtype=np.int64, count=len(readings))
    is_first = np.zeros(first.size, dtype=bool)
    is_first[first] = True
    number = np.cumsum(is_first) - 1
    if single:
        metric = names[0]
        device_ids, metrics = list(index), [metric] * len(index)
    else:
        device_ids, metrics = [device_id for device_id, _ in index], [metric for _, metric in index]
    return number[first], device_ids, metrics


def decode_batch(
    topic: str, records: Sequence[Any], partitions: I64 | None = None
) -> tuple[ReadingBatch, list[Reject]]:
    """Decode a batch of ``telemetry.readings`` records to columns; undecodable ones are rejected.

    ``partitions``, when given, is each record's partition, and the records need not carry
    one (aiokafka's raw records: :func:`thermoflow.aiokafka_fetch.deliver_raw_records`).
    Then the batch's ``records`` are those raw records; a reject is a :class:`RawRecord`
    naming its partition.

    >>> ok = RawRecord(b"f-1", b'{"device_id": "f-1", "value": -3.5, "ts": 10.0, "received_at": 10.1}', 0, 7)
    >>> bad = RawRecord(b"f-2", b'{"device_id": "f-2"}', 0, 8)
    >>> batch, rejects = decode_batch("telemetry.readings", [ok, bad])
    >>> len(batch), batch.device_id(0), batch.columns.values.tolist(), batch.offset.tolist()
    (1, 'f-1', [-3.5], [7])
    >>> rejects[0].record.offset, rejects[0].error
    (8, 'invalid reading: Object missing required field `value`')
    """
    rejects: list[Reject] = []
    kept: Sequence[KafkaRecord] = records
    # WireReading (fast path) or Reading: the same fields. map/attrgetter: loops in C, not in Python
    readings: list[Any] | None = decode_readings(list(map(_value, records)))
    if readings is None:
        if partitions is not None:  # the slow path names each record's partition
            records = [
                RawRecord(r.key, r.value, p, r.offset, getattr(r, "headers", None) or ())
                for r, p in zip(records, partitions.tolist(), strict=True)
            ]
            partitions = None
        readings, valid = [], []
        for record in records:
            if not record.value:
                rejects.append(Reject(record, "empty record value"))
                continue
            try:
                readings.append(decode_reading(record.value))
            except ValueError as exc:
                rejects.append(Reject(record, str(exc)))
                continue
            valid.append(record)
        kept = valid

    pair, device_ids, metrics = _pairs(readings)
    columns = ReadingColumns(
        device_ids=device_ids,
        metrics=metrics,
        pair=pair,
        values=_floats([reading.value for reading in readings]),
        ts=_floats([reading.ts for reading in readings]),
    )
    received_at = _floats([reading.received_at for reading in readings])
    batch = ReadingBatch(
        topic=topic,
        columns=columns,
        partition=(
            partitions
            if partitions is not None
            else np.fromiter(map(_partition, kept), dtype=np.int64, count=len(kept))
        ),
        offset=np.fromiter(map(_offset, kept), dtype=np.int64, count=len(kept)),
        records=kept,
        received_at=received_at,
        event_ts=np.minimum(columns.ts, received_at),
    )
    return batch, rejects
