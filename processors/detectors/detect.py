"""The batch entry point: a batch of readings and its devices' state in, detections and the new state out.

Per batch and per (device, kind) at most one detection: the worst reading's, by

1. the higher severity;
2. the larger measure: seconds stuck, ``|°C/min|``, outlier score;
3. the earlier ``ts`` (so a replayed batch names the same reading, hence the same alert id).

**Batch-split invariance.** Every accepted reading gets a *finding* per detector (its
measure and severity, :class:`Findings`) that depends only on the stream of its device up
to it, never on where batches were cut; so is the final state. A batch's detections are the
worst finding per (device, kind) among its readings. Hence, however a stream is cut: the
same (device, kind) pairs fire, a stream's worst finding per (device, kind) is always
emitted, and every detection emitted is one of the stream's findings.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np

from thermoflow.events import SEVERITIES, Severity
from thermoflow.processors.detectors import history
from thermoflow.processors.detectors.config import (
    CRITICAL,
    F64,
    HISTORY,
    I64,
    KINDS,
    OUTLIER,
    RATE,
    STUCK,
    WARNING,
    CompiledDetectors,
)
from thermoflow.processors.detectors.grouping import Mask, group, group_starts
from thermoflow.processors.detectors.state import DeviceStates
from thermoflow.processors.detectors.stuck import run_starts

Column = TypeVar("Column", F64, I64)


@dataclass(frozen=True, eq=False)
class Readings:
    """A batch as columns. ``device`` indexes the batch's devices (their states, their config rows)."""

    device: I64
    ts: F64  # the device's time: what stuck, rate and outlier measure
    received_at: F64  # the bridge's receive time: what offline measures
    value: F64

    def __len__(self) -> int:
        return int(self.value.shape[0])


@dataclass(frozen=True, eq=False)
class Findings:
    """Per accepted reading, grouped by device then ``ts``: each detector's measure and severity (0: none).

    A measure is NaN where its detector is off or has too little history to say.
    """

    reading: I64  # index in the batch
    device: I64
    ts: F64
    stuck_seconds: F64
    stuck: I64
    rate: F64  # °C/min, signed
    rate_severity: I64
    score: F64
    outlier_severity: I64

    def __len__(self) -> int:
        return int(self.reading.shape[0])


@dataclass(frozen=True, eq=False)
class Detections:
    """At most one row per (device, kind): columns, like processors.thresholds.Breaches.

    ``value``/``threshold`` as the alert contract says for each kind: seconds (stuck,
    offline), °C/min (rate), score (outlier); ``reading_ts`` is the evidence's time: the
    reading's ``ts``, or for offline the ``received_at`` of the last reading.
    """

    device: I64
    kind: I64  # index into KINDS
    severity: I64  # 1 warning, 2 critical
    value: F64
    threshold: F64
    reading_ts: F64
    reading: I64  # index in the batch; -1 for offline

    def __len__(self) -> int:
        return int(self.device.shape[0])

    def kind_name(self, row: int) -> str:
        return KINDS[int(self.kind[row])]

    def severity_name(self, row: int) -> Severity:
        return SEVERITIES[int(self.severity[row]) - 1]


#: The state columns the history detectors rewrite; :func:`scan` may write them in place.
_HISTORY_COLUMNS = frozenset({"hist_ts", "hist_value", "hist_len"})


def _copy(states: DeviceStates, *, reuse_history: bool) -> DeviceStates:
    shared = _HISTORY_COLUMNS if reuse_history else frozenset()
    return replace(
        states,
        **{name: getattr(states, name).copy() for name in states.__dataclass_fields__ if name not in shared},
    )


