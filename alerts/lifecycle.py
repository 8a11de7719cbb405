"""The incident lifecycle: pure functions over :class:`Incident` states, with the clocks passed in.

One incident is open per (device_id, rule_id, kind), where the kind is ``threshold`` for
``above``/``below`` and the condition itself for the detectors' (``offline``, ``stuck``,
``rate``, ``outlier``, ...): a device can have a threshold incident and a stuck one open at once.
It **fires** on the first breach, **escalates** when a breach is more severe than any before
(severity never goes down), **repeats** every ``repeat_interval`` while it stays open, and
**resolves** ``resolve_after`` seconds after its last breach; except an incident of
:data:`~thermoflow.events.CLEARED_CONDITIONS` (offline, ingest_silent, the pipeline's own), which
is not over when its alerts stop (one alert is all a silence gives) but when data comes back (or
the pipeline's trouble is over): it resolves on a :class:`~thermoflow.events.Clear` record, at
its ``cleared_at``. An operator may **acknowledge** an open incident (an
:class:`~thermoflow.events.Ack` record): that is told once and ends its repeats; an escalation is
news again, so it clears the acknowledgement (the store puts the incident back to ``firing``
too) and the repeats resume. Resolution is told either way.

Two clocks, on purpose:

* Resolution is event time throughout. Breach times are the alert's ``reading_ts`` (the
  device's time), stable when a reading is re-processed, so replays rebuild the same
  incidents: ``opened_at``, ``last_breach_at`` and ``resolved_at = last_breach_at +
  resolve_after`` are event times. *When* a quiet incident is resolved is decided by the
  pipeline's **watermark** (:mod:`thermoflow.alerts.watermarks`): the event time up to which every
  reading has been processed and its alerts read. An incident resolves once the watermark
  reaches ``last_breach_at + resolve_after``: a breach still held upstream (an outage, a
  stopped processor) cannot come later and re-fire it, because the watermark waits for it.
  A breach that arrives more than ``resolve_after`` after the previous one (in event time)
  resolves the old incident and opens a new one, whatever the watermark says.
* Repeats are processing time: ``now`` (the wall clock in production, a fake one in tests)
  against ``notified_at``.

Since both the store and the notifier derive the incident id from the first breach (device,
rule, kind, ``opened_at``) and resolve on the same watermark and clear records, they agree on
every id without talking to each other.

Nothing here does I/O: the store and the notifier call these functions and persist the result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

import msgspec

from thermoflow.events import (
    CLEARED_CONDITIONS,
    DECODE_ERRORS,
    SEVERITIES,
    Ack,
    AlertEvent,
    Clear,
    Condition,
    IncidentKind,
    Severity,
    incident_kind,
    stable_id,
)

TransitionKind = Literal["fire", "escalate", "repeat", "resolve", "acknowledged"]
#: What one open incident at a time is kept per: (device_id, rule_id, kind).
IncidentKey = tuple[str, str, IncidentKind]


@dataclass(frozen=True)
class Policy:
    """The lifecycle's timers, in seconds."""

    resolve_after: float
    repeat_interval: float

    def __post_init__(self) -> None:
        if not (self.resolve_after > 0 and self.repeat_interval > 0):
            raise ValueError("resolve_after and repeat_interval must be positive")


class Incident(msgspec.Struct, frozen=True, kw_only=True):
    """What is known about one (device, rule, kind) incident.

    ``notified_at`` and ``seq`` are the notifier's bookkeeping (processing time of the last
    fire/escalate/repeat, and how many transitions were emitted); ``partition`` is the
    ``telemetry.alerts`` partition its device's alerts arrive on. ``acknowledged_at`` (the
    store's time of the ack), ``acknowledged_by`` and ``ack_note`` are set while an operator's
    acknowledgement holds; states persisted before acks existed read as unacknowledged.
    """

    incident_id: str
    device_id: str
    rule_id: str
    metric: str
    condition: Condition
    threshold: float
    severity: Severity
    opened_at: float
    last_breach_at: float
    peak_value: float
    breach_count: int
    resolved_at: float | None = None
    notified_at: float | None = None
    seq: int = 0
    partition: int = -1
    acknowledged_at: float | None = None
    acknowledged_by: str | None = None
    ack_note: str = ""

    @property
    def is_open(self) -> bool:
        return self.resolved_at is None

    @property
    def is_acknowledged(self) -> bool:
        return self.acknowledged_at is not None

    @property
    def kind(self) -> IncidentKind:
        """Derived from the first alert's condition, so states persisted before kinds existed read right."""
        return incident_kind(self.condition)

    @property
    def key(self) -> IncidentKey:
        return (self.device_id, self.rule_id, self.kind)

    @property
    def clears_on_data(self) -> bool:
        """Whether it ends on a :class:`~thermoflow.events.Clear`, never after quiet time."""
        return self.condition in CLEARED_CONDITIONS


