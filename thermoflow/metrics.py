"""Metrics: a thin layer over ``prometheus_client``, readable as one snapshot too.

A component keeps one :class:`Metrics` and counts into it under short names (``acked``,
``rows_inserted``). Each name is a child of a Prometheus family named by the conventions
(``thermoflow_bridge_messages_total{outcome="acked"}``, ``..._seconds`` histograms), in a
registry of the component's own that :mod:`thermoflow.http` serves on ``/metrics``. The
periodic log line and the demo's live view read the same numbers through :meth:`Metrics.snapshot`.

The hot path stays an increment: a child is looked up by name in a plain dict (bound once,
on first use), never through ``labels()``; components count per batch, not per message.

    >>> metrics = Metrics("bridge")
    >>> metrics.count("acked", 3); metrics.count("dead_lettered", reason="decode")
    >>> metrics.counter("acked"), metrics.counter("dead_lettered")
    (3, 1)
    >>> metrics.family("acked")
    ('thermoflow_bridge_messages_total', {'outcome': 'acked'})
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any, Final

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

_LATENCY_WINDOW = 100_000  # samples kept per latency series: percentiles over the recent past

#: Histogram buckets, seconds: from a bridge's sub-millisecond ack to a slow database batch.
LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

#: Short name → (family without the ``thermoflow_<component>_`` prefix, fixed labels). A dotted
#: name (``delivered.webhook``) looks up its head and puts its tail in the label named by
#: :data:`_DOTTED`. Names not listed here become ``thermoflow_<component>_<name>``.
_FAMILIES: Final[Mapping[str, tuple[str, dict[str, str]]]] = {
    # the bridge
    "received": ("messages", {"outcome": "received"}),
    "acked": ("messages", {"outcome": "acked"}),
    "produced": ("readings_produced", {}),
    "mqtt_connects": ("mqtt_connects", {"outcome": "connected"}),
    "mqtt_connect_failures": ("mqtt_connects", {"outcome": "failed"}),
    "in_flight": ("in_flight_acks", {}),
    "in_flight_peak": ("in_flight_acks_peak", {}),
    "unacked": ("unacked_messages", {}),
    "bridge_latency": ("ack_latency", {}),
    # every component that dead-letters (a ``reason`` label: the stage or error class)
    "dead_lettered": ("dead_letters", {}),
    "dead_letters": ("dead_letters", {}),
    # the sink
    "consumed": ("records_consumed", {}),
    "rows_inserted": ("rows", {"outcome": "inserted"}),
    "rows_duplicate": ("rows", {"outcome": "duplicate"}),
    # the processors
    "readings": ("readings", {}),
    "emitted": ("alerts_emitted", {}),
    # the alert store
    "alerts_inserted": ("alerts", {"outcome": "inserted"}),
    "alerts_duplicate": ("alerts", {"outcome": "duplicate"}),
    "alerts_refused": ("alerts", {"outcome": "refused"}),
    # the notifier
    "delivered": ("notifications", {"outcome": "delivered"}),
    "notifications": ("notifications_routed", {}),
    "alerts": ("alerts_consumed", {}),
    "breaker_state": ("circuit_breaker_state", {}),
}
_DOTTED: Final = "channel"


def prefix(component: str) -> str:
    """``alerts.notify`` → ``thermoflow_alerts_notify``."""
    return "thermoflow_" + component.replace(".", "_").replace("-", "_")


class Metrics:
    """Counters, gauges and latency histograms for one component, in a registry of its own.

    Args:
        component: the family prefix (``thermoflow_<component>_...``) and the snapshot's name.
        clock: for the uptime; injectable for tests.
    """

    def __init__(self, component: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.component = component
        self.registry = CollectorRegistry(auto_describe=True)
        self._prefix = prefix(component)
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()  # creating families and children; latency samples
        self._families: dict[str, MetricWrapperBase] = {}
        self._children: dict[tuple[str, str, tuple[tuple[str, str], ...]], Any] = {}
        # The unlabelled children by name, per kind: the hot path's one dict hit.
        self._plain: dict[str, dict[str, Any]] = {"counter": {}, "gauge": {}, "histogram": {}}
        self._names: dict[str, list[tuple[str, dict[str, str], str]]] = defaultdict(list)
        self._latencies: dict[str, list[float]] = defaultdict(list)

    # -- naming --------------------------------------------------------------------------------

    def family(self, name: str, kind: str = "counter", **labels: str) -> tuple[str, dict[str, str]]:
        """The Prometheus family (a counter's with ``_total``) and the labels a short name counts into."""
        family, full = self._family_of(kind, name, labels)
        return (family + "_total" if kind == "counter" else family), full

    def _family_of(self, kind: str, name: str, labels: Mapping[str, str]) -> tuple[str, dict[str, str]]:
        head, _, tail = name.partition(".")
        suffix, fixed = _FAMILIES.get(head, (head, {}))
        family = f"{self._prefix}_{suffix}"
        if kind == "histogram" and not family.endswith("_seconds"):
            family += "_seconds"
        return family, {**fixed, **({_DOTTED: tail} if tail else {}), **labels}

    def _child(self, kind: str, name: str, labels: Mapping[str, str]) -> Any:
        """The child for ``name`` and ``labels``, created on first use (then a dict hit)."""
        key = (kind, name, tuple(sorted(labels.items())))
        child = self._children.get(key)
        if child is not None:
            return child
        with self._lock:
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self._make(kind, name, labels)
                if not labels:
                    self._plain[kind][name] = child
        return child

    def _make(self, kind: str, name: str, labels: Mapping[str, str]) -> Any:
        family, full = self._family_of(kind, name, labels)
        metric = self._families.get(family)
        if metric is None:
            names = sorted(full)
            doc = f"{self.component}: {name.partition('.')[0].replace('_', ' ')}"
            if kind == "counter":
                metric = Counter(family, doc, names, registry=self.registry)
            elif kind == "gauge":
                metric = Gauge(family, doc, names, registry=self.registry)
            else:
                metric = Histogram(family, doc, names, registry=self.registry, buckets=LATENCY_BUCKETS)
            self._families[family] = metric
        self._names[kind].append((name, dict(full), family))
        return metric.labels(**full) if full else metric

    # -- counting (the hot path) -----------------------------------------------------------------

    def count(self, name: str, n: int = 1, **labels: str) -> None:
        """Add ``n`` to a counter; extra ``labels`` must be bounded (an error class, never raw text)."""
        child = None if labels else self._plain["counter"].get(name)
        if child is None:
            child = self._child("counter", name, labels)
        child.inc(n)

    def gauge(self, name: str, value: float, **labels: str) -> None:
        child = None if labels else self._plain["gauge"].get(name)
        if child is None:
            child = self._child("gauge", name, labels)
        child.set(value)

    def observe(self, name: str, seconds: float) -> None:
        """Record one latency sample, in seconds: into the histogram, and the window for percentiles."""
        child = self._plain["histogram"].get(name)
        if child is None:
            child = self._child("histogram", name, {})
        child.observe(seconds)
        with self._lock:
            series = self._latencies[name]
            series.append(seconds)
            if len(series) > 2 * _LATENCY_WINDOW:
                del series[:-_LATENCY_WINDOW]

    # -- reading -------------------------------------------------------------------------------

    def _values(self, kind: str) -> dict[str, float]:
        """Per short name, the sum over its children of their current value (as scraped)."""
        samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for metric in self.registry.collect():
            for sample in metric.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        with self._lock:
            entries = list(self._names[kind])
        totals: dict[str, float] = {}
        for name, labels, family in entries:
            sample_name = family + ("_total" if kind == "counter" else "")
            key = (sample_name, tuple(sorted(labels.items())))
            totals[name] = totals.get(name, 0) + samples.get(key, 0)
        return totals

    def counter(self, name: str) -> int:
        """A counter's value, summed over any extra labels; 0 if never counted."""
        return int(self._values("counter").get(name, 0))

    def snapshot(self) -> dict[str, Any]:
        """Counters, gauges and p50/p99/max latency in milliseconds, with the uptime."""
        counters = {name: int(value) for name, value in self._values("counter").items()}
        gauges = self._values("gauge")
        with self._lock:
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
