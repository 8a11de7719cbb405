"""Scoring incidents against the injected anomalies: the report's ``anomaly_detection`` section.

Pure: anomalies (:class:`~thermoflow.simulator.detectability.InjectedAnomaly`), their detectability and
a plain list of incidents ``(device_id, condition, opened_at)`` in; a report section out.

**Detected.** An anomaly is detected when an incident whose condition is in
:data:`ACCEPTS` for its kind was opened on its device at a time in
``[start_at, end_at + grace_s]``, or when such an incident, opened before (for an earlier
anomaly of the device), took an alert in that window: a device has one open incident per
rule and kind, so an anomaly that comes while one is open adds to it and cannot open its
own. Its *delay* is from ``start_at`` to the first such opening or alert. An incident of
another condition inside the window neither detects the anomaly nor counts as false (a spike
that trips the rate detector is not a false alarm).

**False incidents** are device incidents opened on a device at a time inside no anomaly's
window, whatever the anomaly's kind; ``per_1000_device_hours`` divides by the fleet's
device-hours of publishing. Pipeline conditions (``ingest_silent``, ``deadletter_rate``,
``consumer_lag``, ``breaker_open``) are not device incidents and are left out.

**Incidents from alerts.** Until the store's incidents are read, they are derived from the
alerts on ``telemetry.alerts`` (:func:`incidents_from_alerts`): alerts are de-duplicated by
``alert_id`` and condition; each ``offline`` alert is one silence, hence one incident; other alerts of one
(device, rule, kind) are one incident while they come less than ``gap`` seconds apart,
``kind`` being ``threshold`` for ``above`` and ``below`` as in the store.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, NamedTuple

import numpy as np

from thermoflow.events import AlertEvent
from thermoflow.rules import DetectorConfig
from thermoflow.simulator.anomalies import Kind
from thermoflow.simulator.detectability import PREDICATES, SCORED_KINDS, InjectedAnomaly
from thermoflow.simulator.score import percentiles

#: The incident conditions that count as detecting each kind of anomaly.
ACCEPTS: Final[dict[Kind, frozenset[str]]] = {
    "spike": frozenset({"outlier", "above", "below"}),
    "drift": frozenset({"rate", "above", "below"}),
    "stuck": frozenset({"stuck"}),
    "dropout": frozenset({"offline"}),
    "flapping": frozenset({"above", "below"}),
}
#: Conditions about the pipeline, not a device: never a detection, never a false device incident.
PIPELINE_CONDITIONS: Final = frozenset({"ingest_silent", "deadletter_rate", "consumer_lag", "breaker_open"})
DEFAULT_GRACE_S: Final = 30.0
_MAX_LISTED: Final = 50


class Incident(NamedTuple):
    """An incident as scored: opened on ``device_id`` for ``condition`` at ``opened_at`` (epoch s)."""

    device_id: str
    condition: str
    opened_at: float
    later: tuple[float, ...] = ()  # the times of the alerts it took after the first, in order


def incidents_from_alerts(alerts: Iterable[AlertEvent], *, gap: float) -> list[Incident]:
    """The incidents a run's alerts open, by ``detected_at`` (see the module docstring).

    >>> from thermoflow.events import new_alert
    >>> def alert(ts, condition="above"):
    ...     return new_alert(device_id="f-1", metric="temperature", rule_id="f", severity="warning",
    ...         condition=condition, threshold=1.0, value=2.0, reading_ts=ts, detected_at=ts + 0.5)
    >>> incidents_from_alerts([alert(10.0), alert(11.0), alert(40.0), alert(12.0, "below")], gap=20.0)
    [Incident(device_id='f-1', condition='above', opened_at=10.5, later=(11.5, 12.5)), Incident(device_id='f-1', condition='above', opened_at=40.5, later=())]
    """  # noqa: E501
    unique: dict[tuple[str, str], AlertEvent] = {}
    for alert in alerts:  # the condition too: today's alert_id leaves it out, and kinds may share a reading
        unique.setdefault((alert.alert_id, alert.condition), alert)
    last: dict[tuple[str, str, str], float] = {}
    current: dict[tuple[str, str, str], int] = {}  # the index in ``found`` of each key's latest incident
    found: list[Incident] = []
    later: list[list[float]] = []
    for alert in sorted(unique.values(), key=lambda a: a.detected_at):
        kind = "threshold" if alert.condition in ("above", "below") else alert.condition
        key = (alert.device_id, alert.rule_id, kind)
        previous = last.get(key)
        if previous is None or kind == "offline" or alert.detected_at - previous > gap:
            current[key] = len(found)
            found.append(Incident(alert.device_id, alert.condition, alert.detected_at))
            later.append([])
        else:
            later[current[key]].append(alert.detected_at)
        last[key] = alert.detected_at
    return [incident._replace(later=tuple(times)) for incident, times in zip(found, later, strict=True)]


class _Windows:
    """Each device's anomaly windows ``[start_at, end_at + grace]``, for "is this time inside one?"."""

    def __init__(self, anomalies: Sequence[InjectedAnomaly], grace_s: float):
        spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for a in anomalies:
            spans[a.device_id].append((a.start_at, a.end_at + grace_s))
        self._starts: dict[str, list[float]] = {}
        self._reach: dict[str, list[float]] = {}  # running max of the ends, by start
        for device, windows in spans.items():
            windows.sort()
            self._starts[device] = [s for s, _ in windows]
            self._reach[device] = np.maximum.accumulate([e for _, e in windows]).tolist()

    def covers(self, device_id: str, at: float) -> bool:
        starts = self._starts.get(device_id)
        if not starts:
            return False
        i = bisect.bisect_right(starts, at) - 1
        return i >= 0 and self._reach[device_id][i] >= at


