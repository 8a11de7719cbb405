"""Per-device detector state kept in Kafka: a compacted topic partitioned like the readings.

Record ``k`` of partition ``p`` of the state topic is the latest stored state
(:mod:`thermoflow.processors.detectors.state`) of device-metric pair ``k`` (:func:`state_key`),
whose readings are on partition ``p`` of ``telemetry.readings``. A worker reads a partition's
state from the beginning when it first gets a batch of that readings partition, keeps it in
memory while it owns the partition, and writes what changed back after the batch's alerts
are acked (:meth:`StateStore.persist`). That is what a faust Table with a changelog topic
does; here the state is one columnar table (:class:`StateTable`), so a batch's states are
gathered, scattered and packed with array operations, and written with one producer batch
per partition, not one faust send per device.

A state record that cannot be read (another version, a wrong size) is logged and taken as a
device never seen: the detectors start it afresh rather than stall.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Collection, Coroutine, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from tenacity import AsyncRetrying, RetryCallState, wait_exponential

from thermoflow import kafka
from thermoflow.logs import get_logger
from thermoflow.processors.detectors import RECORD_SIZE, DeviceStates, readable
from thermoflow.processors.thresholds import I64, single_metric
from thermoflow.settings import ThermoflowSettings

log = get_logger(__name__)

#: :attr:`StateTable.rule` of a row whose rule row is not known (yet, or since the rules changed).
UNKNOWN_RULE: Final = -2

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


class StateTable:
    """Every owned pair's state in one :class:`DeviceStates`, a row per pair, and which rows changed."""

    def __init__(self, capacity: int = 1024) -> None:
        self.states = DeviceStates.empty(capacity)
        self.index: dict[str, int] = {}
        self.pairs: dict[tuple[str, str], int] = {}  # the same rows by (device_id, metric)
        # ...and by metric, then device id: the batch path, a lookup by the device's string (its
        # hash cached) when a batch has one metric, no (device, metric) tuple per pair.
        self.by_metric: dict[str, dict[str, int]] = {}
        self.keys: list[str | None] = [None] * capacity
        self.partition = np.full(capacity, -1, dtype=np.int64)
        self.dirty = np.zeros(capacity, dtype=bool)
        # The owner's cache of each row's rule row (UNKNOWN_RULE until it sets one; a row that
        # takes another pair forgets it): the offline timer then looks up no rule per row and tick.
        self.rule = np.full(capacity, UNKNOWN_RULE, dtype=np.int64)
        self._free: list[int] = list(range(capacity - 1, -1, -1))

    def __len__(self) -> int:
        return len(self.index)

    def rows(self, keys: Sequence[str], partitions: I64) -> I64:
        """The row of each key, a fresh (never seen) row for a new one on its partition."""
        rows = np.fromiter(map(self.index.get, keys, itertools.repeat(-1)), dtype=np.int64, count=len(keys))
        for at in np.flatnonzero(rows < 0).tolist():
            rows[at] = self._add(keys[at], int(partitions[at]))
        return rows

    def pair_rows(self, device_ids: Sequence[str], metrics: Sequence[str], partitions: I64) -> I64:
        """:meth:`rows` by (device_id, metric): one lookup per pair in C, by the device id alone
        when the batch has one metric; only the pairs new here are added one by one."""
        metric = single_metric(metrics)
        count = len(device_ids)
        if metric is not None:
            known = self.by_metric.get(metric, {})
            rows = np.fromiter(map(known.get, device_ids, itertools.repeat(-1)), dtype=np.int64, count=count)
        else:
            rows = np.fromiter(
                map(self.pairs.get, zip(device_ids, metrics, strict=True), itertools.repeat(-1)),
                dtype=np.int64,
                count=count,
            )
        for at in np.flatnonzero(rows < 0).tolist():  # pairs new here
            rows[at] = self._add(state_key(device_ids[at], metrics[at]), int(partitions[at]))
        return rows

    def get(self, key: str) -> int | None:
        return self.index.get(key)

    def _add(self, key: str, partition: int) -> int:
        if not self._free:
            self._grow()
        row = self._free.pop()
        self.index[key] = row
        device_id, metric = split_key(key)
        self.pairs[device_id, metric] = row
        self.by_metric.setdefault(metric, {})[device_id] = row
        self.keys[row] = key
        self.partition[row] = partition
        self.rule[row] = UNKNOWN_RULE
        return row

    def _grow(self) -> None:
        old = len(self.keys)
        self.states = self.states.grown(2 * old)
        self.keys += [None] * old
        self.partition = np.concatenate([self.partition, np.full(old, -1, dtype=np.int64)])
        self.dirty = np.concatenate([self.dirty, np.zeros(old, dtype=bool)])
        self.rule = np.concatenate([self.rule, np.full(old, UNKNOWN_RULE, dtype=np.int64)])
        self._free += list(range(2 * old - 1, old - 1, -1))

    def of_partition(self, partition: int) -> I64:
        rows: I64 = np.flatnonzero(self.partition == partition)
        return rows

    def drop(self, partitions: Collection[int]) -> None:
        """Forget every pair of these partitions (their rows become free and never seen)."""
        for partition in partitions:
            rows = self.of_partition(partition)
            for row in rows.tolist():
                key = self.keys[row]
                if key is not None:
                    del self.index[key]
                    device_id, metric = split_key(key)
                    del self.pairs[device_id, metric]
                    del self.by_metric[metric][device_id]
                self.keys[row] = None
                self._free.append(row)
            self.states.put(rows, DeviceStates.empty(rows.size))
            self.partition[rows] = -1
            self.dirty[rows] = False
            self.rule[rows] = UNKNOWN_RULE

    def load(self, partition: int, records: dict[str, bytes]) -> int:
        """Read one partition's stored records (the latest per key); returns how many were unreadable."""
        keys = list(records)
        rows = self.rows(keys, np.full(len(keys), partition, dtype=np.int64))
        blobs = [records[key] for key in keys]
        self.states.put(rows, DeviceStates.from_bytes(blobs))
        self.dirty[rows] = False
        return sum(1 for blob in blobs if not readable(blob))

    def changed(self) -> tuple[I64, list[bytes]]:
        """The rows changed since the last call, and their stored records; clears the marks."""
        rows: I64 = np.flatnonzero(self.dirty)
        self.dirty[rows] = False
        packed = self.states.take(rows).pack()
        return rows, [packed[at * RECORD_SIZE : (at + 1) * RECORD_SIZE] for at in range(rows.size)]


