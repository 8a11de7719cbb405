"""The notifier's memory: the latest incident of every (device, rule, kind), and what to notify. Pure.

The adapter feeds it alert events, clears (which end offline and ingest_silent incidents),
operators' acknowledgements (told once, and they end the repeats), the pipeline watermark of each
alerts partition (which resolves quiet incidents) and clock ticks (which repeat long-firing
ones), sends the notifications it returns, and persists
:meth:`IncidentTracker.take_changed` before committing offsets.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable

from thermoflow.alerts.lifecycle import (
    Incident,
    IncidentKey,
    Policy,
    Transition,
    ack_ignored,
    apply_ack,
    apply_breach,
    apply_clear,
    key_of_ack,
    key_of_alert,
    repeat_due_at,
    resolves_at,
    settle,
    tick,
)
from thermoflow.alerts.notification import Notification, from_transition
from thermoflow.events import SEVERITIES, Ack, AlertEvent, Clear
from thermoflow.logs import get_logger

log = get_logger(__name__)

_Due = tuple[float, IncidentKey]


def key_of(incident: Incident) -> IncidentKey:
    return incident.key


def progress(incident: Incident) -> tuple[float, int, float, int]:
    """Orders the states of one (device, rule, kind): a later incident, then more transitions or breaches."""
    return (incident.opened_at, incident.seq, incident.last_breach_at, incident.breach_count)


class IncidentTracker:
    """Incident state per (device, rule, kind), changed by :meth:`on_alert`, :meth:`on_clear`,
    :meth:`on_ack`, :meth:`on_watermark` and :meth:`on_tick`."""

    def __init__(self, policy: Policy, states: Iterable[Incident] = ()) -> None:
        self.policy = policy
        self.incidents: dict[IncidentKey, Incident] = {}
        self._open: set[IncidentKey] = set()
        self._changed: dict[IncidentKey, Incident] = {}
        # Open incidents by the watermark that resolves them, per alerts partition, and by the
        # time of their next repeat; entries made stale by later changes are skipped.
        self._resolves: dict[int, list[_Due]] = {}
        self._repeats: list[_Due] = []
        self.load(states)

    def load(self, states: Iterable[Incident]) -> None:
        """Take persisted states (no notification), keeping whichever of two states is later.

        A reload can land after this instance has already folded newer alerts (aiokafka hands
        out records while the assignment callback still runs): an older persisted state must
        not replace them, or an incident opened meanwhile is forgotten and never resolves.
        Incidents of a (device, rule, kind) follow each other in event time, and each one only moves
        forward, so :func:`progress` orders any two states of the same key.
        """
        for incident in states:
            current = self.incidents.get(key_of(incident))
            if current is not None and progress(current) > progress(incident):
                incident = current
            self._put(incident, changed=False)  # re-adds its due entries even when kept

    def _put(self, incident: Incident, *, changed: bool = True) -> None:
        key = key_of(incident)
        self.incidents[key] = incident
        if incident.is_open:
            self._open.add(key)
            due = resolves_at(incident, policy=self.policy)
            if due != math.inf:  # one that clears on data waits for its clear, not for a watermark
                heapq.heappush(self._resolves.setdefault(incident.partition, []), (due, key))
            repeat = repeat_due_at(incident, policy=self.policy)
            if repeat is not None:
                heapq.heappush(self._repeats, (repeat, key))
        else:
            self._open.discard(key)
        if changed:
            self._changed[key] = incident

    def on_alert(self, alert: AlertEvent, *, now: float, partition: int = -1) -> list[Notification]:
        current = self.incidents.get(key_of_alert(alert))
        incident, transitions = apply_breach(current, alert, policy=self.policy, now=now, partition=partition)
        if incident is not current:
            self._put(incident)
        return self._notifications(transitions, now=now)

    def on_clear(self, clear: Clear, *, now: float) -> list[Notification]:
        """Resolve the open incident the clear ends (an offline device is heard from again)."""
        current = self.incidents.get(key_of_alert(clear))
        incident, transitions = apply_clear(current, clear)
        if incident is not None and incident is not current:
            self._put(incident)
        return self._notifications(transitions, now=now)

    def on_ack(self, ack: Ack, *, now: float) -> list[Notification]:
        """Acknowledge the open incident ``ack`` names: one ``acknowledged`` notification, no more repeats.

        An ack of an unknown, resolved or already acknowledged incident is logged and changes
        nothing (a replayed or second ack record is not told twice).
        """
        current = self.incidents.get(key_of_ack(ack))
        reason = ack_ignored(current, ack)
        if reason is not None:
            log.info("ack_ignored", incident_id=ack.incident_id, device_id=ack.device_id,
                     rule_id=ack.rule_id, kind=ack.incident_kind, reason=reason)  # fmt: skip
            return []
        incident, transitions = apply_ack(current, ack)
        if incident is not None:
            self._put(incident)  # no repeat is due for it any more: its heap entry goes stale
        return self._notifications(transitions, now=now)

    def on_watermark(self, *, partition: int, watermark: float, now: float) -> list[Notification]:
        """Resolve the open incidents of alerts ``partition`` that the pipeline watermark has passed.

        Costs O(log n) per resolved incident, not a scan of every open one.
        """
        due = self._resolves.get(partition)
        notifications: list[Notification] = []
        while due and due[0][0] <= watermark:
            at, key = heapq.heappop(due)
            current = self.incidents.get(key)
            if current is None or not current.is_open or current.partition != partition:
                continue  # stale entry: resolved since, or its alerts now come on another partition
            if resolves_at(current, policy=self.policy) != at:
                continue  # stale entry: a later breach moved it (that entry is in the heap too)
            incident, transitions = settle(current, policy=self.policy, watermark=watermark)
            self._put(incident)
            notifications.extend(self._notifications(transitions, now=now))
        return notifications

    def on_tick(self, *, now: float, partitions: set[int] | None = None) -> list[Notification]:
        """Repeat what is due (processing time); only incidents of ``partitions`` when given."""
        notifications: list[Notification] = []
        while self._repeats and self._repeats[0][0] <= now:
            due, key = heapq.heappop(self._repeats)
            current = self.incidents.get(key)
            if current is None or not current.is_open or repeat_due_at(current, policy=self.policy) != due:
                continue  # stale entry: the incident changed since
            if partitions is not None and current.partition not in partitions:
                continue  # another instance owns it now (a reload re-adds it here if it comes back)
            incident, transitions = tick(current, policy=self.policy, now=now)
            self._put(incident)
            notifications.extend(self._notifications(transitions, now=now))
        return notifications

    def take_changed(self) -> list[Incident]:
        """The states changed since the last call, to persist."""
        changed, self._changed = list(self._changed.values()), {}
        return changed

    @property
    def open_count(self) -> int:
        return len(self._open)

    def open_by_severity(self) -> dict[str, int]:
        """Open incidents per severity, every severity named (0 too): a gauge per batch."""
        counts: dict[str, int] = dict.fromkeys(SEVERITIES, 0)
        for key in self._open:
            counts[self.incidents[key].severity] += 1
        return counts

    @staticmethod
    def _notifications(transitions: list[Transition], *, now: float) -> list[Notification]:
        return [from_transition(transition, now=now) for transition in transitions]
