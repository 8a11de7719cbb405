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
from thermoflow.processors.detectors.grouping import Mask, group_starts
from thermoflow.processors.detectors.state import DeviceStates

#: The smallest MAD scale (°C): a baseline that never moved scores |x - median| / 1e-9, not inf.
SCALE_FLOOR: Final = 1e-9
#: MAD to a normal standard deviation.
MAD_SCALE: Final = 1.4826


@dataclass(frozen=True, eq=False)
class History:
    """The merged history (state entries, then this batch's bucket firsts) of the devices in ``devices``.

    A matrix with a row per device (``unit`` indexes them) and ``width`` columns: the row's
    entries oldest first, then NaN. ``ts``, ``value`` and ``key`` are that matrix flattened, so
    entry ``p`` is in row ``p // width``; a row's padding keys sort after its entries.
    """

    devices: I64  # batch devices, ascending; ``unit`` below indexes them
    rows: I64 | slice  # their rows in the states' history columns (a slice: every row, in order)
    width: int
    ts: F64  # (rows * width,): the rows' entries, NaN past ``counts``
    value: F64
    key: F64  # unit * span + (bucket - base), padding unit * span + span - 1: sorted, exact
    span: float
    base: float
    counts: I64
    grown: I64  # the rows (units) this batch added entries to: the only ones whose stored history changes

    def search_key(self, unit: I64, bucket: F64) -> F64:
        """The key of (device unit, bucket) for searchsorted."""
        result: F64 = unit * self.span + (bucket - self.base)
        return result

    def unit_of(self, entry: I64) -> I64:
        """The row (device unit) of flat entries."""
        result: I64 = entry // self.width
        return result


def history_rows(devices: I64, states: DeviceStates, at: I64 | None) -> I64 | slice:
    """The rows of ``devices`` in ``states``' history columns: ``at[devices]`` when the history
    columns are a whole table's (``at``: each batch device's row there), else ``devices`` (a
    slice when they are every row, in order: no gather)."""
    if at is not None:
        rows: I64 = at[devices]
        return rows
    return slice(None) if devices.size == len(states) else devices


def fresh(
    *, unit: I64, devices: I64, bucket: F64, states: DeviceStates, step: F64, at: I64 | None = None
) -> Mask:
    """Which readings (grouped by ``unit``, by ts) start a bucket: the entries they add to the history.

    ``step`` is per device (of ``devices``); ``bucket`` per reading; ``at`` as in :func:`history_rows`.
    """
    rows = devices if at is None else at[devices]
    stored = states.hist_len[rows]
    last = np.where(stored > 0, states.hist_ts[rows, np.maximum(stored - 1, 0)], np.nan)
    previous = np.empty_like(bucket)
    previous[1:] = bucket[:-1]
    firsts = group_starts(unit)
    previous[firsts] = np.floor(last / step)[unit[firsts]]
    result: Mask = bucket != previous  # NaN (no history yet) differs from everything
    return result


def merge(
    *,
    unit: I64,
    devices: I64,
    ts: F64,
    value: F64,
    bucket: F64,
    new: Mask,
    states: DeviceStates,
    step: F64,
    at: I64 | None = None,
) -> History:
    """The history of ``devices`` with this batch's accepted readings (grouped by ``unit``, by ts).

    ``new`` marks the readings that start a bucket (:func:`fresh`); ``step`` is per device
    (of ``devices``); ``bucket`` per reading; ``at`` as in :func:`history_rows`. The stored rows
    are copied whole into the matrix and the new entries scattered after them: no per-entry
    gather of the stored ones.
    """
    rows = devices.size
    state_rows = history_rows(devices, states, at)
    stored = states.hist_len[state_rows]
    added = np.flatnonzero(new)
    added_unit = unit[added]
    added_counts = np.bincount(added_unit, minlength=rows)
    width = HISTORY + int(added_counts.max(initial=0))
    # Flat arrays of rows * width cells and one more past the end, so a window ending at the last
    # cell still has a valid end index (``_range``); a row's cells are NaN past its entries.
    size = rows * width
    entry_ts, entry_value, key = np.empty(size + 1), np.empty(size + 1), np.empty(size + 1)
    matrix_ts = entry_ts[:size].reshape(rows, width)
    matrix_value = entry_value[:size].reshape(rows, width)
    matrix_ts[:, :HISTORY] = states.hist_ts[state_rows]
    matrix_value[:, :HISTORY] = states.hist_value[state_rows]
    matrix_ts[:, HISTORY:] = matrix_value[:, HISTORY:] = entry_ts[size] = entry_value[size] = np.nan
    rank = np.arange(added.size) - (np.cumsum(added_counts) - added_counts)[added_unit]
    column = stored[added_unit] + rank
    matrix_ts[added_unit, column] = ts[added]
    matrix_value[added_unit, column] = value[added]
    counts = stored + added_counts

    matrix_key = key[:size].reshape(rows, width)
    np.divide(matrix_ts, step[:, None], out=matrix_key)
    np.floor(matrix_key, out=matrix_key)  # each entry's bucket, NaN past the entries
    filled = np.flatnonzero(counts)
    # Entries are in ts order along a row: its first is its smallest bucket, its last the largest.
    earliest = matrix_key[filled, 0]
    latest = matrix_key[filled, counts[filled] - 1]
    base = float(min(earliest.min(initial=np.inf), bucket.min(initial=np.inf))) - WINDOW_BUCKETS - 2
    top = float(max(latest.max(initial=-np.inf), bucket.max(initial=-np.inf)))
    span = float(2 ** int(np.ceil(np.log2(top - base + 2)))) if filled.size or bucket.size else 1.0
    if span * (rows + 1) >= 2.0**53:
        raise ValueError(f"detector history keys would lose precision: {rows} devices x {span} buckets")
    offset = np.arange(rows, dtype=np.float64)[:, None] * span - base
    matrix_key += offset
    np.copyto(matrix_key, offset + (base + span - 1), where=np.isnan(matrix_ts))
    key[size] = rows * span
    grown = np.flatnonzero(added_counts)
    return History(devices, state_rows, width, entry_ts, entry_value, key, span, base, counts, grown)


