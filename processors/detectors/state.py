"""Per-device detector state: columns for the batch math, a compact msgpack record per device for storage.

A device's state is what the detectors must remember between batches, and nothing else:

============================  =======================================================================
``last_seen``                 the largest ``received_at`` seen (the offline timer's evidence); NaN: never
``last_ts``                   the largest device ``ts`` accepted; later readings at or before it are late
``offline_reported``          the ``last_seen`` an offline detection was last emitted for (NaN: none)
``run_start/min/max``         the current stuck run: its first reading's ``ts`` and its value range
``history``                   up to :data:`HISTORY` ``(ts, value)`` pairs, the first reading of each
                              recent time bucket, oldest first (rate anchors, outlier baselines)
============================  =======================================================================

Stored per device (a faust table or a compacted topic keyed by device) as one msgpack array:
six floats and the history as raw little-endian float64 pairs, about 60 + 16·HISTORY bytes.

>>> states = DeviceStates.empty(1)
>>> blob = states.to_bytes()[0]
>>> len(blob), DeviceStates.from_bytes([blob]).to_bytes() == [blob]
(57, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import msgspec
import numpy as np

from thermoflow.processors.detectors.config import F64, HISTORY, I64


class DeviceState(msgspec.Struct, array_like=True, frozen=True):
    """One device's state as stored: a positional msgpack array (no field names on the wire)."""

    last_seen: float = float("nan")
    last_ts: float = float("-inf")
    offline_reported: float = float("nan")
    run_start: float = float("nan")
    run_min: float = float("nan")
    run_max: float = float("nan")
    history: bytes = b""  # "<f8" pairs (ts, value), oldest first


_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(DeviceState)
_PAIR: Final = np.dtype("<f8")


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

    @classmethod
    def from_records(cls, records: Sequence[DeviceState | None]) -> DeviceStates:
        """Columns from stored records (None: a device never seen). One Python step per device."""
        states = cls.empty(len(records))
        for row, record in enumerate(records):
            if record is None:
                continue
            states.last_seen[row] = record.last_seen
            states.last_ts[row] = record.last_ts
            states.offline_reported[row] = record.offline_reported
            states.run_start[row] = record.run_start
            states.run_min[row] = record.run_min
            states.run_max[row] = record.run_max
            pairs = np.frombuffer(record.history, dtype=_PAIR)[-2 * HISTORY :].reshape(-1, 2)
            states.hist_ts[row, : len(pairs)] = pairs[:, 0]
            states.hist_value[row, : len(pairs)] = pairs[:, 1]
            states.hist_len[row] = len(pairs)
        return states

    @classmethod
    def from_bytes(cls, blobs: Sequence[bytes | None]) -> DeviceStates:
        """Columns from stored msgpack records (None: a device never seen)."""
        return cls.from_records([None if blob is None else _decoder.decode(blob) for blob in blobs])

    def record(self, row: int) -> DeviceState:
        """Device ``row``'s state as a record to store."""
        size = int(self.hist_len[row])
        pairs = np.empty((size, 2), dtype=_PAIR)
        pairs[:, 0] = self.hist_ts[row, :size]
        pairs[:, 1] = self.hist_value[row, :size]
        return DeviceState(
            last_seen=float(self.last_seen[row]),
            last_ts=float(self.last_ts[row]),
            offline_reported=float(self.offline_reported[row]),
            run_start=float(self.run_start[row]),
            run_min=float(self.run_min[row]),
            run_max=float(self.run_max[row]),
            history=pairs.tobytes(),
        )

    def to_bytes(self) -> list[bytes]:
        """One msgpack record per device, in row order. One Python step per device."""
        return [_encoder.encode(self.record(row)) for row in range(len(self))]
