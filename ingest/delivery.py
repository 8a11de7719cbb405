"""The bridge's Kafka side: the producer's start and stop, and records into Kafka until it acks them.

:class:`KafkaDelivery` groups the outbox per topic-partition, the way aiokafka's default
partitioner would (murmur2 of the key, cached: murmur2 is pure Python), sends one
``send_batch`` per full batch (one future per batch, not per record) and starts a task that
waits for Kafka's acks and resends what failed, with backoff, until Kafka takes it. The groups
Kafka acked go to ``on_delivered``, those of one response together; the bridge marks their
messages in the ack line and acks them in one write.

:class:`Outbox` gathers the records between two flushes; the flush's moment adapts to the load.

Records of a message whose connection was lost (``Held.dropped``) are neither sent nor resent:
the broker sends the message again on the resumed session.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from tenacity import RetryCallState, Retrying, wait_exponential, wait_random

from thermoflow import kafka
from thermoflow.ingest.acks import Held
from thermoflow.ingest.records import OutRecord
from thermoflow.ingest.settings import IngestSettings
from thermoflow.logs import get_logger
from thermoflow.metrics import Metrics
from thermoflow.watchdog import Watchdog

log = get_logger(__name__)

_BACKOFF_FIRST: Final = 0.5
_BACKOFF_MAX: Final = 30.0

#: One Kafka batch's outcome: the future of its ack, or the error ``send_batch`` raised.
Sent = list[tuple["Group", "asyncio.Future[Any] | BaseException"]]


#: The wait between two tries: tenacity's jittered exponential, as the consume loop's retries.
_BACKOFF: Final = wait_exponential(_BACKOFF_FIRST, max=_BACKOFF_MAX) + wait_random(0, _BACKOFF_FIRST)


def backoff(attempt: int) -> float:
    """Seconds before retry ``attempt`` (from 0): doubling from 0.5 s to 30 s, plus up to 0.5 s jitter.

    The policy is tenacity's; the loops around it are the bridge's own, because each waits on the
    stop event, regroups what failed, or races a start against the stop, which tenacity's loop
    does not fit.

    >>> 0.5 <= backoff(0) <= 1.0 and 30.0 <= backoff(20) <= 30.5
    True
    """
    state = RetryCallState(Retrying(), None, (), {})
    state.attempt_number = attempt + 1
    return float(_BACKOFF(state))


@dataclass(slots=True)
class Group:
    """Records bound for one topic-partition, and the messages they belong to."""

    records: list[OutRecord] = field(default_factory=list)
    owners: list[Held] = field(default_factory=list)


class Outbox:
    """Records gathered for the next flush, and when that flush is due.

    Due ``linger`` seconds after the first record came in, or at once when ``batch`` records are
    gathered or :meth:`hurry` is called (a full window, the stop). So the batch grows with the
    load within the latency budget: at 5,000 messages/s one flush (one Kafka request, one PUBACK
    write) carries a few hundred messages instead of a few dozen; under a heavy load it goes as
    soon as it is ``batch`` long, without waiting.
    """

    def __init__(self, *, batch: int, linger: float) -> None:
        self.batch = max(1, batch)
        self.linger = linger
        self.records: list[tuple[OutRecord, Held]] = []
        self._since = 0.0  # monotonic time of the first record (or of the expecting flush)
        self._due = False
        self.expecting = False  # a flush is due at the linger's end even with nothing gathered
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[tuple[OutRecord, Held]]:
        return iter(self.records)

    def add(self, records: list[OutRecord], owner: Held) -> None:
        """One message's records (``owner.received`` starts the linger of an empty outbox)."""
        for record in records:
            self.add_one(record, owner)

    def add_one(self, record: OutRecord, owner: Held) -> None:
        """One record of a message (nearly every message has one: the bridge calls this directly)."""
        out = self.records
        if not out and not self.expecting:
            self._since = owner.received
            self._wake.set()
        out.append((record, owner))
        if len(out) >= self.batch:
            self.hurry()

    def hurry(self) -> None:
        """Flush what is gathered as soon as the sender can."""
        self._due = True
        self._wake.set()

    def steady(self) -> bool:
        """Whether the reader may rest till the next flush: some records, under half a batch.

        Under half: the next flush reads less than a batch, still within the window. Nearer the
        batch, reading on events lets a full batch go as soon as it is there.
        """
        return 0 < len(self.records) < self.batch // 2 and self.linger > 0

    def expect(self, since: float) -> None:
        """A steady load: the next flush is due ``linger`` after ``since``, whatever has come by then.

        The bridge calls it after a flush while its reader rests: what comes meanwhile waits in the
        socket, read all at once at that flush. No message waits longer than the linger, and the
        reader wakes once per flush instead of also for the first message of each batch.
        """
        self._since = since
        self.expecting = True
        self._wake.set()

    async def due(self) -> None:
        """Until records are gathered (or :meth:`expect` was called) and the flush is due."""
        while not self.records and not self.expecting:
            self._wake.clear()
            await self._wake.wait()
        delay = self._since + self.linger - time.monotonic()
        if self._due or delay <= 0:  # every reason to flush now sets _due until the take
            return
        self._wake.clear()  # set by the first record's add, which was no reason to flush
        timer = asyncio.get_running_loop().call_later(delay, self._wake.set)
        try:
            await self._wake.wait()  # the linger's end, a full batch, or hurry()
        finally:
            timer.cancel()

    def take(self) -> list[tuple[OutRecord, Held]]:
        """The gathered records; the outbox starts again empty."""
        records, self.records = self.records, []
        self._due = False
        self.expecting = False
        self._wake.clear()
        return records


