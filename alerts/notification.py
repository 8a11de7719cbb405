"""What a notification says: one transition of one incident, with a stable idempotency key. Pure."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from thermoflow.alerts.lifecycle import Incident, Transition, TransitionKind
from thermoflow.events import Condition, Severity, stable_id

_encoder = msgspec.json.Encoder()
#: The conditions that are a silence: their incident opens at the last reading before it.
_SILENCES: frozenset[Condition] = frozenset({"offline", "ingest_silent"})


class Notification(msgspec.Struct, frozen=True, kw_only=True):
    """The JSON body a channel sends (webhook) or renders (Slack, email, log).

    ``acknowledged_by``, ``acknowledged_at`` and ``note`` say who acknowledged the incident, when
    and why, while that holds (None otherwise): in the ``acknowledged`` notification, and in a
    later resolve.
    """

    v: int = 1
    idempotency_key: str
    transition: TransitionKind
    seq: int
    incident_id: str
    device_id: str
    rule_id: str
    metric: str
    severity: Severity
    condition: Condition
    threshold: float
    peak_value: float
    breach_count: int
    opened_at: float
    last_breach_at: float
    resolved_at: float | None
    decided_at: float
    acknowledged_by: str | None = None
    acknowledged_at: float | None = None
    note: str | None = None


def idempotency_key(*, incident_id: str, transition: TransitionKind, seq: int) -> str:
    """The same transition of the same incident always gets the same key, whoever sends it.

    >>> idempotency_key(incident_id="abc", transition="fire", seq=1) == idempotency_key(
    ...     incident_id="abc", transition="fire", seq=1)
    True
    """
    return stable_id(incident_id, transition, str(seq))


def ack_idempotency_key(*, incident_id: str, acknowledged_at: float) -> str:
    """The key of an ``acknowledged`` notification: from the acknowledgement itself, not ``seq``, so a
    replay says the same whatever repeats this instance sent before it."""
    return stable_id(incident_id, "acknowledged", repr(acknowledged_at))


def from_transition(transition: Transition, *, now: float) -> Notification:
    incident: Incident = transition.incident
    if transition.kind == "acknowledged" and incident.acknowledged_at is not None:
        key = ack_idempotency_key(incident_id=incident.incident_id, acknowledged_at=incident.acknowledged_at)
    else:
        key = idempotency_key(incident_id=incident.incident_id, transition=transition.kind, seq=incident.seq)
    return Notification(
        idempotency_key=key,
        transition=transition.kind,
        seq=incident.seq,
        incident_id=incident.incident_id,
        device_id=incident.device_id,
        rule_id=incident.rule_id,
        metric=incident.metric,
        severity=incident.severity,
        condition=incident.condition,
        threshold=incident.threshold,
        peak_value=incident.peak_value,
        breach_count=incident.breach_count,
        opened_at=incident.opened_at,
        last_breach_at=incident.last_breach_at,
        resolved_at=incident.resolved_at,
        decided_at=now,
        acknowledged_by=incident.acknowledged_by,
        acknowledged_at=incident.acknowledged_at,
        note=incident.ack_note if incident.is_acknowledged else None,
    )


def to_json(notification: Notification) -> bytes:
    return _encoder.encode(notification)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


_VERBS: dict[TransitionKind, str] = {
    "fire": "FIRING",
    "escalate": "ESCALATED",
    "repeat": "STILL FIRING",
    "resolve": "RESOLVED",
    "acknowledged": "ACKNOWLEDGED",
}


def describe(*, condition: Condition, value: float, threshold: float, metric: str = "temperature") -> str:
    """What a condition's value and limit mean, in words (``value``/``threshold`` read per kind,
    as DESIGN.md says: seconds silent or stuck, °C/min, a robust score).

    >>> describe(condition="above", value=-4.2, threshold=-10.0)
    'temperature -4.2 above -10'
    >>> describe(condition="offline", value=45.2, threshold=30.0)
    'offline: no reading for 45 s (limit 30 s)'
    >>> describe(condition="stuck", value=75.0, threshold=60.0)
    'stuck for 75 s (limit 60 s)'
    >>> describe(condition="rate", value=3.4, threshold=3.0)
    'rising 3.4 °C/min (limit 3.0)'
    >>> describe(condition="rate", value=-3.4, threshold=3.0)
    'falling 3.4 °C/min (limit 3.0)'
    >>> describe(condition="outlier", value=12.08, threshold=10.0)
    'outlier score 12.1 (limit 10)'
    >>> describe(condition="deadletter_rate", value=42.0, threshold=10.0)
    'dead letters 42.0/min (limit 10/min)'
    >>> describe(condition="consumer_lag", value=150000.0, threshold=100000.0)
    'consumer lag 150,000 records (limit 100,000)'
    >>> describe(condition="breaker_open", value=130.4, threshold=120.0)
    'circuit breaker open for 130 s (limit 120 s)'
    """
    if condition in ("above", "below"):
        return f"{metric} {value:g} {condition} {threshold:g}"
    if condition in _SILENCES:
        what = "offline" if condition == "offline" else "ingest silent"
        return f"{what}: no reading for {value:.0f} s (limit {threshold:g} s)"
    if condition == "stuck":
        return f"stuck for {value:.0f} s (limit {threshold:g} s)"
    if condition == "rate":
        direction = "rising" if value >= 0 else "falling"
        return f"{direction} {abs(value):.1f} °C/min (limit {abs(threshold):.1f})"
    if condition == "outlier":
        return f"outlier score {value:.1f} (limit {threshold:g})"
    if condition == "deadletter_rate":
        return f"dead letters {value:.1f}/min (limit {threshold:g}/min)"
    if condition == "consumer_lag":
        return f"consumer lag {value:,.0f} records (limit {threshold:,.0f})"
    return f"circuit breaker open for {value:.0f} s (limit {threshold:g} s)"  # breaker_open


def headline(notification: Notification) -> str:
    """One line a person reads first.

    >>> n = Notification(idempotency_key="k", transition="fire", seq=1, incident_id="i",
    ...     device_id="freezer-1", rule_id="too-warm", metric="temperature", severity="critical",
    ...     condition="above", threshold=-10.0, peak_value=-4.2, breach_count=1, opened_at=0.0,
    ...     last_breach_at=0.0, resolved_at=None, decided_at=0.0)
    >>> headline(n)
    '[CRITICAL] FIRING: freezer-1 too-warm (temperature -4.2 above -10)'
    """
    n = notification
    what = describe(condition=n.condition, value=n.peak_value, threshold=n.threshold, metric=n.metric)
    return f"[{n.severity.upper()}] {_VERBS[n.transition]}: {n.device_id} {n.rule_id} ({what})"


def details(notification: Notification) -> str:
    """The rest of the story, a few readable lines.

    >>> print(details(Notification(idempotency_key="k", transition="resolve", seq=2, incident_id="i",
    ...     device_id="freezer-1", rule_id="freezer", metric="temperature", severity="critical",
    ...     condition="offline", threshold=30.0, peak_value=31.0, breach_count=1, opened_at=0.0,
    ...     last_breach_at=0.0, resolved_at=95.0, decided_at=96.0)))
    incident i (transition #2)
    last reading 1970-01-01 00:00:00 UTC
    worst: offline: no reading for 31 s (limit 30 s)
    readings back 1970-01-01 00:01:35 UTC, after 95 s without
    """
    n = notification
    worst = describe(condition=n.condition, value=n.peak_value, threshold=n.threshold, metric=n.metric)
    lines = [f"incident {n.incident_id} (transition #{n.seq})"]
    if n.condition in _SILENCES:  # opened_at is the last reading before the silence
        lines += [f"last reading {_iso(n.opened_at)}", f"worst: {worst}"]
        if n.resolved_at is not None:
            silent = n.resolved_at - n.opened_at
            lines.append(f"readings back {_iso(n.resolved_at)}, after {silent:.0f} s without")
        return "\n".join(lines + _acknowledgement(n))
    lines.append(f"opened {_iso(n.opened_at)}, last breach {_iso(n.last_breach_at)}")
    if n.condition in ("above", "below"):
        lines.append(f"{n.breach_count} breach(es), worst value {n.peak_value:g}")
    else:
        lines.append(f"{n.breach_count} alert(s), worst: {worst}")
    if n.resolved_at is not None:
        lines.append(f"resolved {_iso(n.resolved_at)}")
    return "\n".join(lines + _acknowledgement(n))


def _acknowledgement(n: Notification) -> list[str]:
    """Who acknowledged it, when, and their note (one line, then the note's own lines).

    >>> _acknowledgement(Notification(idempotency_key="k", transition="acknowledged", seq=2,
    ...     incident_id="i", device_id="f", rule_id="r", metric="temperature", severity="critical",
    ...     condition="above", threshold=-10.0, peak_value=-4.2, breach_count=3, opened_at=0.0,
    ...     last_breach_at=0.0, resolved_at=None, decided_at=0.0, acknowledged_by="ana",
    ...     acknowledged_at=60.0, note="door was open; closed it"))
    ['acknowledged by ana at 1970-01-01 00:01:00 UTC', 'note: door was open; closed it']
    """
    if n.acknowledged_by is None or n.acknowledged_at is None:
        return []
    lines = [f"acknowledged by {n.acknowledged_by} at {_iso(n.acknowledged_at)}"]
    if n.note:
        lines.append(f"note: {n.note}")
    return lines
