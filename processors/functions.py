"""The function `thermoflow process` runs by default: the threshold check and the device detectors.

:func:`threshold_alerts` is pure (the clock and the rules are arguments); the registered
factory binds it and the detectors (:mod:`thermoflow.processors.detection`, state in Kafka)
to the rules file (reloaded when it changes) and the wall clock. One function, so each
reading is fetched and decoded once for both. It keeps its historical name, ``thresholds``:
the alert consumers track its watermarks by that name.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection

from thermoflow.events import new_alert
from thermoflow.processors.columns import ReadingBatch
from thermoflow.processors.detection import DeviceDetectors
from thermoflow.processors.runtime import Emit, FunctionBody, registry, setting
from thermoflow.processors.settings import ProcessorSettings
from thermoflow.processors.state import StateStore
from thermoflow.processors.thresholds import CompiledRules, evaluate
from thermoflow.processors.watcher import RulesWatcher


def threshold_alerts(
    batch: ReadingBatch, rules: CompiledRules, *, detected_at: float, window: float | None = None
) -> list[Emit]:
    """One alert per (device, rule) breached in the batch (and per ``window`` seconds of device
    time, see :func:`~thermoflow.processors.thresholds.evaluate`), for its worst reading, keyed by
    device id."""
    breaches = evaluate(batch.columns, rules, window=window)
    alerts: list[Emit] = []
    for row in range(len(breaches)):
        reading = int(breaches.reading[row])
        device_id = batch.device_id(reading)
        rule_id = rules.rule_ids[int(breaches.rule[row])]
        severity = breaches.severity_name(row)
        reading_ts = float(batch.columns.ts[reading])
        event = new_alert(
            device_id=device_id,
            metric=batch.metric(reading),
            rule_id=rule_id,
            severity=severity,
            condition=breaches.condition_name(row),
            threshold=float(breaches.threshold[row]),
            value=float(batch.columns.values[reading]),
            reading_ts=reading_ts,
            detected_at=detected_at,
        )
        alerts.append(
            Emit(
                key=device_id,
                event=event,
                partition=int(batch.partition[reading]),
                offset=int(batch.offset[reading]),
            )
        )
    return alerts


class ThresholdCheck:
    """The threshold check over the rules in force when each batch arrives."""

    def __init__(
        self, watcher: RulesWatcher, *, clock: Callable[[], float] = time.time, window: float | None = None
    ) -> None:
        self.watcher = watcher
        self.clock = clock
        self.window = window

    def __call__(self, batch: ReadingBatch) -> list[Emit]:
        return threshold_alerts(batch, self.watcher.current(), detected_at=self.clock(), window=self.window)

    def tick(self) -> None:
        """Between batches: pick up (or reject, with a logged reason) a changed rules file now."""
        self.watcher.poll()


class AlertCheck(ThresholdCheck):
    """Thresholds and device detectors over the same rules; the detectors' state in Kafka."""

    def __init__(
        self,
        watcher: RulesWatcher,
        detectors: DeviceDetectors,
        *,
        clock: Callable[[], float] = time.time,
        window: float | None = None,
    ) -> None:
        super().__init__(watcher, clock=clock, window=window)
        self.detectors = detectors

    def __call__(self, batch: ReadingBatch) -> list[Emit]:
        rules = self.watcher.current()
        alerts = threshold_alerts(batch, rules, detected_at=self.clock(), window=self.window)
        return alerts + self.detectors.check(batch, rules)

    async def load(self, partitions: Collection[int]) -> None:
        await self.detectors.store.load(partitions)

    def revoked(self, partitions: Collection[int]) -> None:
        self.detectors.revoked(sorted(partitions))

    def on_timer(self, *, now: float, caught_up: Callable[[int], bool]) -> list[Emit]:
        return self.detectors.on_timer(self.watcher.current(), now=now, caught_up=caught_up)

    def persist(self) -> Awaitable[None]:
        return self.detectors.store.persist()

    async def close(self) -> None:
        await self.detectors.store.close()


@registry.factory(name="thresholds", source=setting("readings_topic"), sink=setting("alerts_topic"))
def build_thresholds(settings: ProcessorSettings) -> FunctionBody:
    store = StateStore(settings, topic=settings.state_topic)
    detectors = DeviceDetectors(
        store, source_topic=settings.readings_topic, ingest_silent_after=settings.ingest_silent_after
    )
    watcher = RulesWatcher(settings.rules_path, interval=settings.rules_poll_interval)
    return AlertCheck(watcher, detectors, window=settings.alert_window)
