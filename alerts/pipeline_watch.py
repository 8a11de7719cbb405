"""The notifier's look at the pipeline itself: dead-letter rate, consumer lag, open breakers.

Every ``pipeline_check_interval`` the notifier measures, folds the measurements into the pure
checks (:mod:`thermoflow.alerts.pipeline_checks`) and sends the alerts and clears they return to
``telemetry.alerts`` under the device id ``pipeline``, with its own producer (acked before a
check counts them sent). From there they take the path of every alert: the store records the
incident, this same notifier notifies it.

Why the notifier runs these checks:

* Breaker state exists only here, in the :class:`~thermoflow.alerts.delivery.Dispatcher`.
* Lag is watched from outside the groups it judges: the processors or the sink, wedged, crash
  looping or gone, cannot report their own lag, and the notifier does not depend on them (nor on
  the database). Its own group's lag it sees too: the incident is stored at once, and notified
  once the backlog ahead of it is worked off.
* The dead-letter rate and the lags are the cluster's, not this process's: of several notifier
  instances only the one holding partition 0 of the alerts topic measures them (``owner``), so
  they are raised once. Each instance watches its own breakers.

A check that fails to reach Kafka logs and tries again at the next interval; it never stops the
notifier, and the notifier's batches never wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from thermoflow.alerts.breaker import CircuitBreaker
from thermoflow.alerts.pipeline_checks import (
    PipelineCheck,
    PipelineEvent,
    RateWindow,
    breaker_open_for,
    breaker_rule,
    deadletter_rule,
    lag_rule,
)
from thermoflow.alerts.settings import AlertsSettings
from thermoflow.events import CLEAR_HEADERS, PIPELINE_DEVICE, AlertEvent, Condition, encode
from thermoflow.logs import get_logger
from thermoflow.observe import KafkaObserver

log = get_logger(__name__)


class PipelineWatch:
    """Measures, decides (pure checks) and sends, every ``pipeline_check_interval`` seconds."""

    def __init__(
        self,
        settings: AlertsSettings,
        *,
        producer: AIOKafkaProducer,
        breakers: Callable[[], Mapping[str, CircuitBreaker]],
        owner: Callable[[], bool],
        left_open: Callable[[str, Condition], bool] = lambda rule_id, condition: False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.producer = producer
        self.breakers = breakers
        self.owner = owner
        self.left_open = left_open
        self.clock = clock
        self._breaker_checks: dict[str, PipelineCheck] = {}
        self._rate = RateWindow(window=settings.pipeline_alert_window)
        self._kafka_checks: dict[str, PipelineCheck] = {}  # the owner's: dead letters and lags
        self._observer: KafkaObserver | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Check until ``stop`` is set."""
        interval = self.settings.pipeline_check_interval
        try:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(self.check(), timeout=max(interval, 10.0))
                except (KafkaError, OSError, TimeoutError) as exc:
                    log.warning("pipeline_check_failed", error=f"{type(exc).__name__}: {exc}")
                    await self._close_observer()  # a fresh client next time
                except Exception:  # a fault in watching must never stop the notifications
                    log.exception("pipeline_check_crashed")
                    await self._close_observer()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=interval)
        finally:
            await self._close_observer()

    async def check(self) -> list[PipelineEvent]:
        """One round: measure, decide, send; returns what was sent."""
        events = self._check_breakers()
        if self.owner():
            events += await self._check_kafka()
        elif self._kafka_checks:  # another instance measures now; if this one comes back, it starts over
            self._kafka_checks.clear()
            self._rate = RateWindow(window=self.settings.pipeline_alert_window)
        await self._send(events)
        return [event for event, _ in events]

    def _check_breakers(self) -> list[tuple[PipelineEvent, PipelineCheck]]:
        limit = self.settings.breaker_open_alert
        if not limit:
            return []
        events = []
        now = self.clock()
        for channel, breaker in self.breakers().items():
            check = self._breaker_checks.get(channel)
            if check is None:
                check = self._breaker_checks[channel] = PipelineCheck(
                    rule_id=breaker_rule(channel), condition="breaker_open", metric="breaker",
                    severity="critical", limit=limit,
                )  # fmt: skip
            open_for = breaker_open_for(
                tripped_at=breaker.tripped_at, successes=breaker.successes, now=breaker.clock()
            )
            began = None if open_for is None else now - open_for
            event = check.observe(now=now, value=open_for, began=began, left_open=self._left_open(check))
            if event is not None:
                events.append((event, check))
        return events

    async def _check_kafka(self) -> list[tuple[PipelineEvent, PipelineCheck]]:
        settings = self.settings
        if not (settings.deadletter_rate_alert or settings.consumer_lag_alert):
            return []
        observer = await self._open_observer()
        events = []
        if settings.deadletter_rate_alert:
            total = (await observer.end_offsets([settings.deadletter_topic]))[settings.deadletter_topic]
            now = self.clock()
            check = self._kafka_check(
                deadletter_rule(settings.deadletter_topic), condition="deadletter_rate",
                metric="dead_letters", limit=settings.deadletter_rate_alert, hold=0.0,
            )  # fmt: skip
            rate = self._rate.observe(now=now, total=total)
            event = check.observe(now=now, value=rate, left_open=self._left_open(check))
            if event is not None:
                events.append((event, check))
        if settings.consumer_lag_alert:
            for group in settings.lag_groups:
                lag = await observer.group_lag(group)
                check = self._kafka_check(
                    lag_rule(group), condition="consumer_lag", metric="lag",
                    limit=settings.consumer_lag_alert, hold=settings.pipeline_alert_window,
                )  # fmt: skip
                value = None if lag is None else float(lag)
                event = check.observe(now=self.clock(), value=value, left_open=self._left_open(check))
                if event is not None:
                    events.append((event, check))
        return events

    def _left_open(self, check: PipelineCheck) -> bool:
        return check.reported is None and self.left_open(check.rule_id, check.condition)

    def _kafka_check(
        self, rule_id: str, *, condition: Condition, metric: str, limit: float, hold: float
    ) -> PipelineCheck:
        check = self._kafka_checks.get(rule_id)
        if check is None:
            check = self._kafka_checks[rule_id] = PipelineCheck(
                rule_id=rule_id, condition=condition, metric=metric, severity="warning",
                limit=limit, hold=hold,
            )  # fmt: skip
        return check

    async def _send(self, events: list[tuple[PipelineEvent, PipelineCheck]]) -> None:
        """Send and wait for Kafka's acks; only then is each one's check told (else it comes again)."""
        for event, check in events:
            is_alert = isinstance(event, AlertEvent)
            future = await self.producer.send(
                self.settings.alerts_topic,
                encode(event),
                key=PIPELINE_DEVICE.encode(),
                headers=None if is_alert else list(CLEAR_HEADERS),
            )
            await future
            check.sent(event)
            if isinstance(event, AlertEvent):
                log.warning("pipeline_alert", device_id=PIPELINE_DEVICE, rule_id=event.rule_id,
                            condition=event.condition, value=event.value, limit=event.threshold,
                            alert_id=event.alert_id)  # fmt: skip
            else:
                log.info("pipeline_clear", device_id=PIPELINE_DEVICE, rule_id=event.rule_id,
                         condition=event.condition, cleared_at=event.cleared_at)  # fmt: skip

    async def _open_observer(self) -> KafkaObserver:
        if self._observer is None:
            observer = KafkaObserver(self.settings)
            try:
                await observer.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await observer.close()
                raise
            self._observer = observer
        return self._observer

    async def _close_observer(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            with contextlib.suppress(Exception):
                await observer.close()
