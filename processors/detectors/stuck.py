"""Stuck runs: a device's readings cut greedily into runs whose spread (max - min) stays within tolerance.

A run starts at a device's first reading; each reading joins the current run if the run's
spread with it stays ``<= tolerance``, and otherwise starts a new run of its own. A reading
is *stuck* once ``ts - run start ts >= stuck_for``. The state carries the current run
(start ts, min, max), so a run continues across batches.

The cut is sequential by nature (where a run ends depends on where it started), so it is
computed without a loop per reading in three vectorized steps:

1. *hard breaks*: a reading more than ``tolerance`` away from the previous one breaks any
   run that holds the previous one, so it starts a run whatever came before. Between hard
   breaks lie independent segments; most are one reading long for a live, noisy sensor.
2. for every element of a longer segment, ``next_break``: the first later element that
   would break a run starting there (binary lifting over max/min sparse tables, log2 of
   the longest segment in steps);
3. the runs actually taken are the chains ``start, next_break(start), ...`` from each
   segment's start, marked by pointer doubling (again log2 steps).

Cost: O(n log L) array operations where L is the longest segment, which a stuck sensor
makes as long as its readings in the batch.
"""

from __future__ import annotations

import numpy as np

from thermoflow.processors.detectors.config import F64, I64
from thermoflow.processors.detectors.grouping import Mask


def run_starts(*, low: F64, high: F64, tolerance: F64, first: Mask) -> I64:
    """For each element, the index of the element that starts its run.

    Elements are intervals ``[low, high]`` (a reading is ``[x, x]``; a run carried in the
    state is its ``[min, max]``), grouped by device with ``first`` marking each group's start.

    >>> x = np.array([0.0, 0.3, 0.6, 0.7, 0.1, 5.0])
    >>> run_starts(low=x, high=x, tolerance=np.full(6, 0.5), first=np.eye(1, 6, dtype=bool)[0]).tolist()
    [0, 0, 2, 2, 4, 5]
    """
    count = low.size
    index = np.arange(count)
    if count == 0:
        return index
    hard = first.copy()
    hard[1:] |= np.maximum(high[1:], high[:-1]) - np.minimum(low[1:], low[:-1]) > tolerance[1:]
    starts = np.flatnonzero(hard)
    lengths = np.diff(np.append(starts, count))
    if lengths.max() > 1:
        inside = np.flatnonzero(np.repeat(lengths > 1, lengths))  # elements of multi-element segments
        local_first = hard[inside]
        local_starts = np.flatnonzero(local_first)
        local_ends = np.append(local_starts[1:], inside.size)
        segment_end = np.repeat(local_ends, local_ends - local_starts)
        following = _next_break(low[inside], high[inside], tolerance[inside], segment_end)
        hard[inside] = _chains(following, local_first, int(lengths.max()))
    return np.maximum.accumulate(np.where(hard, index, 0))


def _next_break(low: F64, high: F64, tolerance: F64, segment_end: I64) -> I64:
    """For each element s, the first later element of its segment a run from s cannot hold (or the end)."""
    count = low.size
    levels = int(np.max(segment_end - np.arange(count))).bit_length()
    pad = 1 << levels
    # Level k: max/min of the block [p, p + 2^k). Blocks running past a segment are never read.
    highs = [np.concatenate((high, np.full(pad, np.inf)))]
    lows = [np.concatenate((low, np.full(pad, -np.inf)))]
    for level in range(1, levels):
        half = 1 << (level - 1)
        up, down = highs[-1].copy(), lows[-1].copy()
        up[:-half] = np.maximum(up[:-half], highs[-1][half:])
        down[:-half] = np.minimum(down[:-half], lows[-1][half:])
        highs.append(up)
        lows.append(down)
    last = np.arange(count)  # the last element known to fit a run from s
    run_high, run_low = high.copy(), low.copy()
    for level in reversed(range(levels)):
        candidate = last + (1 << level)
        new_high = np.maximum(run_high, highs[level][last + 1])
        new_low = np.minimum(run_low, lows[level][last + 1])
        fits = (candidate < segment_end) & (new_high - new_low <= tolerance)
        last = np.where(fits, candidate, last)
        run_high = np.where(fits, new_high, run_high)
        run_low = np.where(fits, new_low, run_low)
    return last + 1


def _chains(following: I64, first: Mask, longest: int) -> Mask:
    """Mark every element reachable from a segment start by ``following``: pointer doubling."""
    count = following.size
    jump = np.append(following, count)  # ``count`` is a sink
    marked = np.append(first, False)
    reach = 1  # marked now holds every element within reach - 1 jumps of a start
    while reach < longest:
        found = np.flatnonzero(marked)
        marked[jump[found]] = True
        jump = jump[jump]
        reach *= 2
    return marked[:count]