class StateStore:
    """The state of the readings partitions this worker owns, read from and written to ``topic``."""

    def __init__(self, settings: ThermoflowSettings, *, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        self.table = StateTable()
        self._loaded: set[int] = set()
        self._revocations: dict[int, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    def loaded(self) -> list[int]:
        return sorted(self._loaded)

    def owned(self, partitions: I64) -> npt.NDArray[np.bool_]:
        """Per partition: is its state loaded here (not revoked since)?"""
        owned: npt.NDArray[np.bool_] = np.isin(partitions, list(self._loaded))
        return owned

    def mark_loaded(self, partitions: Collection[int]) -> None:
        """Take these partitions' state as loaded, empty: for a store fed only through its table."""
        self._loaded |= set(partitions)

    def revoked(self, partitions: Collection[int]) -> None:
        gone = self._loaded & set(partitions)
        self.table.drop(gone)
        self._loaded -= gone
        for partition in partitions:  # a load under way must not mark these loaded (their state moves on)
            self._revocations[partition] = self._revocations.get(partition, 0) + 1

    async def load(self, partitions: Collection[int]) -> list[int]:
        """Read the state of the partitions not loaded yet; returns those it read.

        Kafka unreachable: retried with backoff until it answers (the batch waits; the
        stall watchdog ends the process if that takes ``stall_timeout``).
        """
        async with self._lock:
            missing = sorted(set(partitions) - self._loaded)
            if not missing:
                return []
            revocations = {p: self._revocations.get(p, 0) for p in missing}
            async for attempt in AsyncRetrying(
                wait=wait_exponential(multiplier=0.5, max=10.0), before_sleep=self._retrying
            ):
                with attempt:
                    found = await self._read(missing)
            missing = [p for p in missing if self._revocations.get(p, 0) == revocations[p]]
            for partition in missing:
                unreadable = self.table.load(partition, found[partition])
                if unreadable:
                    log.warning("state_unreadable", topic=self.topic, partition=partition, records=unreadable)
            self._loaded |= set(missing)
            log.info(
                "state_loaded", topic=self.topic, partitions=missing, pairs=sum(map(len, found.values()))
            )
            return missing

    def persist(self) -> Coroutine[Any, Any, None]:
        """Take every changed pair's state now; the coroutine returned writes it, one producer
        batch per partition, and returns once acked.

        The state is taken at the call, not when the coroutine first runs, so the caller can
        process the next batch while the write waits for its acks (:meth:`BatchRunner.flush`).
        A partition revoked while this waits (for the producer, or for a full batch to go) is not
        written: its new owner replays from the committed offsets with the state stored before
        them, and its rows may already hold other pairs. So the rows' keys and partitions are
        taken at the call, and each row is written only while its partition is loaded.
        """
        rows, records = self.table.changed()
        partitions = self.table.partition[rows].tolist()
        keys = [self.table.keys[row] for row in rows.tolist()]
        return self._write(rows, partitions, keys, records)

    async def _write(
        self, rows: I64, partitions: list[int], keys: list[str | None], records: list[bytes]
    ) -> None:
        if not records:
            return
        try:
            producer = await self._writer()
            sent = await kafka.send_batches(
                producer,
                self.topic,
                (
                    (partition, str(key).encode(), value, None)
                    for partition, key, value in zip(partitions, keys, records, strict=True)
                    if partition in self._loaded  # checked at each record: a send may wait
                ),
            )
            await asyncio.gather(*sent)
        except BaseException:
            # written again with the next batch's changes: the rows that still hold their pairs
            still = [row for row, key in zip(rows.tolist(), keys, strict=True) if self.table.keys[row] == key]
            self.table.dirty[still] = True
            raise

    async def _retrying(self, retry: RetryCallState) -> None:
        error = retry.outcome.exception() if retry.outcome is not None else None
        log.warning("state_load_retry", topic=self.topic, error=repr(error))
        await self._close_consumer()  # a fresh client next time

    async def _read(self, partitions: list[int]) -> dict[int, dict[str, bytes]]:
        consumer = await self._reader()
        tps = [TopicPartition(self.topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        found: dict[int, dict[str, bytes]] = {p: {} for p in partitions}
        pending = [tp for tp in tps if ends[tp] > 0]
        while pending:
            for tp, batch in (await consumer.getmany(*pending, timeout_ms=1000)).items():
                latest = found[tp.partition]
                for record in batch:
                    if record.key is None:
                        continue
                    key = record.key.decode("utf-8", "replace")
                    if record.value is None:  # a tombstone
                        latest.pop(key, None)
                    else:
                        latest[key] = record.value
            pending = [tp for tp in pending if await consumer.position(tp) < ends[tp]]
        return found

    async def _reader(self) -> AIOKafkaConsumer:
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

    async def _writer(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = kafka.producer(self.settings, linger_ms=5, max_batch_size=1 << 20)
            await producer.start()
            self._producer = producer
        return self._producer

    async def _close_consumer(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()

    async def close(self) -> None:
        await self._close_consumer()
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()