_incident_decoder: Final = msgspec.json.Decoder(Incident)


def decode_incident(value: bytes) -> Incident | None:
    """One record of the notifier's state topic, or None for one that is not an incident state.

    Any producer can write to that topic, and it is read from its start at every start: a record
    that raises any of :data:`~thermoflow.events.DECODE_ERRORS` must not crash-loop the notifier.
    Such a record is taken as no state, as the processors' state store does.
    """
    try:
        return _incident_decoder.decode(value)
    except DECODE_ERRORS:
        return None


def key_of_alert(alert: AlertEvent | Clear) -> IncidentKey:
    """The incident key an alert (or a clear) belongs to."""
    return (alert.device_id, alert.rule_id, incident_kind(alert.condition))


def key_of_ack(ack: Ack) -> IncidentKey:
    """The incident key an acknowledgement names."""
    return (ack.device_id, ack.rule_id, ack.incident_kind)


class Transition(NamedTuple):
    """A lifecycle step worth telling someone about, with the incident as it is after it."""

    kind: TransitionKind
    incident: Incident


def incident_id(*, device_id: str, rule_id: str, opened_at: float, kind: IncidentKind = "threshold") -> str:
    """A stable id: the store and the notifier derive the same one from the same first breach.

    Threshold incidents keep the id they always had; the other kinds add theirs, so a stuck
    incident opened by the same reading as a threshold one is another incident.

    >>> incident_id(device_id="f-1", rule_id="r", opened_at=1.5) == incident_id(
    ...     device_id="f-1", rule_id="r", opened_at=1.5)
    True
    >>> incident_id(device_id="f-1", rule_id="r", opened_at=1.5) == incident_id(
    ...     device_id="f-1", rule_id="r", opened_at=1.5, kind="stuck")
    False
    """
    if kind == "threshold":
        return stable_id(device_id, rule_id, repr(opened_at), size=12)
    return stable_id(device_id, rule_id, repr(opened_at), kind, size=12)


_RANKS: dict[str, int] = {severity: rank for rank, severity in enumerate(SEVERITIES)}


def severity_rank(severity: Severity) -> int:
    """0 for warning, 1 for critical: a higher rank is an escalation."""
    return _RANKS[severity]


def worse(condition: Condition, a: float, b: float) -> float:
    """The value further into breach territory: an incident's ``peak_value``.

    The lowest for ``below``; for ``rate`` (signed °C/min) the steepest either way, sign kept;
    else the highest (a hotter reading, longer silent or stuck, a larger outlier score).

    >>> worse("below", -20.0, -25.0), worse("rate", 3.5, -4.0), worse("offline", 45.0, 30.0)
    (-25.0, -4.0, 45.0)
    """
    if condition == "below":
        return min(a, b)
    if condition == "rate":
        return a if abs(a) >= abs(b) else b
    return max(a, b)


def _open(alert: AlertEvent, *, now: float, partition: int) -> Incident:
    return Incident(
        incident_id=incident_id(
            device_id=alert.device_id,
            rule_id=alert.rule_id,
            opened_at=alert.reading_ts,
            kind=incident_kind(alert.condition),
        ),
        device_id=alert.device_id,
        rule_id=alert.rule_id,
        metric=alert.metric,
        condition=alert.condition,
        threshold=alert.threshold,
        severity=alert.severity,
        opened_at=alert.reading_ts,
        last_breach_at=alert.reading_ts,
        peak_value=alert.value,
        breach_count=1,
        notified_at=now,
        seq=1,
        partition=partition,
    )


def resolve(incident: Incident, *, policy: Policy) -> Incident:
    """The incident resolved, ``resolve_after`` after its last breach."""
    return msgspec.structs.replace(
        incident, resolved_at=incident.last_breach_at + policy.resolve_after, seq=incident.seq + 1
    )