def _first_detection(
    anomaly: InjectedAnomaly, opened: Mapping[str, list[Incident]], grace_s: float
) -> float | None:
    """When an accepted incident first opened, or an open one took an alert, in the anomaly's window."""
    incidents = opened.get(anomaly.device_id, [])
    accepts = ACCEPTS[anomaly.kind]
    start, end = anomaly.start_at, anomaly.end_at + grace_s
    first: float | None = None
    i = bisect.bisect_left(incidents, start, key=lambda incident: incident.opened_at)
    while i < len(incidents) and incidents[i].opened_at <= end:
        if incidents[i].condition in accepts:
            first = incidents[i].opened_at
            break
        i += 1
    for incident in incidents[
        : bisect.bisect_left(incidents, start, key=lambda incident: incident.opened_at)
    ]:
        if incident.condition in accepts and incident.later and incident.later[-1] >= start:
            took = incident.later[bisect.bisect_left(incident.later, start)]
            if took <= end and (first is None or took < first):
                first = took
    return first


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


def _row(judged: Sequence[tuple[InjectedAnomaly, bool, float | None]], *, measured: bool) -> dict[str, Any]:
    injected = len(judged)
    detectable = sum(1 for _, ok, _ in judged if ok)
    if not measured:
        return {
            "injected": injected,
            "detectable": detectable,
            "detected": None,
            "detected_detectable": None,
            "recall_detectable": None,
            "recall_all": None,
            "delay": None,
        }
    delays = [at - a.start_at for a, _, at in judged if at is not None]
    caught = sum(1 for _, ok, at in judged if ok and at is not None)
    return {
        "injected": injected,
        "detectable": detectable,
        "detected": len(delays),
        "detected_detectable": caught,
        "recall_detectable": _ratio(caught, detectable),
        "recall_all": _ratio(len(delays), injected),
        "delay": percentiles(delays),
    }


def score_detection(
    *,
    anomalies: Sequence[InjectedAnomaly],
    detectable: Sequence[bool],
    incidents: Sequence[Incident] | None,
    grace_s: float,
    device_hours: float,
) -> dict[str, Any]:
    """Per kind and in total: injected, detectable, detected, recalls, delay; and false incidents.

    ``incidents`` None: nothing was measured, so only the injected and detectable counts are known.
    """
    measured = incidents is not None
    opened: dict[str, list[Incident]] = defaultdict(list)
    device_incidents = [i for i in incidents or () if i.condition not in PIPELINE_CONDITIONS]
    for incident in device_incidents:
        opened[incident.device_id].append(incident)
    for found in opened.values():
        found.sort(key=lambda incident: (incident.opened_at, incident.condition))
    judged = [
        (a, ok, _first_detection(a, opened, grace_s) if measured else None)
        for a, ok in zip(anomalies, detectable, strict=True)
    ]
    by_kind = {
        kind: _row([j for j in judged if j[0].kind == kind], measured=measured) for kind in SCORED_KINDS
    }
    windows = _Windows(anomalies, grace_s)
    false = [i for i in device_incidents if not windows.covers(i.device_id, i.opened_at)]
    missed = [a for a, ok, at in judged if ok and at is None] if measured else []
    return {
        "by_kind": by_kind,
        "total": _row(judged, measured=measured),
        "incidents": len(device_incidents) if measured else None,
        "false_incidents": None
        if not measured
        else {
            "count": len(false),
            "device_hours": round(device_hours, 3),
            "per_1000_device_hours": round(len(false) / device_hours * 1000, 3) if device_hours > 0 else None,
            "first": [
                {"device_id": i.device_id, "condition": i.condition, "opened_at": i.opened_at}
                for i in false[:_MAX_LISTED]
            ],
        },
        "missed": [
            {
                "kind": a.kind,
                "device_id": a.device_id,
                "start_at": a.start_at,
                "duration_s": round(a.duration_s, 3),
                "magnitude": round(a.magnitude, 3),
            }
            for a in missed[:_MAX_LISTED]
        ],
    }


def anomaly_detection(
    *,
    anomalies: Sequence[InjectedAnomaly],
    detectable: Sequence[bool],
    detectors: Mapping[str, DetectorConfig],
    incidents: Sequence[Incident] | None,
    grace_s: float,
    incident_gap_s: float,
    device_hours: float,
    excluded: Mapping[str, int],
) -> dict[str, Any]:
    """The report's ``anomaly_detection`` section: the settings and predicates used, then the scores."""
    return {
        "grace_s": grace_s,
        "incident_gap_s": incident_gap_s,
        "measured": incidents is not None,
        "detectors": {rule_id: d.to_yaml() for rule_id, d in detectors.items()},
        "predicates": dict(PREDICATES),
        "accepts": {kind: sorted(conditions) for kind, conditions in ACCEPTS.items()},
        **score_detection(
            anomalies=anomalies,
            detectable=detectable,
            incidents=incidents,
            grace_s=grace_s,
            device_hours=device_hours,
        ),
        "excluded": dict(excluded),
    }
