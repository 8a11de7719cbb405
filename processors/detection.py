"""The device detectors as a stateful function: batches and a timer in, alerts, clears and state out.

Per batch (:meth:`DeviceDetectors.check`), the batch's device-metric pairs get their state
from the :class:`~thermoflow.processors.state.StateStore`, the pure detectors
(:mod:`thermoflow.processors.detectors`) run over the whole batch at once, and the result is

- one alert per (device, kind) detected: ``stuck``, ``rate``, ``outlier``;
- a :class:`~thermoflow.events.Clear` for each device reported offline that is heard from
  again, and for each partition reported silent that receives again;
- the pairs' new state, for the state topic (partition = the readings partition).

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

import msgspec
import numpy as np
import numpy.typing as npt

from thermoflow.events import CLEAR_HEADERS, AlertEvent, Clear, Condition, Severity, new_alert
from thermoflow.logs import get_logger
from thermoflow.processors.columns import ReadingBatch
from thermoflow.processors.detectors import (
    KINDS,
    CompiledDetectors,
    Detections,
    DeviceState,
    DeviceStates,
    Readings,
    compile_detectors,
    detect,
    ingest_silent,
    offline,
)
from thermoflow.processors.runtime import Emit
from thermoflow.processors.state import StateStore, encode_state, split_key, state_key
from thermoflow.processors.thresholds import I64, CompiledRules
from thermoflow.processors.watermarks import latest_per_partition

log = get_logger(__name__)

#: The device id of alerts about the pipeline rather than a device (DESIGN.md).
PIPELINE: Final = "pipeline"
INGEST_METRIC: Final = "readings"


def silent_rule(topic: str, partition: int | None) -> str:
    """The rule id of an ``ingest_silent`` alert: one incident per partition, one for them all.

    >>> silent_rule("telemetry.readings", 3), silent_rule("telemetry.readings", None)
    ('ingest-silent/telemetry.readings/3', 'ingest-silent/telemetry.readings')
    """
    return f"ingest-silent/{topic}" if partition is None else f"ingest-silent/{topic}/{partition}"


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

    def config(self, rules: CompiledRules) -> CompiledDetectors:
        """The rules' detector settings compiled (once per rules object): row r is rule r's."""
        if rules is not self._rules:
            self._config = compile_detectors([rule.detectors for rule in rules.ruleset.rules])
            self._on = any_detector(self._config)
            self._rules = rules
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
        pairs = len(cols.device_ids)
        if pairs == 0:
            return emits
        rows = rules.rule_indices(cols.device_ids, cols.metrics)  # NO_RULE (-1) is NO_DETECTORS: all off
        on = self._on[rows]
        if not on.any():
            return emits
        _, first = np.unique(cols.pair, return_index=True)
        partition = batch.partition[first]
        keys = [state_key(d, m) for d, m in zip(cols.device_ids, cols.metrics, strict=True)]
        old = [self.store.get(int(p), k) for p, k in zip(partition, keys, strict=True)]
        states = DeviceStates.from_records(old)
        readings = Readings(device=cols.pair, ts=cols.ts, received_at=batch.received_at, value=cols.values)
        found, new = detect(readings, states=states, config=config, rows=rows)

        for row in range(len(found)):
            pair = int(found.device[row])
            reading = int(found.reading[row])
            emits.append(
                self._alert(
                    found,
                    row,
                    device_id=cols.device_ids[pair],
                    metric=cols.metrics[pair],
                    rule_id=rules.rule_ids[int(rows[pair])],
                    detected_at=detected_at,
                    source=(int(batch.partition[reading]), int(batch.offset[reading])),
                )
            )

        first_heard = np.full(pairs, np.inf)
        np.minimum.at(first_heard, cols.pair, batch.received_at)
        reported = states.offline_reported == states.last_seen
        for pair in np.flatnonzero(reported & (new.last_seen > states.last_seen)).tolist():
            emits.append(
                self._clear(
                    device_id=cols.device_ids[pair],
                    rule_id=rules.rule_ids[int(rows[pair])],
                    condition="offline",
                    since=float(states.last_seen[pair]),
                    cleared_at=float(first_heard[pair]),
                    detected_at=detected_at,
                )
            )

        for pair in np.flatnonzero(on).tolist():
            record = new.record(pair)
            self.store.put(int(partition[pair]), keys[pair], record)
            emits.append(self._state(keys[pair], record, int(partition[pair])))
        return emits

    def _ingest_back(self, batch: ReadingBatch, detected_at: float) -> list[Emit]:
        """Move the partitions' event time; clear the silences of partitions that receive again."""
        emits: list[Emit] = []
        first = latest_per_partition(batch.partition, -batch.received_at)  # minus the earliest
        for partition, latest in latest_per_partition(batch.partition, batch.received_at).items():
            self._event_time[partition] = max(self._event_time.get(partition, latest), latest)
            cleared_at = -first[partition]
            for silent in (partition, None):
                since = self._silent.pop(silent, None)
                if since is not None:
                    emits.append(
                        self._clear(
                            device_id=PIPELINE,
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
        for partition in self.store.loaded():
            event_time = self._event_time.get(partition)
            if event_time is not None:
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
        items = list(self.store.items(partition))
        if not items:
            return []
        pairs = [split_key(key) for key, _ in items]
        rows: I64 = rules.rule_indices([d for d, _ in pairs], [m for _, m in pairs])
        last_seen = np.fromiter((state.last_seen for _, state in items), dtype=np.float64, count=len(items))
        reported = np.fromiter(
            (state.offline_reported for _, state in items), dtype=np.float64, count=len(items)
        )
        found, updated = offline(
            now=event_time, last_seen=last_seen, reported=reported, config=config, rows=rows
        )
        emits: list[Emit] = []
        for row in range(len(found)):
            at = int(found.device[row])
            key, state = items[at]
            device_id, metric = pairs[at]
            emits.append(
                self._alert(
                    found,
                    row,
                    device_id=device_id,
                    metric=metric,
                    rule_id=rules.rule_ids[int(rows[at])],
                    detected_at=detected_at,
                    source=None,
                )
            )
            record = msgspec.structs.replace(state, offline_reported=float(updated[at]))
            self.store.put(partition, key, record)
            emits.append(self._state(key, record, partition))
        return emits

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
                device_id=PIPELINE,
                metric=INGEST_METRIC,
                rule_id=silent_rule(self.source_topic, silence.partition),
                severity="critical",
                condition="ingest_silent",
                threshold=silence.silent_after,
                value=silence.silent_for,
                reading_ts=silence.since,
                detected_at=detected_at,
            )
            emits.append(Emit(key=PIPELINE, event=event))
        return emits

    # -- records -----------------------------------------------------------------------------

    @staticmethod
    def _alert(
        found: Detections,
        row: int,
        *,
        device_id: str,
        metric: str,
        rule_id: str,
        detected_at: float,
        source: tuple[int, int] | None,
    ) -> Emit:
        condition: Condition = KINDS[int(found.kind[row])]
        severity: Severity = found.severity_name(row)
        event: AlertEvent = new_alert(
            device_id=device_id,
            metric=metric,
            rule_id=rule_id,
            severity=severity,
            condition=condition,
            threshold=float(found.threshold[row]),
            value=float(found.value[row]),
            reading_ts=float(found.reading_ts[row]),
            detected_at=detected_at,
        )
        partition, offset = source if source is not None else (None, None)
        return Emit(key=device_id, event=event, partition=partition, offset=offset)

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

    def _state(self, key: str, record: DeviceState, partition: int) -> Emit:
        return Emit(key=key, event=encode_state(record), topic=self.store.topic, to=partition)