async def start_producer(
    settings: IngestSettings, stop: asyncio.Event, watchdog: Watchdog, *, stop_reserve: float
) -> AIOKafkaProducer | None:
    """Start the producer, retrying with backoff while Kafka is unreachable (None if stopped first)."""
    attempt = 0
    while not stop.is_set():
        producer = kafka.producer(settings, linger_ms=0)
        starting = asyncio.ensure_future(producer.start())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not starting.done():  # stopped while Kafka does not answer: give up on it
            starting.cancel()
            await stop_producer(producer, time.monotonic() + stop_reserve)
            return None
        error = starting.exception()
        if error is None:
            return producer
        if not isinstance(error, KafkaError | OSError):
            raise error
        await stop_producer(producer, time.monotonic() + stop_reserve)
        delay = backoff(attempt)
        log.warning("kafka_unreachable", error=str(error), retry_in=round(delay, 1))
        watchdog.retrying("kafka unreachable")
        attempt += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
    return None


async def stop_producer(producer: AIOKafkaProducer, deadline: float) -> None:
    """Close the producer; one that cannot flush (Kafka gone) is abandoned at the deadline."""
    try:
        await asyncio.wait_for(producer.stop(), max(0.5, deadline - time.monotonic()))
    except TimeoutError:
        log.warning("kafka_producer_abandoned", reason="its flush did not finish by the stop deadline")
    except (KafkaError, OSError) as exc:
        log.warning("kafka_producer_stop_failed", error=repr(exc))