def store(history: History, states: DeviceStates) -> None:
    """Keep the last HISTORY entries of each device of ``history`` in ``states`` (in place).

    A row's last HISTORY cells (or its first, NaN past its entries, when it has fewer) are one
    window of a sliding-window view of the flat matrix: a gather of whole rows. Only the rows
    the batch added entries to are written: the others hold what is stored already (a device
    reporting more often than its buckets adds an entry to a few batches in many).
    """
    units = history.grown
    if not units.size:
        return
    every = units.size == history.devices.size
    counts = history.counts if every else history.counts[units]
    kept = np.minimum(counts, HISTORY)
    start = units * history.width + (counts - kept)
    rows = history.rows if every else _rows_of(history, units)
    for source, target in ((history.ts, states.hist_ts), (history.value, states.hist_value)):
        windows = np.lib.stride_tricks.sliding_window_view(source, HISTORY)
        target[rows] = windows[start]
    states.hist_len[rows] = kept


def _rows_of(history: History, units: I64) -> I64:
    """The state rows of some of ``history``'s rows (units)."""
    if isinstance(history.rows, slice):  # every state row, in order: unit u is row u
        return units
    rows: I64 = history.rows[units]
    return rows


def rates(*, history: History, unit: I64, ts: F64, value: F64, window: F64, step: F64) -> F64:
    """°C/min of each reading over its window (NaN without an anchor); see the module docstring."""
    reach = ts - window
    found = np.searchsorted(history.key, history.search_key(unit, np.floor(reach / step)), side="right") - 1
    # The key finds the last entry of the anchor's bucket or before; within that bucket an
    # entry may be later than ``reach``: step back (once, barring a step changed by a reload).
    while True:
        inside = (found >= 0) & (history.unit_of(np.maximum(found, 0)) == unit)
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
        & (history.unit_of(before) == unit[rated])
        & (anchor < last)
        & (history.unit_of(after) == unit[rated])
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
    a sensor whose ``min_abs`` is above its noise are skipped that way. A baseline is a part of
    its device's row, so a reading within ``min_abs`` of the whole row's min and max is skipped
    first, before its baseline is even looked up.
    """
    rows = history.devices.size
    matrix = history.value[: rows * history.width].reshape(rows, history.width)
    row_low, row_high = np.fmin.reduce(matrix, axis=1), np.fmax.reduce(matrix, axis=1)  # NaN: no entry
    rest = np.flatnonzero(~((value - row_low[unit] <= min_abs) & (row_high[unit] - value <= min_abs)))
    score = np.full(unit.size, np.nan)
    if rest.size:
        score[rest] = _scores(
            history=history,
            unit=unit[rest],
            bucket=bucket[rest],
            value=value[rest],
            buckets=buckets[rest],
            min_samples=min_samples[rest],
            min_abs=min_abs[rest],
        )
    return score


def _scores(
    *, history: History, unit: I64, bucket: F64, value: F64, buckets: I64, min_samples: I64, min_abs: F64
) -> F64:
    """:func:`outlier_scores` of readings, each with its baseline's range looked up."""
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

    One ``reduceat`` each over the bounds ``low, end`` of every row in turn: a single pass over
    the values in C when the rows are in order (the gaps between rows are reduced and dropped),
    no ``(rows, window)`` matrix of gathered values.
    """
    lowest, highest = np.full(low.size, np.nan), np.full(low.size, np.nan)
    filled = np.flatnonzero(counts > 0)
    if filled.size == 0:
        return lowest, highest
    bounds = np.empty(2 * filled.size, dtype=np.int64)
    bounds[0::2] = low[filled]
    bounds[1::2] = low[filled] + counts[filled]
    if bounds[1::2].max() >= values.size:  # reduceat's indices must be valid: one NaN past the end
        values = np.append(values, np.nan)
    lowest[filled] = np.minimum.reduceat(values, bounds)[0::2]
    highest[filled] = np.maximum.reduceat(values, bounds)[0::2]
    return lowest, highest
