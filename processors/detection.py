"""The device detectors as a stateful function: batches and a timer in, alerts, clears and state out.

Per batch (:meth:`DeviceDetectors.check`), the batch's device-metric pairs get their state
from the :class:`~thermoflow.processors.state.StateStore`, the pure detectors
(:mod:`thermoflow.processors.detectors`) run over the whole batch at once, and the result is

- one alert per (device, kind) detected: ``stuck``, ``rate``, ``outlier``;
- a :class:`~thermoflow.events.Clear` for each device reported offline that is heard from
  again, and for each partition reported silent that receives again;
- the pairs' new state, in the store's table, marked for :meth:`StateStore.persist` to write
  once the alerts are acked.

Per tick (:meth:`DeviceDetectors.on_timer`), what only time reveals: devices silent for their
``offline_after`` while the rest of their partition moved on (event time: the partition's
latest ``received_at`` processed, so a worker that is behind or restarting never sees
offline devices), and ``ingest_silent``: partitions, or all of this worker's, that are
caught up and have received nothing for ``ingest_silent_after`` wall-clock seconds.

Alert ids come from the readings only (the offline one from the device's last reading
before the silence), so a replay, or a tick repeated after a restart, sends the same ids.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from thermoflow.events import (
    CLEAR_HEADERS,
    PIPELINE_DEVICE,
    SEVERITIES,
    AlertEvent,
    Clear,
    Condition,
    new_alert,
)
from thermoflow.logs import get_logger
from thermoflow.processors.columns import ReadingBatch
from thermoflow.processors.detectors import (
    KINDS,
    CompiledDetectors,
    Detections,
    Readings,
    compile_detectors,
    detect,
    ingest_silent,
    offline,
)
from thermoflow.processors.runtime import Emit
from thermoflow.processors.state import UNKNOWN_RULE, StateStore, split_key
from thermoflow.processors.thresholds import F64, I64, CompiledRules

log = get_logger(__name__)

#: The metric of an ``ingest_silent`` alert: readings arriving at all.
INGEST_METRIC: Final = "readings"


def silent_rule(topic: str, partition: int | None) -> str:
    """The rule id of an ``ingest_silent`` alert: one incident per partition, one for them all.

    >>> silent_rule("telemetry.readings", 3), silent_rule("telemetry.readings", None)
    ('ingest-silent/telemetry.readings/3', 'ingest-silent/telemetry.readings')
    """
    return f"ingest-silent/{topic}" if partition is None else f"ingest-silent/{topic}/{partition}"


def receive_bounds(partition: I64, received_at: F64) -> dict[int, tuple[float, float]]:
    """The earliest and latest ``received_at`` of each partition of a batch.

    A batch is a few runs of one partition each (a fetch's records, partition by partition), so
    one reduction per run and a Python step per run, not a sort of the batch; many short runs
    (readings interleaved) are sorted by partition first.

    >>> receive_bounds(np.array([1, 1, 0, 1]), np.array([5.0, 3.0, 7.0, 4.0]))
    {1: (3.0, 5.0), 0: (7.0, 7.0)}
    """
    if not partition.size:
        return {}
    starts = np.flatnonzero(np.r_[True, partition[1:] != partition[:-1]])
    if starts.size > 64:
        order = np.argsort(partition, kind="stable")
        partition, received_at = partition[order], received_at[order]
        starts = np.flatnonzero(np.r_[True, partition[1:] != partition[:-1]])
    bounds: dict[int, tuple[float, float]] = {}
    runs = zip(
        partition[starts].tolist(),
        np.minimum.reduceat(received_at, starts).tolist(),
        np.maximum.reduceat(received_at, starts).tolist(),
        strict=True,
    )
    for key, low, high in runs:
        seen = bounds.get(key)
        bounds[key] = (low, high) if seen is None else (min(seen[0], low), max(seen[1], high))
    return bounds


def any_detector(config: CompiledDetectors) -> npt.NDArray[np.bool_]:
    """Per config row: is any detector on (so the pair needs state)?"""
    on: npt.NDArray[np.bool_] = (
        np.isfinite(config.offline_after) | ~np.isnan(config.stuck_tolerance) | ~np.isnan(config.step)
    )
    return on


class DeviceDetectors:
    """Stuck, rate, outlier and offline per device-metric pair, and ingest_silent per partition."""

    def __init__(
        self,
        store: StateStore,
        *,
        source_topic: str,
        ingest_silent_after: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.source_topic = source_topic
        self.ingest_silent_after = ingest_silent_after
        self.clock = clock
        self._rules: CompiledRules | None = None
        self._config = compile_detectors([])
        self._on = any_detector(self._config)
        self._event_time: dict[int, float] = {}  # partition -> latest received_at processed
        self._silent: dict[int | None, float] = {}  # partition (None: all) -> since, reported silent
        self._fleet_heard = False  # whether a fleet-wide silence was cleared since this process began

    def config(self, rules: CompiledRules) -> CompiledDetectors:
        """The rules' detector settings compiled (once per rules object): row r is rule r's."""
        if rules is not self._rules:
            self._config = compile_detectors([rule.detectors for rule in rules.ruleset.rules])
            self._on = any_detector(self._config)
            self._rules = rules
            self.store.table.rule[:] = UNKNOWN_RULE  # the rows' rule rows were the old rules'
        return self._config

    def revoked(self, partitions: Sequence[int]) -> None:
        self.store.revoked(partitions)
        for partition in partitions:
            self._event_time.pop(partition, None)
            self._silent.pop(partition, None)

    # -- per batch ---------------------------------------------------------------------------

    def check(self, batch: ReadingBatch, rules: CompiledRules) -> list[Emit]:
        config = self.config(rules)
        detected_at = self.clock()
        emits = self._ingest_back(batch, detected_at)
        cols = batch.columns
        if not len(cols.device_ids):
            return emits
        rule_rows = rules.rule_indices(cols.device_ids, cols.metrics)  # NO_RULE (-1): the all-off row
        # The pairs some detector watches, on partitions whose state is here (one revoked while
        # its state was being read is left to its new owner): renumbered 0..n-1, with their readings.
        owned = self.store.owned(batch.partition)
        on = self._on[rule_rows] & (np.bincount(cols.pair[owned], minlength=len(rule_rows)) > 0)
        if not on.any():
            return emits
        pairs = np.flatnonzero(on)
        mine = np.flatnonzero(on[cols.pair] & owned)
        # Every reading and pair watched here (the usual batch): the batch's columns and pair
        # numbers as they are, no gathers.
        all_pairs = pairs.size == len(on)
        every = all_pairs and mine.size == cols.pair.size
        # Pairs are numbered in first-seen order: a pair's first reading raises the running maximum.
        seen = cols.pair if every else cols.pair[mine]
        first = np.flatnonzero(np.r_[True, seen[1:] > np.maximum.accumulate(seen)[:-1]])
        table = self.store.table
        if all_pairs:  # every pair watched: the usual case, no gather
            device_ids, metrics = cols.device_ids, cols.metrics
        else:
            chosen = pairs.tolist()
            device_ids = list(map(cols.device_ids.__getitem__, chosen))
            metrics = list(map(cols.metrics.__getitem__, chosen))
        rows = table.pair_rows(device_ids, metrics, batch.partition[first if every else mine[first]])
        # The scalars are copied out; the history is read and written in the table's rows in place.
        states = table.states.take(rows, history=False)
        readings = (
            Readings(device=seen, ts=cols.ts, received_at=batch.received_at, value=cols.values)
            if every
            else Readings(
                device=(np.cumsum(on) - 1)[seen],  # the watched pairs renumbered 0..n-1
                ts=cols.ts[mine],
                received_at=batch.received_at[mine],
                value=cols.values[mine],
            )
        )
        found, new = detect(readings, states=states, config=config, rows=rule_rows[pairs], history_at=rows)
        table.states.put(rows, new, history=False)
        table.dirty[rows] = True
        table.rule[rows] = rule_rows[pairs]

        fired = pairs[found.device]
        evidence = found.reading if every else mine[found.reading]
        emits += self._alerts(
            found,
            device_ids=[cols.device_ids[p] for p in fired.tolist()],
            metrics=[cols.metrics[p] for p in fired.tolist()],
            rule_ids=[rules.rule_ids[r] for r in rule_rows[fired].tolist()],
            detected_at=detected_at,
            partitions=batch.partition[evidence].tolist(),
            offsets=batch.offset[evidence].tolist(),
        )

        back = (states.offline_reported == states.last_seen) & (new.last_seen > states.last_seen)
        if back.any():
            first_heard = np.full(len(states), np.inf)
            np.minimum.at(first_heard, readings.device, readings.received_at)
            for device in np.flatnonzero(back).tolist():
                pair = int(pairs[device])
                emits.append(
                    self._clear(
                        device_id=cols.device_ids[pair],
                        rule_id=rules.rule_ids[int(rule_rows[pair])],
                        condition="offline",
                        since=float(states.last_seen[device]),
                        cleared_at=float(first_heard[device]),
                        detected_at=detected_at,
                    )
                )
        return emits

    def _ingest_back(self, batch: ReadingBatch, detected_at: float) -> list[Emit]:
        """Move the partitions' event time; clear the silences of partitions that receive again."""
        emits: list[Emit] = []
        for partition, (cleared_at, latest) in sorted(
            receive_bounds(batch.partition, batch.received_at).items()
        ):
            # A partition new here (a restart, a rebalance) may have a silence another process
            # reported: its readings end that too (a clear of nothing open is a no-op).
            new_here = partition not in self._event_time
            self._event_time[partition] = max(self._event_time.get(partition, latest), latest)
            for silent in (partition, None):
                since = self._silent.pop(silent, None)
                if since is None and new_here and (silent is not None or not self._fleet_heard):
                    since = cleared_at
                    self._fleet_heard |= silent is None
                if since is not None:
                    emits.append(
                        self._clear(
                            device_id=PIPELINE_DEVICE,
                            rule_id=silent_rule(self.source_topic, silent),
                            condition="ingest_silent",
                            since=since,
                            cleared_at=cleared_at,
                            detected_at=detected_at,
                        )
                    )
        return emits

    # -- per tick ----------------------------------------------------------------------------

    def on_timer(self, rules: CompiledRules, *, now: float, caught_up: Callable[[int], bool]) -> list[Emit]:
        config = self.config(rules)
        detected_at = self.clock()
        emits: list[Emit] = []
        for partition, event_time in sorted(self._event_time.items()):  # the partitions processed here
            emits += self._offline(partition, event_time, rules, config, detected_at)
        emits += self._ingest_silent(now=now, caught_up=caught_up, detected_at=detected_at)
        return emits

    def _offline(
        self,
        partition: int,
        event_time: float,
        rules: CompiledRules,
        config: CompiledDetectors,
        detected_at: float,
    ) -> list[Emit]:
        table = self.store.table
        rows = table.of_partition(partition)
        if not rows.size:
            return []
        states = table.states
        found, updated = offline(
            now=event_time,
            last_seen=states.last_seen[rows],
            reported=states.offline_reported[rows],
            config=config,
            rows=self._rule_rows(rules, rows),
        )
        if not len(found):
            return []
        fired = rows[found.device]
        states.offline_reported[fired] = updated[found.device]
        table.dirty[fired] = True
        names = [split_key(str(table.keys[row])) for row in fired.tolist()]
        none: list[int | None] = [None] * len(names)
        return self._alerts(
            found,
            device_ids=[device_id for device_id, _ in names],
            metrics=[metric for _, metric in names],
            rule_ids=[rules.rule_ids[r] for r in table.rule[fired].tolist()],
            detected_at=detected_at,
            partitions=none,
            offsets=none,
        )

    def _rule_rows(self, rules: CompiledRules, rows: I64) -> I64:
        """The rule row of each table row: cached in the table, a dict lookup per pair not cached yet."""
        table = self.store.table
        known: I64 = table.rule[rows]
        missing = rows[known == UNKNOWN_RULE]
        if missing.size:
            names = [split_key(str(table.keys[row])) for row in missing.tolist()]
            table.rule[missing] = rules.rule_indices([d for d, _ in names], [m for _, m in names])
            known = table.rule[rows]
        return known

    def _ingest_silent(
        self, *, now: float, caught_up: Callable[[int], bool], detected_at: float
    ) -> list[Emit]:
        partitions = sorted(self._event_time)
        if not partitions:
            return []
        silences = ingest_silent(
            now=now,
            partitions=np.array(partitions, dtype=np.int64),
            watermark=np.array([self._event_time[p] for p in partitions]),
            caught_up=np.array([caught_up(p) for p in partitions], dtype=bool),
            silent_after=self.ingest_silent_after,
        )
        emits: list[Emit] = []
        for silence in silences:
            if silence.partition in self._silent:
                continue
            self._silent[silence.partition] = silence.since
            log.warning(
                "ingest_silent",
                partition=silence.partition,
                silent_for=silence.silent_for,
                since=silence.since,
            )
            event = new_alert(
                device_id=PIPELINE_DEVICE,
                metric=INGEST_METRIC,
                rule_id=silent_rule(self.source_topic, silence.partition),
                severity="critical",
                condition="ingest_silent",
                threshold=silence.silent_after,
                value=silence.silent_for,
                reading_ts=silence.since,
                detected_at=detected_at,
            )
            emits.append(Emit(key=PIPELINE_DEVICE, event=event))
        return emits

    # -- records -----------------------------------------------------------------------------

    @staticmethod
    def _alerts(
        found: Detections,
        *,
        device_ids: Sequence[str],
        metrics: Sequence[str],
        rule_ids: Sequence[str],
        detected_at: float,
        partitions: Sequence[int | None],
        offsets: Sequence[int | None],
    ) -> list[Emit]:
        """One alert per detection; the columns are turned into Python values once, not cell by cell."""
        emits: list[Emit] = []
        columns = zip(
            found.kind.tolist(),
            found.severity.tolist(),
            found.threshold.tolist(),
            found.value.tolist(),
            found.reading_ts.tolist(),
            strict=True,
        )
        sources = zip(device_ids, metrics, rule_ids, partitions, offsets, strict=True)
        for (kind, severity, threshold, value, at), (device_id, metric, rule_id, partition, offset) in zip(
            columns, sources, strict=True
        ):
            event: AlertEvent = new_alert(
                device_id=device_id,
                metric=metric,
                rule_id=rule_id,
                severity=SEVERITIES[severity - 1],
                condition=KINDS[kind],
                threshold=threshold,
                value=value,
                reading_ts=at,
                detected_at=detected_at,
            )
            emits.append(Emit(key=device_id, event=event, partition=partition, offset=offset))
        return emits

    @staticmethod
    def _clear(
        *,
        device_id: str,
        rule_id: str,
        condition: Condition,
        since: float,
        cleared_at: float,
        detected_at: float,
    ) -> Emit:
        clear = Clear(
            device_id=device_id,
            rule_id=rule_id,
            condition=condition,
            since=since,
            cleared_at=cleared_at,
            detected_at=detected_at,
        )
        return Emit(key=device_id, event=clear, headers=tuple(CLEAR_HEADERS))
