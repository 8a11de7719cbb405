"""The pipeline's watermark as one ``telemetry.alerts`` partition tells it. Pure.

The processors send :class:`~thermoflow.events.Watermark` records to every alerts partition,
each behind the alerts it covers. A consumer of the alerts topic keeps, per alerts partition,
the latest watermark of every (function, readings partition). The **pipeline watermark** of
an alerts partition is then the event time up to which every reading has been processed and
its alerts have been read from *that* partition:

* the minimum over the readings partitions that are not idle;
* the maximum, if all of them are idle (the whole fleet is silent);
* unknown until all ``partitions`` readings partitions have reported (after a start, or while
  the processors are down): no incident resolves on a guess;
* with several functions feeding the topic, the minimum over the functions.

It depends on nothing but the records of that partition, in their order, so the store and the
notifier, reading the same partition, reach the same verdict at the same record.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from thermoflow.events import Watermark

SourceKey = tuple[str, str]  # (function, readings topic)


@dataclass
class _Source:
    partitions: int
    latest: dict[int, Watermark] = field(default_factory=dict)

    def watermark(self) -> float | None:
        if len(self.latest) < self.partitions:
            return None
        busy = [mark.event_time for mark in self.latest.values() if not mark.idle]
        if busy:
            return min(busy)
        return max(mark.event_time for mark in self.latest.values())


class PipelineWatermarks:
    """The latest watermarks seen on each alerts partition, and the pipeline watermark they give.

    >>> from thermoflow.events import Watermark
    >>> def mark(p: int, t: float, idle: bool = False) -> Watermark:
    ...     return Watermark(source="thresholds", topic="r", partition=p, partitions=2,
    ...                      event_time=t, idle=idle, emitted_at=t)
    >>> marks = PipelineWatermarks()
    >>> marks.observe(0, mark(0, 100.0)); marks.watermark(0) is None  # partition 1 not heard of
    True
    >>> marks.observe(0, mark(1, 90.0)); marks.watermark(0)
    90.0
    >>> marks.observe(0, mark(1, 95.0, idle=True)); marks.watermark(0)  # idle: left out
    100.0
    """

    def __init__(self) -> None:
        self._partitions: dict[int, dict[SourceKey, _Source]] = {}

    def observe(self, alerts_partition: int, mark: Watermark) -> None:
        """Take a watermark record read from ``alerts_partition``."""
        sources = self._partitions.setdefault(alerts_partition, {})
        key = (mark.source, mark.topic)
        source = sources.get(key)
        if source is None:
            source = sources[key] = _Source(mark.partitions)
        elif source.partitions != mark.partitions:  # the readings topic was repartitioned
            source.partitions = mark.partitions
            source.latest = {p: m for p, m in source.latest.items() if p < mark.partitions}
        source.latest[mark.partition] = mark

    def watermark(self, alerts_partition: int) -> float | None:
        """The pipeline watermark for the incidents of ``alerts_partition``; None while unknown."""
        sources = self._partitions.get(alerts_partition)
        if not sources:
            return None
        marks = [source.watermark() for source in sources.values()]
        if any(mark is None for mark in marks):
            return None
        return min(mark for mark in marks if mark is not None)