def scan(
    readings: Readings,
    *,
    states: DeviceStates,
    config: CompiledDetectors,
    rows: I64,
    reuse_history: bool = False,
    history_at: I64 | None = None,
) -> tuple[Findings, DeviceStates]:
    """Every accepted reading's findings, and the devices' new state. ``states`` is not modified,
    unless ``reuse_history``: then its history columns become the new state's (written in place,
    not copied: ``states`` is a copy the caller drops afterwards).

    With ``history_at``, ``states``' history columns are a whole table's (see
    :meth:`DeviceStates.take` with ``history=False``): device ``d``'s history is their row
    ``history_at[d]``, read and written there in place, and the new state shares them. A batch
    then gathers and scatters only the history rows its readings touch, once each.

    ``rows[d]`` is device ``d``'s config row (``NO_DETECTORS`` for none). Readings may come
    in any order; late ones (see :mod:`thermoflow.processors.detectors.grouping`) only refresh ``last_seen``.
    """
    new = _copy(states, reuse_history=reuse_history or history_at is not None)
    grouped = group(device=readings.device, ts=readings.ts, last_ts=states.last_ts)
    if grouped.order.size:
        seen = np.maximum.reduceat(readings.received_at[grouped.order], grouped.starts)
        present = grouped.device[grouped.starts]
        new.last_seen[present] = np.fmax(states.last_seen[present], seen)
    reading = grouped.order[grouped.accepted]
    device = grouped.device[grouped.accepted]
    ts, value = readings.ts[reading], readings.value[reading]
    last = np.flatnonzero(np.append(device[1:] != device[:-1], True)) if device.size else device
    new.last_ts[device[last]] = ts[last]
    row = rows[device]
    count = device.size
    found = Findings(
        reading=reading,
        device=device,
        ts=ts,
        stuck_seconds=np.full(count, np.nan),
        stuck=np.zeros(count, dtype=np.int64),
        rate=np.full(count, np.nan),
        rate_severity=np.zeros(count, dtype=np.int64),
        score=np.full(count, np.nan),
        outlier_severity=np.zeros(count, dtype=np.int64),
    )
    _stuck(found, row=row, value=value, states=states, new=new, config=config)
    _history(found, row=row, value=value, states=states, new=new, config=config, history_at=history_at)
    return found, new


def _every_or(positions: I64, size: int) -> I64 | slice | None:
    """``positions`` (ascending, distinct) as an index: a slice of all ``size`` elements when
    they are every one, so indexing with it is a view, not a gather; None when there are none.
    The usual batch has every device under every detector, and a gather costs about ten
    instructions a reading.

    >>> _every_or(np.arange(3), 3), _every_or(np.array([0, 2]), 3).tolist(), _every_or(np.arange(0), 0)
    (slice(None, None, None), [0, 2], None)
    """
    if positions.size == 0:
        return None
    return slice(None) if positions.size == size else positions


def _within(at: I64 | slice, positions: I64 | slice) -> I64 | slice:
    """``at[positions]``, either of them the slice of everything (:func:`_every_or`).

    >>> _within(slice(None), np.array([1])).tolist(), _within(np.array([4, 5]), np.array([1])).tolist()
    ([1], [5])
    """
    if isinstance(at, slice):
        return positions
    return at if isinstance(positions, slice) else at[positions]


def _stuck(
    found: Findings,
    *,
    row: I64,
    value: F64,
    states: DeviceStates,
    new: DeviceStates,
    config: CompiledDetectors,
) -> None:
    tolerance = config.stuck_tolerance[row]
    off = np.isnan(tolerance)
    dropped = found.device[off]  # a rule that turned stuck off drops the run
    new.run_start[dropped] = new.run_min[dropped] = new.run_max[dropped] = np.nan
    chosen = _every_or(np.flatnonzero(~off), off.size)
    if chosen is None:
        return
    device, ts = found.device[chosen], found.ts[chosen]
    first = np.flatnonzero(group_starts(device))
    owner = device[first]
    carried = np.isfinite(states.run_start[owner])
    at = first[carried]  # the carried run goes before its device's first reading, as an element [min, max]
    owners = owner[carried]
    # np.insert of each column, with the positions worked out once: element at[i] + i is carried
    # run i, the others are the readings in order.
    is_reading = np.ones(device.size + at.size, dtype=bool)
    is_reading[at + np.arange(at.size)] = False
    reading_at = np.flatnonzero(is_reading)
    carried_at = np.flatnonzero(~is_reading)

    def spread(readings: Column, carried: Column) -> Column:
        column: Column = np.empty(is_reading.size, dtype=readings.dtype)
        column[reading_at] = readings
        column[carried_at] = carried
        return column

    chosen_tolerance, chosen_value, chosen_row = tolerance[chosen], value[chosen], row[chosen]
    element_device = spread(device, owners)
    low = spread(chosen_value, states.run_min[owners])
    high = spread(chosen_value, states.run_max[owners])
    element_ts = spread(ts, states.run_start[owners])
    starts = run_starts(
        low=low,
        high=high,
        tolerance=spread(chosen_tolerance, chosen_tolerance[at]),
        first=group_starts(element_device),
    )
    seconds = ts - element_ts[starts[reading_at]]
    found.stuck_seconds[chosen] = seconds
    found.stuck[chosen] = np.where(
        seconds >= config.stuck_for[chosen_row], config.stuck_severity[chosen_row], 0
    )

    run_first = np.flatnonzero(starts == np.arange(starts.size))
    run_of = np.cumsum(starts == np.arange(starts.size)) - 1
    ends = np.flatnonzero(np.append(element_device[1:] != element_device[:-1], True))
    new.run_start[owner] = element_ts[starts[ends]]
    # fmin/fmax keep the first of equal values, as the scalar fold does: 0.0 then -0.0 stays 0.0.
    new.run_min[owner] = np.fmin.reduceat(low, run_first)[run_of[ends]]
    new.run_max[owner] = np.fmax.reduceat(high, run_first)[run_of[ends]]


