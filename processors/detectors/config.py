"""Detector settings per rule, and their compiled form: arrays with one row per rule.

Like :func:`thermoflow.processors.thresholds.compile_rules`, a batch looks its settings up by row, so a
check over 100,000 readings indexes arrays instead of calling Python per reading. An absent
detector compiles to values that can never fire (``inf`` limits, ``NaN`` windows).

>>> compiled = compile_detectors([
...     DetectorConfig(offline_after=30.0, rate=RateConfig(window=60.0, limits={"critical": 3.0})),
...     DetectorConfig(),
... ])
>>> compiled.offline_after.tolist(), compiled.rate_limits.tolist(), compiled.step.tolist()
([30.0, inf, inf], [[inf, 3.0], [inf, inf], [inf, inf]], [1.875, nan, nan])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from thermoflow.events import SEVERITIES, Severity

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

#: Condition kinds of the device detectors, in their code order.
KINDS: Final = ("stuck", "rate", "outlier", "offline")
STUCK, RATE, OUTLIER, OFFLINE = 0, 1, 2, 3
#: Severity codes, as in processors.thresholds: index into SEVERITIES plus one, 0 is none.
WARNING, CRITICAL = 1, 2

#: Recent readings kept per device for rate and outlier: one per time bucket of ``step``
#: seconds, where ``step`` is the longest of the two windows over WINDOW_BUCKETS. A window
#: then spans at most WINDOW_BUCKETS + 2 buckets, so HISTORY entries always hold it.
WINDOW_BUCKETS: Final = 32
#: The config row of a device no rule configures detectors for: the all-off last row.
NO_DETECTORS: Final = -1
HISTORY: Final = WINDOW_BUCKETS + 4


class DetectorConfigError(ValueError):
    """A detector setting that cannot be used; the message names the field."""


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise DetectorConfigError(f"`{name}` must be a finite number > 0, got {value!r}")


def _limits(name: str, limits: Mapping[Severity, float]) -> None:
    if not limits or set(limits) - set(SEVERITIES):
        raise DetectorConfigError(f"`{name}` must set `warning` and/or `critical`, got {dict(limits)!r}")
    for severity, limit in limits.items():
        _positive(f"{name}.{severity}", limit)
    if limits.get("critical", math.inf) < limits.get("warning", -math.inf):
        raise DetectorConfigError(f"`{name}.critical` must be >= `{name}.warning`")


@dataclass(frozen=True, slots=True)
class StuckConfig:
    """Stuck: the readings of one run stay within ``tolerance`` (max - min) for ``stuck_for`` seconds."""

    tolerance: float
    stuck_for: float
    severity: Severity = "critical"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise DetectorConfigError(
                f"`stuck.tolerance` must be a finite number >= 0, got {self.tolerance!r}"
            )
        _positive("stuck.stuck_for", self.stuck_for)


@dataclass(frozen=True, slots=True)
class RateConfig:
    """Rate: ``|°C/min|`` over ``window`` seconds beyond a limit per severity."""

    window: float
    limits: Mapping[Severity, float]

    def __post_init__(self) -> None:
        _positive("rate.window", self.window)
        _limits("rate.limits", self.limits)


@dataclass(frozen=True, slots=True)
class OutlierConfig:
    """Outlier: robust score over the device's last ``window`` seconds beyond a threshold per severity.

    ``min_abs_deviation`` (°C) keeps a quiet sensor, whose MAD is near zero, from scoring a
    page out of a 0.1 °C wobble; ``min_samples`` is the smallest baseline worth scoring against.
    """

    window: float
    thresholds: Mapping[Severity, float]
    min_abs_deviation: float
    min_samples: int = 8

    def __post_init__(self) -> None:
        _positive("outlier.window", self.window)
        _limits("outlier.thresholds", self.thresholds)
        _positive("outlier.min_abs_deviation", self.min_abs_deviation)
        if not 1 <= self.min_samples <= WINDOW_BUCKETS:
            raise DetectorConfigError(
                f"`outlier.min_samples` must be within 1..{WINDOW_BUCKETS}, got {self.min_samples!r}"
            )


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """The detectors of one rule; each is optional (None: off)."""

    offline_after: float | None = None
    offline_severity: Severity = "critical"
    stuck: StuckConfig | None = None
    rate: RateConfig | None = None
    outlier: OutlierConfig | None = None

    def __post_init__(self) -> None:
        if self.offline_after is not None:
            _positive("offline_after", self.offline_after)


def _severity_code(severity: Severity) -> int:
    return SEVERITIES.index(severity) + 1


@dataclass(frozen=True, eq=False)
class CompiledDetectors:
    """Detector settings as arrays; row ``r`` is ``configs[r]``. Severity columns: warning, critical.

    One more row than configs, the last, has every detector off: :data:`NO_DETECTORS` (-1)
    indexes it, so a device without a rule needs no special case in the batch math.
    """

    configs: tuple[DetectorConfig, ...]
    offline_after: F64  # inf: off
    offline_severity: I64
    stuck_tolerance: F64  # NaN: off
    stuck_for: F64
    stuck_severity: I64
    rate_window: F64  # NaN: off
    rate_limits: F64  # (rows, 2), inf where absent
    outlier_buckets: I64  # the window in history buckets; 0: off
    outlier_thresholds: F64  # (rows, 2), inf where absent
    outlier_min_abs: F64
    outlier_min_samples: I64
    step: F64  # history bucket width (s); NaN when neither rate nor outlier is on


def compile_detectors(configs: Sequence[DetectorConfig]) -> CompiledDetectors:
    """Compile validated detector settings to arrays, one row per config, then the all-off row."""
    rows = len(configs) + 1
    nan, inf = np.full(rows, np.nan), np.full(rows, np.inf)
    compiled = CompiledDetectors(
        configs=tuple(configs),
        offline_after=inf.copy(),
        offline_severity=np.zeros(rows, dtype=np.int64),
        stuck_tolerance=nan.copy(),
        stuck_for=inf.copy(),
        stuck_severity=np.zeros(rows, dtype=np.int64),
        rate_window=nan.copy(),
        rate_limits=np.full((rows, 2), np.inf),
        outlier_buckets=np.zeros(rows, dtype=np.int64),
        outlier_thresholds=np.full((rows, 2), np.inf),
        outlier_min_abs=inf.copy(),
        outlier_min_samples=np.zeros(rows, dtype=np.int64),
        step=nan.copy(),
    )
    for row, config in enumerate(configs):
        if config.offline_after is not None:
            compiled.offline_after[row] = config.offline_after
            compiled.offline_severity[row] = _severity_code(config.offline_severity)
        if config.stuck is not None:
            compiled.stuck_tolerance[row] = config.stuck.tolerance
            compiled.stuck_for[row] = config.stuck.stuck_for
            compiled.stuck_severity[row] = _severity_code(config.stuck.severity)
        windows = [c.window for c in (config.rate, config.outlier) if c is not None]
        if not windows:
            continue
        step = max(windows) / WINDOW_BUCKETS
        compiled.step[row] = step
        if config.rate is not None:
            compiled.rate_window[row] = config.rate.window
            for severity, limit in config.rate.limits.items():
                compiled.rate_limits[row, _severity_code(severity) - 1] = limit
        if config.outlier is not None:
            buckets = max(1, min(WINDOW_BUCKETS, round(config.outlier.window / step)))
            compiled.outlier_buckets[row] = buckets
            for severity, threshold in config.outlier.thresholds.items():
                compiled.outlier_thresholds[row, _severity_code(severity) - 1] = threshold
            compiled.outlier_min_abs[row] = config.outlier.min_abs_deviation
            compiled.outlier_min_samples[row] = config.outlier.min_samples
    return compiled
