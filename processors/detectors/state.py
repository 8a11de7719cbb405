"""Per-device detector state: columns for the batch math, one fixed-width record per device for storage.

A device's state is what the detectors must remember between batches, and nothing else:

============================  =======================================================================
``last_seen``                 the largest ``received_at`` seen (the offline timer's evidence); NaN: never
``last_ts``                   the largest device ``ts`` accepted; later readings at or before it are late
``offline_reported``          the ``last_seen`` an offline detection was last emitted for (NaN: none)
``run_start/min/max``         the current stuck run: its first reading's ``ts`` and its value range
``history``                   up to :data:`HISTORY` ``(ts, value)`` pairs, the first reading of each
                              recent time bucket, oldest first (rate anchors, outlier baselines)
============================  =======================================================================

Stored per device (a compacted topic keyed by device) as one record of :data:`RECORD_DTYPE`:
a version byte, the history's length, six little-endian float64 and the history, NaN-padded,
626 bytes. Fixed width, so a batch's states pack to bytes and back with array operations,
no Python step per field (:meth:`DeviceStates.to_bytes`, :meth:`DeviceStates.from_bytes`).

>>> states = DeviceStates.empty(1)
>>> blob = states.to_bytes()[0]
>>> len(blob), DeviceStates.from_bytes([blob]).to_bytes() == [blob]
(626, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Final

import numpy as np

from thermoflow.processors.detectors.config import F64, HISTORY, I64

#: The stored form's version: a record of another version (or size) is not read.
RECORD_VERSION: Final = 1
SCALARS: Final = ("last_seen", "last_ts", "offline_reported", "run_start", "run_min", "run_max")
RECORD_DTYPE: Final = np.dtype(
    [("version", "u1"), ("hist_len", "u1")]
    + [(name, "<f8") for name in SCALARS]
    + [("hist_ts", "<f8", (HISTORY,)), ("hist_value", "<f8", (HISTORY,))]
)
RECORD_SIZE: Final = RECORD_DTYPE.itemsize


@dataclass(frozen=True, slots=True)
class DeviceState:
    """One device's state, as plain values (for tests and the scalar reference)."""

    last_seen: float = float("nan")
    last_ts: float = float("-inf")
    offline_reported: float = float("nan")
    run_start: float = float("nan")
    run_min: float = float("nan")
    run_max: float = float("nan")
    history: tuple[tuple[float, float], ...] = ()  # (ts, value), oldest first