def _severities(measure: F64, limits: F64) -> I64:
    """CRITICAL where ``measure`` exceeds column 1, else WARNING where it exceeds column 0 (NaN: neither)."""
    result: I64 = np.where(measure > limits[:, 1], CRITICAL, np.where(measure > limits[:, 0], WARNING, 0))
    return result


def _history(
    found: Findings,
    *,
    row: I64,
    value: F64,
    states: DeviceStates,
    new: DeviceStates,
    config: CompiledDetectors,
    history_at: I64 | None,
) -> None:
    step = config.step[row]
    chosen = np.flatnonzero(~np.isnan(step))
    if chosen.size == 0:
        return
    if chosen.size < len(found):  # a gather per column is a cost worth skipping when every device is on
        device, ts, value, row, step = (
            found.device[chosen],
            found.ts[chosen],
            value[chosen],
            row[chosen],
            step[chosen],
        )
    else:
        device, ts = found.device, found.ts
    first = group_starts(device)
    unit = np.cumsum(first) - 1
    bucket = np.floor(ts / step)
    fresh = history.fresh(
        unit=unit, devices=device[first], bucket=bucket, states=states, step=step[first], at=history_at
    )
    # The merged history is a matrix as wide as the most entries a device adds: devices that add
    # many (a backlog) go in matrices of their own, by powers of two, so one never widens every row.
    added = np.bincount(unit[fresh], minlength=int(unit[-1]) + 1)
    if added.max() <= HISTORY:
        parts = [np.arange(unit.size)]
    else:
        size = np.where(added <= HISTORY, 0, np.frexp(added.astype(np.float64))[1])[unit]
        parts = [np.flatnonzero(size == part) for part in np.unique(size).tolist()]
    for at in parts:
        whole = at.size == unit.size
        _windows(
            found,
            at=slice(None) if whole and chosen.size == len(found) else chosen[at],
            device=device if whole else device[at],
            ts=ts if whole else ts[at],
            value=value if whole else value[at],
            row=row if whole else row[at],
            step=step if whole else step[at],
            bucket=bucket if whole else bucket[at],
            new=fresh if whole else fresh[at],
            states=states,
            new_states=new,
            config=config,
            history_at=history_at,
        )


