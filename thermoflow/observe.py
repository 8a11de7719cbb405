"""Reading a running pipeline from outside: topic sizes and consumer-group lag from Kafka.

Used by `thermoflow demo`'s live view and the end-to-end tests; nothing here writes. A topic's
size is all it ever held; a view of one run counts from a :class:`Baseline` taken when the run
began, so earlier runs on the same stack are not counted in it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from thermoflow.settings import ThermoflowSettings


@dataclass(frozen=True)
class Baseline:
    """Each partition's end offset when a run began: the records after it are the run's.

    The empty baseline counts everything a topic holds.
    """

    ends: Mapping[TopicPartition, int] = field(default_factory=dict)

    def counts(self, ends: Mapping[TopicPartition, int], topics: Iterable[str]) -> dict[str, int]:
        """Per topic, the records added to its partitions since the baseline.

        A partition the baseline has not seen (the topic is new, or has grown) counts whole, and so
        does one whose end is now below the baseline's: the topic was deleted and made again.
        """
        totals = dict.fromkeys(topics, 0)
        for tp, end in ends.items():
            if tp.topic in totals:
                start = self.ends.get(tp, 0)
                totals[tp.topic] += end - start if end >= start else end
        return totals


class KafkaObserver:
    """One admin client and one group-less consumer, reused for every look."""

    def __init__(self, settings: ThermoflowSettings, *, timeout: float | None = None) -> None:
        options = settings.kafka_options()
        if timeout is not None:
            options["request_timeout_ms"] = int(timeout * 1000)
        self._admin = AIOKafkaAdminClient(**options)
        self._consumer = AIOKafkaConsumer(**options, group_id=None, enable_auto_commit=False)

    async def start(self) -> None:
        await self._admin.start()
        await self._consumer.start()

    async def close(self) -> None:
        try:
            await self._consumer.stop()
        finally:
            await self._admin.close()

    async def _partitions(self, topic: str) -> list[TopicPartition]:
        described = await self._admin.describe_topics([topic])
        found = [p["partition"] for d in described if d.get("error_code", 0) == 0 for p in d["partitions"]]
        return [TopicPartition(topic, p) for p in sorted(found)]

    async def partition_ends(self, topics: Iterable[str]) -> dict[TopicPartition, int]:
        """The end offset of every partition of ``topics`` (none for a topic that does not exist)."""
        ends: dict[TopicPartition, int] = {}
        for topic in set(topics):
            partitions = await self._partitions(topic)
            if partitions:
                ends.update(await self._consumer.end_offsets(partitions))
        return ends

    async def baseline(self, topics: Iterable[str]) -> Baseline:
        """Where ``topics`` end now: what a run started now will count from.

        Safe before the topics exist: only topics already there are described, since describing
        one makes a broker with auto-creation create it, with its default partition count.
        """
        present = set(await self._admin.list_topics())
        return Baseline(await self.partition_ends(t for t in topics if t in present))

    async def end_offsets(self, topics: Iterable[str], since: Baseline | None = None) -> dict[str, int]:
        """How many records each topic holds: in total, or added since ``since``."""
        topics = list(topics)
        return (since or Baseline()).counts(await self.partition_ends(topics), topics)

    async def lag(self, topics: Iterable[str]) -> dict[str, int]:
        """Per consumer group that has committed on any of ``topics``: records not yet committed.

        A partition of such a topic with no commit yet counts whole.
        """
        ends = await self.partition_ends(topics)
        result: dict[str, int] = {}
        for group in await self._admin.list_consumer_groups():
            group_id = group[0]
            committed: dict[TopicPartition, Any] = await self._admin.list_consumer_group_offsets(group_id)
            offsets = {tp: meta.offset for tp, meta in committed.items() if tp in ends}
            if offsets:
                read = {tp.topic for tp in offsets}
                result[group_id] = sum(
                    max(0, end - offsets.get(tp, 0)) for tp, end in ends.items() if tp.topic in read
                )
        return result

    async def topic_lag(self, group: str, topic: str) -> int:
        """Records of ``topic`` that ``group`` has not committed yet, over every partition.

        A partition without a commit counts from its start (the consumers' ``earliest`` reset,
        KEDA's ``offsetResetPolicy: earliest``). A topic that does not exist has no lag.
        """
        partitions = await self._partitions(topic)
        if not partitions:
            return 0
        ends: dict[TopicPartition, int] = await self._consumer.end_offsets(partitions)
        starts: dict[TopicPartition, int] = await self._consumer.beginning_offsets(partitions)
        committed: dict[TopicPartition, Any] = await self._admin.list_consumer_group_offsets(
            group, partitions=partitions
        )
        total = 0
        for tp, end in ends.items():
            meta = committed.get(tp)
            offset = meta.offset if meta is not None and meta.offset >= 0 else starts.get(tp, 0)
            total += max(0, end - offset)
        return total

    async def group_lag(self, group: str) -> int | None:
        """Records ``group`` has not committed yet, over the partitions it has committed on (None: it
        has committed nothing, so there is no lag to judge)."""
        committed: dict[TopicPartition, Any] = await self._admin.list_consumer_group_offsets(group)
        offsets: dict[TopicPartition, int] = {
            tp: int(meta.offset) for tp, meta in committed.items() if meta.offset >= 0
        }
        if not offsets:
            return None
        ends: dict[TopicPartition, int] = await self._consumer.end_offsets(list(offsets))
        return sum(max(0, ends[tp] - offset) for tp, offset in offsets.items())


@contextlib.asynccontextmanager
async def kafka_observer(settings: ThermoflowSettings) -> AsyncIterator[KafkaObserver]:
    observer = KafkaObserver(settings)
    await observer.start()
    try:
        yield observer
    finally:
        await observer.close()


async def committed(settings: ThermoflowSettings, group: str, topic: str | None = None) -> int:
    """The offsets ``group`` has committed, summed over its partitions (of ``topic`` when given)."""
    admin = AIOKafkaAdminClient(**settings.kafka_options())
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if topic in (None, tp.topic) and meta.offset > 0)