@dataclass(frozen=True, eq=False)
class DeviceStates:
    """The state of ``count`` devices as columns; row ``d`` is the batch's device ``d``.

    ``hist_ts``/``hist_value`` have shape ``(count, HISTORY)``, left-aligned, NaN past ``hist_len``.
    """

    last_seen: F64
    last_ts: F64
    offline_reported: F64
    run_start: F64
    run_min: F64
    run_max: F64
    hist_ts: F64
    hist_value: F64
    hist_len: I64

    def __len__(self) -> int:
        return int(self.last_seen.shape[0])

    @classmethod
    def empty(cls, count: int) -> DeviceStates:
        """The state of ``count`` devices never seen."""
        nan = np.full(count, np.nan)
        return cls(
            last_seen=nan.copy(),
            last_ts=np.full(count, -np.inf),
            offline_reported=nan.copy(),
            run_start=nan.copy(),
            run_min=nan.copy(),
            run_max=nan,
            hist_ts=np.full((count, HISTORY), np.nan),
            hist_value=np.full((count, HISTORY), np.nan),
            hist_len=np.zeros(count, dtype=np.int64),
        )

    def take(self, rows: I64, *, history: bool = True) -> DeviceStates:
        """The states of ``rows``, as a new table (a copy).

        Without ``history``, only the per-device scalars are copied; the history columns are
        this table's own (not a copy, every row): for :func:`~thermoflow.processors.detectors.scan`
        with ``history_at=rows``, which reads and writes the history rows it needs in place.
        """
        if history:
            return DeviceStates(**{name: getattr(self, name)[rows] for name in _COLUMNS})
        return DeviceStates(
            **{name: getattr(self, name)[rows] for name in SCALARS},
            hist_ts=self.hist_ts,
            hist_value=self.hist_value,
            hist_len=self.hist_len,
        )

    def put(self, rows: I64, other: DeviceStates, *, history: bool = True) -> None:
        """Write ``other``'s states into ``rows`` (in place); without ``history``, only the scalars."""
        for name in _COLUMNS if history else SCALARS:
            getattr(self, name)[rows] = getattr(other, name)

    def grown(self, capacity: int) -> DeviceStates:
        """A copy with room for ``capacity`` devices, the new rows never seen."""
        more = DeviceStates.empty(capacity - len(self))
        return DeviceStates(
            **{f.name: np.concatenate([getattr(self, f.name), getattr(more, f.name)]) for f in fields(self)}
        )

    @classmethod
    def from_records(cls, records: Sequence[DeviceState | None]) -> DeviceStates:
        """Columns from plain records (None: a device never seen). One Python step per device."""
        states = cls.empty(len(records))
        for row, record in enumerate(records):
            if record is None:
                continue
            for name in SCALARS:
                getattr(states, name)[row] = getattr(record, name)
            pairs = record.history[-HISTORY:]
            states.hist_ts[row, : len(pairs)] = [t for t, _ in pairs]
            states.hist_value[row, : len(pairs)] = [v for _, v in pairs]
            states.hist_len[row] = len(pairs)
        return states

    def record(self, row: int) -> DeviceState:
        """Device ``row``'s state as plain values."""
        size = int(self.hist_len[row])
        history = tuple(
            zip(self.hist_ts[row, :size].tolist(), self.hist_value[row, :size].tolist(), strict=True)
        )
        scalars = {name: float(getattr(self, name)[row]) for name in SCALARS}
        return DeviceState(**scalars, history=history)

    def pack(self) -> bytes:
        """Every device's stored record, concatenated (``RECORD_SIZE`` bytes each, in row order)."""
        packed = np.empty(len(self), dtype=RECORD_DTYPE)
        packed["version"] = RECORD_VERSION
        packed["hist_len"] = self.hist_len
        for name in SCALARS:
            packed[name] = getattr(self, name)
        packed["hist_ts"] = self.hist_ts
        packed["hist_value"] = self.hist_value
        return packed.tobytes()

    def to_bytes(self) -> list[bytes]:
        """One stored record per device, in row order."""
        packed = self.pack()
        return [packed[at : at + RECORD_SIZE] for at in range(0, len(packed), RECORD_SIZE)]

    @classmethod
    def from_bytes(cls, blobs: Sequence[bytes | None]) -> DeviceStates:
        """Columns from stored records; None, or a record that is not one (size, version), is a
        device never seen (:func:`readable` tells which)."""
        states = cls.empty(len(blobs))
        rows = [row for row, blob in enumerate(blobs) if readable(blob)]
        if not rows:
            return states
        packed = np.frombuffer(b"".join(blobs[row] for row in rows), dtype=RECORD_DTYPE)  # type: ignore[misc]
        at = np.array(rows, dtype=np.int64)
        for name in SCALARS:
            getattr(states, name)[at] = packed[name]
        size = np.minimum(packed["hist_len"].astype(np.int64), HISTORY)
        keep = np.arange(HISTORY) < size[:, None]
        states.hist_ts[at] = np.where(keep, packed["hist_ts"], np.nan)
        states.hist_value[at] = np.where(keep, packed["hist_value"], np.nan)
        states.hist_len[at] = size
        return states


#: Every column of :class:`DeviceStates`, in field order.
_COLUMNS: Final = tuple(f.name for f in fields(DeviceStates))


def readable(blob: bytes | None) -> bool:
    """Whether ``blob`` is a stored record this version reads."""
    return blob is not None and len(blob) == RECORD_SIZE and blob[0] == RECORD_VERSION