def _windows(
    found: Findings,
    *,
    at: I64 | slice,
    device: I64,
    ts: F64,
    value: F64,
    row: I64,
    step: F64,
    bucket: F64,
    new: Mask,
    states: DeviceStates,
    new_states: DeviceStates,
    config: CompiledDetectors,
    history_at: I64 | None,
) -> None:
    """Rate and outlier of readings ``at`` (grouped by device, by ts), over their devices' merged history."""
    first = group_starts(device)
    unit = np.cumsum(first) - 1
    merged = history.merge(
        unit=unit,
        devices=device[first],
        ts=ts,
        value=value,
        bucket=bucket,
        new=new,
        states=states,
        step=step[first],
        at=history_at,
    )
    window = config.rate_window[row]
    rated = _every_or(np.flatnonzero(~np.isnan(window)), window.size)
    if rated is not None:
        rate = history.rates(
            history=merged,
            unit=unit[rated],
            ts=ts[rated],
            value=value[rated],
            window=window[rated],
            step=step[rated],
        )
        target = _within(at, rated)
        found.rate[target] = rate
        found.rate_severity[target] = _severities(np.abs(rate), config.rate_limits[row[rated]])
    buckets = config.outlier_buckets[row]
    scored = _every_or(np.flatnonzero(buckets > 0), buckets.size)
    if scored is not None:
        score = history.outlier_scores(
            history=merged,
            unit=unit[scored],
            bucket=bucket[scored],
            value=value[scored],
            buckets=buckets[scored],
            min_samples=config.outlier_min_samples[row[scored]],
            min_abs=config.outlier_min_abs[row[scored]],
        )
        target = _within(at, scored)
        found.score[target] = score
        found.outlier_severity[target] = _severities(score, config.outlier_thresholds[row[scored]])
    history.store(merged, new_states)


def worst(found: Findings, *, config: CompiledDetectors, rows: I64) -> Detections:
    """The worst finding per (device, kind) (the order in the module docstring)."""
    row = rows[found.device]
    parts: list[tuple[I64, I64, F64, F64, F64]] = []  # finding, kind, measure, value, threshold
    for code, severity, measure, shown in (
        (STUCK, found.stuck, found.stuck_seconds, found.stuck_seconds),
        (RATE, found.rate_severity, np.abs(found.rate), found.rate),
        (OUTLIER, found.outlier_severity, found.score, found.score),
    ):
        hit = np.flatnonzero(severity > 0)
        column = severity[hit] - 1
        if code == STUCK:
            threshold = config.stuck_for[row[hit]]
        else:
            limits = config.rate_limits if code == RATE else config.outlier_thresholds
            threshold = limits[row[hit], column]
        parts.append((hit, np.full(hit.size, code), measure[hit], shown[hit], threshold))
    hit = np.concatenate([p[0] for p in parts])
    kind = np.concatenate([p[1] for p in parts])
    measure = np.concatenate([p[2] for p in parts])
    severity = np.concatenate(
        [found.stuck[parts[0][0]], found.rate_severity[parts[1][0]], found.outlier_severity[parts[2][0]]]
    )
    device, ts = found.device[hit], found.ts[hit]
    order = np.lexsort((ts, -measure, -severity, kind, device))
    best = order[group_starts(device[order] * len(KINDS) + kind[order])]
    return Detections(
        device=device[best],
        kind=kind[best],
        severity=severity[best],
        value=np.concatenate([p[3] for p in parts])[best],
        threshold=np.concatenate([p[4] for p in parts])[best],
        reading_ts=ts[best],
        reading=found.reading[hit[best]],
    )


def detect(
    readings: Readings,
    *,
    states: DeviceStates,
    config: CompiledDetectors,
    rows: I64,
    reuse_history: bool = False,
    history_at: I64 | None = None,
) -> tuple[Detections, DeviceStates]:
    """Stuck, rate and outlier detections of a batch (the worst per device and kind), and the new state
    (``reuse_history``, ``history_at``: as in :func:`scan`).

    >>> from thermoflow.processors.detectors.config import DetectorConfig, StuckConfig, compile_detectors
    >>> config = compile_detectors([DetectorConfig(stuck=StuckConfig(tolerance=0.1, stuck_for=60.0))])
    >>> batch = Readings(device=np.zeros(4, dtype=np.int64), ts=np.array([0.0, 30.0, 60.0, 90.0]),
    ...                  received_at=np.array([0.0, 30.0, 60.0, 90.0]), value=np.full(4, -18.0))
    >>> found, state = detect(batch, states=DeviceStates.empty(1), config=config, rows=np.zeros(1, np.int64))
    >>> found.kind_name(0), found.severity_name(0), found.value.tolist(), found.reading_ts.tolist()
    ('stuck', 'critical', [90.0], [90.0])
    >>> state.run_start.tolist(), state.last_seen.tolist()
    ([0.0], [90.0])
    """
    found, new = scan(
        readings, states=states, config=config, rows=rows, reuse_history=reuse_history, history_at=history_at
    )
    return worst(found, config=config, rows=rows), new
