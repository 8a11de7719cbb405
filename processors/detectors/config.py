"""Detector settings per rule, compiled to arrays with one row per rule.

The settings themselves (:class:`DetectorConfig` and its parts, their validation) are the
rules file's, in :mod:`thermoflow.rules`; they are re-exported here.

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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from thermoflow.events import SEVERITIES, Severity
from thermoflow.rules import WINDOW_BUCKETS as WINDOW_BUCKETS
from thermoflow.rules import DetectorConfig as DetectorConfig
from thermoflow.rules import DetectorConfigError as DetectorConfigError
from thermoflow.rules import OutlierConfig as OutlierConfig
from thermoflow.rules import RateConfig as RateConfig
from thermoflow.rules import StuckConfig as StuckConfig

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

#: Condition kinds of the device detectors, in their code order.
KINDS: Final = ("stuck", "rate", "outlier", "offline")
STUCK, RATE, OUTLIER, OFFLINE = 0, 1, 2, 3
#: Severity codes, as in processors.thresholds: index into SEVERITIES plus one, 0 is none.
WARNING, CRITICAL = 1, 2

#: Recent readings kept per device for rate and outlier: one per time bucket of ``step``
#: seconds, where ``step`` is the longest of the two windows over WINDOW_BUCKETS (defined in
#: thermoflow.rules, whose validation caps ``outlier.min_samples`` with it). A window then
#: spans at most WINDOW_BUCKETS + 2 buckets, so HISTORY entries always hold it.
HISTORY: Final = WINDOW_BUCKETS + 4
#: The config row of a device no rule configures detectors for: the all-off last row.
NO_DETECTORS: Final = -1


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
