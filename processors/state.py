"""Per-device detector state kept in Kafka: a compacted topic partitioned like the readings.

Record ``k`` of partition ``p`` of the state topic is the latest :class:`DeviceState` of
device-metric pair ``k`` (:func:`state_key`), whose readings are on partition ``p`` of
``telemetry.readings``. A worker reads a partition's state from the beginning when it is
assigned that readings partition (before its first batch), keeps it in memory while it
owns it, and writes each batch's changes back after the batch's alerts are acked. This is
what a faust Table with a changelog topic does; the detectors need a whole batch's states
at once as columns, and their state records written only after the alerts, so it is done
here in the open, with aiokafka.

A state record that cannot be decoded (written by a newer version, or corrupted) is logged
and treated as a device never seen: the detectors start it afresh rather than stall.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterator
from typing import Final

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from thermoflow.logs import get_logger
from thermoflow.processors.detectors import DeviceState
from thermoflow.settings import ThermoflowSettings

log = get_logger(__name__)

_decoder: Final = msgspec.msgpack.Decoder(DeviceState)
_encoder: Final = msgspec.msgpack.Encoder()
#: Separates device id and metric in a state key: neither may hold a control character.
KEY_SEPARATOR: Final = "\x1f"


def state_key(device_id: str, metric: str) -> str:
    """The state topic's key for one device-metric pair.

    >>> state_key("freezer-1", "temperature").split(KEY_SEPARATOR)
    ['freezer-1', 'temperature']
    """
    return f"{device_id}{KEY_SEPARATOR}{metric}"


def split_key(key: str) -> tuple[str, str]:
    device_id, _, metric = key.partition(KEY_SEPARATOR)
    return device_id, metric


def encode_state(state: DeviceState) -> bytes:
    return _encoder.encode(state)


class StateStore:
    """The device states of the readings partitions this worker owns, read from ``topic``."""

    def __init__(self, settings: ThermoflowSettings, *, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        self._partitions: dict[int, dict[str, DeviceState]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    def loaded(self) -> list[int]:
        return sorted(self._partitions)

    def get(self, partition: int, key: str) -> DeviceState | None:
        states = self._partitions.get(partition)
        return None if states is None else states.get(key)

    def put(self, partition: int, key: str, state: DeviceState) -> None:
        self._partitions.setdefault(partition, {})[key] = state

    def items(self, partition: int) -> Iterator[tuple[str, DeviceState]]:
        return iter(list(self._partitions.get(partition, {}).items()))

    def revoked(self, partitions: Collection[int]) -> None:
        for partition in partitions:
            self._partitions.pop(partition, None)

    async def load(self, partitions: Collection[int]) -> list[int]:
        """Read the state of the partitions not loaded yet; returns those it read.

        Kafka unreachable: retried with backoff until it answers (the batch waits; the
        stall watchdog ends the process if that takes ``stall_timeout``).
        """
        async with self._lock:
            missing = sorted(set(partitions) - self._partitions.keys())
            if not missing:
                return []
            async for attempt in AsyncRetrying(
                wait=wait_exponential(multiplier=0.5, max=10.0),
                retry=retry_if_exception_type(Exception),
                before_sleep=self._retrying,
            ):
                with attempt:
                    loaded = await self._read(missing)
            self._partitions.update(loaded)
            log.info(
                "state_loaded",
                topic=self.topic,
                partitions=missing,
                devices=sum(len(loaded[p]) for p in missing),
            )
            return missing

    async def _retrying(self, retry: RetryCallState) -> None:
        error = retry.outcome.exception() if retry.outcome is not None else None
        log.warning("state_load_retry", topic=self.topic, error=repr(error))
        await self.close()  # a fresh client next time

    async def _read(self, partitions: list[int]) -> dict[int, dict[str, DeviceState]]:
        consumer = await self._client()
        tps = [TopicPartition(self.topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        found: dict[int, dict[str, DeviceState]] = {p: {} for p in partitions}
        pending = {tp for tp in tps if ends[tp] > 0}
        while pending:
            batches = await consumer.getmany(*pending, timeout_ms=1000)
            for tp, records in batches.items():
                states = found[tp.partition]
                for record in records:
                    self._fold(states, record.key, record.value, tp.partition, record.offset)
            pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
        return found

    def _fold(
        self,
        states: dict[str, DeviceState],
        key: bytes | None,
        value: bytes | None,
        partition: int,
        offset: int,
    ) -> None:
        if key is None:
            return
        name = key.decode("utf-8", "replace")
        if value is None:  # a tombstone
            states.pop(name, None)
            return
        try:
            states[name] = _decoder.decode(value)
        except (msgspec.DecodeError, ValueError) as exc:
            log.warning(
                "state_undecodable", topic=self.topic, partition=partition, offset=offset, error=str(exc)
            )
            states.pop(name, None)

    async def _client(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                **self.settings.kafka_options(),
                enable_auto_commit=False,
                group_id=None,
                auto_offset_reset="earliest",
                max_partition_fetch_bytes=8 << 20,
            )
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
