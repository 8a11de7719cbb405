"""One consumer group's lag on one topic, read from Kafka as KEDA's Kafka scaler reads it.

`thermoflow run --autoscale` asks this before each decision of :mod:`thermoflow.autoscale`.
"""

from __future__ import annotations

import contextlib
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from thermoflow.settings import ThermoflowSettings


class GroupLag:
    """An admin client (committed offsets) and a group-less consumer (end offsets), reused."""

    def __init__(self, settings: ThermoflowSettings, *, timeout: float = 10.0) -> None:
        self._options = {**settings.kafka_options(), "request_timeout_ms": int(timeout * 1000)}
        self._clients: tuple[AIOKafkaAdminClient, AIOKafkaConsumer] | None = None

    async def _started(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        """The clients, started now if need be: Kafka may be away when `thermoflow run` starts."""
        if self._clients is None:
            admin = AIOKafkaAdminClient(**self._options)
            consumer = AIOKafkaConsumer(**self._options, group_id=None, enable_auto_commit=False)
            try:
                await admin.start()
                await consumer.start()
            except BaseException:
                await _close(admin, consumer)
                raise
            self._clients = admin, consumer
        return self._clients

    async def close(self) -> None:
        if self._clients is not None:
            await _close(*self._clients)
            self._clients = None

    async def lag(self, group: str, topic: str) -> int:
        """Records of ``topic`` that ``group`` has not committed yet, over every partition.

        A partition without a commit counts from its start (the consumers' ``earliest`` reset,
        KEDA's ``offsetResetPolicy: earliest``). A topic that does not exist has no lag.
        """
        try:
            return await self._lag(group, topic)
        except Exception:
            await self.close()  # start afresh next time: a client that failed may stay broken
            raise

    async def _lag(self, group: str, topic: str) -> int:
        admin, consumer = await self._started()
        described = await admin.describe_topics([topic])
        partitions = [
            TopicPartition(topic, p["partition"])
            for d in described
            if d.get("error_code", 0) == 0
            for p in d.get("partitions", [])
        ]
        if not partitions:
            return 0
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        starts: dict[TopicPartition, int] = await consumer.beginning_offsets(partitions)
        committed: dict[TopicPartition, Any] = await admin.list_consumer_group_offsets(
            group, partitions=partitions
        )
        total = 0
        for tp, end in ends.items():
            meta = committed.get(tp)
            offset = meta.offset if meta is not None and meta.offset >= 0 else starts.get(tp, 0)
            total += max(0, end - offset)
        return total


async def _close(admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer) -> None:
    with contextlib.suppress(Exception):  # a client that never started has nothing to close
        await consumer.stop()
    with contextlib.suppress(Exception):
        await admin.close()
