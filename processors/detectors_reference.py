"""The obviously-right scalar version of :mod:`thermoflow.processors.detectors`, for tests.

One reading at a time, in arrival order, through a plain per-device record, following the
definitions in the detectors' docstrings literally: no sorting tricks, no search keys, the
median from :func:`statistics.median`. The arithmetic is written in the same order as the
vectorized code so the two agree to the bit, not merely approximately.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from thermoflow.events import SEVERITIES, Severity
from thermoflow.processors.detectors.config import (
    HISTORY,
    KINDS,
    WINDOW_BUCKETS,
    DetectorConfig,
)
from thermoflow.processors.detectors.history import MAD_SCALE, SCALE_FLOOR
from thermoflow.processors.detectors.state import DeviceState


@dataclass(frozen=True, slots=True)
class ScalarReading:
    device: int
    ts: float
    received_at: float
    value: float


@dataclass(slots=True)
class Memory:
    """One device's state, as plain Python values."""

    last_seen: float = math.nan
    last_ts: float = -math.inf
    offline_reported: float = math.nan
    run_start: float = math.nan
    run_min: float = math.nan
    run_max: float = math.nan
    history: list[tuple[float, float]] = field(default_factory=list)

    def record(self) -> DeviceState:
        """As plain values: :meth:`DeviceStates.from_records` stores them, to compare byte for byte."""
        return DeviceState(
            last_seen=self.last_seen,
            last_ts=self.last_ts,
            offline_reported=self.offline_reported,
            run_start=self.run_start,
            run_min=self.run_min,
            run_max=self.run_max,
            history=tuple(self.history),
        )


@dataclass(frozen=True, slots=True)
class ScalarFinding:
    reading: int  # index in its batch
    device: int
    ts: float
    stuck_seconds: float
    stuck: int
    rate: float
    rate_severity: int
    score: float
    outlier_severity: int


@dataclass(frozen=True, slots=True)
class ScalarDetection:
    device: int
    kind: str
    severity: Severity
    value: float
    threshold: float
    reading_ts: float
    reading: int


def _code(severity: Severity) -> int:
    return SEVERITIES.index(severity) + 1


def _severity(measure: float, limits: Mapping[Severity, float]) -> int:
    for severity in reversed(SEVERITIES):
        if severity in limits and measure > limits[severity]:
            return _code(severity)
    return 0


def step_of(config: DetectorConfig) -> float:
    windows = [c.window for c in (config.rate, config.outlier) if c is not None]
    return max(windows) / WINDOW_BUCKETS if windows else math.nan


def observe(
    memory: Memory, reading: ScalarReading, index: int, config: DetectorConfig | None
) -> ScalarFinding | None:
    """Fold one reading into its device's memory; its finding, or None when it is late."""
    if math.isnan(memory.last_seen) or reading.received_at > memory.last_seen:
        memory.last_seen = reading.received_at
    if reading.ts <= memory.last_ts:
        return None
    memory.last_ts = reading.ts
    config = config or DetectorConfig()
    ts, x = reading.ts, reading.value
    stuck_seconds, stuck = math.nan, 0
    if config.stuck is None:
        memory.run_start = memory.run_min = memory.run_max = math.nan
    else:
        if math.isnan(memory.run_start):
            memory.run_start, memory.run_min, memory.run_max = ts, x, x
        else:
            high, low = max(memory.run_max, x), min(memory.run_min, x)
            if high - low > config.stuck.tolerance:
                memory.run_start, memory.run_min, memory.run_max = ts, x, x
            else:
                memory.run_min, memory.run_max = low, high
        stuck_seconds = ts - memory.run_start
        stuck = _code(config.stuck.severity) if stuck_seconds >= config.stuck.stuck_for else 0

    rate, rate_severity, score, outlier_severity = math.nan, 0, math.nan, 0
    step = step_of(config)
    if not math.isnan(step):
        if config.rate is not None:
            reach = ts - config.rate.window
            anchors = [(t, v) for t, v in memory.history if t <= reach]
            if anchors:
                at = len(anchors) - 1  # history is in ts order: the anchor's index in it
                anchor_ts, level = memory.history[at]
                if 1 <= at < len(memory.history) - 1:  # framed: the median of three
                    level = statistics.median(v for _, v in memory.history[at - 1 : at + 2])
                rate = 60.0 * (x - level) / (ts - anchor_ts)
                rate_severity = _severity(abs(rate), config.rate.limits)
        bucket = math.floor(ts / step)
        if config.outlier is not None:
            buckets = max(1, min(WINDOW_BUCKETS, round(config.outlier.window / step)))
            baseline = [
                v for t, v in memory.history if bucket - buckets <= math.floor(t / step) <= bucket - 1
            ]
            if len(baseline) >= config.outlier.min_samples:
                median = statistics.median(baseline)
                mad = statistics.median([abs(v - median) for v in baseline])
                deviation = abs(x - median)
                if deviation > config.outlier.min_abs_deviation:  # else no score: it cannot be an outlier
                    score = deviation / max(MAD_SCALE * mad, SCALE_FLOOR)
                    outlier_severity = _severity(score, config.outlier.thresholds)
        if not memory.history or math.floor(memory.history[-1][0] / step) != bucket:
            memory.history.append((ts, x))
            del memory.history[:-HISTORY]
    return ScalarFinding(
        index, reading.device, ts, stuck_seconds, stuck, rate, rate_severity, score, outlier_severity
    )