class KafkaDelivery:
    """Outbox batches into Kafka, one delivery task per batch, until Kafka acks every record.

    The sender and the retries skip the records of dropped messages (``Held.dropped``).
    """

    def __init__(
        self,
        producer: AIOKafkaProducer,
        on_delivered: Callable[[list[Group]], None],
        metrics: Metrics,
        watchdog: Watchdog,
    ) -> None:
        self.producer = producer
        self.on_delivered = on_delivered
        self.metrics = metrics
        self.watchdog = watchdog
        self.tasks: set[asyncio.Task[None]] = set()  # deliveries waiting for Kafka's acks
        self._partitions: dict[str, int] = {}
        self._partition_of: dict[str, dict[bytes, int]] = {}  # per topic: a key's partition
        self._round_robin = 0

    async def submit(self, outbox: list[tuple[OutRecord, Held]]) -> None:
        """Send the outbox's records and start the task that waits for their acks."""
        sent = await self.send(await self.group(outbox))
        task = asyncio.create_task(self.deliver(sent))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def group(self, outbox: list[tuple[OutRecord, Held]]) -> dict[tuple[str, int], Group]:
        """The records per topic-partition, in order; a key seen before costs two lookups, no await."""
        # Per record, two lookups and two appends: the key's partition, while it is known (nearly
        # always: a fleet's devices keep their keys), then its group. The topic seldom changes
        # (readings, now and then a dead letter): its two tables are looked up only then.
        of_topic: dict[str, dict[int, Group]] = {}
        topic_now: str | None = None  # the topic of the tables below
        partition_of: dict[bytes, int] = {}
        groups: dict[int, Group] = {}
        for record, owner in outbox:
            if owner.dropped:  # its connection is gone: the broker sends the message again
                continue
            topic, key = record[0], record[1]
            if topic is not topic_now:
                topic_now = topic
                partition_of = self._partition_of.setdefault(topic, {})
                groups = of_topic.setdefault(topic, {})
            partition = partition_of.get(key) if key is not None else None
            if partition is None:
                partition = await self._partition(record)
            group = groups.get(partition)
            if group is None:
                group = groups[partition] = Group()
            group.records.append(record)
            group.owners.append(owner)
        return {
            (t, partition): group
            for t, of_partition in of_topic.items()
            for partition, group in of_partition.items()
        }

    async def _partition(self, record: OutRecord) -> int:
        """The default partitioner's choice (murmur2 of the key), cached per key: murmur2 is pure Python."""
        count = self._partitions.get(record.topic)
        if count is None:
            count = await self._partition_count(record.topic)
        if record.key is None:
            self._round_robin += 1
            return self._round_robin % count
        partition_of = self._partition_of.setdefault(record.topic, {})
        partition = partition_of.get(record.key)
        if partition is None:
            partition = kafka.partition_for(record.key, count)
            if len(partition_of) > 1_000_000:
                partition_of.clear()
            partition_of[record.key] = partition
        return partition

    async def _partition_count(self, topic: str) -> int:
        attempt = 0
        while True:
            try:
                partitions = await self.producer.partitions_for(topic)
                if partitions:
                    self._partitions[topic] = len(partitions)
                    return len(partitions)
            except KafkaError as exc:
                log.warning("kafka_metadata_failed", topic=topic, error=str(exc))
                self.watchdog.retrying("kafka metadata unavailable")
            await asyncio.sleep(backoff(attempt))
            attempt += 1

    async def send(self, groups: dict[tuple[str, int], Group]) -> Sent:
        """One ``send_batch`` per full batch; returns each group's delivery future (or the send error)."""
        producer = self.producer
        sent: Sent = []
        for (topic, partition), group in groups.items():
            start = 0
            while start < len(group.records):
                batch = producer.create_batch()
                append = batch.append
                end = start
                for _, key, value, headers in group.records[start:] if start else group.records:
                    if append(key=key, value=value, timestamp=None, headers=headers) is None:
                        break
                    end += 1
                if end == start:  # a record bigger than a batch: cannot happen below max_payload_bytes
                    raise ValueError(
                        f"record of {len(group.records[start].value)} bytes exceeds the batch size"
                    )
                piece = Group(group.records[start:end], group.owners[start:end])
                try:
                    sent.append((piece, await producer.send_batch(batch, topic, partition=partition)))
                except KafkaError as exc:
                    sent.append((piece, exc))
                start = end
        return sent

    async def deliver(self, sent: Sent) -> None:
        """Wait for Kafka's acks; resend what failed, with backoff, until it is in."""
        attempt = 0
        while sent:
            failed: dict[tuple[str, int], Group] = {}
            # Kafka answers a flush's batches in one response: they go to on_delivered together
            # (one PUBACK write per response, not one per partition); what came before a wait, first.
            delivered: list[Group] = []
            for group, outcome in sent:
                error: BaseException | None = outcome if isinstance(outcome, BaseException) else None
                if error is None:
                    assert isinstance(outcome, asyncio.Future)
                    if delivered and not outcome.done():
                        self.on_delivered(delivered)
                        delivered = []
                    try:
                        await outcome
                    except KafkaError as exc:
                        error = exc
                if error is None:
                    delivered.append(group)
                    continue
                self.metrics.count("produce_failures", len(group.records))
                self.watchdog.retrying("kafka produce failed")
                log.warning(
                    "kafka_produce_failed", records=len(group.records), error=repr(error), attempt=attempt
                )
                retry = failed.setdefault((group.records[0].topic, -1), Group())
                retry.records.extend(group.records)
                retry.owners.extend(group.owners)
            if delivered:
                self.on_delivered(delivered)
            if not failed:
                break
            await asyncio.sleep(backoff(attempt))
            attempt += 1
            regrouped = await self.group(
                [(r, o) for g in failed.values() for r, o in zip(g.records, g.owners, strict=True)]
            )
            sent = await self.send(regrouped)

    async def probe(self, timeout: float) -> None:
        """Acks are not moving: Kafka not answering is an outage (retrying), not a stall."""
        try:
            answered = bool(await asyncio.wait_for(self.producer.client.force_metadata_update(), timeout))
        except (KafkaError, OSError, TimeoutError):
            answered = False
        if not answered:
            self.watchdog.retrying("kafka unreachable")