def apply_breach(
    incident: Incident | None, alert: AlertEvent, *, policy: Policy, now: float, partition: int = -1
) -> tuple[Incident, list[Transition]]:
    """Fold one alert into the latest incident of its (device, rule, kind).

    Returns the incident the alert now belongs to and the transitions it caused (none for a
    stale replay of a resolved incident's alert). An open incident that clears on data takes
    every alert of its kind, however late: a new silence can only start after a clear.
    """
    transitions: list[Transition] = []
    if incident is not None and incident.is_open:
        gap = alert.reading_ts - incident.last_breach_at
        if not incident.clears_on_data and gap >= policy.resolve_after:
            incident = resolve(incident, policy=policy)
            transitions.append(Transition("resolve", incident))
        else:
            updated = msgspec.structs.replace(
                incident,
                last_breach_at=max(incident.last_breach_at, alert.reading_ts),
                peak_value=worse(incident.condition, incident.peak_value, alert.value),
                breach_count=incident.breach_count + 1,
            )
            if severity_rank(alert.severity) > severity_rank(incident.severity):
                updated = msgspec.structs.replace(
                    updated,
                    severity=alert.severity,
                    notified_at=now,
                    seq=updated.seq + 1,
                    acknowledged_at=None,  # worse than what was acknowledged: news, repeated again
                    acknowledged_by=None,
                    ack_note="",
                )
                transitions.append(Transition("escalate", updated))
            return updated, transitions
    if incident is not None and not incident.is_open and alert.reading_ts <= incident.last_breach_at:
        return incident, transitions  # a replayed alert of an incident that is over
    opened = _open(alert, now=now, partition=partition)
    transitions.append(Transition("fire", opened))
    return opened, transitions


#: Seconds within which two event times are the same instant: two microseconds, for the rounding
#: of a time stored by PostgreSQL (a newer silence opens a whole reading period later, never this close).
SAME_INSTANT: Final = 2e-6


def apply_clear(incident: Incident | None, clear: Clear) -> tuple[Incident | None, list[Transition]]:
    """Resolve the open incident a :class:`~thermoflow.events.Clear` ends, at its ``cleared_at``.

    Only an open incident of the clear's kind that opened at or before ``since`` (the last reading
    before the silence): a clear of an older silence, replayed or late, must not end a newer
    one. A replayed clear of a resolved incident changes nothing. Times compare within
    :data:`SAME_INSTANT`: an incident read back from PostgreSQL has its ``opened_at`` rounded to
    microseconds PostgreSQL's way, which is not always Python's ``round(x, 6)``: 1796016887.7887235
    is stored as .788724 and rounds here to .788723.
    """
    if (
        incident is None
        or not incident.is_open
        or not incident.clears_on_data
        or incident.kind != incident_kind(clear.condition)
        or incident.opened_at - clear.since > SAME_INSTANT
    ):
        return incident, []
    resolved = msgspec.structs.replace(incident, resolved_at=clear.cleared_at, seq=incident.seq + 1)
    return resolved, [Transition("resolve", resolved)]


def ack_ignored(incident: Incident | None, ack: Ack) -> str | None:
    """Why ``ack`` changes nothing about ``incident`` (the latest of its key), or None if it acknowledges it.

    >>> from thermoflow.events import Ack
    >>> ack = Ack(incident_id="i-1", device_id="f-1", rule_id="r", incident_kind="threshold",
    ...           opened_at=1.0, acknowledged_by="ops", acknowledged_at=5.0)
    >>> ack_ignored(None, ack)
    'unknown incident'
    """
    if incident is None:
        return "unknown incident"
    if incident.incident_id != ack.incident_id:
        return f"not the latest incident of its device, rule and kind (that is {incident.incident_id})"
    if not incident.is_open:
        return "incident already resolved"
    if incident.is_acknowledged:
        return "incident already acknowledged"  # a replay, or a second ack record: one is told
    return None


def apply_ack(incident: Incident | None, ack: Ack) -> tuple[Incident | None, list[Transition]]:
    """Acknowledge the open incident ``ack`` names: one ``acknowledged`` transition, and no more repeats.

    An ack of an unknown, resolved or already acknowledged incident changes nothing
    (:func:`ack_ignored` says which), so a replayed ack record is not told twice.
    """
    if incident is None or ack_ignored(incident, ack) is not None:
        return incident, []
    acknowledged = msgspec.structs.replace(
        incident,
        acknowledged_at=ack.acknowledged_at,
        acknowledged_by=ack.acknowledged_by,
        ack_note=ack.note,
        seq=incident.seq + 1,
    )
    return acknowledged, [Transition("acknowledged", acknowledged)]


