from __future__ import annotations

import pytest

from thermoflow.metrics import Metrics


def test_counters_gauges_and_latency_percentiles() -> None:
    now = [100.0]
    metrics = Metrics("bridge", clock=lambda: now[0])
    metrics.count("received", 3)
    metrics.count("received")
    metrics.gauge("in_flight", 7)
    for ms in range(1, 101):
        metrics.observe("latency", ms / 1000)
    now[0] = 112.5
    snap = metrics.snapshot()
    assert snap["counters"] == {"received": 4}
    assert snap["gauges"] == {"in_flight": 7}
    assert snap["uptime_s"] == 12.5
    assert snap["latency"]["latency"]["p50_ms"] == pytest.approx(50.5)
    assert snap["latency"]["latency"]["max_ms"] == pytest.approx(100.0)
    assert metrics.counter("missing") == 0
