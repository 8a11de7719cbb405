"""Fakes for the Protocol ports (clock, notification channel, dead-letter sink): no sleeping, no I/O."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field

from thermoflow.alerts.channels import DeliveryError
from thermoflow.alerts.notification import Notification
from thermoflow.events import AlertEvent, Severity, new_alert


@dataclass
class FakeClock:
    """A clock tests move by hand: ``clock.advance(30)``; ``clock()`` and ``clock.now()`` read it."""

    t: float = 1_764_218_400.0

    def now(self) -> float:
        return self.t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> float:
        self.t += seconds
        return self.t

    async def sleep(self, seconds: float) -> None:
        """An asyncio.sleep stand-in that moves the clock instead of waiting (and yields)."""
        self.t += seconds
        await asyncio.sleep(0)


@dataclass
class RecordingChannel:
    """A channel that delivers into a list; ``failures`` makes the next sends fail first."""

    name: str
    sent: list[Notification] = field(default_factory=list)
    attempts: int = 0
    failures: int = 0
    retryable: bool = True
    down: bool = False
    closed: bool = False

    async def send(self, notification: Notification) -> None:
        self.attempts += 1
        if self.down or self.failures > 0:
            self.failures = max(0, self.failures - 1)
            raise DeliveryError("fake channel failure", retryable=self.retryable)
        self.sent.append(notification)

    async def close(self) -> None:
        self.closed = True

    def transitions(self) -> list[tuple[str, str, int]]:
        return [(n.device_id, n.transition, n.seq) for n in self.sent]


@dataclass
class RecordingDeadLetters:
    """A dead-letter sink that keeps (notification, channel, reason)."""

    letters: list[tuple[Notification, str, str]] = field(default_factory=list)

    async def dead_letter(self, notification: Notification, *, channel: str, reason: str) -> None:
        self.letters.append((notification, channel, reason))

    def keys(self, channel: str | None = None) -> set[str]:
        return {n.idempotency_key for n, c, _ in self.letters if channel is None or c == channel}


def keys_of(notifications: Iterable[Notification]) -> list[str]:
    return [n.idempotency_key for n in notifications]


def make_alert(
    device_id: str,
    reading_ts: float,
    *,
    severity: Severity = "warning",
    value: float = 5.0,
    rule_id: str = "freezer-too-warm",
    threshold: float = -10.0,
) -> AlertEvent:
    """An alert event as the processors emit it (stable alert_id)."""
    return new_alert(
        device_id=device_id,
        metric="temperature",
        rule_id=rule_id,
        severity=severity,
        condition="above",
        threshold=threshold,
        value=value,
        reading_ts=reading_ts,
        detected_at=reading_ts + 0.05,
    )