def scan(
    batch: Iterable[ScalarReading], memories: dict[int, Memory], configs: Mapping[int, DetectorConfig | None]
) -> list[ScalarFinding]:
    """Every accepted reading's finding, in arrival order; ``memories`` is updated in place."""
    found = []
    for index, reading in enumerate(batch):
        finding = observe(
            memories.setdefault(reading.device, Memory()), reading, index, configs.get(reading.device)
        )
        if finding is not None:
            found.append(finding)
    return found


def worst(
    found: Iterable[ScalarFinding], configs: Mapping[int, DetectorConfig | None]
) -> list[ScalarDetection]:
    """The worst finding per (device, kind): severity, then measure, then the earliest ts."""
    best: dict[tuple[int, str], tuple[tuple[float, float, float], ScalarDetection]] = {}
    for finding in found:
        config = configs.get(finding.device) or DetectorConfig()
        candidates: list[
            tuple[str, int, float, float, float]
        ] = []  # kind, severity, measure, value, threshold
        if finding.stuck and config.stuck is not None:
            seconds = finding.stuck_seconds
            candidates.append(("stuck", finding.stuck, seconds, seconds, config.stuck.stuck_for))
        if finding.rate_severity and config.rate is not None:
            limit = config.rate.limits[SEVERITIES[finding.rate_severity - 1]]
            candidates.append(("rate", finding.rate_severity, abs(finding.rate), finding.rate, limit))
        if finding.outlier_severity and config.outlier is not None:
            limit = config.outlier.thresholds[SEVERITIES[finding.outlier_severity - 1]]
            candidates.append(("outlier", finding.outlier_severity, finding.score, finding.score, limit))
        for kind, severity, measure, value, threshold in candidates:
            rank = (-severity, -measure, finding.ts)
            detection = ScalarDetection(
                finding.device, kind, SEVERITIES[severity - 1], value, threshold, finding.ts, finding.reading
            )
            key = (finding.device, kind)
            if key not in best or rank < best[key][0]:
                best[key] = (rank, detection)
    order = {kind: code for code, kind in enumerate(KINDS)}
    return sorted((d for _, d in best.values()), key=lambda d: (d.device, order[d.kind]))


def offline(
    now: float, memories: Mapping[int, Memory], configs: Mapping[int, DetectorConfig | None]
) -> list[ScalarDetection]:
    """Devices silent for their ``offline_after`` and not yet reported; marks them reported."""
    found = []
    for device, memory in sorted(memories.items()):
        config = configs.get(device)
        if config is None or config.offline_after is None or math.isnan(memory.last_seen):
            continue
        silent = now - memory.last_seen
        if silent >= config.offline_after and memory.offline_reported != memory.last_seen:
            memory.offline_reported = memory.last_seen
            found.append(
                ScalarDetection(
                    device,
                    "offline",
                    config.offline_severity,
                    silent,
                    config.offline_after,
                    memory.last_seen,
                    -1,
                )
            )
    return found
