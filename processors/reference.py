"""The obviously-right scalar version of :func:`thermoflow.processors.thresholds.evaluate`, for tests.

One reading at a time through :meth:`thermoflow.rules.RuleSet.classify`, then the worst
reading per (device, rule) by the same ordering, spelled out as a Python sort key.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from thermoflow.events import SEVERITIES, Condition, Severity
from thermoflow.rules import RuleSet


@dataclass(frozen=True, slots=True)
class ScalarReading:
    device_id: str
    metric: str
    value: float
    ts: float


@dataclass(frozen=True, slots=True)
class ScalarBreach:
    """One alert's content: the reading's natural key, the rule, and how it was breached."""

    device_id: str
    metric: str
    rule_id: str
    severity: Severity
    condition: Condition
    threshold: float
    value: float
    ts: float


def evaluate(readings: Iterable[ScalarReading], rules: RuleSet) -> list[ScalarBreach]:
    """At most one breach per (device, rule): its worst reading, by the order in thresholds.py."""
    worst: dict[tuple[str, str], tuple[tuple[float, ...], ScalarBreach]] = {}
    for index, reading in enumerate(readings):
        breach = rules.classify(reading.device_id, reading.metric, reading.value)
        if breach is None:
            continue
        extremity = reading.value if breach.condition == "above" else -reading.value
        # Smaller sorts first: higher severity, then above, then more extreme, then earlier, then first.
        rank = (
            -SEVERITIES.index(breach.severity),
            0 if breach.condition == "above" else 1,
            -extremity,
            reading.ts,
            index,
        )
        key = (reading.device_id, breach.rule_id)
        found = ScalarBreach(
            device_id=reading.device_id,
            metric=reading.metric,
            rule_id=breach.rule_id,
            severity=breach.severity,
            condition=breach.condition,
            threshold=breach.threshold,
            value=reading.value,
            ts=reading.ts,
        )
        if key not in worst or rank < worst[key][0]:
            worst[key] = (rank, found)
    return [found for _, found in worst.values()]
