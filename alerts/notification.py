"""What a notification says: one transition of one incident, with a stable idempotency key. Pure."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from thermoflow.alerts.lifecycle import Incident, Transition, TransitionKind
from thermoflow.events import Condition, Severity, stable_id

_encoder = msgspec.json.Encoder()


class Notification(msgspec.Struct, frozen=True, kw_only=True):
    """The JSON body a channel sends (webhook) or renders (Slack, email, log)."""

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


def idempotency_key(*, incident_id: str, transition: TransitionKind, seq: int) -> str:
    """The same transition of the same incident always gets the same key, whoever sends it.

    >>> idempotency_key(incident_id="abc", transition="fire", seq=1) == idempotency_key(
    ...     incident_id="abc", transition="fire", seq=1)
    True
    """
    return stable_id(incident_id, transition, str(seq))


def from_transition(transition: Transition, *, now: float) -> Notification:
    incident: Incident = transition.incident
    return Notification(
        idempotency_key=idempotency_key(
            incident_id=incident.incident_id, transition=transition.kind, seq=incident.seq
        ),
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
}


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
    return (
        f"[{n.severity.upper()}] {_VERBS[n.transition]}: {n.device_id} {n.rule_id} "
        f"({n.metric} {n.peak_value:g} {n.condition} {n.threshold:g})"
    )


def details(notification: Notification) -> str:
    """The rest of the story, a few readable lines."""
    lines = [
        f"incident {notification.incident_id} (transition #{notification.seq})",
        f"opened {_iso(notification.opened_at)}, last breach {_iso(notification.last_breach_at)}",
        f"{notification.breach_count} breach(es), worst value {notification.peak_value:g}",
    ]
    if notification.resolved_at is not None:
        lines.append(f"resolved {_iso(notification.resolved_at)}")
    return "\n".join(lines)
