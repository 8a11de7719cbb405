"""Which readings of a batch the detectors see, grouped by device: sorting and reductions only.

A reading is *accepted* when its ``ts`` is later than every ``ts`` its device sent before it,
in arrival order: earlier batches (``last_ts`` in the state) and earlier readings of this
batch. A redelivered duplicate or a reading that arrives after a later one is *late* and the
detectors skip it (the sink and the threshold check still see it). Judging by arrival order,
not by ``ts`` order inside the batch, is what makes the accepted set the same however the
stream is cut into batches; and a replay of readings already in the state changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from thermoflow.processors.detectors.config import F64, I64

Mask = npt.NDArray[np.bool_]


@dataclass(frozen=True, eq=False)
class Grouped:
    """A batch grouped by device: ``order`` lists the batch's readings by device, in arrival order."""

    order: I64
    device: I64  # device of each entry of ``order``
    starts: I64  # where each device's readings begin in ``order``
    accepted: I64  # positions in ``order`` of the accepted readings: by device, then ts


def by_device(device: I64, *, devices: int) -> I64:
    """Readings grouped by device, arrival order kept: a radix sort when device indices fit 16 bits."""
    key = device.astype(np.int16) if devices <= np.iinfo(np.int16).max else device
    return np.argsort(key, kind="stable").astype(np.int64)


def group(*, device: I64, ts: F64, last_ts: F64) -> Grouped:
    """Group a batch by device and find the accepted readings (see the module docstring).

    >>> grouped = group(device=np.array([1, 0, 1, 1]), ts=np.array([5.0, 1.0, 4.0, 6.0]),
    ...                 last_ts=np.array([1.0, -np.inf]))
    >>> grouped.order[grouped.accepted].tolist()  # device 0's ts 1.0 is not after last_ts; 4.0 came after 5.0
    [0, 3]
    """
    order = by_device(device, devices=last_ts.shape[0])
    dev, t = device[order], ts[order]
    same = dev[1:] == dev[:-1]
    starts = np.flatnonzero(np.concatenate(([True], ~same))) if dev.size else np.empty(0, np.int64)
    keep = t > last_ts[dev]
    if not np.all(~same | (t[1:] > t[:-1])):
        # Out of order or duplicated within the batch: a reading must also beat every earlier
        # arrival of its device. Dense ranks of (device, ts) make that a running maximum over
        # the whole array (ranks of device d all exceed those of devices before it).
        by_ts = np.lexsort((t, dev))
        new = np.ones(dev.size, dtype=bool)
        new[1:] = (dev[by_ts][1:] != dev[by_ts][:-1]) | (t[by_ts][1:] != t[by_ts][:-1])
        rank = np.empty(dev.size, dtype=np.int64)
        rank[by_ts] = np.cumsum(new)
        before = np.zeros(dev.size, dtype=np.int64)
        before[1:] = np.maximum.accumulate(rank)[:-1]
        keep &= rank > before
    return Grouped(order=order, device=dev, starts=starts, accepted=np.flatnonzero(keep))


def group_starts(keys: I64) -> Mask:
    """True where a sorted key array starts a new group."""
    first = np.ones(keys.size, dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    return first
