"""The notifier's memory: the latest incident of every (device, rule), and what to notify. Pure.

The adapter feeds it alert events and clock ticks, sends the notifications it returns, and
persists :meth:`IncidentTracker.take_changed` before committing offsets.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from alerts.lifecycle import Incident, Policy, Transition, apply_breach, due_at, tick
from alerts.notification import Notification, from_transition
from thermoflow.events import AlertEvent

IncidentKey = tuple[str, str]  # (device_id, rule_id)


def key_of(incident: Incident) -> IncidentKey:
    return (incident.device_id, incident.rule_id)


def progress(incident: Incident) -> tuple[float, int, float, int]:
    """Orders the states of one (device, rule): a later incident, then more transitions or breaches."""
    return (incident.opened_at, incident.seq, incident.last_breach_at, incident.breach_count)


class IncidentTracker:
    """Incident state per (device, rule), changed only by :meth:`on_alert` and :meth:`on_tick`."""

    def __init__(self, policy: Policy, states: Iterable[Incident] = ()) -> None:
        self.policy = policy
        self.incidents: dict[IncidentKey, Incident] = {}
        self._open: set[IncidentKey] = set()
        self._changed: dict[IncidentKey, Incident] = {}
        # (due time, key) of open incidents; entries made stale by later changes are skipped.
        self._due: list[tuple[float, IncidentKey]] = []
        self.load(states)

    def load(self, states: Iterable[Incident]) -> None:
        """Take persisted states (no notification), keeping whichever of two states is later.

        A reload can land after this instance has already folded newer alerts (aiokafka hands
        out records while the assignment callback still runs): an older persisted state must
        not replace them, or an incident opened meanwhile is forgotten and never resolves.
        Incidents of a (device, rule) follow each other in event time, and each one only moves
        forward, so :func:`progress` orders any two states of the same key.
        """
        for incident in states:
            current = self.incidents.get(key_of(incident))
            if current is not None and progress(current) > progress(incident):
                incident = current
            self._put(incident, changed=False)  # re-adds its due entry even when kept

    def _put(self, incident: Incident, *, changed: bool = True) -> None:
        key = key_of(incident)
        self.incidents[key] = incident
        if incident.is_open:
            self._open.add(key)
            heapq.heappush(self._due, (due_at(incident, policy=self.policy), key))
        else:
            self._open.discard(key)
        if changed:
            self._changed[key] = incident

    def on_alert(self, alert: AlertEvent, *, now: float, partition: int = -1) -> list[Notification]:
        current = self.incidents.get((alert.device_id, alert.rule_id))
        incident, transitions = apply_breach(current, alert, policy=self.policy, now=now, partition=partition)
        if incident is not current:
            self._put(incident)
        return self._notifications(transitions, now=now)

    def on_tick(self, *, now: float, partitions: set[int] | None = None) -> list[Notification]:
        """Resolve and repeat what is due; only incidents of ``partitions`` when given.

        Costs O(log n) per due incident, not a scan of every open one.
        """
        notifications: list[Notification] = []
        not_yet: list[tuple[float, IncidentKey]] = []
        while self._due and self._due[0][0] <= now:
            due, key = heapq.heappop(self._due)
            current = self.incidents.get(key)
            if current is None or not current.is_open or due_at(current, policy=self.policy) != due:
                continue  # stale entry: the incident changed since
            if partitions is not None and current.partition not in partitions:
                continue  # another instance owns it now (a reload re-adds it here if it comes back)
            incident, transitions = tick(current, policy=self.policy, now=now)
            if transitions:
                self._put(incident)
                notifications.extend(self._notifications(transitions, now=now))
            else:  # not due after all (cannot happen while due_at and tick agree): look again later
                not_yet.append((due, key))
        for entry in not_yet:
            heapq.heappush(self._due, entry)
        return notifications

    def take_changed(self) -> list[Incident]:
        """The states changed since the last call, to persist."""
        changed, self._changed = list(self._changed.values()), {}
        return changed

    @property
    def open_count(self) -> int:
        return len(self._open)

    @staticmethod
    def _notifications(transitions: list[Transition], *, now: float) -> list[Notification]:
        return [from_transition(transition, now=now) for transition in transitions]
