"""Delivering notifications: routing, retries with backoff and jitter, a breaker per channel.

Every channel works through its own notifications concurrently with the others, so one
failing channel never holds up the rest; within a channel, one incident's notifications go in
order. A notification that exhausts its retries (or meets an open breaker) goes to the
dead-letter sink with the reason: nothing is dropped silently.

Each send runs with the traceparent of the alert behind its notification
(:data:`thermoflow.tracing.current`: the webhook sends it on as a header, and log lines carry
its ``trace_id``), under an ``alerts.notify`` span when that trace is sampled.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from thermoflow import tracing
from thermoflow.alerts.breaker import BreakerState, CircuitBreaker
from thermoflow.alerts.channels import Channel, DeliveryError
from thermoflow.alerts.notification import Notification
from thermoflow.alerts.routing import Routes
from thermoflow.logs import get_logger
from thermoflow.metrics import Metrics

log = get_logger(__name__)

#: A breaker's state as the value of ``thermoflow_alerts_notify_circuit_breaker_state{channel}``.
BREAKER_LEVELS: Final[dict[BreakerState, int]] = {"closed": 0, "half-open": 1, "open": 2}


class DeadLetterSink(Protocol):
    """Where undeliverable notifications go (the dead-letter topic in production)."""

    async def dead_letter(self, notification: Notification, *, channel: str, reason: str) -> None: ...


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    backoff: float = 0.5
    backoff_max: float = 10.0
    timeout: float = 10.0


@dataclass
class DispatchResult:
    delivered: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    dead_lettered: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class CircuitOpenError(DeliveryError):
    def __init__(self, channel: str, last: str | None) -> None:
        reason = f"circuit breaker of channel {channel} is open"
        super().__init__(f"{reason} (last failure: {last})" if last else reason, retryable=False)


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, DeliveryError) and exc.retryable


class Dispatcher:
    """Sends each notification to the channels its severity routes to."""

    def __init__(
        self,
        channels: Mapping[str, Channel],
        routes: Routes,
        *,
        dead_letters: DeadLetterSink,
        retry: RetryPolicy,
        breaker_failures: int = 5,
        breaker_reset: float = 30.0,
        concurrency: int = 64,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        metrics: Metrics | None = None,
    ) -> None:
        missing = [name for name in routes.channels if name not in channels]
        if missing:
            raise ValueError(f"routes name channels with no implementation: {missing}")
        self.channels = dict(channels)
        self.routes = routes
        self.breakers = {
            name: CircuitBreaker(failures=breaker_failures, reset_after=breaker_reset, clock=clock)
            for name in channels
        }
        self._dead_letters = dead_letters
        self._retry = retry
        self._concurrency = concurrency
        self._sleep = sleep
        self._last_failure: dict[str, str] = {}
        self._verdicts = {name: asyncio.Event() for name in channels}
        self._traces: Mapping[str, bytes] = {}
        self.metrics = metrics or Metrics("alerts.notify")

    async def dispatch(
        self, notifications: Sequence[Notification], *, traces: Mapping[str, bytes] | None = None
    ) -> DispatchResult:
        """Deliver or dead-letter every notification; returns when each one is one or the other.

        Args:
            notifications: what to send, in order.
            traces: the traceparent of the alert behind a notification, by its idempotency key.
        """
        result = DispatchResult()
        self._traces = traces or {}
        per_channel: dict[str, dict[str, list[Notification]]] = defaultdict(lambda: defaultdict(list))
        for notification in notifications:
            for name in self.routes.for_severity(notification.severity):
                per_channel[name][notification.incident_id].append(notification)
        await asyncio.gather(
            *(self._run_channel(name, by_incident, result) for name, by_incident in per_channel.items())
        )
        return result

    async def _run_channel(
        self, name: str, by_incident: dict[str, list[Notification]], result: DispatchResult
    ) -> None:
        gate = asyncio.Semaphore(self._concurrency)

        async def in_order(sequence: list[Notification]) -> None:
            async with gate:
                for notification in sequence:
                    if await self._deliver(name, notification):
                        result.delivered[name] += 1
                    else:
                        result.dead_lettered[name] += 1

        await asyncio.gather(*(in_order(sequence) for sequence in by_incident.values()))

    async def _attempt(self, name: str, notification: Notification) -> None:
        breaker = self.breakers[name]
        try:
            await self._attempt_through(name, breaker, notification)
        finally:  # 0 closed, 1 half-open, 2 open: one gauge per channel, set once per attempt
            self.metrics.gauge(f"breaker_state.{name}", BREAKER_LEVELS[breaker.state])

    async def _attempt_through(self, name: str, breaker: CircuitBreaker, notification: Notification) -> None:
        while breaker.probing:  # another send is probing a half-open channel: wait for its verdict
            await self._verdicts[name].wait()
        if not breaker.allow():
            raise CircuitOpenError(name, self._last_failure.get(name))
        if breaker.probing:
            try:
                await self._send(name, breaker, notification)
            finally:
                verdict, self._verdicts[name] = self._verdicts[name], asyncio.Event()
                verdict.set()
        else:
            await self._send(name, breaker, notification)

    async def _send(self, name: str, breaker: CircuitBreaker, notification: Notification) -> None:
        try:
            await asyncio.wait_for(self.channels[name].send(notification), self._retry.timeout)
        except TimeoutError as exc:
            breaker.record_failure()
            self._last_failure[name] = f"no answer within {self._retry.timeout:g}s"
            raise DeliveryError(self._last_failure[name]) from exc
        except DeliveryError as exc:
            breaker.record_failure()
            self._last_failure[name] = exc.reason
            raise
        breaker.record_success()

    async def _deliver(self, name: str, notification: Notification) -> bool:
        """True once delivered; False once dead-lettered (after retries or at an open breaker)."""
        traceparent = self._traces.get(notification.idempotency_key)
        if traceparent is None:
            return await self._deliver_traced(name, notification)
        span = tracing.tracing().start(
            "alerts.notify",
            traceparent,
            attributes={
                "thermoflow.channel": name,
                "thermoflow.incident_id": notification.incident_id,
                "thermoflow.transition": notification.transition,
                "thermoflow.device_id": notification.device_id,
            },
        )
        with tracing.handling(tracing.traceparent_of(span) if span is not None else traceparent):
            delivered = await self._deliver_traced(name, notification)
        if span is not None:
            span.set_attribute("thermoflow.delivered", delivered)
            span.end()
        return delivered

    async def _deliver_traced(self, name: str, notification: Notification) -> bool:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._retry.attempts),
            wait=wait_random_exponential(multiplier=self._retry.backoff, max=self._retry.backoff_max),
            retry=retry_if_exception(_retryable),
            sleep=self._sleep,
            reraise=True,
        )
        attempts = 0
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    await self._attempt(name, notification)
        except DeliveryError as exc:
            reason = f"channel {name}: {exc.reason} (after {attempts} attempt(s))"
            log.warning(
                "notification_dead_lettered",
                channel=name,
                device_id=notification.device_id,
                incident_id=notification.incident_id,
                transition=notification.transition,
                reason=reason,
            )
            await self._dead_letters.dead_letter(notification, channel=name, reason=reason)
            self.metrics.count(f"dead_lettered.{name}", reason="undeliverable")
            return False
        self.metrics.count(f"delivered.{name}")
        log.info("notification_sent", channel=name, device_id=notification.device_id,
                 incident_id=notification.incident_id, transition=notification.transition)  # fmt: skip
        return True

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()