def resolves_at(incident: Incident, *, policy: Policy) -> float:
    """The watermark at which this open incident resolves: ``resolve_after`` past its last breach
    (never, ``inf``, for one that clears on data)."""
    if incident.clears_on_data:
        return math.inf
    return incident.last_breach_at + policy.resolve_after


def settle(incident: Incident, *, policy: Policy, watermark: float) -> tuple[Incident, list[Transition]]:
    """Resolve the incident if the pipeline's watermark is ``resolve_after`` past its last breach."""
    if incident.is_open and watermark >= resolves_at(incident, policy=policy):
        resolved = resolve(incident, policy=policy)
        return resolved, [Transition("resolve", resolved)]
    return incident, []


def tick(incident: Incident, *, policy: Policy, now: float) -> tuple[Incident, list[Transition]]:
    """Repeat a still-open incident whose repeat is due (processing time).

    Repeats are due exactly every ``repeat_interval`` after the last fire/escalate; after a
    pause longer than that (the notifier was down), one repeat goes out, not a burst.
    An acknowledged incident is not repeated: someone is on it.
    """
    if not incident.is_open or incident.notified_at is None or incident.is_acknowledged:
        return incident, []
    if now >= incident.notified_at + policy.repeat_interval:
        due = incident.notified_at + policy.repeat_interval
        missed = math.floor((now - due) / policy.repeat_interval)
        repeated = msgspec.structs.replace(
            incident, notified_at=due + missed * policy.repeat_interval, seq=incident.seq + 1
        )
        return repeated, [Transition("repeat", repeated)]
    return incident, []


def repeat_due_at(incident: Incident, *, policy: Policy) -> float | None:
    """When :func:`tick` next repeats this open incident (None: it never notified, or it is acknowledged)."""
    if incident.notified_at is None or incident.is_acknowledged:
        return None
    return incident.notified_at + policy.repeat_interval


def resolve_cutoff(*, watermark: float, policy: Policy) -> float:
    """Open incidents whose last breach is at or before this time are due to resolve (except those
    that clear on data: :data:`~thermoflow.events.CLEARED_CONDITIONS`)."""
    return watermark - policy.resolve_after


IncidentStatus = Literal["firing", "acknowledged", "resolved"]


class StoredIncident(NamedTuple):
    """An incident as the store keeps it: the lifecycle state plus the operator-facing status."""

    incident: Incident
    status: IncidentStatus


def fold_events(
    open_incidents: dict[IncidentKey, StoredIncident],
    events: Sequence[AlertEvent | Clear],
    *,
    policy: Policy,
) -> dict[str, StoredIncident]:
    """Fold new alerts and clears into the open incidents, in the order they were read from the topic.

    Returns every incident that changed, by id: updated, escalated (back to ``firing`` even if
    acknowledged), resolved by a long gap or a clear, or newly opened. Only alerts never stored
    before may be passed in, so replays never count twice (clears may come again: a replayed
    one changes nothing). Topic order, not ``reading_ts`` order: the notifier folds the same
    records one by one in that order, and where a device's alerts arrive out of time order the
    two must still open the same incidents.
    """
    current = dict(open_incidents)
    changed: dict[str, StoredIncident] = {}
    for event in events:
        key = key_of_alert(event)
        before = current.get(key)
        if isinstance(event, Clear):
            if before is None:
                continue
            cleared, transitions = apply_clear(before.incident, event)
            if transitions and cleared is not None:
                current[key] = changed[cleared.incident_id] = StoredIncident(cleared, "resolved")
            continue
        incident, transitions = apply_breach(
            before.incident if before else None, event, policy=policy, now=event.reading_ts
        )
        status: IncidentStatus = before.status if before else "firing"
        for transition in transitions:
            if transition.kind == "resolve":
                changed[transition.incident.incident_id] = StoredIncident(transition.incident, "resolved")
                status = "firing"
            elif transition.kind in ("fire", "escalate"):
                status = "firing"
        stored = StoredIncident(incident, status)
        current[key] = stored
        changed[incident.incident_id] = stored
    return changed
