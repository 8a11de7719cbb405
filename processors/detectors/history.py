"""Rate and outlier, over each device's recent history: the first reading of each time bucket.

Time is cut into buckets of ``step`` seconds (the longest of the device's rate and outlier
windows over :data:`~thermoflow.processors.detectors.config.WINDOW_BUCKETS`). The *history* of a
device is the first accepted reading of each bucket it reported in; the state keeps the
last :data:`~thermoflow.processors.detectors.config.HISTORY` entries. Keeping one reading per bucket
bounds the state whatever a device's publish rate, and, being a function of the stream
alone, it is the same however the stream is cut into batches.

- **rate** of reading ``i`` (°C/min): ``60 · (x_i - level_a) / (ts_i - ts_a)`` where ``a``
  is the latest history entry with ``ts_a <= ts_i - window``: the change over at least one
  window, so sensor noise divides by a full window, not by a second between two readings.
  ``level_a`` is the median of ``x_a`` and the entries either side of it (when both exist
  and are earlier than ``i``), else ``x_a``: a one-reading spike that became the anchor does
  not fire again a window later. No anchor (a device younger than its window): no rate.
- **outlier** score of reading ``i`` in bucket ``k``: the robust z
  ``|x_i - median| / (1.4826 · MAD)`` over the history entries of buckets ``k - m .. k - 1``
  (``m`` buckets: the window), which never holds the reading itself. The scale is floored at
  :data:`SCALE_FLOOR` so a perfectly flat baseline scores finitely. A baseline of fewer than
  ``min_samples`` entries scores nothing, and neither does a reading within
  ``min_abs_deviation`` of the median (it cannot be an outlier, however small the MAD).

Lookups are ``searchsorted`` over one exact key per entry, ``device · span + bucket``
(integers below 2**53, so float64 holds them exactly).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from thermoflow.processors.detectors.config import F64, HISTORY, I64, WINDOW_BUCKETS
from thermoflow.processors.detectors.grouping import group_starts
from thermoflow.processors.detectors.state import DeviceStates

#: The smallest MAD scale (°C): a baseline that never moved scores |x - median| / 1e-9, not inf.
SCALE_FLOOR: Final = 1e-9
#: MAD to a normal standard deviation.
MAD_SCALE: Final = 1.4826
#: Rows of baselines gathered at once for their min and max (bounds the memory a batch takes).
_RANGE_CHUNK: Final = 16_384


@dataclass(frozen=True, eq=False)
class History:
    """The merged history (state entries, then this batch's bucket firsts) of the devices in ``devices``."""

    devices: I64  # batch devices, ascending; ``unit`` below indexes them
    unit: I64  # per entry
    ts: F64
    value: F64
    key: F64  # unit * span + (bucket - base): sorted, exact
    span: float
    base: float
    offsets: I64  # where each device's entries begin
    counts: I64

    def search_key(self, unit: I64, bucket: F64) -> F64:
        """The key of (device unit, bucket) for searchsorted."""
        result: F64 = unit * self.span + (bucket - self.base)
        return result


def merge(
    *, unit: I64, devices: I64, ts: F64, value: F64, bucket: F64, states: DeviceStates, step: F64
) -> History:
    """The history of ``devices`` with this batch's accepted readings (grouped by ``unit``, by ts).

    ``step`` is per device (of ``devices``); ``bucket`` per reading.
    """
    stored = states.hist_len[devices]
    last = np.where(stored > 0, states.hist_ts[devices, np.maximum(stored - 1, 0)], np.nan)
    previous = np.empty_like(bucket)
    previous[1:] = bucket[:-1]
    firsts = group_starts(unit)
    previous[firsts] = np.floor(last / step)[unit[firsts]]
    new = np.flatnonzero(bucket != previous)  # NaN (no history yet) differs from everything
    new_counts = np.bincount(unit[new], minlength=devices.size)

    counts = stored + new_counts
    offsets = np.cumsum(counts) - counts
    total = int(counts.sum())
    entry_unit = np.repeat(np.arange(devices.size), counts)
    entry_ts, entry_value = np.empty(total), np.empty(total)
    mask = np.arange(HISTORY) < stored[:, None]
    old_at = _ranges(offsets, stored)
    entry_ts[old_at] = states.hist_ts[devices][mask]
    entry_value[old_at] = states.hist_value[devices][mask]
    new_at = _ranges(offsets + stored, new_counts)
    entry_ts[new_at] = ts[new]
    entry_value[new_at] = value[new]

    entry_bucket = np.floor(entry_ts / step[entry_unit])
    base = float(min(entry_bucket.min(initial=np.inf), bucket.min(initial=np.inf))) - WINDOW_BUCKETS - 2
    top = float(max(entry_bucket.max(initial=-np.inf), bucket.max(initial=-np.inf)))
    span = float(2 ** int(np.ceil(np.log2(top - base + 2)))) if total or bucket.size else 1.0
    if span * (devices.size + 1) >= 2.0**53:
        raise ValueError(
            f"detector history keys would lose precision: {devices.size} devices x {span} buckets"
        )
    key = entry_unit * span + (entry_bucket - base)
    return History(devices, entry_unit, entry_ts, entry_value, key, span, base, offsets, counts)


def _ranges(starts: I64, lengths: I64) -> I64:
    """The concatenated ranges ``starts[i] .. starts[i] + lengths[i] - 1``."""
    total = int(lengths.sum())
    shift = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    result: I64 = np.arange(total) + shift
    return result


def store(history: History, states: DeviceStates) -> None:
    """Keep the last HISTORY entries of each device of ``history`` in ``states`` (in place)."""
    kept = np.minimum(history.counts, HISTORY)
    rows = np.repeat(history.devices, kept)
    columns = _ranges(np.zeros_like(kept), kept)
    source = _ranges(history.offsets + history.counts - kept, kept)
    states.hist_ts[history.devices] = np.nan
    states.hist_value[history.devices] = np.nan
    states.hist_ts[rows, columns] = history.ts[source]
    states.hist_value[rows, columns] = history.value[source]
    states.hist_len[history.devices] = kept


def rates(*, history: History, unit: I64, ts: F64, value: F64, window: F64, step: F64) -> F64:
    """°C/min of each reading over its window (NaN without an anchor); see the module docstring."""
    reach = ts - window
    found = np.searchsorted(history.key, history.search_key(unit, np.floor(reach / step)), side="right") - 1
    # The key finds the last entry of the anchor's bucket or before; within that bucket an
    # entry may be later than ``reach``: step back (once, barring a step changed by a reload).
    while True:
        inside = (found >= 0) & (history.unit[np.maximum(found, 0)] == unit)
        late = inside & (history.ts[np.maximum(found, 0)] > reach)
        if not late.any():
            break
        found = found - late
    rated = np.flatnonzero(inside)
    anchor = found[rated]
    last = history.ts.size - 1
    before, after = np.maximum(anchor - 1, 0), np.minimum(anchor + 1, last)
    # The anchor's value is the median of it and its two neighbours when both are this device's
    # and earlier than the reading: a one-reading spike as the anchor must not echo a window later.
    framed = (
        (anchor >= 1)
        & (history.unit[before] == unit[rated])
        & (anchor < last)
        & (history.unit[after] == unit[rated])
        & (history.ts[after] < ts[rated])
    )
    level = np.where(
        framed,
        _median3(history.value[before], history.value[anchor], history.value[after]),
        history.value[anchor],
    )
    change = np.full(ts.size, np.nan)
    change[rated] = 60.0 * (value[rated] - level) / (ts[rated] - history.ts[anchor])
    return change


def _median3(a: F64, b: F64, c: F64) -> F64:
    result: F64 = np.maximum(np.minimum(a, b), np.minimum(np.maximum(a, b), c))
    return result


def outlier_scores(
    *, history: History, unit: I64, bucket: F64, value: F64, buckets: I64, min_samples: I64, min_abs: F64
) -> F64:
    """Robust z of each reading against its baseline; NaN with too few samples or within ``min_abs``.

    The median lies between the baseline's min and max, so a reading within ``min_abs`` of
    both cannot be an outlier: only the others pay for a median and a MAD. Most readings of
    a sensor whose ``min_abs`` is above its noise are skipped that way.
    """
    first = np.ones(unit.size, dtype=bool)
    first[1:] = (unit[1:] != unit[:-1]) | (bucket[1:] != bucket[:-1])
    pair = np.cumsum(first) - 1
    pair_unit, pair_bucket = unit[first], bucket[first]
    low = np.searchsorted(history.key, history.search_key(pair_unit, pair_bucket - buckets[first]))
    high = np.searchsorted(history.key, history.search_key(pair_unit, pair_bucket))
    counts = high - low
    score = np.full(unit.size, np.nan)
    lowest, highest = _range(history.value, low, counts)
    near = (value - lowest[pair] <= min_abs) & (highest[pair] - value <= min_abs)
    candidate = np.flatnonzero((counts[pair] >= min_samples) & ~near)
    if candidate.size == 0:
        return score
    median = np.full(counts.size, np.nan)
    mad = np.full(counts.size, np.nan)
    needed = np.zeros(counts.size, dtype=bool)
    needed[pair[candidate]] = True
    for count in np.unique(counts[needed]).tolist():
        # Baselines of one size are rows of one sliding-window view: a gather of rows, no index matrix.
        rows = np.flatnonzero(needed & (counts == count))
        sample = np.sort(np.lib.stride_tricks.sliding_window_view(history.value, count)[low[rows]], axis=1)
        middle = (sample[:, (count - 1) // 2] + sample[:, count // 2]) / 2
        spread = np.partition(np.abs(sample - middle[:, None]), [(count - 1) // 2, count // 2], axis=1)
        median[rows] = middle
        mad[rows] = (spread[:, (count - 1) // 2] + spread[:, count // 2]) / 2
    at = pair[candidate]
    deviation = np.abs(value[candidate] - median[at])
    z = deviation / np.maximum(MAD_SCALE * mad[at], SCALE_FLOOR)
    score[candidate] = np.where(deviation > min_abs[candidate], z, np.nan)
    return score


def _range(values: F64, low: I64, counts: I64) -> tuple[F64, F64]:
    """Min and max of ``values[low : low + count]`` per row (NaN for empty rows).

    Each row's values are gathered into a row of a ``(rows, max count)`` matrix (a sliding-window
    view: at most a window of entries per row, so a few MB per chunk of rows), the cells past a
    row's count masked. A sparse table over the whole history, the obvious alternative, allocates
    and fills ``log2(window)`` copies of it per batch: most of the detectors' time.
    """
    lowest, highest = np.full(low.size, np.nan), np.full(low.size, np.nan)
    width = int(counts.max(initial=0))
    if width == 0:
        return lowest, highest
    padded = np.concatenate([values, np.full(width, np.nan)])  # a window may run past the end
    windows = np.lib.stride_tricks.sliding_window_view(padded, width)
    inside_all = np.arange(width) < counts[:, None]
    for at in range(0, low.size, _RANGE_CHUNK):
        rows = slice(at, at + _RANGE_CHUNK)
        window, inside = windows[low[rows]], inside_all[rows]
        lowest[rows] = np.where(inside, window, np.inf).min(axis=1)
        highest[rows] = np.where(inside, window, -np.inf).max(axis=1)
    empty = counts == 0
    lowest[empty] = highest[empty] = np.nan
    return lowest, highest
