"""The pure autoscaling policy of `thermoflow run --autoscale`: replicas from consumer lag.

The one source of the thresholds, bounds and cool-downs: deploy/kubernetes' KEDA
``ScaledObject``s carry the same numbers (a unit test compares them), so one machine and a
cluster scale a component alike. The decision follows KEDA and the HPA under it:

- desired replicas = ``ceil(lag / lag_threshold)``, clamped to the bounds (HPA, a Kafka
  trigger's ``AverageValue`` target);
- up at once, at most doubling or +4 per poll (the HPA's default scale-up policy);
- down only to the highest recommendation of the last ``scale_down_window`` seconds (the
  HPA's ``stabilizationWindowSeconds``), one replica per ``scale_down_period`` (its policy);
- from zero when the lag exceeds ``activation_lag_threshold``, and back to zero only after
  ``cooldown_period`` seconds without such lag (KEDA's activation and ``cooldownPeriod``),
  where the minimum is 0.

No clock and no I/O here: :mod:`thermoflow.supervisor` reads the lag and passes ``now``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Final


class AutoscaleError(ValueError):
    """An --autoscale value that names no scalable component or no sensible range."""


@dataclass(frozen=True)
class ScalePolicy:
    """How one component scales: the fields of its KEDA ScaledObject, in seconds and replicas."""

    min_replicas: int
    max_replicas: int
    lag_threshold: int
    activation_lag_threshold: int = 0
    polling_interval: float = 15.0
    #: The HPA's scaleDown.stabilizationWindowSeconds.
    scale_down_window: float = 300.0
    #: The HPA's scaleDown policy: ``scale_down_step`` pods per ``scale_down_period`` seconds.
    scale_down_step: int = 1
    scale_down_period: float = 60.0
    #: KEDA's cooldownPeriod: quiet seconds before the last replica goes (only when min is 0).
    cooldown_period: float = 300.0

    def desired(self, lag: int) -> int:
        """Replicas for ``lag`` records waiting: ``ceil(lag / lag_threshold)`` within the bounds.

        >>> POLICIES["processor"].desired(0), POLICIES["processor"].desired(200_001)
        (1, 2)
        >>> POLICIES["processor"].desired(10**9)
        12
        """
        wanted = math.ceil(max(0, lag) / self.lag_threshold)
        return max(max(1, self.min_replicas), min(self.max_replicas, wanted))


#: Each lag-scaled component's policy: the same numbers as its ScaledObject in
#: deploy/kubernetes/base (tests/unit/test_autoscale.py compares them). Maxima are the default
#: partition counts (telemetry.readings 12, telemetry.alerts 6): more consumers would sit idle.
#: Only the sink scales to zero; the others' comments in the manifests say why they don't.
POLICIES: Final[Mapping[str, ScalePolicy]] = {
    "processor": ScalePolicy(min_replicas=1, max_replicas=12, lag_threshold=200_000),
    "sink": ScalePolicy(min_replicas=0, max_replicas=12, lag_threshold=200_000),
    "store": ScalePolicy(min_replicas=1, max_replicas=6, lag_threshold=50_000),
    "notifier": ScalePolicy(min_replicas=1, max_replicas=6, lag_threshold=5_000),
}

_RANGE = re.compile(r"^(?P<low>\d{1,6})\.\.(?P<high>\d{1,6})$")


def parse_autoscale(values: Iterable[str]) -> dict[str, tuple[int, int]]:
    """Parse ``--autoscale processor=1..4`` values into each component's replica bounds.

    >>> parse_autoscale(["processor=1..4", "sink=0..2"])
    {'processor': (1, 4), 'sink': (0, 2)}
    """
    bounds: dict[str, tuple[int, int]] = {}
    for value in values:
        component, sep, text = value.partition("=")
        policy = POLICIES.get(component)
        if not sep or policy is None:
            raise AutoscaleError(
                f"--autoscale takes COMPONENT=MIN..MAX with COMPONENT one of {', '.join(POLICIES)}"
                f" (the bridge scales on CPU, not lag); got {value!r}"
            )
        if component in bounds:
            raise AutoscaleError(f"--autoscale {component}= given twice")
        match = _RANGE.match(text)
        if match is None:
            raise AutoscaleError(
                f"--autoscale {component}= takes MIN..MAX, e.g. {component}=1..4; got {text!r}"
            )
        low, high = int(match["low"]), int(match["high"])
        if low > high:
            raise AutoscaleError(
                f"--autoscale {component}={text}: the minimum {low} is above the maximum {high}"
            )
        if low < policy.min_replicas:
            raise AutoscaleError(
                f"--autoscale {component}={text}: a {component} never scales below {policy.min_replicas}"
                " (its clock-driven work needs a running instance: see its ScaledObject)"
            )
        if high > policy.max_replicas or high < 1:
            raise AutoscaleError(
                f"--autoscale {component}={text}: the maximum must be 1 to {policy.max_replicas}"
                f" (the default partition count of its topic: more consumers would sit idle)"
            )
        bounds[component] = (low, high)
    return bounds


@dataclass(frozen=True)
class ScaleState:
    """What one component's scaler remembers between polls."""

    replicas: int
    #: (time, desired replicas) of the polls within the scale-down window.
    recommendations: tuple[tuple[float, int], ...] = ()
    last_scale_down: float = -math.inf
    last_active: float = -math.inf
    #: Why the last decision was what it was, for the log.
    reason: str = field(default="start", compare=False)


