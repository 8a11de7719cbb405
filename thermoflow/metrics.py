"""In-process metrics: counters, gauges and latency percentiles, readable as one snapshot.

A component keeps one :class:`Metrics`, counts into it on its hot path (cheap: a dict add,
a list append), logs :meth:`Metrics.snapshot` periodically, and anything that wants to
serve them later (an HTTP endpoint, the demo's live view) reads the same snapshot.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

_LATENCY_WINDOW = 100_000  # samples kept per latency series: percentiles over the recent past


class Metrics:
    """Thread-safe counters, gauges and latency series for one component."""

    def __init__(self, component: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.component = component
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self._counters: dict[str, int] = defaultdict(int)
        self._gauges: dict[str, float] = {}
        self._latencies: dict[str, list[float]] = defaultdict(list)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] += n

    def gauge(self, name: str, value: float) -> None:
        with self._lock:
            self._gauges[name] = value

    def observe(self, name: str, seconds: float) -> None:
        """Record one latency sample, in seconds."""
        with self._lock:
            series = self._latencies[name]
            series.append(seconds)
            if len(series) > 2 * _LATENCY_WINDOW:
                del series[:-_LATENCY_WINDOW]

    def counter(self, name: str) -> int:
        with self._lock:
            return self._counters.get(name, 0)

    def snapshot(self) -> dict[str, Any]:
        """Counters, gauges and p50/p99/max latency in milliseconds, with the uptime."""
        with self._lock:
            counters = dict(self._counters)
            gauges = dict(self._gauges)
            series = {name: np.asarray(values[-_LATENCY_WINDOW:]) for name, values in self._latencies.items()}
        latencies = {
            name: {
                "p50_ms": round(float(np.percentile(values, 50)) * 1000, 3),
                "p99_ms": round(float(np.percentile(values, 99)) * 1000, 3),
                "max_ms": round(float(values.max()) * 1000, 3),
                "samples": int(values.size),
            }
            for name, values in series.items()
            if values.size
        }
        return {
            "component": self.component,
            "uptime_s": round(self._clock() - self._started, 3),
            "counters": counters,
            "gauges": gauges,
            "latency": latencies,
        }
