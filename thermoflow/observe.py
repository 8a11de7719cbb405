"""Reading a running pipeline from outside: topic sizes and consumer-group lag from Kafka.

Used by `thermoflow demo`'s live view and the end-to-end tests; nothing here writes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from thermoflow.settings import ThermoflowSettings


class KafkaObserver:
    """One admin client and one group-less consumer, reused for every look."""

    def __init__(self, settings: ThermoflowSettings) -> None:
        self._admin = AIOKafkaAdminClient(**settings.kafka_options())
        self._consumer = AIOKafkaConsumer(**settings.kafka_options(), group_id=None, enable_auto_commit=False)

    async def start(self) -> None:
        await self._admin.start()
        await self._consumer.start()

    async def close(self) -> None:
        await self._consumer.stop()
        await self._admin.close()

    async def _partitions(self, topic: str) -> list[TopicPartition]:
        described = await self._admin.describe_topics([topic])
        found = [p["partition"] for d in described if d.get("error_code", 0) == 0 for p in d["partitions"]]
        return [TopicPartition(topic, p) for p in sorted(found)]

    async def end_offsets(self, topics: Iterable[str]) -> dict[str, int]:
        """How many records each topic holds in total (the sum of its partitions' end offsets)."""
        totals: dict[str, int] = {}
        for topic in topics:
            partitions = await self._partitions(topic)
            ends = await self._consumer.end_offsets(partitions) if partitions else {}
            totals[topic] = sum(ends.values())
        return totals

    async def lag(self, topics: Iterable[str]) -> dict[str, int]:
        """Per consumer group that has committed on any of ``topics``: records not yet committed.

        A partition of such a topic with no commit yet counts whole.
        """
        ends: dict[TopicPartition, int] = {}
        for topic in set(topics):
            partitions = await self._partitions(topic)
            if partitions:
                ends.update(await self._consumer.end_offsets(partitions))
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