def decide(policy: ScalePolicy, state: ScaleState, *, lag: int, now: float) -> ScaleState:
    """The replica count after one poll that saw ``lag`` records waiting at time ``now``.

    >>> policy = ScalePolicy(min_replicas=1, max_replicas=4, lag_threshold=100, scale_down_window=30,
    ...                      scale_down_period=10)
    >>> state = decide(policy, ScaleState(replicas=1), lag=350, now=0)
    >>> state.replicas, state.reason
    (4, 'lag')
    >>> [decide(policy, state, lag=0, now=t).replicas for t in (10, 29, 30)]
    [4, 4, 3]
    """
    active = lag > policy.activation_lag_threshold
    last_active = now if active else state.last_active
    window = tuple((t, r) for t, r in state.recommendations if t > now - policy.scale_down_window)
    desired = policy.desired(lag)
    window += ((now, desired),)
    current = state.replicas
    kept = replace(state, recommendations=window, last_active=last_active)

    if policy.min_replicas == 0 and not active:
        if current > 0 and now - last_active >= policy.cooldown_period:
            return replace(kept, replicas=0, last_scale_down=now, reason="cooled_down")
        if current == 0:
            return replace(kept, reason="idle")
    if current == 0:  # active: KEDA wakes it, the HPA takes it from there
        return replace(kept, replicas=min(desired, 4), reason="activated")
    if desired > current:
        return replace(kept, replicas=min(desired, max(2 * current, current + 4)), reason="lag")
    stabilized = max(r for _, r in window)
    if stabilized < current and now - state.last_scale_down >= policy.scale_down_period:
        step_down = max(stabilized, current - policy.scale_down_step)
        return replace(kept, replicas=step_down, last_scale_down=now, reason="drained")
    return replace(kept, reason="steady")


def with_bounds(policy: ScalePolicy, *, low: int, high: int) -> ScalePolicy:
    """``policy`` within the replica range a user chose (``--autoscale sink=1..4``)."""
    return replace(policy, min_replicas=low, max_replicas=high)


def with_cooldown(policy: ScalePolicy, seconds: float) -> ScalePolicy:
    """``policy`` with its scale-down cool-downs set from one figure (tests, a quick local run).

    The stabilization window and KEDA's cooldown become ``seconds``; instances go one per a
    fifth of it, the manifests' proportion (300 s window, one pod per 60 s).

    >>> p = with_cooldown(POLICIES["sink"], 10)
    >>> p.scale_down_window, p.scale_down_period, p.cooldown_period
    (10, 2.0, 10)
    """
    return replace(policy, scale_down_window=seconds, scale_down_period=seconds / 5, cooldown_period=seconds)
