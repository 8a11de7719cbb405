"""How far each readings partition has been processed, in event time. Pure: the clock is passed in.

The alert consumers (store, notifier) resolve an incident only once the readings that could
still extend it have been processed, not when their own input runs dry: after an outage the
backlog of readings is still upstream while ``telemetry.alerts`` looks caught up. So the
worker tells them, on ``telemetry.alerts`` itself, how far it got: a
:class:`~thermoflow.events.Watermark` per readings partition it owns, sent after the alerts
of the readings it covers have been acked (so it lands behind them in every partition).

Per partition: the **watermark** is the largest event time processed, a reading's event time
being ``min(ts, received_at)`` (a device clock ahead of the bridge's cannot push it forward;
a backlog after an outage keeps its own, older times). A partition is **idle** once it is
caught up and has had no reading for ``idle_after`` seconds; an idle partition's watermark
moves on with the clock (``now - idle_after``), so incidents still resolve when the whole
fleet falls silent. Any sign of trouble reaching Kafka (:meth:`PartitionProgress.disturbed`,
a new assignment) restarts that quiet period: right after a Kafka outage the readings it
held back are about to arrive, and the partitions only *look* quiet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from thermoflow.events import Watermark
from thermoflow.processors.thresholds import F64, I64


@dataclass
class _Partition:
    event_time: float | None  # the largest event time processed; None before the first reading
    next_offset: int | None  # the offset after the last record processed
    quiet_since: float  # last reading, assignment, or disturbance


def event_times(ts: F64, received_at: F64) -> F64:
    """Each reading's event time: its device time, but never later than its receipt.

    >>> event_times(np.array([10.0, 50.0]), np.array([12.0, 20.0])).tolist()
    [10.0, 20.0]
    """
    return np.minimum(ts, received_at)


def latest_per_partition(partition: I64, values: F64) -> dict[int, float]:
    """The largest value of each partition.

    >>> latest_per_partition(np.array([1, 0, 1]), np.array([5.0, 7.0, 3.0]))
    {0: 7.0, 1: 5.0}
    """
    if not len(partition):
        return {}
    order = np.argsort(partition, kind="stable")
    keys, starts = np.unique(partition[order], return_index=True)
    maxima = np.maximum.reduceat(values[order], starts)
    return {int(k): float(m) for k, m in zip(keys, maxima, strict=True)}


class PartitionProgress:
    """The watermark state of one function's source partitions in one worker."""

    def __init__(self, *, source: str, topic: str, idle_after: float) -> None:
        self.source = source
        self.topic = topic
        self.idle_after = idle_after
        self._partitions: dict[int, _Partition] = {}

    def assign(self, partitions: Iterable[int], *, now: float) -> None:
        """The partitions this worker owns now: new ones start unknown and not quiet, lost ones go."""
        owned = set(partitions)
        for partition in list(self._partitions):
            if partition not in owned:
                del self._partitions[partition]
        for partition in owned - self._partitions.keys():
            self._partitions[partition] = _Partition(event_time=None, next_offset=None, quiet_since=now)

    def processed(self, partition: int, *, event_time: float | None, next_offset: int, now: float) -> None:
        """Records of ``partition`` up to ``next_offset`` are done and their alerts acked.

        ``event_time`` is the largest event time among them (None if none was a valid reading).
        """
        state = self._partitions.get(partition)
        if state is None:
            state = self._partitions[partition] = _Partition(None, None, now)
        if event_time is not None and (state.event_time is None or event_time > state.event_time):
            state.event_time = event_time
        state.next_offset = next_offset if state.next_offset is None else max(state.next_offset, next_offset)
        state.quiet_since = now

    def next_offset(self, partition: int) -> int | None:
        """The offset after the last record of ``partition`` processed (None: none yet)."""
        state = self._partitions.get(partition)
        return None if state is None else state.next_offset

    def disturbed(self, *, now: float) -> None:
        """Kafka was not reachable (a send was not acked in time): no partition counts as quiet yet."""
        for state in self._partitions.values():
            state.quiet_since = now

    def marks(
        self, *, partitions: int, caught_up: Callable[[int, int | None], bool], now: float
    ) -> list[Watermark]:
        """The watermark of every owned partition that has one.

        Args:
            partitions: how many partitions the source topic has.
            caught_up: whether a partition has nothing left to process, given the offset after
                the last record processed (None: nothing processed since it was assigned).
            now: the wall clock.
        """
        marks = []
        for partition, state in sorted(self._partitions.items()):
            if partition >= partitions:
                continue  # not a partition of the topic as we know it: skip until the count is fresh
            idle = now - state.quiet_since >= self.idle_after and caught_up(partition, state.next_offset)
            event_time = state.event_time
            if idle:
                event_time = max(event_time if event_time is not None else -np.inf, now - self.idle_after)
            if event_time is None:
                continue  # nothing processed yet, and not idle: nothing true to say
            marks.append(
                Watermark(
                    source=self.source,
                    topic=self.topic,
                    partition=partition,
                    partitions=partitions,
                    event_time=float(event_time),
                    idle=idle,
                    emitted_at=now,
                )
            )
        return marks
